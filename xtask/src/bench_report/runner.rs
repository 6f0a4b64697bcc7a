//! Building and running `ivchan-benches`' `bench-report-runner`.

use std::process::{Command, Stdio};

use crate::{cargo, project_root};

/// `cargo <verb…> -p ivchan-benches --bin bench-report-runner`, with the
/// `iceoryx2` feature when asked for.
fn cargo_runner(verb: &[&str], iceoryx2: bool) -> Command {
    let mut cmd = cargo();
    cmd.current_dir(project_root()).args(verb).args([
        "-p",
        "ivchan-benches",
        "--bin",
        "bench-report-runner",
    ]);
    if iceoryx2 {
        cmd.args(["--features", "iceoryx2"]);
    }
    cmd
}

/// Builds the runner (release); whether it built.
pub(super) fn build(iceoryx2: bool) -> bool {
    matches!(cargo_runner(&["build", "--release"], iceoryx2).status(), Ok(s) if s.success())
}

/// Runs the runner and returns its stdout (the tab-separated results);
/// `None`, after saying why, when it fails.
pub(super) fn measure(quick: bool, iceoryx2: bool, only: Option<&str>) -> Option<String> {
    let mut cmd = cargo_runner(&["run", "--release", "-q"], iceoryx2);
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
