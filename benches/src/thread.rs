//! Cross-thread streaming: a producer thread pinned to core 0 sends `count`
//! messages of one size to a consumer thread pinned to core 1, through
//! ivchan (over an in-process region) or an in-process SPSC queue.
//!
//! Every queue gets message semantics the same way: the producer waits
//! until a whole message fits and copies it in with one publish; the
//! consumer waits until a whole message is there and copies it out into its
//! own buffer (ivchan's zero-copy API reads it in place instead).

use std::sync::Barrier;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use ivchan_protocol::{Channel, ChannelOptions, Side};
use ringbuf::traits::{Consumer as _, Observer as _, Producer as _, Split as _};

use crate::ivchan::{self, Api, HeapRegion};
use crate::pin::{pin_current, CONSUMER_CORE, PRODUCER_CORE};
use crate::plain_ring::{self, PlainRx, PlainTx};
use crate::wait::{WaitStrategy, Waiter};
use crate::RING_SIZE;

/// An in-process transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    /// ivchan's copy API over a heap region.
    IvchanCopy,
    /// ivchan's zero-copy API over a heap region.
    IvchanZeroCopy,
    /// ivchan's `Channel`, as an agent uses it: `send` and `recv` with the
    /// default options (heartbeats, peer checks, the default wait), over a
    /// heap region. What the channel layer adds to the copy API.
    IvchanChannel,
    /// `rtrb::RingBuffer<u8>`: `push_entire_slice` / `pop_entire_slice`.
    Rtrb,
    /// `ringbuf::HeapRb<u8>`: `push_slice` / `pop_slice` once a whole
    /// message fits.
    Ringbuf,
    /// Two `crossbeam_queue::ArrayQueue<Box<[u8]>>`: filled buffers one way,
    /// empty ones back (the producer copies into a recycled buffer, the
    /// consumer copies out of it).
    Crossbeam,
    /// ivchan's record format in plain Rust, without checks or volatile
    /// copies ([`crate::plain_ring`]): the floor under ivchan's own ring.
    PlainRing,
}

impl Queue {
    /// Every in-process transport, ivchan first.
    pub const ALL: &'static [Queue] = &[
        Queue::IvchanCopy,
        Queue::IvchanZeroCopy,
        Queue::IvchanChannel,
        Queue::Rtrb,
        Queue::Ringbuf,
        Queue::Crossbeam,
        Queue::PlainRing,
    ];

    /// Name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::IvchanCopy => "ivchan-copy",
            Self::IvchanZeroCopy => "ivchan-zero-copy",
            Self::IvchanChannel => "ivchan-channel",
            Self::Rtrb => "rtrb",
            Self::Ringbuf => "ringbuf",
            Self::Crossbeam => "crossbeam-arrayqueue",
            Self::PlainRing => "plain-ring",
        }
    }
}

type RtrbPair = (rtrb::Producer<u8>, rtrb::Consumer<u8>);
type RingbufPair = (
    ringbuf::CachingProd<std::sync::Arc<ringbuf::HeapRb<u8>>>,
    ringbuf::CachingCons<std::sync::Arc<ringbuf::HeapRb<u8>>>,
);

enum State {
    Ivchan(HeapRegion),
    Rtrb(Option<RtrbPair>),
    Ringbuf(Option<RingbufPair>),
    Crossbeam {
        full: Box<ArrayQueue<Box<[u8]>>>,
        free: Box<ArrayQueue<Box<[u8]>>>,
    },
    Plain(Option<(PlainTx, PlainRx)>),
}

/// One queue, one message size; [`run`](Self::run) streams a batch.
pub struct ThreadBench {
    queue: Queue,
    size: usize,
    msg: Vec<u8>,
    state: State,
}

impl ThreadBench {
    /// Allocates the queue (capacity [`RING_SIZE`] bytes, or that many
    /// bytes of buffers for crossbeam).
    pub fn new(queue: Queue, size: usize) -> Self {
        let state = match queue {
            Queue::IvchanCopy | Queue::IvchanZeroCopy | Queue::IvchanChannel => {
                State::Ivchan(HeapRegion::new())
            }
            Queue::Rtrb => State::Rtrb(Some(rtrb::RingBuffer::new(RING_SIZE))),
            Queue::Ringbuf => State::Ringbuf(Some(ringbuf::HeapRb::<u8>::new(RING_SIZE).split())),
            Queue::PlainRing => State::Plain(Some(plain_ring::channel(RING_SIZE))),
            Queue::Crossbeam => {
                let slots = (RING_SIZE / size.max(1)).clamp(2, 4096);
                let free = ArrayQueue::new(slots);
                for _ in 0..slots {
                    free.push(vec![0u8; size].into_boxed_slice())
                        .expect("queue sized for these buffers");
                }
                State::Crossbeam {
                    full: Box::new(ArrayQueue::new(slots)),
                    free: Box::new(free),
                }
            }
        };
        Self {
            queue,
            size,
            msg: vec![0xa5; size],
            state,
        }
    }

    /// The queue measured.
    pub fn queue(&self) -> Queue {
        self.queue
    }

    /// Streams `count` messages; returns the time from the producer's first
    /// send to the consumer's last receive.
    pub fn run(&mut self, count: u64) -> Duration {
        let size = self.size;
        let msg = &self.msg[..];
        let busy = || Waiter::new(WaitStrategy::Backoff);
        match &mut self.state {
            State::Ivchan(region) if self.queue == Queue::IvchanChannel => {
                // Both ends attach before either thread starts, so neither
                // sees the other absent (or closed by the previous run).
                let header = region.header();
                let attach = |side| {
                    Channel::attach(header, side, ChannelOptions::default()).expect("fresh region")
                };
                let (mut tx, mut rx) = (attach(Side::Host), attach(Side::Guest));
                let (elapsed, (), ()) = two_threads(
                    move || {
                        for _ in 0..count {
                            tx.send(msg, None).expect("the receiver keeps up");
                        }
                    },
                    move || {
                        let mut buf = vec![0u8; size];
                        for _ in 0..count {
                            rx.recv(&mut buf, None).expect("the sender sends them all");
                        }
                    },
                );
                elapsed
            }
            State::Ivchan(region) => {
                let api = if self.queue == Queue::IvchanCopy {
                    Api::Copy
                } else {
                    Api::ZeroCopy
                };
                let header = region.header();
                let (mut tx, _) = header.split(Side::Host).expect("fresh ring");
                let (_, mut rx) = header.split(Side::Guest).expect("fresh ring");
                let (elapsed, (), ()) = two_threads(
                    move || {
                        let mut w = busy();
                        for _ in 0..count {
                            ivchan::send(&mut tx, api, msg, &mut w);
                        }
                    },
                    move || {
                        let mut w = busy();
                        let mut buf = vec![0u8; size];
                        for _ in 0..count {
                            ivchan::recv(&mut rx, api, &mut buf, &mut w);
                        }
                    },
                );
                elapsed
            }
            State::Plain(pair) => {
                let ends = pair.take().expect("queue returned after each run");
                let (elapsed, tx, rx) = stream(
                    ends,
                    msg,
                    count,
                    |tx, m| tx.send(m),
                    |rx, buf| rx.recv(buf).is_some(),
                );
                *pair = Some((tx, rx));
                elapsed
            }
            State::Rtrb(pair) => {
                let ends = pair.take().expect("queue returned after each run");
                let (elapsed, tx, rx) = stream(
                    ends,
                    msg,
                    count,
                    |tx, m| tx.push_entire_slice(m).is_ok(),
                    |rx, buf| rx.pop_entire_slice(buf).is_ok(),
                );
                *pair = Some((tx, rx));
                elapsed
            }
            State::Ringbuf(pair) => {
                let ends = pair.take().expect("queue returned after each run");
                let (elapsed, tx, rx) = stream(
                    ends,
                    msg,
                    count,
                    |tx, m| tx.vacant_len() >= m.len() && tx.push_slice(m) == m.len(),
                    |rx, buf| rx.occupied_len() >= buf.len() && rx.pop_slice(buf) == buf.len(),
                );
                *pair = Some((tx, rx));
                elapsed
            }
            State::Crossbeam { full, free } => {
                let (full, free) = (&**full, &**free);
                let (elapsed, (), ()) = stream(
                    ((), ()),
                    msg,
                    count,
                    |(), m| match free.pop() {
                        Some(mut b) => {
                            b.copy_from_slice(m);
                            full.push(b).expect("as many slots as buffers");
                            true
                        }
                        None => false,
                    },
                    |(), buf| match full.pop() {
                        Some(b) => {
                            buf.copy_from_slice(&b);
                            free.push(b).expect("as many slots as buffers");
                            true
                        }
                        None => false,
                    },
                );
                elapsed
            }
        }
    }
}

/// Streams `count` copies of `msg` through a queue's two ends on the two
/// cores: `send` tries once to put a whole message in, `recv` tries once
/// to take a whole message out into the buffer; each side waits with the
/// same waiter while its try fails. Returns the time and the ends.
fn stream<T: Send, R: Send>(
    (mut tx, mut rx): (T, R),
    msg: &[u8],
    count: u64,
    mut send: impl FnMut(&mut T, &[u8]) -> bool + Send,
    mut recv: impl FnMut(&mut R, &mut [u8]) -> bool + Send,
) -> (Duration, T, R) {
    let size = msg.len();
    two_threads(
        move || {
            let mut w = Waiter::new(WaitStrategy::Backoff);
            for _ in 0..count {
                w.reset();
                while !send(&mut tx, msg) {
                    w.wait();
                }
            }
            tx
        },
        move || {
            let mut w = Waiter::new(WaitStrategy::Backoff);
            let mut buf = vec![0u8; size];
            for _ in 0..count {
                w.reset();
                while !recv(&mut rx, &mut buf) {
                    w.wait();
                }
            }
            std::hint::black_box(&buf);
            rx
        },
    )
}

/// Runs `producer` on core 0 and `consumer` on core 1, started together;
/// returns the time from the producer's start to the consumer's end, and
/// what each returned.
pub fn two_threads<A: Send, B: Send>(
    producer: impl FnOnce() -> A + Send,
    consumer: impl FnOnce() -> B + Send,
) -> (Duration, A, B) {
    let barrier = Barrier::new(2);
    std::thread::scope(|s| {
        let c = s.spawn(|| {
            pin_current(CONSUMER_CORE);
            barrier.wait();
            let b = consumer();
            (Instant::now(), b)
        });
        let p = s.spawn(|| {
            pin_current(PRODUCER_CORE);
            barrier.wait();
            let start = Instant::now();
            (start, producer())
        });
        let (start, a) = p.join().expect("producer thread");
        let (end, b) = c.join().expect("consumer thread");
        (end.saturating_duration_since(start), a, b)
    })
}
