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
//!
//! `cargo xtask bench-report --render` measures nothing: it writes the
//! report and plots again from `docs/bench/results.tsv` (which keeps the
//! machine and each run's load beside the runner's records), for after an
//! edit of the notes or of the report's layout.

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
    "bench-report [--quick] [--repeat N] [--no-iceoryx2] [--no-wait] [--only SUBSTRING] | bench-report --render";

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
    /// Re-render from the stored results instead of measuring (`--render`).
    render: bool,
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
                "--render" => o.render = true,
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
        if o.render && (o.quick || o.no_wait || o.no_iceoryx2 || o.only.is_some() || o.repeat > 0) {
            return Err("--render measures nothing: it takes no other option".into());
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
    let root = project_root();
    let results_path = root.join("docs/bench/results.tsv");
    if opts.render {
        step("bench-report: render from docs/bench/results.tsv");
        let out = fs::read_to_string(&results_path).unwrap_or_else(|e| fail(&results_path, e));
        let run = RunInfo::parse(&out).unwrap_or_else(|e| {
            eprintln!("xtask: {}: {e}", results_path.display());
            exit(1)
        });
        render(&root, &out, &run);
        return;
    }
    let (out, run) = measure(&opts);
    step("bench-report: write docs/BENCHMARKS.md and docs/bench/");
    let bench_dir = root.join("docs/bench");
    fs::create_dir_all(&bench_dir).unwrap_or_else(|e| fail(&bench_dir, e));
    write(&results_path, &out);
    render(&root, &out, &run);
    let took: Duration = run.runs.iter().map(|w| w.took).sum();
    eprintln!(
        "xtask: wrote docs/BENCHMARKS.md ({} run(s), {:.0} s of measuring)",
        run.runs.len(),
        took.as_secs_f64()
    );
}

/// Runs the runner as `opts` asks; returns its records (with the machine
/// and each whole run's load and duration as records too) and what the
/// report says of the runs.
fn measure(opts: &Options) -> (String, RunInfo) {
    let Options {
        quick,
        no_wait,
        no_iceoryx2,
        ref only,
        repeat,
        render: _,
    } = *opts;
    let repeat = repeat.max(1);
    let only = only.as_deref();
    let mut iceoryx2 = !no_iceoryx2;

    step("bench-report: build the runner");
    if !runner::build(iceoryx2) {
        if !iceoryx2 {
            eprintln!("xtask: the bench runner does not build");
            exit(1);
        }
        eprintln!("xtask: the runner does not build with iceoryx2; measuring without it");
        iceoryx2 = false;
    }

    let machine = machine::describe();
    let mut out = String::new();
    for (key, value) in &machine {
        out.push_str(&format!("machine\t{key}\t{value}\n"));
    }
    out.push_str(&format!("report\tquick\t{quick}\n"));
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
        let whole = WholeRun {
            load_before,
            load_start,
            load_end: machine::loadavg(),
            took: started.elapsed(),
        };
        // Each run's records follow a `run N` line (results::split_runs).
        out.push_str(&format!("run\t{n}\n"));
        out.push_str(&text);
        out.push_str(&whole.record());
        runs.push(whole);
    }
    let run = RunInfo {
        machine,
        runs,
        quick,
        iceoryx2,
    };
    (out, run)
}

/// Writes the plots and `docs/BENCHMARKS.md` from the runner's records.
fn render(root: &Path, out: &str, run: &RunInfo) {
    let results = Results::parse(out);
    let per_run: Vec<Results> = results::split_runs(out)
        .into_iter()
        .map(Results::parse)
        .collect();
    let bench_dir = root.join("docs/bench");
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
    let md = markdown::report(&results, &per_run, run, notes.as_deref());
    write(&root.join("docs/BENCHMARKS.md"), &md);
}

impl WholeRun {
    /// This run as a `whole` record: load before, at the start and at the
    /// end, and seconds of measuring.
    fn record(&self) -> String {
        format!(
            "whole\t{}\t{}\t{}\t{:.3}\n",
            self.load_before,
            self.load_start,
            self.load_end,
            self.took.as_secs_f64()
        )
    }
}

impl RunInfo {
    /// What the report says of the runs, from the `machine`, `report`,
    /// `whole` and `info` records of a stored `results.tsv`.
    fn parse(text: &str) -> Result<Self, String> {
        let mut run = RunInfo {
            machine: Vec::new(),
            runs: Vec::new(),
            quick: false,
            iceoryx2: false,
        };
        for line in text.lines() {
            let f: Vec<&str> = line.split('\t').collect();
            match f.as_slice() {
                ["machine", key, value] => run.machine.push(((*key).into(), (*value).into())),
                ["report", "quick", q] => run.quick = *q == "true",
                ["info", "iceoryx2", i] => run.iceoryx2 = *i == "true",
                ["whole", before, start, end, took] => {
                    let took = took
                        .parse::<f64>()
                        .ok()
                        .filter(|t| t.is_finite() && *t >= 0.0)
                        .ok_or_else(|| format!("bad run duration {took:?}"))?;
                    run.runs.push(WholeRun {
                        load_before: (*before).into(),
                        load_start: (*start).into(),
                        load_end: (*end).into(),
                        took: Duration::from_secs_f64(took),
                    });
                }
                _ => {}
            }
        }
        let measured = text.lines().filter(|l| l.starts_with("run\t")).count();
        if run.machine.is_empty() || run.runs.is_empty() || run.runs.len() != measured {
            return Err(format!(
                "holds {measured} run(s) but {} run record(s) and {} machine record(s): \
                 written by an older bench-report? Measure again.",
                run.runs.len(),
                run.machine.len()
            ));
        }
        Ok(run)
    }
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
                render: false,
            }))
        );
        assert_eq!(
            parse(&["--render"]).map(|o| o.map(|o| o.render)),
            Ok(Some(true))
        );
        assert!(parse(&["--render", "--quick"]).is_err());
        assert!(parse(&["--repeat", "3", "--render"]).is_err());
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

    #[test]
    fn the_stored_records_give_back_what_the_report_says_of_the_runs() {
        let runs = [
            WholeRun {
                load_before: "0.42".into(),
                load_start: "0.42 0.50 0.61".into(),
                load_end: "1.80 1.20 0.90".into(),
                took: Duration::from_millis(392_250),
            },
            WholeRun {
                load_before: "0.55 (not waited for: --no-wait)".into(),
                load_start: "0.55 0.60 0.70".into(),
                load_end: "1.70 1.30 1.00".into(),
                took: Duration::from_millis(401_500),
            },
        ];
        let mut text = String::from(
            "machine\tCPU\tAMD EPYC (2 cores)\nmachine\tkernel\t6.1.0\nreport\tquick\tfalse\n",
        );
        for (n, w) in runs.iter().enumerate() {
            text += &format!(
                "run\t{}\ninfo\ticeoryx2\ttrue\ntput\txproc\tpipe\t8\t1.0\t8.0\t0\n",
                n + 1
            );
            text += &w.record();
        }
        let info = RunInfo::parse(&text).expect("parse");
        assert_eq!(
            info.machine,
            [
                ("CPU".to_owned(), "AMD EPYC (2 cores)".to_owned()),
                ("kernel".to_owned(), "6.1.0".to_owned())
            ]
        );
        assert!(!info.quick);
        assert!(info.iceoryx2);
        assert_eq!(info.runs.len(), 2);
        for (got, want) in info.runs.iter().zip(&runs) {
            assert_eq!(got.load_before, want.load_before);
            assert_eq!(got.load_start, want.load_start);
            assert_eq!(got.load_end, want.load_end);
            assert_eq!(got.took, want.took);
        }
        // Results from before the run records existed: refused, not
        // rendered with an empty machine table.
        let old: String = text
            .lines()
            .filter(|l| !l.starts_with("whole"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(RunInfo::parse(&old).is_err());
        let bad = text.replace("392.250", "soon");
        assert!(RunInfo::parse(&bad).is_err());
    }
}
