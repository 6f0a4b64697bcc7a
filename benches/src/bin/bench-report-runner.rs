//! Measures everything `cargo xtask bench-report` reports and prints it as
//! tab-separated lines on stdout (progress goes to stderr):
//!
//! ```text
//! info   KEY     VALUE
//! round  ROUND   CACHE_LINE_P50_NS  LOAD1
//! tput   SCOPE   NAME  SIZE  MSGS_PER_S  BYTES_PER_S  ROUND   (SCOPE: xthread, xproc, limit)
//! lat    NAME    WAIT  SIZE  COUNT  MEAN_NS  P50  P99  P99_9  MAX
//! curve  NAME    WAIT  SIZE  PERCENTILE  NS
//! count  SCOPE   NAME  SIZE  SENT  FULL/MSG  HEAD_RELOADS/MSG  RECEIVED  EMPTY/MSG  TAIL_RELOADS/MSG
//! ```
//!
//! (`count` records only with `IVCHAN_BENCH_COUNTERS` set.)
//!
//! The `info` records come first and declare what was measured with, so
//! that the report takes these from here rather than repeating them:
//! `sizes` and `latency_sizes` (lists, `[8, 64, …]`), `region_size` and
//! `ring_size` (bytes), `per_run_ms`, `reps`, `rounds`, `latency_ms`,
//! `iceoryx2` (`true`/`false`); later, `failed:NAME` for a transport that
//! could not start.
//!
//! Throughput is measured in rounds, interleaved: each round measures the
//! cache-line round trip and the load, then every size across every
//! transport, queue and limit before the next size, so a noisy minute hits
//! all of them alike; every point gets one `tput` record per round, and the
//! report shows their median, minimum and maximum.
//!
//! Usage: `bench-report-runner [--quick] [--rounds N] [--only SUBSTRING] [--size BYTES]`.
//! The same measurement code runs under criterion in `cargo bench`.

use std::time::Duration;

use ivchan_benches::ivchan::Counters;
use ivchan_benches::measure::{rate, LatencyStats};
use ivchan_benches::process::{child_main, Session, Transport};
use ivchan_benches::thread::{Queue, ThreadBench};
use ivchan_benches::wait::WaitStrategy;
use ivchan_benches::{limits, LATENCY_SIZES, REGION_SIZE, RING_SIZE, SIZES};

struct Opts {
    per_run: Duration,
    reps: usize,
    rounds: usize,
    latency_time: Duration,
    only: Option<String>,
    sizes: Vec<usize>,
}

impl Opts {
    fn wants(&self, name: &str) -> bool {
        self.only.as_deref().is_none_or(|o| name.contains(o))
    }
}

fn tput(scope: &str, name: &str, size: usize, msgs: f64, round: usize) {
    println!(
        "tput\t{scope}\t{name}\t{size}\t{msgs:.1}\t{:.1}\t{round}",
        msgs * size as f64
    );
    eprintln!(
        "r{round} {scope:8} {name:22} {size:>8} B {:>12.3} M msg/s {:>9.3} GB/s",
        msgs / 1e6,
        msgs * size as f64 / 1e9
    );
}

/// The 1-minute load average, as `/proc/loadavg` says.
fn load1() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

/// With `IVCHAN_BENCH_COUNTERS` set: how often each ivchan side waited, per
/// message, over the point just measured (`c`: both sides' counts, this
/// process's and, cross-process, the child's).
fn counters(scope: &str, name: &str, size: usize, c: Counters) {
    if std::env::var_os("IVCHAN_BENCH_COUNTERS").is_none() || c.sent == 0 {
        return;
    }
    let per = |n: u64, of: u64| n as f64 / of.max(1) as f64;
    println!(
        "count\t{scope}\t{name}\t{size}\t{}\t{:.3}\t{:.3}\t{}\t{:.3}\t{:.3}",
        c.sent,
        per(c.full, c.sent),
        per(c.head_reloads, c.sent),
        c.received,
        per(c.empty, c.received),
        per(c.tail_reloads, c.received),
    );
    eprintln!(
        "counters {scope:8} {name:22} {size:>8} B  full/msg {:.3}  head reloads/msg {:.3}  empty/msg {:.3}  tail reloads/msg {:.3}",
        per(c.full, c.sent),
        per(c.head_reloads, c.sent),
        per(c.empty, c.received),
        per(c.tail_reloads, c.received),
    );
}

fn latency(name: &str, wait: &str, size: usize, s: &LatencyStats) {
    println!(
        "lat\t{name}\t{wait}\t{size}\t{}\t{:.1}\t{}\t{}\t{}\t{}",
        s.count, s.mean, s.p50, s.p99, s.p999, s.max
    );
    for (p, v) in &s.curve {
        println!("curve\t{name}\t{wait}\t{size}\t{p}\t{v}");
    }
    eprintln!("latency  {name:22} {wait:9} {size:>6} B {s}");
}

/// Runs `batch(count)` for about `time` in total (after a sizing probe) and
/// summarises the round trips it recorded.
fn timed_latency(
    time: Duration,
    mut batch: impl FnMut(u64) -> (Duration, hdrhistogram::Histogram<u64>),
) -> LatencyStats {
    let (d, _) = batch(1000);
    let per = d.as_secs_f64() / 1000.0;
    // A round-trip count from a time budget.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let count = (time.as_secs_f64() / per).clamp(1000.0, 5e6) as u64;
    let (_, hist) = batch(count);
    LatencyStats::of(&hist)
}

fn main() {
    child_main();
    let mut args = std::env::args().skip(1);
    let mut opts = Opts {
        per_run: Duration::from_millis(150),
        // Repetition comes from the rounds; within a round, the median of
        // three runs smooths the odd scheduler hiccup.
        reps: 3,
        rounds: 5,
        latency_time: Duration::from_millis(1500),
        only: None,
        sizes: SIZES.to_vec(),
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => {
                opts.per_run = Duration::from_millis(30);
                opts.reps = 1;
                opts.rounds = 2;
                opts.latency_time = Duration::from_millis(200);
            }
            "--rounds" => {
                opts.rounds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|&n| n > 0)
                    .unwrap_or_else(|| {
                        eprintln!("--rounds needs a positive number");
                        std::process::exit(2);
                    });
            }
            "--only" => opts.only = args.next(),
            "--size" => {
                opts.sizes = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .map_or_else(|| SIZES.to_vec(), |s| vec![s]);
            }
            other => {
                eprintln!(
                    "usage: bench-report-runner [--quick] [--rounds N] [--only SUBSTRING] [--size BYTES] (got {other:?})"
                );
                std::process::exit(2);
            }
        }
    }
    if std::env::var_os("IVCHAN_BENCH_COUNTERS").is_some() {
        ivchan_benches::ivchan::Counters::enable();
    }
    println!("info\tsizes\t{SIZES:?}");
    println!("info\tlatency_sizes\t{LATENCY_SIZES:?}");
    println!("info\tregion_size\t{REGION_SIZE}");
    println!("info\tring_size\t{RING_SIZE}");
    println!("info\tper_run_ms\t{}", opts.per_run.as_millis());
    println!("info\treps\t{}", opts.reps);
    println!("info\trounds\t{}", opts.rounds);
    println!("info\tlatency_ms\t{}", opts.latency_time.as_millis());
    println!("info\ticeoryx2\t{}", cfg!(feature = "iceoryx2"));

    // Sessions stay open across rounds; a transport that cannot start is
    // reported once and left out.
    let mut sessions = Vec::new();
    for &transport in Transport::ALL {
        let name = transport.name();
        let want_tput = opts.wants(&format!("xproc/{name}"));
        // A batched round trip would be a batch of one: streaming only.
        let want_lat = !transport.batched() && opts.wants(&format!("rtt/{name}"));
        if !want_tput && !want_lat {
            continue;
        }
        match Session::new(transport) {
            Ok(s) => sessions.push((s, want_tput, want_lat)),
            Err(e) => {
                eprintln!("{name}: could not start: {e}");
                println!("info\tfailed:{name}\t{e}");
            }
        }
    }
    for round in 0..opts.rounds {
        // The limit every figure of this round stands beside.
        let rtt = timed_latency(opts.latency_time / 4, limits::cache_line_round_trips);
        println!("round\t{round}\t{}\t{}", rtt.p50, load1());
        eprintln!(
            "round {round}: cache-line round trip p50 {} ns, load {}",
            rtt.p50,
            load1()
        );
        for &size in &opts.sizes {
            if opts.wants("limit") {
                let msgs = rate(|n| limits::memcpy(size, n), opts.per_run, opts.reps);
                tput("limit", "memcpy", size, msgs, round);
            }
            for &queue in Queue::ALL {
                if !opts.wants(&format!("xthread/{}", queue.name())) {
                    continue;
                }
                let mut bench = ThreadBench::new(queue, size);
                Counters::take();
                let msgs = rate(|n| bench.run(n), opts.per_run, opts.reps);
                tput("xthread", queue.name(), size, msgs, round);
                counters("xthread", queue.name(), size, Counters::take());
            }
            for (session, want_tput, _) in &mut sessions {
                if *want_tput {
                    let name = session.transport().name();
                    Counters::take();
                    session.take_child_counters();
                    let msgs = rate(|n| session.stream(size, n), opts.per_run, opts.reps);
                    tput("xproc", name, size, msgs, round);
                    let child = session.take_child_counters();
                    let ours = Counters::take();
                    counters(
                        "xproc",
                        name,
                        size,
                        Counters {
                            received: child.received,
                            empty: child.empty,
                            tail_reloads: child.tail_reloads,
                            ..ours
                        },
                    );
                }
            }
        }
    }
    if opts.wants("limit") {
        let s = timed_latency(opts.latency_time, limits::cache_line_round_trips);
        latency("cache-line", "busy-poll", 8, &s);
        for &size in LATENCY_SIZES {
            let s = timed_latency(opts.latency_time, |n| {
                limits::plain_ring_round_trips(size, n)
            });
            latency("plain-ring", "busy-poll", size, &s);
        }
    }
    for (session, _, want_lat) in &mut sessions {
        if !*want_lat {
            continue;
        }
        let transport = session.transport();
        let name = transport.name();
        for &size in LATENCY_SIZES {
            let ws = WaitStrategy::for_transport(transport);
            if ws.is_empty() {
                // Blocking in the kernel: the wait strategy is moot.
                let s = timed_latency(opts.latency_time, |n| {
                    session.ping_pong(size, n, WaitStrategy::BusyPoll)
                });
                latency(name, "blocking", size, &s);
            }
            for &wait in ws {
                let s = timed_latency(opts.latency_time, |n| session.ping_pong(size, n, wait));
                latency(name, wait.name(), size, &s);
            }
        }
    }
}
