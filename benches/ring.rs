//! Two threads streaming messages through one ring over an in-process region
//! (the same code path as a mapped `/dev/shm` file), with the copy API and
//! the zero-copy API.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ivchan_benches::HeapRegion;
use ivchan_protocol::Side;

const SIZES: &[usize] = &[64, 1024, 64 * 1024];

#[derive(Clone, Copy)]
enum Api {
    Copy,
    ZeroCopy,
}

/// Streams `count` messages of `size` bytes from one thread to another and
/// returns the elapsed time.
fn stream(region: &mut HeapRegion, api: Api, size: usize, count: u64) -> Duration {
    let header = region.header();
    let (mut tx, _) = header.split(Side::Host).unwrap();
    let (_, mut rx) = header.split(Side::Guest).unwrap();
    let msg = vec![0xa5u8; size];
    std::thread::scope(|s| {
        let start = Instant::now();
        s.spawn(move || {
            let mut buf = vec![0u8; size];
            let mut got = 0;
            while got < count {
                match api {
                    Api::Copy => {
                        if rx.recv_into(&mut buf).unwrap().is_some() {
                            got += 1;
                        } else {
                            std::hint::spin_loop();
                        }
                    }
                    Api::ZeroCopy => {
                        if let Some(m) = rx.peek().unwrap() {
                            // Touch every cache line: the bytes must cross
                            // cores, as a real reader's would.
                            let mut x = 0u8;
                            for line in m.chunks(64) {
                                x ^= line[0];
                            }
                            std::hint::black_box(x);
                            m.release();
                            got += 1;
                        } else {
                            std::hint::spin_loop();
                        }
                    }
                }
            }
        });
        let mut sent = 0;
        while sent < count {
            let ok = match api {
                Api::Copy => tx.send(&msg).unwrap(),
                Api::ZeroCopy => match tx.reserve(size).unwrap() {
                    Some(mut g) => {
                        // Write the payload in place (the one copy this API
                        // keeps).
                        g.copy_from_slice(&msg);
                        g.commit(size).unwrap();
                        true
                    }
                    None => false,
                },
            };
            if ok {
                sent += 1;
            } else {
                std::hint::spin_loop();
            }
        }
        // The scope joins the consumer; time includes its last message.
        start
    })
    .elapsed()
}

fn two_threads(c: &mut Criterion) {
    let mut region = HeapRegion::new(8 << 20);
    for (name, api) in [("copy", Api::Copy), ("zero_copy", Api::ZeroCopy)] {
        // Criterion reports one throughput unit per group: one group in
        // messages/s, one in bytes/s, over the same runs.
        for (unit, per_msg) in [("msgs", false), ("bytes", true)] {
            let mut group = c.benchmark_group(format!("two_threads/{name}/{unit}"));
            group.measurement_time(Duration::from_secs(3));
            for &size in SIZES {
                group.throughput(if per_msg {
                    Throughput::Bytes(size as u64)
                } else {
                    Throughput::Elements(1)
                });
                group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, &size| {
                    b.iter_custom(|iters| stream(&mut region, api, size, iters))
                });
            }
            group.finish();
        }
    }
}

criterion_group!(benches, two_threads);
criterion_main!(benches);
