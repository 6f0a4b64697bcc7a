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

/// Reads the acknowledged count from a stream state file.
fn acked(state: &std::path::Path) -> u64 {
    std::fs::read(state)
        .ok()
        .and_then(|raw| raw.get(8..16).and_then(|b| b.try_into().ok()))
        .map_or(0, u64::from_le_bytes)
}

fn wait_acked(state: &std::path::Path, at_least: u64, who: &mut std::process::Child) {
    let start = std::time::Instant::now();
    while acked(state) < at_least {
        assert!(
            start.elapsed().as_secs() < 120,
            "stream stuck at {}",
            acked(state)
        );
        if let Some(status) = who.try_wait().unwrap() {
            panic!("exited early: {status}");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn stream_survives_the_guest_and_then_the_host_being_killed() {
    let dir = tempfile::Builder::new()
        .prefix("ivchan-stream-")
        .tempdir_in("/dev/shm")
        .unwrap();
    let uuid = "00000000-0000-4000-8000-00000000beef";
    let state = dir.path().join("state");
    let host_cmd = || {
        Command::new(env!("CARGO_BIN_EXE_ivchan-host-agent"))
            .args(["--uuid", uuid, "--stream", "30000", "--wait", "120"])
            .arg("--dir")
            .arg(dir.path())
            .arg("--state")
            .arg(&state)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let region = dir.path().join(format!("fg_{uuid}"));
    let guest_cmd = || {
        Command::new(env!("CARGO_BIN_EXE_ivchan-guest-agent"))
            .arg("--region-file")
            .arg(&region)
            .args(["--wait", "60"])
            .spawn()
            .unwrap()
    };
    let mut host = host_cmd();
    while !region.exists() {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let mut guest = guest_cmd();
    wait_acked(&state, 5_000, &mut guest);
    guest.kill().unwrap();
    guest.wait().unwrap();
    let mut guest = guest_cmd();
    wait_acked(&state, 15_000, &mut host);
    host.kill().unwrap();
    host.wait().unwrap();
    let host = host_cmd();
    let out = host.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("stream complete"), "{stdout}");
    assert_eq!(acked(&state), 30_000);
    assert!(guest.wait().unwrap().success(), "guest agent failed");
}
