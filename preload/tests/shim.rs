//! The shim under LD_PRELOAD: a program exec'ing a fake `qemu-system-x86_64`
//! (a script that prints its argv) gets the device arguments added; any other
//! exec is untouched.

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use ivchan_testkit::child::ChildTest;

const UUID: &str = "0E8C2F4A-3B5D-4C6E-8F70-91A2B3C4D5E6";
const CANON: &str = "0e8c2f4a-3b5d-4c6e-8f70-91a2b3c4d5e6";

static BUILD: std::sync::Once = std::sync::Once::new();

/// target/debug/libivchan_preload.so, next to this test's deps/ directory.
fn shim() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let so = dir.join("libivchan_preload.so");
    // `cargo test` does not build a cdylib-only library: build it once.
    BUILD.call_once(|| {
        let mut c = Command::new(env!("CARGO"));
        c.args(["build", "-p", "ivchan-preload"]);
        if dir.file_name().is_some_and(|n| n == "release") {
            c.arg("--release");
        }
        let st = c
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo");
        assert!(st.success(), "cargo build -p ivchan-preload failed");
    });
    assert!(
        so.exists(),
        "{so:?} missing after `cargo build -p ivchan-preload`"
    );
    so
}

/// A fake QEMU in a temp dir that prints one argument per line.
fn fake(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    fs::write(
        &p,
        "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done\n",
    )
    .unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// `sh -c 'exec "$0" "$@"' PROGRAM ARGS…` under LD_PRELOAD; its output lines.
fn exec_under_shim(program: &Path, args: &[&str], env: &[(&str, &str)]) -> Vec<String> {
    exec_under_shim_with_stderr(program, args, env).0
}

/// As [`exec_under_shim`], with what was written to standard error.
fn exec_under_shim_with_stderr(
    program: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Vec<String>, String) {
    let mut c = Command::new("/bin/sh");
    c.arg("-c")
        .arg("exec \"$0\" \"$@\"")
        .arg(program)
        .args(args);
    c.env("LD_PRELOAD", shim());
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{stderr}");
    let lines = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    (lines, stderr)
}

#[test]
fn qemu_exec_gets_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let q = fake(dir.path(), "qemu-system-x86_64");
    let out = exec_under_shim(&q, &["-name", "a b;c", "-uuid", UUID, "-S"], &[]);
    assert_eq!(
        out,
        [
            "-name",
            "a b;c",
            "-uuid",
            UUID,
            "-S",
            "-object",
            &format!(
                r#"{{"qom-type":"memory-backend-file","id":"ivchan-mem","mem-path":"/dev/shm/fg_{CANON}","size":8388608,"share":true}}"#
            ),
            "-device",
            r#"{"driver":"ivshmem-plain","id":"ivchan-shm","memdev":"ivchan-mem","master":"on","addr":"0x1f"}"#,
        ]
    );
    let legacy = exec_under_shim(
        &q,
        &["-uuid", UUID],
        &[
            ("IVCHAN_ARG_FORM", "legacy"),
            ("IVCHAN_SIZE", "16M"),
            ("IVCHAN_SLOT", "0x10"),
            ("IVCHAN_REGION", "/run/a,b/{uuid}"),
            ("IVCHAN_ROLE", "peer"),
        ],
    );
    assert_eq!(
        legacy[2..],
        [
            "-object".to_string(),
            format!("memory-backend-file,id=ivchan-mem,mem-path=/run/a,,b/{CANON},size=16777216,share=on"),
            "-device".to_string(),
            "ivshmem-plain,id=ivchan-shm,memdev=ivchan-mem,master=off,addr=0x10".to_string(),
        ]
    );
}

#[test]
fn on_q35_the_device_takes_a_free_root_bus_slot_not_the_chipsets() {
    let dir = tempfile::tempdir().unwrap();
    let q = fake(dir.path(), "qemu-system-x86_64");
    // libvirt's q35 command line: the machine, and devices on pcie.0.
    let out = exec_under_shim(
        &q,
        &[
            "-machine",
            "pc-q35-7.2,usb=off,dump-guest-core=off",
            "-uuid",
            UUID,
            "-device",
            r#"{"driver":"pcie-root-port","id":"pci.1","bus":"pcie.0","addr":"0x1e"}"#,
            "-device",
            "virtio-net-pci,bus=pcie.0,addr=0x1d",
        ],
        &[],
    );
    let device = out.last().map(String::as_str).unwrap_or("");
    assert!(
        device.starts_with(r#"{"driver":"ivshmem-plain","id":"ivchan-shm""#)
            && device.ends_with(r#""addr":"0x1c"}"#),
        "{out:?}"
    );
    // An explicit slot is kept, and i440fx keeps 0x1f.
    let explicit = exec_under_shim(
        &q,
        &["-M", "q35", "-uuid", UUID],
        &[("IVCHAN_SLOT", "0x12")],
    );
    assert!(
        explicit.last().unwrap().contains(r#""addr":"0x12""#),
        "{explicit:?}"
    );
    let pc = exec_under_shim(&q, &["-machine", "pc-i440fx-7.2", "-uuid", UUID], &[]);
    assert!(pc.last().unwrap().contains(r#""addr":"0x1f""#), "{pc:?}");
}

#[test]
fn other_execs_and_edge_cases_pass_through() {
    let dir = tempfile::tempdir().unwrap();
    let q = fake(dir.path(), "qemu-system-x86_64");
    let other = fake(dir.path(), "not-qemu");
    let args = ["-uuid", UUID, "-name", "x"];
    assert_eq!(exec_under_shim(&other, &args, &[]), args);
    // No -uuid (libvirt's capability probes).
    assert_eq!(
        exec_under_shim(&q, &["-machine", "none"], &[]),
        ["-machine", "none"]
    );
    // Already has an ivshmem device.
    let has = ["-uuid", UUID, "-device", "ivshmem-plain,memdev=m"];
    assert_eq!(exec_under_shim(&q, &has, &[]), has);
    // Bad setting: fail open.
    assert_eq!(exec_under_shim(&q, &args, &[("IVCHAN_SIZE", "3M")]), args);
    // Invalid UUID: fail open.
    assert_eq!(
        exec_under_shim(&q, &["-uuid", "nope"], &[]),
        ["-uuid", "nope"]
    );
}

#[test]
fn protocol_size_limits_and_refusal_messages() {
    let dir = tempfile::tempdir().unwrap();
    let q = fake(dir.path(), "qemu-system-x86_64");
    let args = ["-uuid", UUID];
    for (size, bytes) in [("1M", "1048576"), ("8M", "8388608"), ("16G", "17179869184")] {
        let (out, err) = exec_under_shim_with_stderr(&q, &args, &[("IVCHAN_SIZE", size)]);
        assert_eq!(out.len(), 6, "{size}: {out:?}");
        assert!(
            out[3].contains(&format!(r#""size":{bytes},"#)),
            "{size}: {out:?}"
        );
        assert!(err.is_empty(), "{size}: {err}");
    }
    for size in ["512K", "4096", "64G", "3M"] {
        let (out, err) = exec_under_shim_with_stderr(&q, &args, &[("IVCHAN_SIZE", size)]);
        assert_eq!(out, args, "{size}");
        assert!(
            err.contains(&format!(
                "ivchan-preload: IVCHAN_SIZE={size} refused (expected a power of two from 1 MiB to 16 GiB"
            )),
            "{size}: {err}"
        );
    }
    let (out, err) = exec_under_shim_with_stderr(&q, &args, &[("IVCHAN_SLOT", "0x20")]);
    assert_eq!(out, args);
    assert!(err.contains("IVCHAN_SLOT=0x20 refused"), "{err}");
}

/// Re-run this test binary under LD_PRELOAD; in the child, `execv_child`
/// calls libc's `execv` (not execve) on the fake QEMU.
#[test]
fn execv_from_a_program_is_intercepted() {
    let dir = tempfile::tempdir().unwrap();
    let q = fake(dir.path(), "qemu-system-x86_64");
    let o = ChildTest::new("execv_child")
        .env("LD_PRELOAD", shim())
        .env("IVCHAN_SHIM_CHILD", &q)
        .command()
        .arg("--test-threads=1")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("/dev/shm/fg_{CANON}")),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
#[ignore = "child process of execv_from_a_program_is_intercepted"]
fn execv_child() {
    let Some(fake) = std::env::var_os("IVCHAN_SHIM_CHILD") else {
        return;
    };
    let path = CString::new(fake.into_encoded_bytes()).unwrap();
    let a: Vec<CString> = ["qemu-system-x86_64", "-uuid", UUID]
        .iter()
        .map(|s| CString::new(*s).unwrap())
        .collect();
    let mut argv: Vec<*const libc::c_char> = a.iter().map(|s| s.as_ptr()).collect();
    argv.push(std::ptr::null());
    // SAFETY: path and argv are valid, NUL-terminated, and outlive the call.
    unsafe { libc::execv(path.as_ptr(), argv.as_ptr()) };
    panic!("execv failed: {}", std::io::Error::last_os_error());
}
