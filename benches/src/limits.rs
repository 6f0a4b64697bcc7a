//! The machine's limits, measured the same way as the transports: memcpy
//! bandwidth on one core at each message size, the round trip of one
//! cache line between the two cores, and the round trip through two
//! [`plain_ring`]s (ivchan's record format without its checks), the floor
//! under ivchan's own round trip.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::measure::new_histogram;
use crate::pin::{pin_current, PRODUCER_CORE};
use crate::plain_ring;
use crate::thread::two_threads;

/// Copies `size` bytes from one buffer to another `count` times on core 0
/// (both buffers stay hot in cache, as a ring's slots do); returns the time.
pub fn memcpy(size: usize, count: u64) -> Duration {
    std::thread::scope(|s| {
        s.spawn(|| {
            pin_current(PRODUCER_CORE);
            let src = vec![0xa5u8; size];
            let mut dst = vec![0u8; size];
            let start = Instant::now();
            for _ in 0..count {
                dst.copy_from_slice(std::hint::black_box(&src));
                std::hint::black_box(&mut dst);
            }
            start.elapsed()
        })
        .join()
        .expect("memcpy thread")
    })
}

#[repr(align(128))]
struct Line(AtomicU64);

/// Bounces one cache line `count` times between core 0 and core 1: core 0
/// stores an odd number, core 1 waits for it and stores the next even one,
/// core 0 waits for that. Returns the total time and a histogram of each
/// round trip in nanoseconds (timed like the transports' round trips).
pub fn cache_line_round_trips(count: u64) -> (Duration, Histogram<u64>) {
    let line = Line(AtomicU64::new(0));
    let line = &line.0;
    let (elapsed, hist, ()) = two_threads(
        move || {
            let mut hist = new_histogram();
            let start = Instant::now();
            for i in 0..count {
                let t = Instant::now();
                line.store(2 * i + 1, Ordering::Release);
                while line.load(Ordering::Acquire) != 2 * i + 2 {
                    std::hint::spin_loop();
                }
                record(&mut hist, t.elapsed());
            }
            std::hint::black_box(start);
            hist
        },
        move || {
            for i in 0..count {
                while line.load(Ordering::Acquire) != 2 * i + 1 {
                    std::hint::spin_loop();
                }
                line.store(2 * i + 2, Ordering::Release);
            }
        },
    );
    (elapsed, hist)
}

/// Ping-pongs a `size`-byte message `count` times through two plain rings
/// (one each way) between core 0 and core 1, both sides busy-polling.
/// Returns the total time and a histogram of each round trip in
/// nanoseconds, timed as the transports' round trips are.
pub fn plain_ring_round_trips(size: usize, count: u64) -> (Duration, Histogram<u64>) {
    let (mut ping_tx, mut echo_rx) = plain_ring::channel(crate::RING_SIZE);
    let (mut echo_tx, mut ping_rx) = plain_ring::channel(crate::RING_SIZE);
    let (elapsed, hist, ()) = two_threads(
        move || {
            let msg = vec![0xa5u8; size];
            let mut buf = vec![0u8; size];
            let mut hist = new_histogram();
            for _ in 0..count {
                let t = Instant::now();
                while !ping_tx.send(&msg) {
                    std::hint::spin_loop();
                }
                while ping_rx.recv(&mut buf).is_none() {
                    std::hint::spin_loop();
                }
                record(&mut hist, t.elapsed());
            }
            hist
        },
        move || {
            let mut buf = vec![0u8; size];
            for _ in 0..count {
                let n = loop {
                    match echo_rx.recv(&mut buf) {
                        Some(n) => break n,
                        None => std::hint::spin_loop(),
                    }
                };
                while !echo_tx.send(&buf[..n]) {
                    std::hint::spin_loop();
                }
            }
        },
    );
    (elapsed, hist)
}

/// Records a duration in nanoseconds, saturating at the histogram's top.
pub fn record(hist: &mut Histogram<u64>, d: Duration) {
    let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    hist.saturating_record(ns.max(1));
}
