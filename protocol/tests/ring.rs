//! Ring behaviour against a simple model: sizes, wrap-around, full, batches,
//! resume after re-attach.

use std::cell::Cell;
use std::collections::VecDeque;

use ivchan_protocol::ring::{max_payload, record_size};
use ivchan_protocol::{
    Consumer, HeapRing, Ordering, Producer, Region, RingError, RingMemory, Violation, Word,
};
use proptest::prelude::*;

fn payload(seq: u32, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seq as usize * 31 + i) as u8).collect()
}

#[test]
fn copy_round_trip_every_small_size() {
    let ring = HeapRing::new(256).unwrap();
    let mut tx = Producer::attach(&ring).unwrap();
    let mut rx = Consumer::attach(&ring).unwrap();
    assert_eq!(tx.max_message(), 120);
    let mut buf = [0u8; 120];
    for len in 0..=120 {
        let msg = payload(len as u32, len);
        assert!(tx.send(&msg).unwrap(), "len {len}");
        assert_eq!(rx.recv_into(&mut buf).unwrap(), Some(len));
        assert_eq!(&buf[..len], &msg[..]);
    }
    assert_eq!(rx.recv_into(&mut buf).unwrap(), None);
}

#[test]
fn wrap_inserts_padding_and_keeps_messages_contiguous() {
    let ring = HeapRing::new(128).unwrap();
    let mut tx = Producer::attach(&ring).unwrap();
    let mut rx = Consumer::attach(&ring).unwrap();
    let mut buf = [0u8; 64];
    // 40-byte payload = 48-byte record: positions 0, 48, then 96 leaves 32
    // bytes before the wrap, so the third record goes to offset 0 after a
    // padding record.
    for seq in 0..10u32 {
        let msg = payload(seq, 40);
        assert!(tx.send(&msg).unwrap());
        assert_eq!(rx.recv_into(&mut buf).unwrap(), Some(40));
        assert_eq!(&buf[..40], &msg[..]);
    }
    // Ten records plus the padding records that skipped each tail.
    assert!(tx.position() > 10 * 48);
    assert_eq!(tx.position(), rx.position());
}

#[test]
fn full_ring_refuses_until_released() {
    let ring = HeapRing::new(64).unwrap();
    let mut tx = Producer::attach(&ring).unwrap();
    let mut rx = Consumer::attach(&ring).unwrap();
    assert!(tx.send(&[1; 24]).unwrap()); // 32-byte record
    assert!(tx.send(&[2; 24]).unwrap()); // ring now full
    assert!(!tx.send(&[3; 1]).unwrap());
    assert_eq!(tx.free_bytes(), 0);
    let mut buf = [0u8; 32];
    assert_eq!(rx.recv_into(&mut buf).unwrap(), Some(24));
    assert_eq!(buf[..24], [1; 24]);
    assert!(tx.send(&[3; 1]).unwrap());
}

#[test]
fn oversized_message_and_small_buffer_are_caller_errors() {
    let ring = HeapRing::new(64).unwrap();
    let mut tx = Producer::attach(&ring).unwrap();
    let mut rx = Consumer::attach(&ring).unwrap();
    assert_eq!(
        tx.send(&[0; 25]),
        Err(RingError::TooLarge { len: 25, max: 24 })
    );
    assert!(tx.send(&[9; 16]).unwrap());
    let mut small = [0u8; 8];
    assert_eq!(
        rx.recv_into(&mut small),
        Err(RingError::BufferTooSmall {
            needed: 16,
            available: 8
        })
    );
    // Not fatal: the message is still there.
    let mut buf = [0u8; 16];
    assert_eq!(rx.recv_into(&mut buf).unwrap(), Some(16));
    assert!(tx.poisoned().is_none() && rx.poisoned().is_none());
}

#[test]
fn staged_commits_are_invisible_until_one_publish() {
    let ring = HeapRing::new(256).unwrap();
    let mut tx = Producer::attach(&ring).unwrap();
    let mut rx = Consumer::attach(&ring).unwrap();
    for seq in 0..4u32 {
        let mut g = tx.reserve(8).unwrap().unwrap();
        g.write(0, &payload(seq, 8)).unwrap();
        g.stage(8).unwrap();
    }
    assert!(tx.has_unpublished());
    assert_eq!(ring.load(Word::Tail, Ordering::Relaxed), 0);
    let mut buf = [0u8; 8];
    assert_eq!(rx.recv_into(&mut buf).unwrap(), None);
    tx.publish();
    assert_eq!(ring.load(Word::Tail, Ordering::Relaxed), 4 * 16);
    for seq in 0..4u32 {
        let g = rx.peek().unwrap().unwrap();
        let mut got = [0u8; 8];
        g.read(0, &mut got).unwrap();
        assert_eq!(got.to_vec(), payload(seq, 8));
        g.stage();
    }
    assert_eq!(ring.load(Word::Head, Ordering::Relaxed), 0);
    rx.publish();
    assert_eq!(ring.load(Word::Head, Ordering::Relaxed), 4 * 16);
}

#[test]
fn a_look_reports_the_backlog_it_found() {
    let ring = HeapRing::new(1024).unwrap();
    let mut tx = Producer::attach(&ring).unwrap();
    let mut rx = Consumer::attach(&ring).unwrap();
    assert_eq!(rx.last_look_found(), 0);
    let mut buf = [0u8; 64];
    for seq in 0..3u32 {
        assert!(tx.send(&payload(seq, 20)).unwrap());
    }
    // One look finds all three records (32 bytes each); taking them
    // needs no other look.
    for _ in 0..3 {
        assert!(rx.recv_into(&mut buf).unwrap().is_some());
        assert_eq!(rx.last_look_found(), 3 * 32);
    }
    assert_eq!(rx.recv_into(&mut buf).unwrap(), None);
    assert_eq!(rx.last_look_found(), 0, "a look that found nothing");
    assert!(tx.send(&payload(3, 8)).unwrap());
    assert!(rx.recv_into(&mut buf).unwrap().is_some());
    assert_eq!(rx.last_look_found(), 16);
}

#[test]
fn commit_can_shrink_but_not_grow_a_grant() {
    let ring = HeapRing::new(128).unwrap();
    let mut tx = Producer::attach(&ring).unwrap();
    let mut rx = Consumer::attach(&ring).unwrap();
    let mut g = tx.reserve(32).unwrap().unwrap();
    assert_eq!(
        g.write(30, &[0; 3]),
        Err(RingError::OutOfGrant { end: 33, len: 32 })
    );
    g.write(0, b"abc").unwrap();
    g.commit(3).unwrap();
    assert_eq!(tx.position(), record_size(3) as u64);
    let g = tx.reserve(8).unwrap().unwrap();
    assert_eq!(g.commit(9), Err(RingError::OutOfGrant { end: 9, len: 8 }));
    let mut buf = [0u8; 8];
    assert_eq!(rx.recv_into(&mut buf).unwrap(), Some(3));
    assert_eq!(rx.recv_into(&mut buf).unwrap(), None);
}

#[test]
fn zero_copy_over_a_region() {
    let mut words = vec![0u64; 512];
    let region = Region::from_words(&mut words);
    let header = ivchan_protocol::Header::create(
        // A 4 KiB buffer is below the region minimum: use a real-size one.
        region,
        &ivchan_protocol::InitParams {
            uuid: [1; 16],
            name: "x",
            ring_size: None,
        },
    );
    assert!(header.is_err());
    let mut words = vec![0u64; (1 << 20) / 8];
    let region = Region::from_words(&mut words);
    let header = ivchan_protocol::Header::create(
        region,
        &ivchan_protocol::InitParams {
            uuid: [1; 16],
            name: "x",
            ring_size: Some(4096),
        },
    )
    .unwrap();
    let (mut tx, _) = header.split(ivchan_protocol::Side::Guest).unwrap();
    let (_, mut rx) = header.split(ivchan_protocol::Side::Host).unwrap();
    for round in 0..100u32 {
        let len = (round as usize * 37) % 600;
        let mut g = tx.reserve(len).unwrap().unwrap();
        let msg: Vec<u8> = (0..len).map(|i| (i as u32 ^ round) as u8).collect();
        g.volatile_mut().copy_from_slice(&msg).unwrap();
        g.commit(len).unwrap();
        let m = rx.peek().unwrap().unwrap();
        assert_eq!(m.len(), len);
        assert_eq!(m.volatile().snapshot(), msg);
        m.release();
    }
}

#[test]
fn reattach_resumes_without_loss_or_reordering() {
    let ring = HeapRing::new(1024).unwrap();
    let mut next = 0u32;
    let mut expect = 0u32;
    let mut buf = [0u8; 64];
    for _ in 0..20 {
        // Each round is a fresh pair of ends, as after both processes restart.
        let mut tx = Producer::attach(&ring).unwrap();
        for _ in 0..7 {
            if tx.send(&payload(next, 20)).unwrap() {
                next += 1;
            }
        }
        // A staged, unpublished record dies with its producer.
        if let Some(g) = tx.reserve(8).unwrap() {
            g.stage(8).unwrap();
        }
        let _ = tx;
        let mut rx = Consumer::attach(&ring).unwrap();
        for _ in 0..5 {
            if let Some(n) = rx.recv_into(&mut buf).unwrap() {
                assert_eq!(buf[..n].to_vec(), payload(expect, 20));
                expect += 1;
            }
        }
        // A staged release is redelivered after a restart (at-least-once).
        if let Some(g) = rx.peek().unwrap() {
            g.stage();
        }
    }
    let mut rx = Consumer::attach(&ring).unwrap();
    while let Some(n) = rx.recv_into(&mut buf).unwrap() {
        assert_eq!(buf[..n].to_vec(), payload(expect, 20));
        expect += 1;
    }
    assert_eq!(expect, next);
}

/// Ring memory that counts every access, to show a poisoned end stops
/// touching shared memory.
struct Counting<'a> {
    inner: &'a HeapRing,
    accesses: Cell<usize>,
}

impl RingMemory for Counting<'_> {
    fn capacity(&self) -> usize {
        self.inner.capacity()
    }
    fn load(&self, w: Word, o: Ordering) -> u64 {
        self.accesses.set(self.accesses.get() + 1);
        self.inner.load(w, o)
    }
    fn store(&self, w: Word, v: u64, o: Ordering) {
        self.accesses.set(self.accesses.get() + 1);
        self.inner.store(w, v, o)
    }
    fn load_header(&self, off: usize) -> u64 {
        self.accesses.set(self.accesses.get() + 1);
        self.inner.load_header(off)
    }
    fn store_header(&self, off: usize, v: u64) {
        self.accesses.set(self.accesses.get() + 1);
        self.inner.store_header(off, v)
    }
    unsafe fn write_bytes(&self, off: usize, src: &[u8]) {
        self.accesses.set(self.accesses.get() + 1);
        // SAFETY: forwarded caller contract.
        unsafe { self.inner.write_bytes(off, src) }
    }
    unsafe fn read_bytes(&self, off: usize, dst: &mut [u8]) {
        self.accesses.set(self.accesses.get() + 1);
        // SAFETY: forwarded caller contract.
        unsafe { self.inner.read_bytes(off, dst) }
    }
}

#[test]
fn poisoned_ring_fails_fast_without_touching_memory() {
    let ring = HeapRing::new(256).unwrap();
    let mem = Counting {
        inner: &ring,
        accesses: Cell::new(0),
    };
    let mut rx = Consumer::attach(&mem).unwrap();
    // The producer claims a tail beyond one ring of the head.
    ring.store(Word::Tail, 4096, Ordering::Release);
    let mut buf = [0u8; 8];
    let first = rx.recv_into(&mut buf).unwrap_err();
    assert!(first.is_fatal());
    assert!(matches!(
        first,
        RingError::Corrupt(Violation::TailOutOfRange { tail: 4096, .. })
    ));
    let before = mem.accesses.get();
    for _ in 0..1000 {
        assert_eq!(rx.recv_into(&mut buf), Err(first));
        assert!(matches!(rx.peek(), Err(e) if e == first));
    }
    assert_eq!(
        mem.accesses.get(),
        before,
        "a poisoned ring read shared memory"
    );
    // Repairing the region does not unpoison: the peer already lied.
    ring.store(Word::Tail, 0, Ordering::Release);
    assert_eq!(rx.recv_into(&mut buf), Err(first));
}

#[derive(Debug, Clone)]
enum Op {
    Send(usize),
    Stage(usize),
    Publish,
    Recv,
    PeekStage,
    PublishRx,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..=248).prop_map(Op::Send),
        2 => (0usize..=248).prop_map(Op::Stage),
        1 => Just(Op::Publish),
        4 => Just(Op::Recv),
        2 => Just(Op::PeekStage),
        1 => Just(Op::PublishRx),
    ]
}

fn cases() -> u32 {
    if cfg!(miri) {
        4
    } else {
        256
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    /// Any interleaving of reserve/commit/stage/publish/peek/release agrees
    /// with a queue model: same messages, same order, and "full" only when
    /// the model says the bytes really do not fit.
    #[test]
    fn matches_queue_model(ops in proptest::collection::vec(op(), 1..200)) {
        let capacity = 512;
        let ring = HeapRing::new(capacity).unwrap();
        let mut tx = Producer::attach(&ring).unwrap();
        let mut rx = Consumer::attach(&ring).unwrap();
        let max = max_payload(capacity);
        // Published messages the consumer has not taken; staged ones. Each
        // carries its span: the record plus any padding before it.
        let mut published: VecDeque<(Vec<u8>, u64)> = VecDeque::new();
        let mut staged: Vec<(Vec<u8>, u64)> = Vec::new();
        // Model positions: producer tail (incl. staged), published head, and
        // bytes the consumer took but has not published.
        let (mut tail, mut head, mut taken) = (0u64, 0u64, 0u64);
        let mut seq = 0u32;
        let mut buf = vec![0u8; max];
        for op in ops {
            match op {
                Op::Send(len) | Op::Stage(len) => {
                    let len = len.min(max);
                    let msg = payload(seq, len);
                    let record = record_size(len) as u64;
                    let to_end = capacity as u64 - tail % capacity as u64;
                    let span = if record <= to_end { record } else { to_end + record };
                    let fits = capacity as u64 - (tail - head) >= span;
                    let Some(mut g) = tx.reserve(len).unwrap() else {
                        prop_assert!(!fits, "full, yet {} bytes fit", span);
                        continue;
                    };
                    prop_assert!(fits, "reserved {} bytes that do not fit", span);
                    g.write(0, &msg).unwrap();
                    seq += 1;
                    tail += span;
                    if matches!(op, Op::Send(_)) {
                        g.commit(len).unwrap();
                        published.extend(staged.drain(..));
                        published.push_back((msg, span));
                    } else {
                        g.stage(len).unwrap();
                        staged.push((msg, span));
                    }
                }
                Op::Publish => {
                    tx.publish();
                    published.extend(staged.drain(..));
                }
                Op::Recv => {
                    let got = rx.recv_into(&mut buf).unwrap();
                    match published.pop_front() {
                        None => prop_assert_eq!(got, None),
                        Some((m, span)) => {
                            prop_assert_eq!(got, Some(m.len()));
                            prop_assert_eq!(&buf[..m.len()], &m[..]);
                            head += taken + span;
                            taken = 0;
                        }
                    }
                }
                Op::PeekStage => {
                    let g = rx.peek().unwrap();
                    match (g, published.pop_front()) {
                        (None, None) => {}
                        (Some(g), Some((m, span))) => {
                            let mut got = vec![0u8; g.len()];
                            g.read(0, &mut got).unwrap();
                            prop_assert_eq!(got, m);
                            g.stage();
                            taken += span;
                        }
                        (g, m) => prop_assert!(false, "peek {:?} vs model {:?}", g.map(|g| g.len()), m),
                    }
                }
                Op::PublishRx => {
                    rx.publish();
                    head += taken;
                    taken = 0;
                }
            }
        }
    }
}

#[test]
fn wake_requests_are_raised_checked_and_withdrawn() {
    let ring = HeapRing::new(128).unwrap();
    let mut tx = Producer::attach(&ring).unwrap();
    let mut rx = Consumer::attach(&ring).unwrap();
    assert!(!tx.wants_wake(), "nobody asked yet");
    // Empty: the consumer may sleep, and the producer will be asked.
    assert!(rx.prepare_to_sleep().unwrap());
    assert!(tx.send(b"hi").unwrap());
    assert!(tx.wants_wake());
    rx.finish_sleep();
    assert!(!tx.wants_wake());
    // Not empty: no sleep, no request left behind.
    assert!(!rx.prepare_to_sleep().unwrap());
    assert!(!tx.wants_wake());
    let mut buf = [0u8; 8];
    assert_eq!(rx.recv_into(&mut buf).unwrap(), Some(2));
    // A poisoned producer never asks for a ring; a poisoned consumer never
    // sleeps.
    assert!(rx.prepare_to_sleep().unwrap());
    ring.store(Word::Head, 4096, Ordering::Release);
    // The producer rereads head once the ring looks full: within 3 sends.
    assert!((0..3).any(|_| tx.send(&[0; 40]).is_err()));
    assert!(tx.poisoned().is_some());
    assert!(!tx.wants_wake());
    ring.store(Word::Tail, 3, Ordering::Release);
    rx.finish_sleep();
    assert!(rx.prepare_to_sleep().is_err());
}
