//! The `ivchan` binary against real region files.

use std::process::Command;

use ivchan_host::{RegionOptions, VmUuid};
use ivchan_protocol::Side;

const VM: &str = "5b7e6a0c-1d2e-4f3a-9b8c-7d6e5f4a3b2c";

fn ivchan(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ivchan"))
        .args(args)
        .output()
        .expect("run ivchan");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn list_and_inspect_a_live_region_without_disturbing_it() {
    let dir = tempfile::Builder::new()
        .prefix("ivchan-cli-test-")
        .tempdir_in("/dev/shm")
        .expect("temp dir");
    let d = dir.path().to_str().expect("utf-8 path");
    let vm: VmUuid = VM.parse().expect("uuid");
    // The agent holds the flock the whole time: the tool must not need it.
    let file = RegionOptions::new()
        .dir(dir.path())
        .size(1 << 20)
        .create(&vm)
        .expect("create");
    let header = file.attach_or_init("telemetry").expect("init");
    header.begin_session(Side::Host);
    let (mut tx, _rx) = header.split(Side::Host).expect("split");
    assert!(tx.send(&[7u8; 100]).expect("send"));
    std::fs::write(dir.path().join("fg_junk"), b"x").expect("write");

    let (ok, out, err) = ivchan(&["list", "--dir", d]);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("fg_{VM}")), "{out}");
    assert!(out.contains("1 MiB  owner root(0)  mode 0600"), "{out}");
    assert!(out.contains("\"telemetry\" vm 5b7e6a0c"), "{out}");
    assert!(!out.contains("fg_junk"), "{out}");

    for arg in [
        format!("fg_{VM}"),
        VM.to_owned(),
        file.path().display().to_string(),
    ] {
        let (ok, out, err) = ivchan(&["inspect", "--dir", d, &arg]);
        assert!(ok, "{arg}: {err}");
        assert!(out.contains("name      \"telemetry\""), "{out}");
        assert!(out.contains("host->guest  head 0  tail 112"), "{out}");
        assert!(out.contains("host   state ready   epoch 1"), "{out}");
        assert!(out.contains("guest  state absent"), "{out}");
    }
    // Still ours, unchanged.
    let again = file.attach_or_init("x").expect("attach");
    assert_eq!(
        again.ring_positions(ivchan_protocol::Direction::HostToGuest),
        (0, 112)
    );

    let (ok, _, err) = ivchan(&["inspect", "--dir", d, "fg_..%2fetc"]);
    assert!(!ok);
    assert!(
        err.contains("ivchan: ") && err.contains("not a UUID"),
        "{err}"
    );
    let (ok, _, err) = ivchan(&[
        "inspect",
        "--dir",
        d,
        "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
    ]);
    assert!(!ok);
    assert!(err.contains("No such file"), "{err}");
}

#[test]
fn init_creates_a_region_with_a_header_and_keeps_an_existing_one() {
    let dir = tempfile::Builder::new()
        .prefix("ivchan-cli-init-")
        .tempdir_in("/dev/shm")
        .expect("temp dir");
    let d = dir.path().to_str().expect("utf-8 path");
    let (ok, out, err) = ivchan(&[
        "init", VM, "--dir", d, "--name", "decoy", "--size", "2097152", "--mode", "640",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("\"decoy\""), "{out}");
    let path = dir.path().join(format!("fg_{VM}"));
    let meta = std::fs::metadata(&path).expect("created");
    assert_eq!(meta.len(), 2 << 20);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);

    // Again, with another name: the header (and its name) stays.
    let (ok, out, err) = ivchan(&["init", VM, "--dir", d, "--name", "other"]);
    assert!(ok, "{err}");
    assert!(out.contains("\"decoy\""), "{out}");

    for (args, needle) in [
        (vec!["init", "../etc/passwd", "--dir", d], "not a UUID"),
        (vec!["init", VM, "--dir", d, "--mode", "9"], "octal mode"),
        (
            vec![
                "init",
                "00000000-0000-4000-8000-000000000001",
                "--dir",
                d,
                "--size",
                "3000000",
            ],
            "power of two",
        ),
    ] {
        let (ok, _, err) = ivchan(&args);
        assert!(!ok && err.contains(needle), "{args:?}: {err}");
    }
}
