//! loom models of the ring: every interleaving (bounded by
//! LOOM_MAX_PREEMPTIONS) of one producer and one consumer thread over
//! `HeapRing`, whose data words are loom cells, so a record read that is not
//! ordered after its write fails as a causality violation.
//!
//! Run: `cargo xtask loom`.

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

/// A doorbell for the models: a flag under a mutex, with a condvar. A lost
/// wakeup leaves the consumer waiting forever, which loom reports as a
/// deadlock.
type Bell = Arc<(loom::sync::Mutex<bool>, loom::sync::Condvar)>;

fn ring_bell(bell: &Bell) {
    let (rung, cv) = &**bell;
    *rung.lock().unwrap() = true;
    cv.notify_one();
}

fn sleep_on(bell: &Bell) {
    let (rung, cv) = &**bell;
    let mut r = rung.lock().unwrap();
    while !*r {
        r = cv.wait(r).unwrap();
    }
    *r = false;
}

/// The consumer receives `count` messages, sleeping on the bell whenever
/// the ring is empty; the producer rings only when asked.
fn sleepy_consumer(count: usize) {
    loom::model(move || {
        let ring = Arc::new(HeapRing::new(64).unwrap());
        let bell: Bell = Arc::new((loom::sync::Mutex::new(false), loom::sync::Condvar::new()));
        let mut rx = Consumer::attach(ring.clone()).unwrap();
        let producer_bell = bell.clone();
        let t = thread::spawn(move || {
            let mut tx = Producer::attach(ring).unwrap();
            for i in 0..count {
                while !tx.send(&[i as u8; 8]).unwrap() {
                    thread::yield_now();
                }
                if tx.wants_wake() {
                    ring_bell(&producer_bell);
                }
            }
        });
        let mut buf = [0u8; 8];
        let mut got = 0;
        while got < count {
            if let Some(n) = rx.recv_into(&mut buf).unwrap() {
                assert_eq!((n, buf[0]), (8, got as u8));
                got += 1;
                continue;
            }
            if rx.prepare_to_sleep().unwrap() {
                sleep_on(&bell);
                rx.finish_sleep();
            }
        }
        t.join().unwrap();
    });
}

#[test]
fn no_lost_wakeup_one_message() {
    sleepy_consumer(1);
}

#[test]
fn no_lost_wakeup_two_messages() {
    sleepy_consumer(2);
}
