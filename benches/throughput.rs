//! Streaming throughput at every message size, cross-thread and
//! cross-process, for ivchan (copy and zero-copy APIs) and its peers, plus
//! single-core memcpy at the same sizes. Criterion reports bytes/s; its time
//! per iteration is the time per message (1 / messages/s).
//!
//! `cargo bench -p ivchan-benches --bench throughput [-- FILTER]`

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use ivchan_benches::process::{child_main, Session, Transport};
use ivchan_benches::thread::{Queue, ThreadBench};
use ivchan_benches::{limits, SIZES};

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(10)
        .configure_from_args()
}

fn cross_thread(c: &mut Criterion) {
    for &queue in Queue::ALL {
        let mut group = c.benchmark_group(format!("xthread/{}", queue.name()));
        for &size in SIZES {
            group.throughput(Throughput::Bytes(size as u64));
            let mut bench = ThreadBench::new(queue, size);
            group.bench_function(BenchmarkId::from_parameter(size), |b| {
                b.iter_custom(|n| bench.run(n))
            });
        }
        group.finish();
    }
}

fn cross_process(c: &mut Criterion) {
    for &transport in Transport::ALL {
        let mut session = Session::new(transport).expect("bench child starts");
        let mut group = c.benchmark_group(format!("xproc/{}", transport.name()));
        for &size in SIZES {
            group.throughput(Throughput::Bytes(size as u64));
            group.bench_function(BenchmarkId::from_parameter(size), |b| {
                b.iter_custom(|n| session.stream(size, n))
            });
        }
        group.finish();
    }
}

fn memcpy(c: &mut Criterion) {
    let mut group = c.benchmark_group("limit/memcpy");
    for &size in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter_custom(|n| limits::memcpy(size, n))
        });
    }
    group.finish();
}

fn main() {
    // A re-executed copy of this binary is a cross-process peer.
    child_main();
    let mut c = config();
    cross_thread(&mut c);
    cross_process(&mut c);
    memcpy(&mut c);
    c.final_summary();
}
