//! Round-trip latency (ping-pong between two pinned processes) at 64 B and
//! 4 KiB, busy-polling and with the default backoff wait, next to the
//! cache-line round trip between the two cores. Criterion reports the mean;
//! the percentiles (p50/p99/p99.9/max) of every round trip it timed are
//! printed after each benchmark.
//!
//! `cargo bench -p ivchan-benches --bench latency [-- FILTER]`

use std::time::Duration;

use criterion::{BenchmarkId, Criterion};
use ivchan_benches::measure::{new_histogram, LatencyStats};
use ivchan_benches::process::{child_main, Session, Transport};
use ivchan_benches::wait::WaitStrategy;
use ivchan_benches::{limits, LATENCY_SIZES};

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(10)
        .configure_from_args()
}

fn cache_line(c: &mut Criterion) {
    let mut group = c.benchmark_group("rtt/cache-line");
    let mut all = new_histogram();
    group.bench_function("8", |b| {
        b.iter_custom(|n| {
            let (d, h) = limits::cache_line_round_trips(n);
            all.add(h).expect("same bounds");
            d
        })
    });
    group.finish();
    println!("rtt/cache-line: {}", LatencyStats::of(&all));
}

/// The wait strategies to measure `t` with: socket-like transports block
/// in the kernel whatever we ask, and are measured once, as busy-poll.
fn waits(t: Transport) -> &'static [WaitStrategy] {
    match WaitStrategy::for_transport(t) {
        [] => &[WaitStrategy::BusyPoll],
        polling => polling,
    }
}

fn ping_pong(c: &mut Criterion) {
    for &transport in Transport::ALL {
        let mut session = Session::new(transport).expect("bench child starts");
        for &wait in waits(transport) {
            let name = format!("rtt/{}/{}", transport.name(), wait.name());
            let mut group = c.benchmark_group(&name);
            for &size in LATENCY_SIZES {
                let mut all = new_histogram();
                group.bench_function(BenchmarkId::from_parameter(size), |b| {
                    b.iter_custom(|n| {
                        let (d, h) = session.ping_pong(size, n, wait);
                        all.add(h).expect("same bounds");
                        d
                    })
                });
                println!("{name}/{size}: {}", LatencyStats::of(&all));
            }
            group.finish();
        }
    }
}

fn main() {
    // A re-executed copy of this binary is a cross-process peer.
    child_main();
    let mut c = config();
    cache_line(&mut c);
    ping_pong(&mut c);
    c.final_summary();
}
