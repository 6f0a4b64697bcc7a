//! The README's main command, small: both agents as real processes over a
//! real /dev/shm region, every message and the file checked, nothing left
//! behind.

use std::process::Command;

#[test]
fn demo_runs_both_agents_and_cleans_up() {
    let out = Command::new(env!("CARGO_BIN_EXE_ivchan-demo"))
        .args(["--exchange", "3000", "--echo", "300", "--file-mib", "3"])
        .output()
        .expect("run ivchan-demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    for line in [
        "exchange",
        "echo",
        "file transfer, 3 MiB",
        "all messages and the file checked",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    let region = stdout
        .lines()
        .find_map(|l| l.strip_prefix("region "))
        .and_then(|l| l.split_whitespace().next())
        .expect("region line");
    assert!(
        !std::path::Path::new(region).exists(),
        "{region} left behind"
    );
}

#[test]
fn guest_agent_refuses_a_missing_region_clearly() {
    let out = Command::new(env!("CARGO_BIN_EXE_ivchan-guest-agent"))
        .args([
            "--region-file",
            "/dev/shm/ivchan-no-such-region",
            "--wait",
            "1",
        ])
        .output()
        .expect("run ivchan-guest-agent");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ivchan-no-such-region"), "{stderr}");
}
