//! `cargo xtask fuzz [SECONDS]`: every fuzz target in `fuzz/` under
//! libFuzzer for a fixed time (nightly, cargo-fuzz, AddressSanitizer), after
//! the inputs kept in `fuzz/regressions/` pass as plain tests on stable.
//! Prints each target's executions; a crash fails the step and names the
//! input to keep (copy it into `fuzz/regressions/<target>/`).

use std::fs;
use std::process::{Command, Stdio};

use crate::{cargo, project_root, run, step};

/// The targets (`fuzz/fuzz_targets/*.rs`), what each one feeds.
pub const TARGETS: &[(&str, &str)] = &[
    (
        "ring_consumer",
        "the consumer over arbitrary ring bytes and positions",
    ),
    ("header", "header and side-block parsing"),
    (
        "domain_xml",
        "domain XML inject/undo (undo of inject is the identity)",
    ),
    ("qmp_reply", "QMP replies to the hot-add conversation"),
    (
        "doorbell_clients",
        "the doorbell server's client stream (connect, write, read, close)",
    ),
];

fn has_cargo_fuzz() -> bool {
    Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs every target for `seconds`; `Err` on a crash or a missing tool.
pub fn fuzz(seconds: u64) -> Result<(), String> {
    step("fuzz: kept inputs as regression tests (stable)");
    let manifest = "fuzz/Cargo.toml";
    run(cargo().args(["fmt", "--manifest-path", manifest, "--", "--check"]));
    run(cargo().args([
        "clippy",
        "--manifest-path",
        manifest,
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]));
    run(cargo().args(["test", "--manifest-path", manifest]));
    if !has_cargo_fuzz() {
        step("fuzz: installing cargo-fuzz");
        run(cargo().args(["install", "cargo-fuzz", "--locked"]));
    }
    let root = project_root();
    let mut report = Vec::new();
    for (target, what) in TARGETS {
        step(&format!("fuzz: {target} for {seconds} s ({what})"));
        // A scratch corpus, seeded by libFuzzer from the kept inputs.
        let corpus = root.join("target/fuzz-corpus").join(target);
        fs::create_dir_all(&corpus).map_err(|e| format!("{}: {e}", corpus.display()))?;
        let out = Command::new("rustup")
            .args(["run", "nightly", "cargo", "fuzz", "run", target])
            .args(["--features", "libfuzzer"])
            .arg(&corpus)
            .arg(root.join("fuzz/regressions").join(target))
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                "-print_final_stats=1",
            ])
            .current_dir(&root)
            .env_remove("CARGO")
            .env_remove("RUSTC")
            .output()
            .map_err(|e| format!("cargo fuzz: {e}"))?;
        let log = String::from_utf8_lossy(&out.stderr);
        let runs = log
            .lines()
            .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
            .map(|n| n.trim().to_owned())
            .unwrap_or_else(|| "?".to_owned());
        if !out.status.success() {
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(format!(
                "fuzz target {target} failed after {runs} executions; the input is under \
                 fuzz/artifacts/{target}/ (keep it in fuzz/regressions/{target}/):\n{}",
                tail.join("\n")
            ));
        }
        report.push((target, runs));
    }
    eprintln!("\n{:<16} {:>14} {:>8}", "target", "executions", "crashes");
    for (target, runs) in &report {
        eprintln!("{target:<16} {runs:>14} {:>8}", 0);
    }
    Ok(())
}
