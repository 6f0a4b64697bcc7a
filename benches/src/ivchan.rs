//! The ivchan side of every measurement: one message in or out through the
//! copy API or the zero-copy API, with a wait strategy. The same functions
//! run over a heap region (threads) and a mapped `/dev/shm` file
//! (processes).

use ivchan_protocol::volatile::READ_FORWARD_FROM;
use ivchan_protocol::{
    Consumer, DirectMemory, Header, InitParams, Producer, Region, VolatileSlice,
};

use crate::wait::{WaitStrategy, Waiter};
use crate::{REGION_SIZE, RING_SIZE};

/// Which ivchan API moves the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `send` / `recv_into`: the payload is copied into the ring and out of
    /// it (each byte moves twice).
    Copy,
    /// `reserve` + write in place + `commit` / `peek` + read in place +
    /// `release`: the producer writes the payload once, the consumer reads
    /// it where it lies.
    ZeroCopy,
}

/// How often each side found the ring full or empty, and reloaded the
/// other side's position, across every message sent and received in this
/// process: the evidence for who waits (docs/bench/notes.md). Relaxed
/// counters, bumped only on the slow paths; [`Counters::take`] reads and
/// clears them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Messages sent.
    pub sent: u64,
    /// `reserve` calls that found the ring full.
    pub full: u64,
    /// Sends whose `reserve` had to reload `head` (cached free space short).
    pub head_reloads: u64,
    /// Messages received.
    pub received: u64,
    /// `peek` calls that found the ring empty.
    pub empty: u64,
    /// Receives whose `peek` had to reload `tail` (cached backlog used up).
    pub tail_reloads: u64,
}

mod counters {
    use std::sync::atomic::{AtomicBool, AtomicU64};

    /// One counter per 128-byte block, so the producer's and the
    /// consumer's counters never share a cache line (or a prefetch pair).
    #[repr(align(128))]
    pub struct Padded(pub AtomicU64);

    /// Off unless a caller asks ([`super::Counters::enable`]): counting
    /// then costs one read of a shared, never-written flag per message.
    pub static ENABLED: AtomicBool = AtomicBool::new(false);
    pub static SENT: Padded = Padded(AtomicU64::new(0));
    pub static FULL: Padded = Padded(AtomicU64::new(0));
    pub static HEAD_RELOADS: Padded = Padded(AtomicU64::new(0));
    pub static RECEIVED: Padded = Padded(AtomicU64::new(0));
    pub static EMPTY: Padded = Padded(AtomicU64::new(0));
    pub static TAIL_RELOADS: Padded = Padded(AtomicU64::new(0));
}

impl Counters {
    /// Turns counting on for this process (off by default: the counts cost
    /// atomic adds on the data path).
    pub fn enable() {
        counters::ENABLED.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Reads and clears this process's counters.
    pub fn take() -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        Self {
            sent: counters::SENT.0.swap(0, Relaxed),
            full: counters::FULL.0.swap(0, Relaxed),
            head_reloads: counters::HEAD_RELOADS.0.swap(0, Relaxed),
            received: counters::RECEIVED.0.swap(0, Relaxed),
            empty: counters::EMPTY.0.swap(0, Relaxed),
            tail_reloads: counters::TAIL_RELOADS.0.swap(0, Relaxed),
        }
    }
}

#[inline]
fn bump(c: &std::sync::atomic::AtomicU64, n: u64) {
    if n != 0 && counters::ENABLED.load(std::sync::atomic::Ordering::Relaxed) {
        c.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Sends one message, waiting while the ring is full. One commit (one
/// Release store of `tail`) per message.
#[inline]
pub fn send<M: DirectMemory>(tx: &mut Producer<M>, api: Api, msg: &[u8], waiter: &mut Waiter) {
    waiter.reset();
    // Whether `reserve` will reload `head`: the cached free space is short
    // (an upper bound on the record with padding).
    if tx.free_bytes() < 2 * (msg.len() + 16) {
        bump(&counters::HEAD_RELOADS.0, 1);
    }
    let mut full = 0;
    loop {
        let sent = match api {
            Api::Copy => tx.send(msg).expect("bench ring stays healthy"),
            Api::ZeroCopy => match tx.reserve(msg.len()).expect("bench ring stays healthy") {
                Some(mut grant) => {
                    grant.write(0, msg).expect("length fits the grant");
                    grant.commit(msg.len()).expect("length fits the grant");
                    true
                }
                None => false,
            },
        };
        if sent {
            bump(&counters::SENT.0, 1);
            bump(&counters::FULL.0, full);
            return;
        }
        full += 1;
        waiter.wait();
    }
}

/// Sends `count` copies of `msg` as one long `Channel::send_batch` call
/// does: each message is copied into the ring and staged, and one Release
/// store of `tail` publishes every [`ivchan_protocol::PUBLISH_EVERY`]
/// bytes (256 messages of 64 B, every message from 16 KiB up). A full ring
/// publishes what is staged before it waits, so the reader can drain it.
/// A writer that published every 64 small messages kept its reader at its
/// heels (64 B: 28-44 M msg/s against 148-151 M; docs/bench/notes.md).
#[inline]
pub fn send_batched<M: DirectMemory>(
    tx: &mut Producer<M>,
    msg: &[u8],
    count: u64,
    waiter: &mut Waiter,
) {
    let mut staged = 0;
    for _ in 0..count {
        waiter.reset();
        let mut full = 0;
        loop {
            match tx.reserve(msg.len()).expect("bench ring stays healthy") {
                Some(mut grant) => {
                    grant.write(0, msg).expect("length fits the grant");
                    grant.stage(msg.len()).expect("length fits the grant");
                    break;
                }
                None => {
                    if full == 0 {
                        tx.publish();
                        staged = 0;
                    }
                    full += 1;
                    waiter.wait();
                }
            }
        }
        bump(&counters::SENT.0, 1);
        bump(&counters::FULL.0, full);
        staged += 1;
        if staged * msg.len() >= ivchan_protocol::PUBLISH_EVERY {
            tx.publish();
            staged = 0;
        }
    }
    tx.publish();
}

/// Receives `count` messages, copying each out into `buf`, and releases
/// them with one store of `head` per look at the ring (everything the
/// producer had published), or per `RELEASE_EVERY` bytes (a quarter ring
/// at most) in a long run, as `Channel::recv_batch` does.
#[inline]
pub fn recv_batched<M: DirectMemory>(
    rx: &mut Consumer<M>,
    buf: &mut [u8],
    count: u64,
    waiter: &mut Waiter,
) {
    let mut left = count;
    let release_every = ivchan_protocol::release_chunk(rx.capacity());
    waiter.reset();
    let mut empty = 0;
    while left > 0 {
        if rx.pending_bytes() == 0 {
            bump(&counters::TAIL_RELOADS.0, 1);
            waiter.before_look(rx);
        }
        let mut took = 0;
        while took < left {
            let Some(msg) = rx.peek().expect("bench ring stays healthy") else {
                break;
            };
            let n = msg.len();
            msg.read(0, &mut buf[..n]).expect("length fits the buffer");
            msg.stage();
            if rx.staged_bytes() >= release_every {
                rx.publish();
            }
            took += 1;
        }
        if took == 0 {
            empty += 1;
            waiter.wait();
            continue;
        }
        rx.publish();
        bump(&counters::RECEIVED.0, took);
        bump(&counters::EMPTY.0, empty);
        empty = 0;
        left -= took;
        waiter.progress(usize::try_from(took).unwrap_or(usize::MAX));
    }
}

/// Reads every cache line of a message in place, as a consumer that uses
/// the bytes must: the lines have to cross from the producer's core. One
/// byte per 64-byte line, through the volatile view, in the order
/// `VolatileSlice`'s docs advise and ivchan's own copies out of the ring
/// read: from the last line back to the first below
/// [`READ_FORWARD_FROM`] (front to back, right behind the producer, the
/// stream prefetcher fetches the lines past the message while the producer
/// writes them: 1 KiB, cross-process, 7.0-9.7 M msg/s front to back,
/// 31.5-33.8 M back to front), front to back from it (a message that large
/// has its newest lines still in the producer's cache; docs/bench/notes.md).
#[inline]
pub fn touch(bytes: VolatileSlice<'_>) -> u8 {
    let lines = bytes.len().div_ceil(64);
    let read = |line: usize| bytes.read_u8(line * 64).unwrap_or(0);
    if bytes.len() >= READ_FORWARD_FROM {
        (0..lines).fold(0, |x, line| x ^ read(line))
    } else {
        (0..lines).rev().fold(0, |x, line| x ^ read(line))
    }
}

/// Receives one message, waiting while the ring is empty; returns its
/// length. The copy API copies it into `buf`; the zero-copy API touches
/// every cache line in place. When the backlog seen at the last look is
/// used up, the waiter leaves a streaming producer its lead before the
/// next look, as `Channel::recv` does.
#[inline]
pub fn recv<M: DirectMemory>(
    rx: &mut Consumer<M>,
    api: Api,
    buf: &mut [u8],
    waiter: &mut Waiter,
) -> usize {
    waiter.reset();
    let mut empty = 0;
    loop {
        if rx.pending_bytes() == 0 {
            bump(&counters::TAIL_RELOADS.0, 1);
            waiter.before_look(rx);
        }
        let got = match api {
            Api::Copy => rx.recv_into(buf).expect("bench ring stays healthy"),
            Api::ZeroCopy => match rx.peek().expect("bench ring stays healthy") {
                Some(msg) => {
                    std::hint::black_box(touch(msg.volatile()));
                    let n = msg.len();
                    msg.release();
                    Some(n)
                }
                None => None,
            },
        };
        if let Some(n) = got {
            bump(&counters::RECEIVED.0, 1);
            bump(&counters::EMPTY.0, empty);
            return n;
        }
        empty += 1;
        waiter.wait();
    }
}

/// Receives one message and sends it back on `tx` (the echo side of a
/// round trip). The zero-copy API copies the peeked bytes straight into the
/// reply's grant. A waiter per direction, as a channel keeps one pace per
/// direction: a reply counted into the receiving side's batch would make a
/// ping-pong look like a stream.
#[inline]
pub fn echo<M: DirectMemory>(
    rx: &mut Consumer<M>,
    tx: &mut Producer<M>,
    api: Api,
    buf: &mut [u8],
    recv_wait: &mut Waiter,
    send_wait: &mut Waiter,
) {
    match api {
        Api::Copy => {
            let n = recv(rx, api, buf, recv_wait);
            send(tx, api, &buf[..n], send_wait);
        }
        Api::ZeroCopy => {
            recv_wait.reset();
            if rx.pending_bytes() == 0 {
                recv_wait.before_look(rx);
            }
            let msg = loop {
                if let Some(msg) = rx.peek().expect("bench ring stays healthy") {
                    break msg;
                }
                recv_wait.wait();
            };
            send_wait.reset();
            loop {
                if let Some(mut grant) = tx.reserve(msg.len()).expect("bench ring stays healthy") {
                    grant.volatile_mut().copy_from_volatile(&msg.volatile());
                    grant.commit(msg.len()).expect("length fits the grant");
                    break;
                }
                send_wait.wait();
            }
            msg.release();
        }
    }
}

/// Busy-poll or backoff, as a waiter.
pub fn waiter(strategy: WaitStrategy) -> Waiter {
    Waiter::new(strategy)
}

/// A heap buffer laid out as an ivchan region: the same code path as a
/// mapped `/dev/shm` file, inside one process.
pub struct HeapRegion {
    words: Vec<u64>,
}

impl Default for HeapRegion {
    fn default() -> Self {
        Self::new()
    }
}

impl HeapRegion {
    /// A zeroed region of [`REGION_SIZE`] bytes.
    pub fn new() -> Self {
        Self {
            words: vec![0u64; REGION_SIZE / 8],
        }
    }

    /// Writes a fresh header (empty rings of [`RING_SIZE`] bytes) and
    /// returns it.
    pub fn header(&mut self) -> Header<'_> {
        Header::create(Region::from_words(&mut self.words), &params())
            .expect("bench region has a valid size")
    }
}

/// Header parameters of every bench region.
pub fn params() -> InitParams<'static> {
    InitParams {
        uuid: [0; 16],
        name: "bench",
        ring_size: Some(RING_SIZE),
    }
}
