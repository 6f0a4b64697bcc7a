//! `cargo xtask <command>`: ivchan's automation, in Rust.
//!
//! - `ci`: everything CI checks — packages, fmt, clippy, rustdoc, the
//!   publish dry run, the CLI assets, the install check, tests, loom
//!   models and Miri. `.ci/run` calls this.
//! - `loom`, `miri`, `publish-check`: one of those steps alone
//!   (`publish-check`: `cargo publish --workspace --dry-run` and the files
//!   each published crate packages).
//! - `cli-assets`: the tools' completions and man pages, generated from
//!   their clap definitions into `target/assets/` and checked.
//! - `install-check`: `cargo install` of the tools and agents into a clean
//!   root, with the systemd units verified there by `systemd-analyze`.
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
    // groff checks the generated man pages (cli-assets).
    "groff-base",
    // systemd-analyze verifies the units (install-check).
    "systemd",
    // Building the guest driver against the guest kernel's headers, and
    // the C library's tests (C compiled against the header, linked through
    // its pkg-config file).
    "make",
    "gcc",
    "pkg-config",
];

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the root")
        .to_path_buf()
}

/// Where cargo puts what it builds: `CARGO_TARGET_DIR` when set, else
/// `target/` at the root. The binaries the steps run are looked up here.
fn target_dir() -> PathBuf {
    target_dir_under(&project_root(), env::var_os("CARGO_TARGET_DIR"))
}

/// [`target_dir`] for a given root and `CARGO_TARGET_DIR`. The steps run
/// cargo at the root ([`run`]), and cargo reads a relative
/// `CARGO_TARGET_DIR` against its working directory: so against the root.
fn target_dir_under(root: &Path, env: Option<std::ffi::OsString>) -> PathBuf {
    match env {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    }
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

/// Packages every publishable crate and builds each package as crates.io
/// would, its ivchan dependencies taken from the packages just made (cargo
/// puts them in a temporary local registry), so nothing needs to be
/// published first. Prints cargo's packaging report and each crate's files.
/// Removes `$CARGO_HOME/registry/{src,cache}/*/ivchan-*`: our own crates,
/// as earlier publish checks packaged and unpacked them there.
fn forget_unpacked_ivchan_packages() {
    let home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let Some(home) = home else {
        return;
    };
    // Unpacked sources, and the package files they came from.
    for kind in ["registry/src", "registry/cache"] {
        let Ok(indexes) = std::fs::read_dir(home.join(kind)) else {
            continue;
        };
        for index in indexes.flatten() {
            let Ok(packages) = std::fs::read_dir(index.path()) else {
                continue;
            };
            for package in packages.flatten() {
                let path = package.path();
                if package.file_name().to_string_lossy().starts_with("ivchan-") {
                    eprintln!("removing stale {}", path.display());
                    let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
                }
            }
        }
    }
}

fn publish_check() {
    step("publish dry run (cargo publish --workspace --dry-run)");
    // The verify builds see the ivchan crates as registry packages of an
    // unchanged version (0.1.0), and cargo reuses a registry package's
    // compiled artifacts without looking at its contents: an earlier run's
    // ivchan-protocol would stand in for the changed one. So each run
    // verifies in a target directory of its own, made anew.
    let target = project_root().join("target/publish-check");
    let _ = std::fs::remove_dir_all(&target);
    // The same holds for the sources cargo unpacks from those packages into
    // its registry cache: an unpacked ivchan-protocol-0.1.0 from an earlier
    // run is compiled instead of this one. No real dependency is named
    // ivchan-*, so only our own packages go.
    forget_unpacked_ivchan_packages();
    // --allow-dirty: this checks what would be packaged, not whether the
    // working tree is committed (CI's clone always is).
    run(cargo()
        .args(["publish", "--workspace", "--dry-run", "--allow-dirty"])
        .arg("--target-dir")
        .arg(&target));
    for krate in PUBLISHED {
        step(&format!("files packaged for {krate}"));
        run(cargo().args(["package", "--list", "--allow-dirty", "-p", krate]));
    }
}

/// The operator tools whose completions, man pages and `--help` are
/// generated from their clap definitions.
const TOOLS: &[&str] = &["ivchan", "ivchan-guest", "ivchan-provision"];

/// Builds the tools and generates what a package installs beside them,
/// into `target/assets/`: completions for bash, zsh and fish, and man
/// pages; checks them (bash parses the script, groff formats every page
/// without a warning) and prints each tool's `--help`.
fn cli_assets() {
    step("CLI assets: completions, man pages, --help (target/assets)");
    run(cargo().args([
        "build",
        "-p",
        "ivchan-cli",
        "-p",
        "ivchan-provision",
        "--bins",
    ]));
    let root = project_root();
    let assets = root.join("target/assets");
    let man = assets.join("man/man1");
    let _ = std::fs::remove_dir_all(&assets);
    for dir in [&man, &assets.join("completions")] {
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("xtask: cannot create {}: {e}", dir.display());
            exit(1);
        }
    }
    for tool in TOOLS {
        let bin = target_dir().join("debug").join(tool);
        run(Command::new(&bin).arg("--help"));
        run(Command::new(&bin).args(["man", "--dir"]).arg(&man));
        for (shell, file) in [
            ("bash", format!("{tool}.bash")),
            ("zsh", format!("_{tool}")),
            ("fish", format!("{tool}.fish")),
        ] {
            let out = assets.join("completions").join(file);
            let output = Command::new(&bin).args(["completions", shell]).output();
            match output {
                Ok(o) if o.status.success() && !o.stdout.is_empty() => {
                    if let Err(e) = std::fs::write(&out, &o.stdout) {
                        eprintln!("xtask: cannot write {}: {e}", out.display());
                        exit(1);
                    }
                }
                other => {
                    eprintln!("xtask: {tool} completions {shell} failed: {other:?}");
                    exit(1);
                }
            }
        }
        run(Command::new("bash")
            .arg("-n")
            .arg(assets.join(format!("completions/{tool}.bash"))));
    }
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&man)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    pages.sort();
    for page in &pages {
        // -ww: all warnings; -z: format, print nothing. groff exits 0 even
        // with warnings, so any output on stderr fails the step.
        let out = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(page)
            .output();
        match out {
            Ok(o) if o.status.success() && o.stderr.is_empty() => {}
            other => {
                eprintln!("xtask: groff rejects {}: {other:?}", page.display());
                exit(1);
            }
        }
    }
    eprintln!(
        "{} man pages and {} completion scripts in {}",
        pages.len(),
        TOOLS.len() * 3,
        assets.display()
    );
}

/// The binaries `cargo install --path cli`, `--path examples` and `--path
/// provision` install and that answer `--version` (not the QEMU wrapper,
/// which hands every argument to QEMU).
const INSTALLED: &[&str] = &[
    "ivchan",
    "ivchan-guest",
    "ivchan-host-agent",
    "ivchan-host-agent-async",
    "ivchan-guest-agent",
    "ivchan-demo",
    "ivchan-provision",
];

/// Installs the tools and agents as the README says, into a clean
/// directory laid out like a system (`target/install-root`, prefix
/// `/usr/local`), adds the systemd units, the udev rule, the man pages and
/// completions, and verifies the units there with `systemd-analyze verify
/// --root`: their ExecStart binaries and Documentation man pages must be
/// the installed ones.
fn install_check() {
    step("install: cargo install --path cli, examples, provision into target/install-root");
    let root = project_root().join("target/install-root");
    let _ = std::fs::remove_dir_all(&root);
    let prefix = root.join("usr/local");
    for path in ["cli", "examples", "provision"] {
        // The workspace's target directory: release artifacts are shared
        // with the e2e build instead of compiled again in a temporary one.
        run(cargo()
            .args(["install", "--locked", "--path", path, "--root"])
            .arg(&prefix)
            .args(["--target-dir", "target"]));
    }
    for bin in INSTALLED {
        let path = prefix.join("bin").join(bin);
        let out = Command::new(&path).arg("--version").output();
        match out {
            Ok(o) if o.status.success() && String::from_utf8_lossy(&o.stdout).starts_with(bin) => {
                eprint!("{}", String::from_utf8_lossy(&o.stdout));
            }
            other => {
                eprintln!("xtask: {} --version: {other:?}", path.display());
                exit(1);
            }
        }
    }
    step("install: man pages, completions, systemd units and the udev rule");
    let units = root.join("etc/systemd/system");
    let man = prefix.join("share/man/man1");
    let bash = prefix.join("share/bash-completion/completions");
    let rules = root.join("etc/udev/rules.d");
    let system = root.join("usr/lib/systemd/system");
    for dir in [&units, &man, &bash, &rules, &system] {
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("xtask: cannot create {}: {e}", dir.display());
            exit(1);
        }
    }
    for tool in TOOLS {
        let bin = prefix.join("bin").join(tool);
        run(Command::new(&bin).args(["man", "--dir"]).arg(&man));
        run(Command::new("sh").arg("-c").arg(format!(
            "'{}' completions bash > '{}'",
            bin.display(),
            bash.join(tool).display()
        )));
    }
    // The agents have no subcommands: --man and --completions, alone.
    for agent in ["ivchan-host-agent", "ivchan-guest-agent"] {
        let bin = prefix.join("bin").join(agent);
        run(Command::new("sh").arg("-c").arg(format!(
            "'{bin}' --man > '{page}' && '{bin}' --completions bash > '{script}'",
            bin = bin.display(),
            page = man.join(format!("{agent}.1")).display(),
            script = bash.join(agent).display(),
        )));
    }
    let packaging = project_root().join("packaging");
    let mut verify = Vec::new();
    for (from, to) in [("systemd", &units), ("udev", &rules)] {
        let entries = std::fs::read_dir(packaging.join(from)).map(|d| {
            let mut v: Vec<PathBuf> = d.filter_map(|e| e.ok().map(|e| e.path())).collect();
            v.sort();
            v
        });
        for file in entries.unwrap_or_default() {
            let name = file.file_name().expect("a file name");
            let dest = to.join(name);
            if let Err(e) = std::fs::copy(&file, &dest) {
                eprintln!("xtask: cannot install {}: {e}", file.display());
                exit(1);
            }
            if from == "systemd" {
                verify.push(dest);
            }
        }
    }
    // A udev rule must start a unit that is installed (udevadm has no
    // offline check in systemd 252; this catches a renamed unit).
    for rule in std::fs::read_dir(&rules).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(rule.path()).unwrap_or_default();
        for wants in text.split("ENV{SYSTEMD_WANTS}+=\"").skip(1) {
            let unit = wants.split('"').next().unwrap_or_default();
            if !units.join(unit).is_file() {
                eprintln!(
                    "xtask: {} starts {unit}, which packaging/systemd does not have",
                    rule.path().display()
                );
                exit(1);
            }
            eprintln!("{}: starts {unit} (installed)", rule.path().display());
        }
    }
    // Each ExecStart's options must be ones the installed binary takes:
    // clap rejects an unknown option before it gets to --help.
    for unit in &verify {
        let text = std::fs::read_to_string(unit).unwrap_or_default();
        for line in text.lines().filter_map(|l| l.strip_prefix("ExecStart=")) {
            let words: Vec<String> = line
                .split_whitespace()
                .filter(|w| !w.starts_with('$'))
                .map(|w| w.replace("%i", "5b7e6a0c-1d2e-4f3a-9b8c-7d6e5f4a3b2c"))
                .collect();
            let bin = root.join(words[0].trim_start_matches('/'));
            run(Command::new(bin)
                .args(&words[1..])
                .arg("--help")
                .stdout(std::process::Stdio::null()));
        }
    }
    // The units' dependencies (multi-user.target, sysinit.target, ...) come
    // from the machine's own systemd.
    run(Command::new("cp")
        .args(["-r", "--no-preserve=mode", "/lib/systemd/system/."])
        .arg(&system));
    step("install: systemd-analyze verify --root target/install-root");
    let mut cmd = Command::new("systemd-analyze");
    cmd.arg("verify")
        .arg(format!("--root={}", root.display()))
        .args(&verify)
        // Documentation=man:… is checked with man(1): against the pages
        // just installed, not the machine's.
        .env("MANPATH", prefix.join("share/man"))
        .current_dir(project_root());
    eprintln!("$ {cmd:?}");
    match cmd.output() {
        // systemd-analyze exits 0 after some complaints ("Unknown key",
        // "ignoring"): anything it prints fails the step.
        Ok(o) if o.status.success() && o.stderr.is_empty() && o.stdout.is_empty() => {
            eprintln!("{} units verified: no complaints", verify.len());
        }
        Ok(o) => {
            eprintln!(
                "xtask: systemd-analyze verify failed ({}):\n{}{}",
                o.status,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            exit(1);
        }
        Err(e) => {
            eprintln!("xtask: could not run systemd-analyze: {e}");
            exit(1);
        }
    }
}

/// The crates published to crates.io (everything else has `publish = false`).
const PUBLISHED: &[&str] = &[
    "ivchan-protocol",
    "ivchan-host",
    "ivchan-guest",
    "ivchan-cli",
    "ivchan-provision",
    "ivchan-c",
];

/// The optional features CI builds, lints, documents and tests with (not
/// `--all-features`: that would pull in the benches' iceoryx2 peer).
const CI_FEATURES: &str = "ivchan-protocol/tokio,ivchan-host/tokio,ivchan-guest/tokio";

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
        "--features",
        CI_FEATURES,
        "--",
        "-D",
        "warnings",
    ]));
    step("rustdoc");
    run(cargo()
        .args(["doc", "--workspace", "--no-deps", "--features", CI_FEATURES])
        .env("RUSTDOCFLAGS", "-D warnings"));
    publish_check();
    cli_assets();
    install_check();
    step("libvirt daemon for the real-component tests");
    if let Err(e) = libvirt::ensure() {
        eprintln!("xtask: {e}");
        exit(1);
    }
    step("tests (real components required)");
    run(cargo()
        .args(["test", "--workspace", "--features", CI_FEATURES])
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
        Some("publish-check") => publish_check(),
        Some("cli-assets") => cli_assets(),
        Some("install-check") => install_check(),
        Some("bench-report") => bench_report::run(),
        _ => {
            eprintln!(
                "usage: cargo xtask <ci|loom|miri|fuzz [SECONDS]|packages|publish-check|cli-assets|install-check|smoke|e2e [NAME…]|{}>",
                bench_report::USAGE
            );
            exit(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_dir_follows_cargo_target_dir_from_the_root() {
        let root = Path::new("/src/ivchan");
        assert_eq!(target_dir_under(root, None), root.join("target"));
        assert_eq!(target_dir_under(root, Some("".into())), root.join("target"));
        assert_eq!(
            target_dir_under(root, Some("/tmp/t".into())),
            Path::new("/tmp/t")
        );
        // Relative: where the steps' cargo, run at the root, puts it.
        assert_eq!(
            target_dir_under(root, Some("build/t".into())),
            root.join("build/t")
        );
    }
}
