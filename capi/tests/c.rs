//! The C side of the library, built and run as C users build it:
//!
//! - `tests/c/channel_test.c` compiles against `include/ivchan.h` with
//!   `-Wall -Wextra -Werror`, links `libivchan.so` through the pkg-config
//!   file made from `ivchan.pc.in`, and exercises every call (host and
//!   guest over a region file in one process);
//! - `examples/guest_agent.c` links `libivchan.a` statically and completes
//!   the checked conversation (`exchange`, `echo`) with the Rust host agent
//!   over a region file it maps as a guest maps BAR2.
//!
//! The library and the host agent are built by `cargo build` (a test build
//! makes only the rlib). Needs `cc` and `pkg-config`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const UUID: &str = "5b7e6a0c-1d2e-4f3a-9b8c-7d6e5f4a3b2c";
/// Flags every C file here compiles with.
const CFLAGS: &[&str] = &["-std=c11", "-Wall", "-Wextra", "-Werror", "-O2"];

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `cargo build ARGS --message-format=json` and returns every file
/// it reports (artifacts and executables).
fn cargo_build(args: &[&str]) -> Vec<PathBuf> {
    let out = Command::new(env!("CARGO"))
        .arg("build")
        .args(args)
        .arg("--message-format=json")
        .current_dir(manifest_dir())
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo build");
    assert!(out.status.success(), "cargo build {args:?} failed");
    let mut files = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        for f in msg["filenames"].as_array().into_iter().flatten() {
            files.extend(f.as_str().map(PathBuf::from));
        }
        files.extend(msg["executable"].as_str().map(PathBuf::from));
    }
    files
}

fn find(files: &[PathBuf], name: &str) -> PathBuf {
    files
        .iter()
        .find(|f| f.file_name().is_some_and(|n| n == name))
        .unwrap_or_else(|| panic!("cargo built no {name}: {files:?}"))
        .clone()
}

/// The library, built as a C user gets it: (`libivchan.so`, `libivchan.a`).
fn library() -> (PathBuf, PathBuf) {
    let files = cargo_build(&["-p", "ivchan-c", "--lib"]);
    (find(&files, "libivchan.so"), find(&files, "libivchan.a"))
}

/// `ivchan.pc` for the build tree, from the template, in `dir`.
fn pkg_config_file(dir: &Path, libdir: &Path) {
    let template = std::fs::read_to_string(manifest_dir().join("ivchan.pc.in")).expect("template");
    let pc = template
        .replace("@PREFIX@", &manifest_dir().display().to_string())
        .replace("@LIBDIR@", &libdir.display().to_string())
        .replace(
            "@INCLUDEDIR@",
            &manifest_dir().join("include").display().to_string(),
        )
        .replace("@VERSION@", env!("CARGO_PKG_VERSION"));
    assert!(
        !pc.contains('@'),
        "a placeholder is left in ivchan.pc:\n{pc}"
    );
    std::fs::write(dir.join("ivchan.pc"), pc).expect("write ivchan.pc");
}

/// `pkg-config ARGS ivchan` against the generated file.
fn pkg_config(pc_dir: &Path, args: &[&str]) -> Vec<String> {
    let out = Command::new("pkg-config")
        .args(args)
        .arg("ivchan")
        .env("PKG_CONFIG_PATH", pc_dir)
        .output()
        .expect("run pkg-config (apt-get install pkg-config)");
    assert!(
        out.status.success(),
        "pkg-config {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("UTF-8")
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn cc(args: &[String]) {
    let out = Command::new("cc")
        .args(CFLAGS)
        .args(args)
        .output()
        .expect("run cc");
    assert!(
        out.status.success(),
        "cc {args:?}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_c_test_passes_against_the_header_and_the_shared_library() {
    let (so, _) = library();
    let libdir = so.parent().expect("lib dir");
    let work = tempfile::tempdir().expect("tempdir");
    pkg_config_file(work.path(), libdir);
    assert_eq!(
        pkg_config(work.path(), &["--modversion"]),
        [env!("CARGO_PKG_VERSION")]
    );
    let exe = work.path().join("channel_test");
    let mut args = vec![manifest_dir()
        .join("tests/c/channel_test.c")
        .display()
        .to_string()];
    args.extend(pkg_config(work.path(), &["--cflags", "--libs"]));
    args.extend([
        format!("-Wl,-rpath,{}", libdir.display()),
        "-o".into(),
        exe.display().to_string(),
    ]);
    cc(&args);
    let regions = work.path().join("regions");
    std::fs::create_dir(&regions).expect("mkdir");
    let out = Command::new(&exe)
        .arg(&regions)
        .arg(env!("CARGO_PKG_VERSION"))
        .output()
        .expect("run channel_test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "channel_test failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The C test counts its checks: hundreds ran, not a few.
    let count: u32 = stdout
        .trim()
        .strip_prefix("all checks passed (")
        .and_then(|s| s.strip_suffix(')'))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unexpected output: {stdout}"));
    assert!(count > 500, "only {count} checks ran");
}

/// Kills a child left running when the test fails.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits up to `limit` for `child`; kills it then (`None`).
fn wait_for(child: &mut Reap, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            return Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.0.kill();
            let _ = child.0.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_c_guest_agent_completes_a_checked_exchange_with_the_rust_host_agent() {
    let (_, archive) = library();
    let host_agent = find(
        &cargo_build(&["-p", "ivchan-examples", "--bin", "ivchan-host-agent"]),
        "ivchan-host-agent",
    );
    let work = tempfile::tempdir().expect("tempdir");
    pkg_config_file(work.path(), archive.parent().expect("lib dir"));
    let agent = work.path().join("guest_agent");
    let mut args = vec![
        manifest_dir()
            .join("examples/guest_agent.c")
            .display()
            .to_string(),
        archive.display().to_string(),
    ];
    args.extend(pkg_config(work.path(), &["--cflags"]));
    // libivchan.a needs what `Libs.private` names.
    args.extend(
        pkg_config(work.path(), &["--libs", "--static"])
            .into_iter()
            .filter(|a| a.starts_with("-l") && a != "-livchan"),
    );
    args.extend(["-o".into(), agent.display().to_string()]);
    cc(&args);

    let regions = work.path().join("regions");
    std::fs::create_dir(&regions).expect("mkdir");
    let host = Command::new(&host_agent)
        .args(["--dir", regions.to_str().expect("UTF-8 path")])
        .args(["--uuid", UUID, "--size", "8M"])
        .args(["--exchange", "20000", "--echo", "5000", "--wait", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the host agent");
    let mut host = Reap(host);
    // The host agent makes the region; the C agent waits for its header.
    let region = regions.join(format!("fg_{UUID}"));
    let start = Instant::now();
    while !region.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the host agent made no region"
        );
        if let Some(status) = host.0.try_wait().expect("wait") {
            panic!("the host agent exited ({status}) before making the region");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let guest = Command::new(&agent)
        .args(["--region-file", region.to_str().expect("UTF-8 path")])
        .args(["--wait", "60", "--stall", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the C guest agent");
    let mut guest = Reap(guest);
    let host_status = wait_for(&mut host, Duration::from_secs(300));
    // The guest agent exits at the host's `quit`; a host that failed leaves
    // it waiting for a host to come back.
    let guest_status = wait_for(&mut guest, Duration::from_secs(30));
    let read = |c: &mut Reap| {
        let mut text = String::new();
        for stream in [
            c.0.stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read>),
            c.0.stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read>),
        ]
        .into_iter()
        .flatten()
        {
            let mut s = stream;
            let _ = s.read_to_string(&mut text);
        }
        text
    };
    use std::io::Read as _;
    let host_out = read(&mut host);
    let guest_out = read(&mut guest);
    println!("host agent:\n{host_out}\nC guest agent:\n{guest_out}");
    assert!(
        host_status.is_some_and(|s| s.success()),
        "host agent failed ({host_status:?}):\n{host_out}\nC guest agent:\n{guest_out}"
    );
    assert!(
        guest_status.is_some_and(|s| s.success()),
        "C guest agent failed ({guest_status:?}):\n{guest_out}"
    );
    // Both sides checked every message: 20,000 each way, 5,000 echoed.
    assert!(
        host_out.contains("to-guest 25000 msgs") && host_out.contains("from-guest 25000 msgs"),
        "{host_out}"
    );
    assert!(guest_out.contains("exchange 20000 checked"), "{guest_out}");
    assert!(guest_out.contains("echo 5000 checked"), "{guest_out}");
    assert!(guest_out.contains("quit"), "{guest_out}");
}
