//! `cargo xtask bench-report [--quick] [--repeat N] [--no-iceoryx2]
//! [--no-wait] [--only SUBSTRING]`: runs the benchmark runner
//! (`ivchan-benches`' `bench-report-runner`, the same measurement code as
//! `cargo bench`) `N` times in a row (default 1) and writes
//! `docs/BENCHMARKS.md` with the machine, the method, tables of ivchan
//! against each peer and limit over every run, the targets of issue 15
//! judged run by run, and SVG plots in `docs/bench/`.
//!
//! Before each run it waits (up to ten minutes) for the 1-minute load
//! average to drop below 0.7, and it records the load before and after.
//! Hand-written analysis in `docs/bench/notes.md` is copied into the report.

mod machine;
mod markdown;
mod results;
mod runner;
mod svg;
mod targets;
mod units;

use std::fs;
use std::path::Path;
use std::process::exit;
use std::time::{Duration, Instant};

use crate::{project_root, step};
use results::Results;

/// What the report says about the runs themselves, beside the results.
struct RunInfo {
    /// What the machine is: (property, value) rows.
    machine: Vec<(String, String)>,
    /// Each whole run, in order.
    runs: Vec<WholeRun>,
    quick: bool,
    iceoryx2: bool,
}

/// The load around one whole run of the runner, and how long it measured.
struct WholeRun {
    load_before: String,
    load_start: String,
    load_end: String,
    took: Duration,
}

/// The command's arguments, for usage messages.
pub const USAGE: &str =
    "bench-report [--quick] [--repeat N] [--no-iceoryx2] [--no-wait] [--only SUBSTRING]";

/// What `cargo xtask bench-report` was asked for.
#[derive(Debug, Default, PartialEq)]
struct Options {
    /// Short runs (`--quick`).
    quick: bool,
    /// Measure without waiting for a quiet machine (`--no-wait`).
    no_wait: bool,
    /// Leave iceoryx2 out (`--no-iceoryx2`).
    no_iceoryx2: bool,
    /// Only the measurements whose names contain this (`--only`).
    only: Option<String>,
    /// Whole runs in a row (`--repeat`; 0 stands for the default, 1).
    repeat: usize,
}

impl Options {
    /// `Ok(None)` for `--help`; `Err` names what is wrong.
    fn parse(args: impl IntoIterator<Item = String>) -> Result<Option<Self>, String> {
        let mut o = Self::default();
        let mut args = args.into_iter();
        while let Some(a) = args.next() {
            match a.as_str() {
                "--quick" => o.quick = true,
                "--no-wait" => o.no_wait = true,
                "--no-iceoryx2" => o.no_iceoryx2 = true,
                "--only" => o.only = Some(args.next().ok_or("--only needs a SUBSTRING")?),
                "--repeat" => {
                    o.repeat = args
                        .next()
                        .and_then(|n| n.parse().ok())
                        .filter(|&n: &usize| (1..=20).contains(&n))
                        .ok_or("--repeat needs a number of runs from 1 to 20")?;
                }
                "-h" | "--help" => return Ok(None),
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(Some(o))
    }
}

/// `cargo xtask bench-report`.
pub fn run() {
    let opts = match Options::parse(std::env::args().skip(2)) {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("usage: cargo xtask {USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("xtask: {e}\nusage: cargo xtask {USAGE}");
            exit(2);
        }
    };
    let Options {
        quick,
        no_wait,
        no_iceoryx2,
        ref only,
        repeat,
    } = opts;
    let repeat = repeat.max(1);
    let only = only.as_deref();
    let mut iceoryx2 = !no_iceoryx2;
    let root = project_root();

    step("bench-report: build the runner");
    if !runner::build(iceoryx2) {
        if !iceoryx2 {
            eprintln!("xtask: the bench runner does not build");
            exit(1);
        }
        eprintln!("xtask: the runner does not build with iceoryx2; measuring without it");
        iceoryx2 = false;
    }

    let mut out = String::new();
    let mut runs = Vec::new();
    for n in 1..=repeat {
        step(&format!(
            "bench-report: run {n} of {repeat}: wait for a quiet machine"
        ));
        let load_before = if no_wait {
            format!("{} (not waited for: --no-wait)", machine::load1())
        } else {
            machine::wait_for_quiet()
        };
        let load_start = machine::loadavg();
        step(&format!("bench-report: run {n} of {repeat}: measure"));
        let started = Instant::now();
        let Some(text) = runner::measure(quick, iceoryx2, only) else {
            exit(1);
        };
        let took = started.elapsed();
        // Each run's records follow a `run N` line (results::split_runs).
        out.push_str(&format!("run\t{n}\n"));
        out.push_str(&text);
        runs.push(WholeRun {
            load_before,
            load_start,
            load_end: machine::loadavg(),
            took,
        });
    }
    let results = Results::parse(&out);
    let per_run: Vec<Results> = results::split_runs(&out)
        .into_iter()
        .map(Results::parse)
        .collect();

    step("bench-report: write docs/BENCHMARKS.md and docs/bench/");
    let bench_dir = root.join("docs/bench");
    fs::create_dir_all(&bench_dir).unwrap_or_else(|e| fail(&bench_dir, e));
    write(&bench_dir.join("results.tsv"), &out);
    write(
        &bench_dir.join(svg::throughput_file("xproc")),
        &svg::throughput(&results, "xproc", "Cross-process streaming throughput"),
    );
    write(
        &bench_dir.join(svg::throughput_file("xthread")),
        &svg::throughput(&results, "xthread", "Cross-thread streaming throughput"),
    );
    // Latency curves of the last run: every run's rows are in the table.
    let last = per_run.last().unwrap_or(&results);
    for &size in &last.latency_sizes {
        write(
            &bench_dir.join(svg::latency_file(size)),
            &svg::latency(last, size),
        );
    }
    let notes = fs::read_to_string(bench_dir.join("notes.md")).ok();
    let took: Duration = runs.iter().map(|w| w.took).sum();
    let run = RunInfo {
        machine: machine::describe(),
        runs,
        quick,
        iceoryx2,
    };
    let md = markdown::report(&results, &per_run, &run, notes.as_deref());
    write(&root.join("docs/BENCHMARKS.md"), &md);
    eprintln!(
        "xtask: wrote docs/BENCHMARKS.md ({repeat} run(s), {:.0} s of measuring)",
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Options>, String> {
        Options::parse(args.iter().map(|&a| a.to_owned()))
    }

    #[test]
    fn options_parse_and_unknown_ones_are_refused() {
        assert_eq!(parse(&[]), Ok(Some(Options::default())));
        assert_eq!(
            parse(&["--quick", "--only", "xproc/ivchan", "--no-wait"]),
            Ok(Some(Options {
                quick: true,
                no_wait: true,
                no_iceoryx2: false,
                only: Some("xproc/ivchan".into()),
                repeat: 0,
            }))
        );
        assert_eq!(
            parse(&["--repeat", "3"]).map(|o| o.map(|o| o.repeat)),
            Ok(Some(3))
        );
        assert!(parse(&["--repeat", "0"]).is_err());
        assert!(parse(&["--repeat"]).is_err());
        assert_eq!(parse(&["--quick", "--help"]), Ok(None));
        assert!(parse(&["--only"]).is_err());
        assert!(parse(&["--qiuck"]).is_err());
    }
}
