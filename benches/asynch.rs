//! The async channel against the blocking one, 256 B and 64 KiB messages
//! streamed across two threads through the channel API (heartbeats, peer checks,
//! doorbells included): the host side blocking, or async on a
//! current-thread tokio runtime, with a blocking guest thread as the peer.
//!
//! - `send`: the host streams to the guest (an async send waits for room
//!   by yielding, then on the timer: the protocol has no "room" ring);
//! - `recv-doorbell`: the guest streams to the host, whose receive sleeps
//!   on an eventfd the guest rings (WAKE_ME) when the ring runs empty;
//! - `recv-timer`: the same without a doorbell (the timer fallback).
//!
//! `cargo bench -p ivchan-benches --bench asynch`

use std::os::fd::AsFd;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use ivchan_host::asynch::{AsyncChannel, EventFdReadiness};
use ivchan_host::doorbell::{ChannelBell, Doorbell};
use ivchan_protocol::{Header, InitParams, Mapping, OwnedChannel, Side};

/// Message sizes: small (the receiver's looks at `tail` matter most) and
/// large.
const SIZES: [usize; 2] = [256, 64 * 1024];
/// A VM's default region.
const REGION: usize = 8 << 20;
const PATIENCE: Option<Duration> = Some(Duration::from_secs(30));

type Owned = OwnedChannel<Arc<Mapping>>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Blocking,
    Async,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Blocking => "blocking",
            Self::Async => "async",
        }
    }
}

/// A host and a guest channel over one region, with eventfd doorbells both
/// ways when `bells`. Returns the host, the guest, and the host's own
/// eventfd (the guest rings it).
fn pair(bells: bool) -> (Owned, Owned, Option<Doorbell>) {
    let memory = Arc::new(Mapping::anonymous(REGION).expect("mapping"));
    let params = InitParams {
        uuid: [1; 16],
        name: "bench",
        ring_size: None,
    };
    Header::create(memory.region(), &params).expect("header");
    let mut host = OwnedChannel::attach(memory.clone(), Side::Host, Default::default()).unwrap();
    let mut guest = OwnedChannel::attach(memory, Side::Guest, Default::default()).unwrap();
    if !bells {
        return (host, guest, None);
    }
    let to_host = Doorbell::new().unwrap();
    let to_guest = Doorbell::new().unwrap();
    host.set_notifier(Some(Box::new(
        ChannelBell::new(to_guest.as_fd(), to_host.as_fd()).unwrap(),
    )));
    guest.set_notifier(Some(Box::new(
        ChannelBell::new(to_host.as_fd(), to_guest.as_fd()).unwrap(),
    )));
    (host, guest, Some(to_host))
}

/// The guest thread: takes `(count, send)` jobs, streams or drains that
/// many messages, and reports when done.
fn guest_thread(mut guest: Owned, size: usize) -> (mpsc::Sender<(u64, bool)>, mpsc::Receiver<()>) {
    let (jobs, job_rx) = mpsc::channel::<(u64, bool)>();
    let (done_tx, done) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; size];
        for (count, send) in job_rx {
            for _ in 0..count {
                if send {
                    guest.send(&buf, PATIENCE).unwrap();
                } else {
                    guest.recv(&mut buf, PATIENCE).unwrap();
                }
            }
            done_tx.send(()).unwrap();
        }
    });
    (jobs, done)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn send(c: &mut Criterion, mode: Mode, size: usize) {
    let rt = runtime();
    let (host, guest, _) = pair(true);
    let (jobs, done) = guest_thread(guest, size);
    let mut blocking = Some(host);
    let mut asynch = None;
    if mode == Mode::Async {
        asynch = blocking.take().map(AsyncChannel::new);
    }
    let msg = vec![7u8; size];
    let mut group = c.benchmark_group("async/send");
    group.throughput(Throughput::Bytes(size as u64));
    group.bench_function(BenchmarkId::new(mode.name(), size), |b| {
        b.iter_custom(|n| {
            jobs.send((n, false)).unwrap();
            let start = Instant::now();
            if let Some(host) = &mut blocking {
                for _ in 0..n {
                    host.send(&msg, PATIENCE).unwrap();
                }
            }
            if let Some(host) = &mut asynch {
                rt.block_on(async {
                    for _ in 0..n {
                        host.send(&msg).await.unwrap();
                    }
                });
            }
            done.recv().unwrap();
            start.elapsed()
        })
    });
    group.finish();
}

fn recv(c: &mut Criterion, mode: Mode, bells: bool, size: usize) {
    let rt = runtime();
    let (host, guest, to_host) = pair(bells);
    let (jobs, done) = guest_thread(guest, size);
    let mut blocking = Some(host);
    let mut asynch = None;
    if mode == Mode::Async {
        let host = blocking.take().unwrap();
        asynch = Some(match to_host {
            Some(bell) => {
                let _guard = rt.enter();
                AsyncChannel::with_readiness(host, EventFdReadiness::new(bell).unwrap())
            }
            None => AsyncChannel::new(host),
        });
    }
    let mut buf = vec![0u8; size];
    let name = if bells {
        "async/recv-doorbell"
    } else {
        "async/recv-timer"
    };
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Bytes(size as u64));
    group.bench_function(BenchmarkId::new(mode.name(), size), |b| {
        b.iter_custom(|n| {
            jobs.send((n, true)).unwrap();
            let start = Instant::now();
            if let Some(host) = &mut blocking {
                for _ in 0..n {
                    host.recv(&mut buf, PATIENCE).unwrap();
                }
            }
            if let Some(host) = &mut asynch {
                rt.block_on(async {
                    for _ in 0..n {
                        host.recv(&mut buf).await.unwrap();
                    }
                });
            }
            done.recv().unwrap();
            start.elapsed()
        })
    });
    group.finish();
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(10)
        .configure_from_args();
    for size in SIZES {
        for mode in [Mode::Blocking, Mode::Async] {
            send(&mut c, mode, size);
        }
        for bells in [true, false] {
            for mode in [Mode::Blocking, Mode::Async] {
                recv(&mut c, mode, bells, size);
            }
        }
    }
    c.final_summary();
}
