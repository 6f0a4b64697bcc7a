//! `cargo xtask bench-report [--quick] [--no-iceoryx2] [--no-wait]`: runs
//! the benchmark runner (`ivchan-benches`' `bench-report-runner`, the same
//! measurement code as `cargo bench`) and writes `docs/BENCHMARKS.md` with
//! the machine, the method, tables of ivchan against each peer and limit,
//! the targets of issue 6, and SVG plots in `docs/bench/`.
//!
//! Before measuring it waits (up to ten minutes) for the 1-minute load
//! average to drop below 0.7, and it records the load before and after.
//! Hand-written analysis in `docs/bench/notes.md` is copied into the report.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::{exit, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{cargo, project_root, step};

const SIZES: &[u64] = &[8, 64, 256, 1024, 4096, 65536, 1 << 20];
const MAX_LOAD: f64 = 0.7;

/// Parsed runner output.
#[derive(Default)]
struct Results {
    info: BTreeMap<String, String>,
    /// (scope, name, size) -> messages/s.
    tput: BTreeMap<(String, String, u64), f64>,
    /// (name, wait, size) -> stats.
    lat: Vec<Lat>,
}

struct Lat {
    name: String,
    wait: String,
    size: u64,
    count: u64,
    mean: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    curve: Vec<(f64, f64)>,
}

impl Results {
    fn parse(text: &str) -> Self {
        let mut r = Self::default();
        for line in text.lines() {
            let f: Vec<&str> = line.split('\t').collect();
            let num = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
            let int = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
            match f.first().copied() {
                Some("info") if f.len() >= 3 => {
                    r.info.insert(f[1].to_owned(), f[2].to_owned());
                }
                Some("tput") if f.len() >= 6 => {
                    r.tput
                        .insert((f[1].to_owned(), f[2].to_owned(), int(3)), num(4));
                }
                Some("lat") if f.len() >= 10 => r.lat.push(Lat {
                    name: f[1].to_owned(),
                    wait: f[2].to_owned(),
                    size: int(3),
                    count: int(4),
                    mean: num(5),
                    p50: num(6),
                    p99: num(7),
                    p999: num(8),
                    max: num(9),
                    curve: Vec::new(),
                }),
                Some("curve") if f.len() >= 6 => {
                    let (name, wait, size) = (f[1], f[2], int(3));
                    if let Some(l) = r
                        .lat
                        .iter_mut()
                        .find(|l| l.name == name && l.wait == wait && l.size == size)
                    {
                        l.curve.push((num(4), num(5)));
                    }
                }
                _ => {}
            }
        }
        r
    }

    fn msgs(&self, scope: &str, name: &str, size: u64) -> Option<f64> {
        self.tput
            .get(&(scope.to_owned(), name.to_owned(), size))
            .copied()
    }

    fn names(&self, scope: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (s, n, _) in self.tput.keys() {
            if s == scope && !out.contains(n) {
                out.push(n.clone());
            }
        }
        // ivchan first, then the peers in a stable order.
        out.sort_by_key(|n| (!n.starts_with("ivchan"), n.clone()));
        out
    }

    fn lat(&self, name: &str, wait: &str, size: u64) -> Option<&Lat> {
        self.lat
            .iter()
            .find(|l| l.name == name && l.wait == wait && l.size == size)
    }
}

fn load1() -> f64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Waits until the 1-minute load is below [`MAX_LOAD`], up to ten minutes.
fn wait_for_quiet() -> String {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let l = load1();
        if l < MAX_LOAD {
            return format!("{l:.2} (below {MAX_LOAD})");
        }
        if Instant::now() >= deadline {
            eprintln!("xtask: load still {l:.2} after 10 minutes; measuring anyway");
            return format!("{l:.2} (still above {MAX_LOAD} after waiting 10 minutes)");
        }
        eprintln!("xtask: 1-minute load {l:.2} >= {MAX_LOAD}; waiting 30 s");
        std::thread::sleep(Duration::from_secs(30));
    }
}

fn machine() -> Vec<(String, String)> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown".into(), |(_, v)| v.trim().to_owned());
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let rustc = Command::new("rustc")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let caches = ["index2", "index3"]
        .iter()
        .filter_map(|i| {
            let base = format!("/sys/devices/system/cpu/cpu0/cache/{i}");
            let level = fs::read_to_string(format!("{base}/level")).ok()?;
            let size = fs::read_to_string(format!("{base}/size")).ok()?;
            Some(format!("L{} {}", level.trim(), size.trim()))
        })
        .collect::<Vec<_>>()
        .join(", ");
    let hyper = if cpuinfo.contains(" hypervisor") {
        "yes (virtual machine)"
    } else {
        "no"
    };
    vec![
        ("CPU".into(), model),
        ("cores (online)".into(), cores.to_string()),
        ("caches (per core / shared)".into(), caches),
        ("hypervisor".into(), hyper.into()),
        ("kernel".into(), kernel),
        ("rustc".into(), rustc),
    ]
}

fn run_runner(quick: bool, iceoryx2: bool, only: Option<&str>) -> Option<String> {
    let mut cmd = cargo();
    cmd.current_dir(project_root()).args([
        "run",
        "--release",
        "-q",
        "-p",
        "ivchan-benches",
        "--bin",
        "bench-report-runner",
    ]);
    if iceoryx2 {
        cmd.args(["--features", "iceoryx2"]);
    }
    cmd.arg("--");
    if quick {
        cmd.arg("--quick");
    }
    if let Some(o) = only {
        cmd.args(["--only", o]);
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    eprintln!("$ {cmd:?}");
    match cmd.output() {
        Ok(o) if o.status.success() => Some(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => {
            eprintln!("xtask: bench-report-runner failed with {}", o.status);
            None
        }
        Err(e) => {
            eprintln!("xtask: could not run cargo: {e}");
            None
        }
    }
}

/// `cargo xtask bench-report`.
pub fn run() {
    let args: Vec<String> = std::env::args().skip(2).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let no_wait = args.iter().any(|a| a == "--no-wait");
    let mut iceoryx2 = !args.iter().any(|a| a == "--no-iceoryx2");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str);
    let root = project_root();

    step("bench-report: build the runner");
    let mut build = cargo();
    build.current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "ivchan-benches",
        "--bin",
        "bench-report-runner",
    ]);
    if iceoryx2 {
        build.args(["--features", "iceoryx2"]);
    }
    if !matches!(build.status(), Ok(s) if s.success()) {
        if !iceoryx2 {
            eprintln!("xtask: the bench runner does not build");
            exit(1);
        }
        eprintln!("xtask: the runner does not build with iceoryx2; measuring without it");
        iceoryx2 = false;
    }

    step("bench-report: wait for a quiet machine");
    let load_before = if no_wait {
        format!("{} (not waited for: --no-wait)", load1())
    } else {
        wait_for_quiet()
    };
    let load_start = loadavg();
    step("bench-report: measure");
    let started = Instant::now();
    let Some(out) = run_runner(quick, iceoryx2, only) else {
        exit(1);
    };
    let took = started.elapsed();
    let load_end = loadavg();
    let results = Results::parse(&out);

    step("bench-report: write docs/BENCHMARKS.md and docs/bench/");
    let bench_dir = root.join("docs/bench");
    fs::create_dir_all(&bench_dir).unwrap_or_else(|e| fail(&bench_dir, e));
    write(&bench_dir.join("results.tsv"), &out);
    write(
        &bench_dir.join("throughput-xproc.svg"),
        &throughput_svg(&results, "xproc", "Cross-process streaming throughput"),
    );
    write(
        &bench_dir.join("throughput-xthread.svg"),
        &throughput_svg(&results, "xthread", "Cross-thread streaming throughput"),
    );
    for &size in &[64u64, 4096] {
        write(
            &bench_dir.join(format!("latency-{size}.svg")),
            &latency_svg(&results, size),
        );
    }
    let notes = fs::read_to_string(bench_dir.join("notes.md")).ok();
    let run = RunInfo {
        load_before,
        load_start,
        load_end,
        took,
        quick,
        iceoryx2,
    };
    let md = report(&results, &run, notes.as_deref());
    write(&root.join("docs/BENCHMARKS.md"), &md);
    eprintln!(
        "xtask: wrote docs/BENCHMARKS.md ({:.0} s of measuring)",
        took.as_secs_f64()
    );
}

fn fail(path: &Path, e: std::io::Error) -> ! {
    eprintln!("xtask: {}: {e}", path.display());
    exit(1)
}

fn write(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| fail(path, e));
}

struct RunInfo {
    load_before: String,
    load_start: String,
    load_end: String,
    took: Duration,
    quick: bool,
    iceoryx2: bool,
}

fn size_name(size: u64) -> String {
    match size {
        s if s >= 1 << 20 && s % (1 << 20) == 0 => format!("{} MiB", s >> 20),
        s if s >= 1024 && s % 1024 == 0 => format!("{} KiB", s >> 10),
        s => format!("{s} B"),
    }
}

fn si(v: f64) -> String {
    match v {
        v if v >= 1e9 => format!("{:.2} G", v / 1e9),
        v if v >= 1e6 => format!("{:.2} M", v / 1e6),
        v if v >= 1e3 => format!("{:.1} k", v / 1e3),
        v => format!("{v:.0} "),
    }
}

fn ns(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} ms", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1} µs", v / 1e3)
    } else {
        format!("{v:.0} ns")
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => {
            if a / b >= 10.0 {
                format!("{:.0}×", a / b)
            } else {
                format!("{:.2}×", a / b)
            }
        }
        _ => "–".into(),
    }
}

fn cell(msgs: Option<f64>, size: u64) -> String {
    match msgs {
        Some(m) => format!("{}msg/s, {}B/s", si(m), si(m * size as f64)),
        None => "–".into(),
    }
}

/// A throughput table (messages/s and bytes/s) for one scope, with the
/// memcpy limit in the last column.
fn rate_table(r: &Results, scope: &str, out: &mut String) {
    let names = r.names(scope);
    let _ = write!(out, "| size |");
    for n in &names {
        let _ = write!(out, " {n} |");
    }
    let _ = writeln!(out, " memcpy, one core (limit) |");
    let _ = writeln!(out, "|---:|{}---:|", "---:|".repeat(names.len()));
    for &size in SIZES {
        let _ = write!(out, "| {} |", size_name(size));
        for n in &names {
            let _ = write!(out, " {} |", cell(r.msgs(scope, n, size), size));
        }
        let _ = writeln!(out, " {} |", cell(r.msgs("limit", "memcpy", size), size));
    }
}

/// Ratios of each ivchan API against each peer and the memcpy limit.
fn ratio_table(r: &Results, scope: &str, out: &mut String) {
    let names = r.names(scope);
    let ours: Vec<&String> = names.iter().filter(|n| n.starts_with("ivchan")).collect();
    let peers: Vec<&String> = names.iter().filter(|n| !n.starts_with("ivchan")).collect();
    let mut cols: Vec<(String, &str, Option<&str>)> = Vec::new();
    for o in &ours {
        let short = o.trim_start_matches("ivchan-");
        for p in &peers {
            cols.push((format!("{short} / {p}"), o.as_str(), Some(p.as_str())));
        }
        cols.push((format!("{short} / memcpy"), o.as_str(), None));
    }
    let _ = write!(out, "| size |");
    for (c, _, _) in &cols {
        let _ = write!(out, " {c} |");
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "|---:|{}", "---:|".repeat(cols.len()));
    for &size in SIZES {
        let _ = write!(out, "| {} |", size_name(size));
        for (_, o, p) in &cols {
            let a = r.msgs(scope, o, size);
            let b = match p {
                Some(p) => r.msgs(scope, p, size),
                None => r.msgs("limit", "memcpy", size),
            };
            let _ = write!(out, " {} |", ratio(a, b));
        }
        let _ = writeln!(out);
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "**met**"
    } else {
        "**missed**"
    }
}

fn targets(r: &Results, out: &mut String) {
    let x = |n: &str, s: u64| r.msgs("xproc", n, s);
    let mem = |s: u64| r.msgs("limit", "memcpy", s);
    let _ = writeln!(out, "| target | measured | verdict |");
    let _ = writeln!(out, "|---|---|---|");
    for api in ["ivchan-copy", "ivchan-zero-copy"] {
        if let (Some(m), Some(u)) = (x(api, 64), x("unix-socket", 64)) {
            let _ = writeln!(
                out,
                "| cross-process 64 B, one commit per message ({api}): ≥ 50 M msg/s | {} msg/s ({:.0}% of target) | {} |",
                si(m),
                m / 50e6 * 100.0,
                verdict(m >= 50e6)
            );
            let _ = writeln!(
                out,
                "| … and ≥ 50× the Unix socket ({api}) | {:.1}× | {} |",
                m / u,
                verdict(m / u >= 50.0)
            );
        }
    }
    for size in [65536u64, 1 << 20] {
        for (api, want) in [("ivchan-copy", 0.30), ("ivchan-zero-copy", 0.50)] {
            if let (Some(m), Some(l)) = (x(api, size), mem(size)) {
                let f = m / l;
                let _ = writeln!(
                    out,
                    "| {} streaming, {api}: ≥ {:.0}% of one-core memcpy | {:.0}% ({}B/s vs {}B/s) | {} |",
                    size_name(size),
                    want * 100.0,
                    f * 100.0,
                    si(m * size as f64),
                    si(l * size as f64),
                    verdict(f >= want)
                );
            }
        }
    }
    for api in ["ivchan-copy", "ivchan-zero-copy"] {
        if let (Some(m), Some(u)) = (x(api, 65536), x("unix-socket", 65536)) {
            let _ = writeln!(
                out,
                "| 64 KiB, {api}: ≥ 5× the Unix socket | {:.1}× | {} |",
                m / u,
                verdict(m / u >= 5.0)
            );
        }
    }
    if let Some(cl) = r.lat("cache-line", "busy-poll", 8) {
        for api in ["ivchan-copy", "ivchan-zero-copy"] {
            if let Some(l) = r.lat(api, "busy-poll", 64) {
                let _ = writeln!(
                    out,
                    "| round trip 64 B busy-poll, {api}: p50 ≤ 2× cache-line round trip (p50 {}) | p50 {} = {:.2}× | {} |",
                    ns(cl.p50),
                    ns(l.p50),
                    l.p50 / cl.p50,
                    verdict(l.p50 <= 2.0 * cl.p50)
                );
                let _ = writeln!(
                    out,
                    "| … and p99.9 ≤ 10× it | p99.9 {} = {:.1}× | {} |",
                    ns(l.p999),
                    l.p999 / cl.p50,
                    verdict(l.p999 <= 10.0 * cl.p50)
                );
            }
        }
    }
    if r.names("xproc").iter().any(|n| n == "iceoryx2") {
        for api in ["ivchan-copy", "ivchan-zero-copy"] {
            let worst = SIZES
                .iter()
                .filter_map(|&s| Some((s, x(api, s)? / x("iceoryx2", s)?)))
                .min_by(|a, b| a.1.total_cmp(&b.1));
            if let Some((s, f)) = worst {
                let _ = writeln!(
                    out,
                    "| cross-process, {api}: no worse than iceoryx2 at any size | worst {:.1}× (at {}) | {} |",
                    f,
                    size_name(s),
                    verdict(f >= 1.0)
                );
            }
        }
    } else {
        let _ = writeln!(
            out,
            "| cross-process: no worse than iceoryx2 | iceoryx2 not measured in this run | – |"
        );
    }
}

fn report(r: &Results, run: &RunInfo, notes: Option<&str>) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# ivchan benchmarks\n");
    let _ = writeln!(
        o,
        "Generated by `cargo xtask bench-report`{} — do not edit by hand; \
         the analysis at the end comes from `docs/bench/notes.md`. Raw numbers: \
         [`bench/results.tsv`](bench/results.tsv).\n",
        if run.quick {
            " --quick (short runs: indicative only)"
        } else {
            ""
        }
    );
    let _ = writeln!(o, "## Machine\n");
    let _ = writeln!(o, "| | |\n|---|---|");
    for (k, v) in machine() {
        let _ = writeln!(o, "| {k} | {v} |");
    }
    let _ = writeln!(
        o,
        "| load average | 1-min load before measuring: {}; at start `{}`, at end `{}` |",
        run.load_before, run.load_start, run.load_end
    );
    let _ = writeln!(o, "| measuring time | {:.0} s |", run.took.as_secs_f64());
    let _ = writeln!(o);
    let _ = writeln!(o, "## Method\n");
    let _ = writeln!(
        o,
        "{}",
        METHOD.replace(
            "{ICEORYX2}",
            if run.iceoryx2 {
                "iceoryx2 0.10 (publish-subscribe of `[u8]` slices: loan, copy in, send; the \
                 subscriber buffers 32 samples and the publisher retries until delivered)"
            } else {
                "iceoryx2 was **not** measured in this run (built without the `iceoryx2` feature)"
            }
        )
    );
    let _ = writeln!(o, "## Targets (issue 6)\n");
    targets(r, &mut o);
    let _ = writeln!(o);
    let _ = writeln!(o, "## Cross-process throughput\n");
    let _ = writeln!(
        o,
        "![cross-process throughput](bench/throughput-xproc.svg)\n\nOne message per \
         send and one commit (publish) per message; payload bytes per second.\n"
    );
    rate_table(r, "xproc", &mut o);
    let _ = writeln!(
        o,
        "\nRatios (ivchan / peer, ivchan / limit), messages per second:\n"
    );
    ratio_table(r, "xproc", &mut o);
    let _ = writeln!(o, "\n## Cross-thread throughput\n");
    let _ = writeln!(
        o,
        "![cross-thread throughput](bench/throughput-xthread.svg)\n"
    );
    rate_table(r, "xthread", &mut o);
    let _ = writeln!(o, "\nRatios:\n");
    ratio_table(r, "xthread", &mut o);
    let _ = writeln!(o, "\n## Round-trip latency\n");
    let _ = writeln!(
        o,
        "![latency, 64 B](bench/latency-64.svg)\n![latency, 4 KiB](bench/latency-4096.svg)\n"
    );
    let cl = r.lat("cache-line", "busy-poll", 8).map(|l| l.p50);
    let _ = writeln!(
        o,
        "| transport | wait | size | round trips | mean | p50 | p99 | p99.9 | max | p50 / cache line | p99.9 / cache line |"
    );
    let _ = writeln!(o, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut lats: Vec<&Lat> = r.lat.iter().collect();
    lats.sort_by_key(|l| {
        (
            l.name != "cache-line",
            l.size,
            !l.name.starts_with("ivchan"),
            l.name.clone(),
            l.wait.clone(),
        )
    });
    for l in lats {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            l.name,
            l.wait,
            size_name(l.size),
            l.count,
            ns(l.mean),
            ns(l.p50),
            ns(l.p99),
            ns(l.p999),
            ns(l.max),
            ratio(Some(l.p50), cl),
            ratio(Some(l.p999), cl),
        );
    }
    let _ = writeln!(o);
    if let Some(n) = notes {
        let _ = writeln!(o, "## Analysis\n");
        let _ = writeln!(o, "{}", n.trim_end());
        let _ = writeln!(o);
    }
    o
}

const METHOD: &str = "\
- `cargo xtask bench-report` runs `bench-report-runner` (package `ivchan-benches`), \
which shares its measurement code (`benches/src/`) with the criterion benches \
(`cargo bench -p ivchan-benches`). Everything below comes from one run on one machine.
- **Pinning.** The producer (or pinging side) runs on core 0, the consumer (or echoing \
side) on core 1, for every transport and limit.
- **Throughput** streams fixed-size messages one way. A point is the median of 5 batches of \
about 150 ms each, after a warm-up batch. Every transport gives message semantics: the \
producer waits until a whole message fits and publishes it at once; the consumer waits until \
a whole message is there. Both sides wait with the default strategy below (socket-like \
transports block in the kernel; iceoryx2's publisher retries on its own).
  - *ivchan copy*: `send` / `recv_into` (the payload is copied in and copied out). \
*ivchan zero-copy*: `reserve` + copy into the grant + `commit`; `peek` + read one byte of every \
64-byte line in place + `release`. One commit (Release store of `tail`) per message in both.
  - *Cross-thread*: ivchan over a heap region (same code path as a mapped file); \
rtrb 0.4 (`push_entire_slice` / `pop_entire_slice` on a `RingBuffer<u8>`), ringbuf 0.6 \
(`push_slice` / `pop_slice` once `vacant_len` / `occupied_len` allow a whole message), crossbeam \
`ArrayQueue<Box<[u8]>>` (filled buffers one way, empty ones back; copy in and copy out). Every \
queue holds 4 MiB of data.
  - *Cross-process*: the runner re-executes itself as the child. ivchan runs over a real \
`/dev/shm/fg_<uuid>` file created by `ivchan-host` (16 MiB region, 4 MiB rings); the child maps \
it with `memmap2`, as a guest maps BAR2. Peers: a Unix `socketpair(SOCK_STREAM)`, two pipes, \
TCP over 127.0.0.1 with `TCP_NODELAY` (one `write_all` / `read_exact` per message), and \
{ICEORYX2}. A batch is timed from the first send to the child's `done` on its control pipe.
- **Latency** is a ping-pong between the two processes: the parent sends a message, the child \
echoes it, and each round trip is timed with `Instant::now()` into an HdrHistogram (3 significant \
digits) for about 1.5 s after a warm-up. ivchan and iceoryx2 are measured busy-polling and with the \
default wait strategy; the socket-like peers block in the kernel.
- **Wait strategies** are the channel layer's own (`ivchan_protocol::WaitStrategy`, through \
`benches/src/wait.rs`). *busy-poll*: re-check after one pause hint. *backoff* (`adaptive()`, the \
default): 200 checks spaced by 1, 2, 4 … 32 pause hints, then 50 yields, then sleeps from 10 µs \
doubling to 1 ms. Every in-process queue and both ivchan APIs use the same waiter.
- **Limits.** *memcpy*: `copy_from_slice` of the message size between two hot buffers on core 0. \
*Cache-line round trip*: one 128-byte-aligned `AtomicU64` bounced between cores 0 and 1, each \
round trip timed the same way as the transports' (so both include the ~20 ns timer cost).
- Ratios are ivchan / peer (or / limit) in messages per second at the same size; above 1 means \
ivchan is faster.
";

// ---- SVG ----

const PALETTE: &[&str] = &[
    "#d62728", "#ff7f0e", "#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#17becf", "#bcbd22",
];

struct Series {
    name: String,
    points: Vec<(f64, f64)>,
    dashed: bool,
}

/// A line chart with a linear x axis (already transformed) and a log10 y
/// axis.
fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    x_ticks: &[(f64, String)],
    series: &[Series],
    y_fmt: fn(f64) -> String,
) -> String {
    let (w, h) = (860.0, 520.0);
    let (left, right, top, bottom) = (80.0, 230.0, 40.0, 60.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let xs: Vec<f64> = x_ticks.iter().map(|t| t.0).collect();
    let (xmin, xmax) = (
        xs.iter().copied().fold(f64::INFINITY, f64::min),
        xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    let ys: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|&y| y > 0.0)
        .collect();
    let ymin = ys.iter().copied().fold(f64::INFINITY, f64::min).max(1e-9);
    let ymax = ys
        .iter()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max)
        .max(ymin * 10.0);
    let (lo, hi) = (ymin.log10().floor(), ymax.log10().ceil());
    let px = |x: f64| left + (x - xmin) / (xmax - xmin).max(1e-9) * pw;
    let py = |y: f64| top + (hi - y.max(1e-12).log10()) / (hi - lo).max(1e-9) * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
        left + pw / 2.0,
        esc(title)
    );
    // Grid and y ticks at every decade.
    #[allow(clippy::cast_possible_truncation)]
    let (lo_i, hi_i) = (lo as i32, hi as i32);
    for d in lo_i..=hi_i {
        let y = py(10f64.powi(d));
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            left + pw,
            left - 6.0,
            y + 4.0,
            esc(&y_fmt(10f64.powi(d)))
        );
    }
    for (x, label) in x_ticks {
        let xp = px(*x);
        let _ = writeln!(
            s,
            r##"<line x1="{xp:.1}" y1="{top}" x2="{xp:.1}" y2="{:.1}" stroke="#eee"/><text x="{xp:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            top + ph,
            top + ph + 18.0,
            esc(label)
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        left + pw / 2.0,
        h - 15.0,
        esc(x_label)
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        top + ph / 2.0,
        esc(y_label)
    );
    for (i, ser) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let dash = if ser.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let pts: Vec<String> = ser
            .points
            .iter()
            .filter(|p| p.1 > 0.0)
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"#,
            pts.join(" ")
        );
        for p in &pts {
            let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(s, r#"<circle cx="{x}" cy="{y}" r="3" fill="{color}"/>"#);
        }
        #[allow(clippy::cast_precision_loss)]
        let ly = top + 10.0 + i as f64 * 20.0;
        let lx = left + pw + 15.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
            lx + 24.0,
            lx + 30.0,
            ly + 4.0,
            esc(&ser.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn esc(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn throughput_svg(r: &Results, scope: &str, title: &str) -> String {
    let mut series: Vec<Series> = r
        .names(scope)
        .into_iter()
        .map(|n| Series {
            points: SIZES
                .iter()
                .filter_map(|&s| Some(((s as f64).log2(), r.msgs(scope, &n, s)? * s as f64)))
                .collect(),
            name: n,
            dashed: false,
        })
        .collect();
    series.push(Series {
        name: "memcpy, one core".into(),
        points: SIZES
            .iter()
            .filter_map(|&s| Some(((s as f64).log2(), r.msgs("limit", "memcpy", s)? * s as f64)))
            .collect(),
        dashed: true,
    });
    let ticks: Vec<(f64, String)> = SIZES
        .iter()
        .map(|&s| ((s as f64).log2(), size_name(s)))
        .collect();
    line_chart(
        title,
        "message size",
        "payload bytes per second",
        &ticks,
        &series,
        |v| format!("{}B/s", si(v)),
    )
}

/// Percentile to the "nines" axis: 0 → 0, 90 → 1, 99 → 2, 99.9 → 3 …
fn nines(p: f64) -> f64 {
    let rest = (100.0 - p) / 100.0;
    if rest <= 1e-5 {
        5.0
    } else {
        -rest.log10()
    }
}

fn latency_svg(r: &Results, size: u64) -> String {
    let mut series: Vec<Series> = r
        .lat
        .iter()
        .filter(|l| l.size == size)
        .map(|l| Series {
            name: format!("{} ({})", l.name, l.wait),
            points: l
                .curve
                .iter()
                .filter(|(p, _)| *p < 100.0)
                .map(|&(p, v)| (nines(p), v))
                .collect(),
            dashed: false,
        })
        .collect();
    if let Some(cl) = r.lat("cache-line", "busy-poll", 8) {
        series.push(Series {
            name: "cache-line round trip".into(),
            points: cl
                .curve
                .iter()
                .filter(|(p, _)| *p < 100.0)
                .map(|&(p, v)| (nines(p), v))
                .collect(),
            dashed: true,
        });
    }
    let ticks: Vec<(f64, String)> = [0.0, 90.0, 99.0, 99.9, 99.99]
        .iter()
        .map(|&p| (nines(p), format!("p{p}")))
        .collect();
    line_chart(
        &format!("Round-trip latency distribution, {}", size_name(size)),
        "percentile",
        "round trip",
        &ticks,
        &series,
        ns,
    )
}
