//! The `ivchan-provision` binary: exit codes, messages, atomic in-place
//! edits, the filter, status, and the hook as libvirt runs it.

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_ivchan-provision");

fn run(args: &[&str], stdin: Option<&str>) -> Output {
    let mut c = Command::new(BIN);
    c.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut si = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        si.write_all(s.as_bytes()).unwrap();
    }
    drop(si);
    child.wait_with_output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn minimal() -> String {
    fs::read_to_string(common::data_dir().join("minimal.xml")).unwrap()
}

#[test]
fn inject_in_place_then_undo_with_backup() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("dom.xml");
    fs::write(&f, minimal()).unwrap();
    let p = f.to_str().unwrap();
    let o = run(&["inject", p, "--backup"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let injected = fs::read_to_string(&f).unwrap();
    assert!(
        injected.contains("<shmem name='fg_6b9e1e0a-5c1f-4b7e-9a51-1d2c3e4f5a6b' role='master'>")
    );
    assert_eq!(
        fs::read_to_string(dir.path().join("dom.xml.bak")).unwrap(),
        minimal()
    );
    // Twice: nothing changes.
    let o = run(&["inject", p], None);
    assert!(o.status.success() && stderr(&o).contains("nothing to change"));
    assert_eq!(fs::read_to_string(&f).unwrap(), injected);
    let o = run(&["undo", p], None);
    assert!(o.status.success());
    assert_eq!(fs::read_to_string(&f).unwrap(), minimal());
    // Only dom.xml and dom.xml.bak: no temp files left.
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
}

#[test]
fn filter_and_cmdline_taint_warning() {
    let o = run(&["filter", "--route", "cmdline"], Some(&minimal()));
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout.clone()).unwrap();
    assert!(out.contains("<qemu:commandline>"));
    assert!(stderr(&o).contains("custom-argv"));
    let st = run(&["status", "-"], Some(&out));
    let st_out = String::from_utf8(st.stdout).unwrap();
    assert!(st_out.contains("qemu:commandline route: yes"), "{st_out}");
    assert!(st_out.contains("tainted: yes (custom-argv)"), "{st_out}");
    let back = run(&["filter", "--undo", "--route", "cmdline"], Some(&out));
    assert_eq!(String::from_utf8(back.stdout).unwrap(), minimal());
}

#[test]
fn sizes_within_the_protocol_limits_are_accepted() {
    for (size, element) in [
        ("1M", "<size unit='M'>1</size>"),
        ("8M", "<size unit='M'>8</size>"),
        ("16G", "<size unit='M'>16384</size>"),
    ] {
        let o = run(&["filter", "--size", size], Some(&minimal()));
        assert!(o.status.success(), "{size}: {}", stderr(&o));
        let out = String::from_utf8(o.stdout).unwrap();
        assert!(out.contains(element), "{size}: {out}");
    }
}

#[test]
fn bad_input_gets_a_clear_message_and_nonzero_exit() {
    let cases: &[(&[&str], &str, &str)] = &[
        (&["filter"], "<domain>", "malformed XML"),
        (&["filter"], "<network/>", "expected <domain>"),
        (
            &["filter"],
            "<domain type='kvm'><devices/></domain>",
            "no <uuid>",
        ),
        (
            &["filter"],
            "<domain><uuid>123</uuid></domain>",
            "invalid domain UUID",
        ),
        (&["filter", "--size", "3M"], "", "not a power of two"),
        (&["filter", "--size", "512K"], "", "below the 1 MiB minimum"),
        (&["filter", "--size", "64G"], "", "above the 16 GiB maximum"),
        (&["filter", "--model", "ivshmem-turbo"], "", "unknown model"),
        (&["filter", "--model", "ivshmem-doorbell"], "", "--server"),
        (&["filter", "--slot", "0x40"], "", "invalid PCI slot"),
    ];
    for (args, input, msg) in cases {
        let o = run(args, Some(input));
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(o.stdout.is_empty(), "{args:?} printed a document");
        assert!(
            stderr(&o).contains(msg),
            "{args:?}: {:?} lacks {msg:?}",
            stderr(&o)
        );
    }
    let taken = fs::read_to_string(common::data_dir().join("slot-taken.xml")).unwrap();
    let o = run(&["filter"], Some(&taken));
    assert!(
        !o.status.success() && stderr(&o).contains("already used by <rng"),
        "{}",
        stderr(&o)
    );
    let o = run(&["filter", "--pick-free-slot"], Some(&taken));
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("slot='0x1e'"));
}

#[test]
fn failed_edit_leaves_the_file_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.xml");
    fs::write(&f, "<domain><uuid>nope</uuid></domain>").unwrap();
    let o = run(&["inject", f.to_str().unwrap()], None);
    assert!(!o.status.success());
    assert_eq!(
        fs::read_to_string(&f).unwrap(),
        "<domain><uuid>nope</uuid></domain>"
    );
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    let o = run(
        &["inject", dir.path().join("missing.xml").to_str().unwrap()],
        None,
    );
    assert!(!o.status.success() && stderr(&o).contains("missing.xml"));
}

#[test]
fn missing_libvirt_connection() {
    if !common::require("virsh") {
        return;
    }
    let o = run(
        &[
            "apply",
            "nodom",
            "-c",
            "qemu+unix:///system?socket=/nonexistent/ivchan.sock",
        ],
        None,
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("cannot connect to libvirt"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn hook_creates_and_removes_region() {
    let dir = tempfile::tempdir().unwrap();
    let region = format!("{}/fg_{{uuid}}", dir.path().display());
    let file = dir.path().join("fg_6b9e1e0a-5c1f-4b7e-9a51-1d2c3e4f5a6b");
    let opts = [
        "--region",
        region.as_str(),
        "--size",
        "1M",
        "--mode",
        "0640",
        "--owner",
        "0:0",
        "--on-release",
        "remove",
    ];
    let mut a = vec!["hook"];
    a.extend(opts);
    a.extend(["--", "dom", "prepare", "begin", "-"]);
    let o = run(&a, Some(&minimal()));
    assert!(o.status.success(), "{}", stderr(&o));
    let m = fs::metadata(&file).unwrap();
    assert_eq!(m.len(), 1 << 20);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(m.permissions().mode() & 0o777, 0o640);
    // Other operations do nothing.
    let mut b = vec!["hook"];
    b.extend(opts);
    b.extend(["--", "dom", "started", "begin", "-"]);
    assert!(run(&b, Some(&minimal())).status.success());
    assert!(file.exists());
    let mut c = vec!["hook"];
    c.extend(opts);
    c.extend(["--", "dom", "release", "end", "-"]);
    assert!(run(&c, Some(&minimal())).status.success());
    assert!(!file.exists());
    // It fails closed: an error stops the VM's start, with the reason on
    // stderr (libvirt shows it); only --fail-open lets the VM start.
    let o = run(
        &["hook", "--", "dom", "prepare", "begin", "-"],
        Some("<garbage"),
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("refusing to start the VM: malformed XML"),
        "{}",
        stderr(&o)
    );
    let o = run(
        &["hook", "--fail-open", "--", "dom", "prepare", "begin", "-"],
        Some("<garbage"),
    );
    assert!(o.status.success());
    assert!(stderr(&o).contains("ignored"), "{}", stderr(&o));
    // --strict, the old opt-in, is still accepted.
    let o = run(
        &["hook", "--strict", "--", "dom", "prepare", "begin", "-"],
        Some("<garbage"),
    );
    assert!(!o.status.success());
}

#[test]
fn install_hook_does_not_clobber() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    fs::write(dir.path().join("qemu"), "#!/bin/sh\nexit 0\n").unwrap();
    let o = run(&["install-hook", "--hooks-dir", d, "--legacy"], None);
    assert!(!o.status.success() && stderr(&o).contains("not overwriting"));
    let o = run(
        &[
            "install-hook",
            "--hooks-dir",
            d,
            "--on-release",
            "remove",
            "--lazy",
        ],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let script = fs::read_to_string(Path::new(d).join("qemu.d/ivchan")).unwrap();
    assert!(
        script.contains("'--on-release' 'remove' '--lazy' -- \"$@\""),
        "{script}"
    );
    assert_eq!(
        fs::read_to_string(dir.path().join("qemu")).unwrap(),
        "#!/bin/sh\nexit 0\n"
    );
    // The installed script works as libvirt would run it.
    let region = dir.path().join("r_{uuid}");
    let o = run(
        &[
            "install-hook",
            "--hooks-dir",
            d,
            "--region",
            region.to_str().unwrap(),
            "--owner",
            "0",
        ],
        None,
    );
    assert!(o.status.success());
    let mut child = Command::new(Path::new(d).join("qemu.d/ivchan"))
        .args(["dom", "prepare", "begin", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(minimal().as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert!(dir
        .path()
        .join("r_6b9e1e0a-5c1f-4b7e-9a51-1d2c3e4f5a6b")
        .exists());
    let o = run(&["uninstall-hook", "--hooks-dir", d], None);
    assert!(o.status.success());
    assert!(!Path::new(d).join("qemu.d/ivchan").exists());
}
