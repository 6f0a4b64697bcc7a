//! `docs/BENCHMARKS.md`: the machine, the method, the targets and tables of
//! ivchan against each peer and limit.

use std::fmt::Write as _;

use ivchan_protocol::naming::{REGION_DIR, REGION_PREFIX};

use super::results::{Lat, Results, CACHE_LINE};
use super::svg::{latency_file, throughput_file};
use super::targets::{evaluate, Target};
use super::units::{millis, ns, ratio, si, size_name};
use super::RunInfo;

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
    for &size in &r.sizes {
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
    for &size in &r.sizes {
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

/// Each ivchan point's median, minimum and maximum over the interleaved
/// rounds, with the spread (max / min), and each round's limit and load.
fn spread_table(r: &Results, scope: &str, out: &mut String) {
    let ours: Vec<String> = r
        .names(scope)
        .into_iter()
        .filter(|n| n.starts_with("ivchan"))
        .collect();
    let _ = write!(out, "| size |");
    for n in &ours {
        let _ = write!(out, " {n}: median (min – max) | spread |");
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "|---:|{}", "---:|---:|".repeat(ours.len()));
    for &size in &r.sizes {
        let _ = write!(out, "| {} |", size_name(size));
        for n in &ours {
            match r.spread(scope, n, size) {
                Some(s) => {
                    let _ = write!(
                        out,
                        " {}msg/s ({} – {}) | {:.2}× |",
                        si(s.median),
                        si(s.min),
                        si(s.max),
                        s.max / s.min.max(f64::MIN_POSITIVE)
                    );
                }
                None => {
                    let _ = write!(out, " – | – |");
                }
            }
        }
        let _ = writeln!(out);
    }
}

fn rounds_table(r: &Results, out: &mut String) {
    let _ = writeln!(
        out,
        "| run | round | cache-line round trip, p50 | 1-min load |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|");
    for round in &r.rounds {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            round.run,
            round.round,
            ns(round.cache_line_p50),
            round.load
        );
    }
}

/// The targets with one column per whole run, and whether every run met
/// each: a target met only in the best run is not met.
fn targets_table(runs: &[Results], out: &mut String) {
    let per_run: Vec<Vec<Target>> = runs.iter().map(evaluate).collect();
    let _ = write!(out, "| target |");
    for i in 1..=runs.len() {
        let _ = write!(out, " run {i} |");
    }
    let _ = writeln!(out, " in every run |");
    let _ = writeln!(out, "|---|{}---|", "---|".repeat(runs.len()));
    let Some(first) = per_run.first() else {
        return;
    };
    for (row, target) in first.iter().enumerate() {
        let _ = write!(out, "| {} |", target.what);
        let mut all = Some(true);
        for run in &per_run {
            let t = &run[row];
            let mark = match t.met {
                Some(true) => "met",
                Some(false) => "**missed**",
                None => "–",
            };
            let _ = write!(out, " {} ({mark}) |", t.measured);
            all = match (all, t.met) {
                (Some(a), Some(m)) => Some(a && m),
                _ => None,
            };
        }
        let verdict = match all {
            Some(true) => "**met**",
            Some(false) => "**missed**",
            None => "not measured in every run",
        };
        let _ = writeln!(out, " {verdict} |");
    }
}

/// The report: `r` pools every whole run's samples, `runs` holds each run on
/// its own (the targets are judged per run).
pub(super) fn report(r: &Results, runs: &[Results], run: &RunInfo, notes: Option<&str>) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# ivchan benchmarks\n");
    let _ = writeln!(
        o,
        "Generated by `cargo xtask bench-report`{} — do not edit by hand; \
         the analysis at the end comes from `docs/bench/notes.md` (after editing it, \
         `cargo xtask bench-report --render` writes this file again from the raw numbers). \
         Raw numbers: [`bench/results.tsv`](bench/results.tsv).\n",
        if run.quick {
            " --quick (short runs: indicative only)"
        } else {
            ""
        }
    );
    let _ = writeln!(o, "## Machine\n");
    let _ = writeln!(o, "| | |\n|---|---|");
    for (k, v) in &run.machine {
        let _ = writeln!(o, "| {k} | {v} |");
    }
    for (i, w) in run.runs.iter().enumerate() {
        let label = if run.runs.len() > 1 {
            format!("run {}: ", i + 1)
        } else {
            String::new()
        };
        let _ = writeln!(
            o,
            "| {label}load average | 1-min load before measuring: {}; at start `{}`, at end `{}` |",
            w.load_before, w.load_start, w.load_end
        );
        let _ = writeln!(
            o,
            "| {label}measuring time | {:.0} s |",
            w.took.as_secs_f64()
        );
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "## Method\n");
    let _ = writeln!(o, "{}", method(r, run));
    let _ = writeln!(o, "## Targets (issue 15)\n");
    let _ = writeln!(
        o,
        "Judged on each whole run's own medians and its own cache-line round \
         trip; {} run(s), all shown.\n",
        runs.len()
    );
    targets_table(runs, &mut o);
    let _ = writeln!(o);
    let _ = writeln!(o, "## Cross-process throughput\n");
    let _ = writeln!(
        o,
        "![cross-process throughput](bench/{})\n\nOne commit (publish) per \
         message, except *ivchan-batched* (one publish per 16 KiB, one release \
         per look); payload bytes per second.\n",
        throughput_file("xproc")
    );
    rate_table(r, "xproc", &mut o);
    let _ = writeln!(
        o,
        "\nRatios (ivchan / peer, ivchan / limit), messages per second:\n"
    );
    ratio_table(r, "xproc", &mut o);
    if !r.rounds.is_empty() {
        let _ = writeln!(
            o,
            "\n### Spread over {} interleaved rounds\n\nEvery round measures the \
             cache-line round trip and the load, then each size across every \
             transport before the next size, so a noisy minute hits all of them \
             alike. The tables above show each point's median over the rounds of \
             every run.\n",
            r.rounds.len()
        );
        spread_table(r, "xproc", &mut o);
        let _ = writeln!(o);
        rounds_table(r, &mut o);
    }
    let _ = writeln!(o, "\n## Cross-thread throughput\n");
    let _ = writeln!(
        o,
        "![cross-thread throughput](bench/{})\n",
        throughput_file("xthread")
    );
    rate_table(r, "xthread", &mut o);
    let _ = writeln!(o, "\nRatios:\n");
    ratio_table(r, "xthread", &mut o);
    let _ = writeln!(o, "\n## Round-trip latency\n");
    for &size in &r.latency_sizes {
        let _ = writeln!(
            o,
            "![latency, {}](bench/{})",
            size_name(size),
            latency_file(size)
        );
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "Each run's rows are compared with that run's cache-line round trip.\n"
    );
    let _ = writeln!(
        o,
        "| run | transport | wait | size | round trips | mean | p50 | p99 | p99.9 | max | p50 / cache line | p99.9 / cache line |"
    );
    let _ = writeln!(
        o,
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let mut lats: Vec<&Lat> = r.lat.iter().collect();
    lats.sort_by_key(|l| {
        (
            l.run,
            l.name != CACHE_LINE,
            l.size,
            !l.name.starts_with("ivchan"),
            l.name.clone(),
            l.wait.clone(),
        )
    });
    for l in lats {
        let cl = r.cache_line_of(l.run).map(|c| c.p50);
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            l.run,
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

/// The method section: [`METHOD`] with the run's own parameters, as the
/// runner declared them in its `info` records, filled in.
fn method(r: &Results, run: &RunInfo) -> String {
    let unknown = || "?".to_owned();
    let size = |key| r.info_u64(key).map_or_else(unknown, size_name);
    let time = |key| r.info_u64(key).map_or_else(unknown, millis);
    let iceoryx2 = if run.iceoryx2 {
        "iceoryx2 0.10 (publish-subscribe of `[u8]` slices: loan, copy in, send; the \
         subscriber buffers 32 samples and the publisher retries until delivered)"
    } else {
        "iceoryx2 was **not** measured in this run (built without the `iceoryx2` feature)"
    };
    METHOD
        .replace(
            "{REPS}",
            &r.info_u64("reps").map_or_else(unknown, |n| n.to_string()),
        )
        .replace(
            "{ROUNDS}",
            &r.info_u64("rounds")
                .map_or_else(|| "1".to_owned(), |n| n.to_string()),
        )
        .replace("{PER_RUN}", &time("per_run_ms"))
        .replace("{LATENCY_TIME}", &time("latency_ms"))
        .replace("{RING_SIZE}", &size("ring_size"))
        .replace("{REGION_SIZE}", &size("region_size"))
        .replace(
            "{REGION_FILE}",
            &format!("{REGION_DIR}/{REGION_PREFIX}<uuid>"),
        )
        .replace("{ICEORYX2}", iceoryx2)
        .replace("{RUNS}", &run.runs.len().to_string())
}

/// How the report describes the measurements; `{…}` are filled in by
/// [`method`].
const METHOD: &str = "\
- `cargo xtask bench-report` runs `bench-report-runner` (package `ivchan-benches`), \
which shares its measurement code (`benches/src/`) with the criterion benches \
(`cargo bench -p ivchan-benches`). Everything below comes from {RUNS} consecutive whole run(s) \
on one machine (`--repeat`), all of them shown.
- **Pinning.** The producer (or pinging side) runs on core 0, the consumer (or echoing \
side) on core 1, for every transport and limit.
- **Throughput** streams fixed-size messages one way, in {ROUNDS} interleaved rounds (each \
round: the cache-line round trip and the load, then every size across every transport). In a \
round a point is the median of {REPS} batches of about {PER_RUN} each, after a warm-up batch; \
the tables give the median over the rounds, and the spread table their minimum and maximum. Every transport gives message semantics: the \
producer waits until a whole message fits and publishes it at once; the consumer waits until \
a whole message is there. Both sides wait with the default strategy below (socket-like \
transports block in the kernel; iceoryx2's publisher retries on its own).
  - *ivchan copy*: `send` / `recv_into` (the payload is copied in and copied out). \
*ivchan zero-copy*: `reserve` + copy into the grant + `commit`; `peek` + read one byte of every \
64-byte line in place, last line first below 512 KiB and first line first from it \
(`READ_FORWARD_FROM`, the order ivchan's copies out of the ring read in; iceoryx2's receiver \
does the same) + `release`. One commit (Release store of `tail`) per message in both. \
*ivchan batched* (cross-process only): the copy API's bytes, but staged and published once per \
16 KiB (`PUBLISH_EVERY`: 256 messages of 64 B, every message from 16 KiB up), as one long \
`Channel::send_batch` call does, and every message found at one look copied out and released \
with one store of `head`, as `recv_batch` does.
  - *Cross-thread*: ivchan over a heap region (same code path as a mapped file); \
rtrb 0.4 (`push_entire_slice` / `pop_entire_slice` on a `RingBuffer<u8>`), ringbuf 0.6 \
(`push_slice` / `pop_slice` once `vacant_len` / `occupied_len` allow a whole message), crossbeam \
`ArrayQueue<Box<[u8]>>` (filled buffers one way, empty ones back; copy in and copy out). \
*ivchan-channel* is ivchan's `Channel` as an agent calls it: `send` and `recv` with the default \
options (heartbeats, peer checks, the default wait), the copy API's work plus the channel layer's. \
*plain-ring* is not a peer but a floor: ivchan's own record format and positions in plain Rust \
(`copy_nonoverlapping`, no checks of the peer, no volatile views; `benches/src/plain_ring.rs`), \
what the ring would cost if it could trust its peer. Every queue holds {RING_SIZE} of data.
  - *Cross-process*: the runner re-executes itself as the child. ivchan runs over a real \
`{REGION_FILE}` file created by `ivchan-host` ({REGION_SIZE} region, {RING_SIZE} rings); the child maps \
it with `memmap2`, as a guest maps BAR2. Peers: a Unix `socketpair(SOCK_STREAM)`, two pipes, \
TCP over 127.0.0.1 with `TCP_NODELAY` (one `write_all` / `read_exact` per message), and \
{ICEORYX2}. *ivchan-channel* is the `Channel` over the same kind of file, `send` and `recv` with \
the default options but no peer timeout (each end sits idle for seconds while the other transports \
run, which the protocol calls silent); both ends stay attached for the whole run. A batch is timed from the first \
send to the child's `done` on its control pipe.
- **Latency** is a ping-pong between the two processes: the parent sends a message, the child \
echoes it, and each round trip is timed with `Instant::now()` into an HdrHistogram (3 significant \
digits) for about {LATENCY_TIME} after a warm-up. ivchan (the ring's two APIs and the channel) and iceoryx2 \
are measured busy-polling and with the default wait strategy; the socket-like peers block in the kernel.
- **Wait strategies** are the channel layer's own (`ivchan_protocol::WaitStrategy`, through \
`benches/src/wait.rs`). *busy-poll*: re-check after one pause hint. *backoff* (`adaptive()`, the \
default): 200 checks spaced by 1, 2, 4 … 32 pause hints (the first gap learned per direction from \
the batches the looks yield; with none learned, eight checks one pause apart come first), then 50 yields, then sleeps from 10 µs doubling to 1 ms. Every \
in-process queue and both ivchan APIs use the same waiter, one per direction. ivchan's receivers \
also leave a streaming writer a learned look gap (2 to 128 pause hints, shorter after a look that \
found a quarter of the ring waiting) when the backlog seen at their last look is used up, before they \
look again, as `Channel::recv` does (`Waiter::before_look`).
- **Limits.** *memcpy*: `copy_from_slice` of the message size between two hot buffers on core 0. \
*Cache-line round trip*: one 128-byte-aligned `AtomicU64` bounced between cores 0 and 1, each \
round trip timed the same way as the transports' (so both include the ~20 ns timer cost). \
*plain-ring round trip*: the same ping-pong through two plain rings (ivchan's record format \
without its checks, see above) between two pinned threads, busy-polling: the floor under \
ivchan's own round trip.
- Ratios are ivchan / peer (or / limit) in messages per second at the same size; above 1 means \
ivchan is faster.
";

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::WholeRun;
    use super::*;

    fn render(tsv: &str) -> String {
        let run = RunInfo {
            machine: vec![("CPU".into(), "test".into())],
            runs: vec![WholeRun {
                load_before: "0.1".into(),
                load_start: "0.1 0.2 0.3".into(),
                load_end: "0.3 0.2 0.1".into(),
                took: Duration::from_secs(2),
            }],
            quick: true,
            iceoryx2: false,
        };
        report(
            &Results::parse(tsv),
            &[Results::parse(tsv)],
            &run,
            Some("notes"),
        )
    }

    #[test]
    fn the_runner_declares_sizes_and_parameters() {
        let md = render(
            "info\tsizes\t[64, 65536]\n\
             info\tlatency_sizes\t[64, 4096]\n\
             info\tregion_size\t16777216\n\
             info\tring_size\t4194304\n\
             info\tper_run_ms\t30\n\
             info\treps\t3\n\
             info\tlatency_ms\t1500\n\
             tput\tlimit\tmemcpy\t64\t1000000.0\t64000000.0\n",
        );
        assert!(md.contains("| 64 B | 1.00 Mmsg/s, 64.00 MB/s |\n| 64 KiB | – |\n"));
        assert!(!md.contains("| 8 B |"), "only the declared sizes");
        assert!(md.contains(
            "![latency, 64 B](bench/latency-64.svg)\n\
             ![latency, 4 KiB](bench/latency-4096.svg)\n"
        ));
        assert!(md.contains("the median of 3 batches of about 30 ms each"));
        assert!(md.contains("for about 1.5 s after a warm-up"));
        assert!(md.contains(
            "`/dev/shm/fg_<uuid>` file created by `ivchan-host` (16 MiB region, 4 MiB rings)"
        ));
        assert!(md.contains("Every queue holds 4 MiB of data."));
        assert!(md.ends_with("## Analysis\n\nnotes\n\n"));
    }

    #[test]
    fn a_target_met_in_one_run_only_is_missed() {
        let tsv = "run\t1\n\
                   info\tsizes\t[64]\n\
                   tput\txproc\tivchan-copy\t64\t40000000.0\t0\t0\n\
                   run\t2\n\
                   info\tsizes\t[64]\n\
                   tput\txproc\tivchan-copy\t64\t20000000.0\t0\t0\n";
        let runs: Vec<Results> = super::super::results::split_runs(tsv)
            .into_iter()
            .map(Results::parse)
            .collect();
        let mut run = RunInfo {
            machine: Vec::new(),
            runs: Vec::new(),
            quick: false,
            iceoryx2: false,
        };
        for _ in 0..2 {
            run.runs.push(WholeRun {
                load_before: "0.1".into(),
                load_start: "0.1 0.1 0.1".into(),
                load_end: "0.1 0.1 0.1".into(),
                took: Duration::from_secs(1),
            });
        }
        let md = report(&Results::parse(tsv), &runs, &run, None);
        assert!(
            md.contains(
                "| 64 B one commit per message (ivchan-copy) ≥ 30 M msg/s | \
                 40.00 Mmsg/s (met) | 20.00 Mmsg/s (**missed**) | **missed** |"
            ),
            "{md}"
        );
        assert!(md.contains("| run 2: measuring time | 1 s |"));
        // The pooled table shows the median of both runs.
        assert!(md.contains("| 64 B | 30.00 Mmsg/s, 1.92 GB/s |"), "{md}");
    }

    #[test]
    fn missing_parameters_show_as_unknown() {
        let md = render("");
        assert!(md.contains("the median of ? batches of about ? each"));
        assert!(md.contains("(? region, ? rings)"));
    }
}
