//! loom models of the ring: every interleaving (bounded by
//! LOOM_MAX_PREEMPTIONS) of one producer and one consumer thread over
//! `HeapRing`, whose data words are loom cells, so a record read that is not
//! ordered after its write fails as a causality violation.
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p ivchan-protocol --test loom --release`

#![cfg(loom)]

use std::sync::Arc;

use ivchan_protocol::{Consumer, HeapRing, Producer};
use loom::thread;

/// Receives `expected` messages in order, yielding while the ring is empty.
fn drain(rx: &mut Consumer<Arc<HeapRing>>, expected: &[&[u8]]) {
    let mut buf = [0u8; 64];
    for want in expected {
        loop {
            match rx
                .recv_into(&mut buf)
                .expect("no violation between honest peers")
            {
                Some(n) => {
                    assert_eq!(&buf[..n], *want);
                    break;
                }
                None => thread::yield_now(),
            }
        }
    }
}

fn send_all(tx: &mut Producer<Arc<HeapRing>>, msgs: &[&[u8]]) {
    for msg in msgs {
        while !tx.send(msg).expect("no violation between honest peers") {
            thread::yield_now();
        }
    }
}

#[test]
fn empty_ring_then_one_message() {
    loom::model(|| {
        let ring = Arc::new(HeapRing::new(64).unwrap());
        let mut rx = Consumer::attach(ring.clone()).unwrap();
        let t = thread::spawn(move || {
            let mut tx = Producer::attach(ring).unwrap();
            send_all(&mut tx, &[b"abcdefghij"]);
        });
        drain(&mut rx, &[b"abcdefghij"]);
        t.join().unwrap();
    });
}

#[test]
fn full_ring_blocks_producer_until_release() {
    loom::model(|| {
        // 64 bytes hold two 24-byte messages (32-byte records); the third
        // must wait for the consumer's release.
        let ring = Arc::new(HeapRing::new(64).unwrap());
        let mut rx = Consumer::attach(ring.clone()).unwrap();
        let msgs: [&[u8]; 3] = [&[1; 24], &[2; 24], &[3; 24]];
        let t = thread::spawn(move || {
            let mut tx = Producer::attach(ring).unwrap();
            send_all(&mut tx, &msgs);
        });
        drain(&mut rx, &msgs);
        t.join().unwrap();
    });
}

#[test]
fn wrap_with_padding() {
    loom::model(|| {
        // 16-byte records at 0 and 16, then a 40-byte record that does not
        // fit in the 32 bytes before the wrap: padding, then offset 0.
        let ring = Arc::new(HeapRing::new(64).unwrap());
        let mut rx = Consumer::attach(ring.clone()).unwrap();
        let msgs: [&[u8]; 3] = [&[1; 8], &[2; 8], &[3; 24]];
        let t = thread::spawn(move || {
            let mut tx = Producer::attach(ring).unwrap();
            send_all(&mut tx, &msgs);
        });
        drain(&mut rx, &msgs);
        t.join().unwrap();
    });
}

#[test]
fn batched_commit_publishes_both_at_once() {
    loom::model(|| {
        let ring = Arc::new(HeapRing::new(64).unwrap());
        let mut rx = Consumer::attach(ring.clone()).unwrap();
        let t = thread::spawn(move || {
            let mut tx = Producer::attach(ring).unwrap();
            for byte in [7u8, 9] {
                let mut g = tx.reserve(8).unwrap().unwrap();
                g.write(0, &[byte; 8]).unwrap();
                g.stage(8).unwrap();
            }
            tx.publish();
        });
        // Whenever the first is visible, the second is too: one store
        // published them both.
        let mut buf = [0u8; 8];
        loop {
            match rx.recv_into(&mut buf).unwrap() {
                Some(8) => break,
                Some(n) => panic!("unexpected length {n}"),
                None => thread::yield_now(),
            }
        }
        assert_eq!(buf, [7; 8]);
        assert_eq!(rx.recv_into(&mut buf).unwrap(), Some(8));
        assert_eq!(buf, [9; 8]);
        t.join().unwrap();
    });
}
