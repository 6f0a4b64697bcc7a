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

/// Ctrl-C or SIGTERM at any point: exit 130, the guest child stopped, the
/// region removed (and the work directory, a `tempfile::TempDir`, with it).
#[test]
fn demo_stopped_by_a_signal_cleans_up_and_stops_its_child() {
    use std::io::{BufRead, BufReader};
    for (sig, wait_ms) in [
        (nix::sys::signal::Signal::SIGINT, 0),
        (nix::sys::signal::Signal::SIGTERM, 0),
        (nix::sys::signal::Signal::SIGINT, 300),
        (nix::sys::signal::Signal::SIGTERM, 300),
    ] {
        let mut demo = Command::new(env!("CARGO_BIN_EXE_ivchan-demo"))
            .args(["--exchange", "5000000", "--file-mib", "8"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start demo");
        let mut lines = BufReader::new(demo.stdout.take().expect("stdout")).lines();
        let region = lines
            .next()
            .and_then(Result::ok)
            .and_then(|l| {
                l.strip_prefix("region ")
                    .and_then(|r| r.split_whitespace().next())
                    .map(std::path::PathBuf::from)
            })
            .expect("region line");
        std::thread::sleep(std::time::Duration::from_millis(wait_ms));
        let pid = nix::unistd::Pid::from_raw(i32::try_from(demo.id()).expect("pid"));
        nix::sys::signal::kill(pid, sig).expect("signal");
        let out = demo.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(130), "{sig:?}: {stderr}");
        assert!(
            stderr.contains("interrupted; stopped the guest side, removed the region"),
            "{stderr}"
        );
        assert!(!region.exists(), "{} left behind", region.display());
        // The child ran as `ivchan-demo --guest-region <region>`.
        let children = Command::new("pgrep")
            .args(["-f", &format!("--guest-region {}", region.display())])
            .output()
            .expect("pgrep");
        assert!(
            children.stdout.is_empty(),
            "guest child left running: {}",
            String::from_utf8_lossy(&children.stdout)
        );
    }
}
