//! `cargo xtask <command>`: ivchan's automation, in Rust.
//!
//! - `ci`: everything CI checks — packages, fmt, clippy, rustdoc, tests,
//!   loom models and Miri. `.ci/run` calls this.
//! - `loom`, `miri`: one of those steps alone.
//! - `fuzz [SECONDS]`: every fuzz target for a fixed time (default 30 s).
//! - `e2e [NAME…]`: host and guest agents through real TCG guests;
//!   `smoke` is its raw-QEMU scenario alone.

mod bench_report;
mod e2e;
mod fuzz;
mod libvirt;
mod vm;

use std::env;
use std::path::{Path, PathBuf};
use std::process::{exit, Command};

/// Debian packages the real-component tests need.
const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "libvirt-daemon",
    "libvirt-daemon-driver-qemu",
    "libvirt-clients",
    "libxml2-utils",
    // Building the guest driver against the guest kernel's headers.
    "make",
    "gcc",
];

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the root")
        .to_path_buf()
}

/// When this xtask started, for the elapsed time in step headings.
static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

fn step(name: &str) {
    let t = START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs();
    eprintln!("\n==> xtask [{}m{:02}s]: {name}", t / 60, t % 60);
}

/// Runs a command in the project root; exits with its status on failure.
fn run(cmd: &mut Command) {
    cmd.current_dir(project_root());
    eprintln!("$ {cmd:?}");
    match cmd.status() {
        Ok(s) if s.success() => {}
        Ok(s) => {
            eprintln!("xtask: command failed with {s}");
            exit(s.code().unwrap_or(1));
        }
        Err(e) => {
            eprintln!("xtask: could not run {cmd:?}: {e}");
            exit(1);
        }
    }
}

fn cargo() -> Command {
    Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn packages() {
    step("packages");
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        eprintln!("all present: {}", PACKAGES.join(" "));
        return;
    }
    if !is_root() {
        eprintln!(
            "xtask: missing packages {missing:?}; run as root or `apt-get install {}`",
            missing.join(" ")
        );
        exit(1);
    }
    run(Command::new("apt-get").args(["update", "-qq"]));
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"));
}

fn loom() {
    step("loom models (LOOM_MAX_PREEMPTIONS=2)");
    run(cargo()
        .args([
            "test",
            "-p",
            "ivchan-protocol",
            "--test",
            "loom",
            "--release",
        ])
        .args(["--target-dir", "target/loom"])
        .env("RUSTFLAGS", "--cfg loom")
        .env("LOOM_MAX_PREEMPTIONS", "2"));
}

fn miri() {
    step("miri");
    let add = Command::new("rustup")
        .args([
            "component",
            "add",
            "--toolchain",
            "nightly",
            "miri",
            "rust-src",
        ])
        .status();
    if !matches!(add, Ok(s) if s.success()) {
        eprintln!();
        eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
        eprintln!("!! xtask: could not install Miri (rustup component add failed). !!");
        eprintln!("!! SKIPPING the Miri step. Everything else still runs.          !!");
        eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
        return;
    }
    // Through rustup, which understands toolchains; the CARGO and RUSTC
    // that `cargo run` hands us name the stable ones.
    run(Command::new("rustup")
        .args([
            "run",
            "nightly",
            "cargo",
            "miri",
            "test",
            "-p",
            "ivchan-protocol",
        ])
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env("MIRIFLAGS", "-Zmiri-strict-provenance"));
}

/// Seconds each fuzz target runs in CI.
const FUZZ_SECONDS: u64 = 30;

fn ci() {
    packages();
    step("fmt");
    run(cargo().args(["fmt", "--all", "--", "--check"]));
    step("clippy");
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]));
    step("rustdoc");
    run(cargo()
        .args(["doc", "--workspace", "--no-deps"])
        .env("RUSTDOCFLAGS", "-D warnings"));
    step("libvirt daemon for the real-component tests");
    if let Err(e) = libvirt::ensure() {
        eprintln!("xtask: {e}");
        exit(1);
    }
    step("tests (real components required)");
    run(cargo()
        .args(["test", "--workspace"])
        .env("IVCHAN_REQUIRE_REAL", "1")
        .env("IVCHAN_LIBVIRT_KVM_ACCESS", "1"));
    loom();
    miri();
    if let Err(e) = fuzz::fuzz(FUZZ_SECONDS) {
        eprintln!("xtask: {e}");
        exit(1);
    }
    step("e2e: agents through real TCG guests");
    if let Err(e) = e2e::e2e(&[]) {
        eprintln!("xtask: {e}");
        exit(1);
    }
    eprintln!("\nxtask: ci passed");
}

fn main() {
    START.get_or_init(std::time::Instant::now);
    let task = env::args().nth(1);
    match task.as_deref() {
        Some("ci") => ci(),
        Some("loom") => loom(),
        Some("miri") => miri(),
        Some("smoke") => {
            if let Err(e) = e2e::smoke() {
                eprintln!("xtask: {e}");
                exit(1);
            }
        }
        Some("e2e") => {
            let filters: Vec<String> = env::args().skip(2).collect();
            if let Err(e) = e2e::e2e(&filters) {
                eprintln!("xtask: {e}");
                exit(1);
            }
        }
        Some("fuzz") => {
            let seconds = env::args()
                .nth(2)
                .and_then(|s| s.parse().ok())
                .unwrap_or(FUZZ_SECONDS);
            if let Err(e) = fuzz::fuzz(seconds) {
                eprintln!("xtask: {e}");
                exit(1);
            }
        }
        Some("packages") => packages(),
        Some("bench-report") => bench_report::run(),
        _ => {
            eprintln!(
                "usage: cargo xtask <ci|loom|miri|fuzz [SECONDS]|packages|smoke|e2e [NAME…]|{}>",
                bench_report::USAGE
            );
            exit(2);
        }
    }
}
