//! The machine's limits, measured the same way as the transports: memcpy
//! bandwidth on one core at each message size, and the round trip of one
//! cache line between the two cores.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::measure::new_histogram;
use crate::pin::{pin_current, PRODUCER_CORE};
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

/// Records a duration in nanoseconds, saturating at the histogram's top.
pub fn record(hist: &mut Histogram<u64>, d: Duration) {
    let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    hist.saturating_record(ns.max(1));
}
