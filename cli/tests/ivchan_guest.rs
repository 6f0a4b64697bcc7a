//! The `ivchan-guest` binary against a fake sysfs tree made of plain files
//! (a regular `resource2` file of the right length maps like a BAR).

use std::fs;
use std::path::Path;

use ivchan_guest::{select, MapOptions, Selector, VmUuid};
use ivchan_protocol::{Header, InitParams};
use ivchan_testkit::sysfs::{Dev, FakeSysfs};

mod support;
use support::golden;

const VM_A: &str = "5b7e6a0c-1d2e-4f3a-9b8c-7d6e5f4a3b2c";
const VM_B: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";

/// Writes an ivchan header into a device's fake BAR.
fn write_header(sys: &FakeSysfs, address: &str, uuid: &str, name: &str) {
    let bar = select(
        sys.root(),
        &Selector::Address(address.into()),
        &MapOptions::default(),
    )
    .expect("map");
    let uuid: VmUuid = uuid.parse().expect("uuid");
    let params = InitParams {
        uuid: *uuid.as_bytes(),
        name,
        ring_size: None,
    };
    Header::create(bar.region(), &params).expect("header");
}

fn ivchan_guest(root: &Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ivchan-guest"))
        .arg("--sysfs")
        .arg(root)
        .args(args)
        // Log output is what -v/-q choose, not the caller's environment.
        .env_remove("RUST_LOG")
        .output()
        .expect("run ivchan-guest");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_lists_and_inspects() {
    let sys = FakeSysfs::new();
    let (ok, _, err) = ivchan_guest(sys.root(), &["list"]);
    assert!(!ok);
    assert!(err.starts_with("ivchan-guest: no ivshmem device"), "{err}");

    sys.set_product_uuid(VM_A);
    sys.add(&Dev::ivshmem("0000:00:1e.0"));
    sys.add(&Dev::ivshmem("0000:00:1f.0"));
    let off_dir = sys.add(&Dev {
        enabled: false,
        ..Dev::ivshmem("0000:00:10.0")
    });
    write_header(&sys, "0000:00:1e.0", VM_B, "theirs");
    write_header(&sys, "0000:00:1f.0", VM_A, "ours");

    let (ok, out, err) = ivchan_guest(sys.root(), &["list"]);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("this VM   {VM_A}")), "{out}");
    assert!(out.contains("Inter-VM shared memory"), "{out}");
    assert!(
        out.contains("kind      plain  BAR2 8 MiB  enabled yes"),
        "{out}"
    );
    assert!(out.contains("\"theirs\" vm 0f1e2d3c"), "{out}");
    assert!(out.contains("[ANOTHER VM]"), "{out}");
    assert!(out.contains("\"ours\" vm 5b7e6a0c"), "{out}");
    assert!(out.contains("[matches this VM]"), "{out}");
    assert!(out.contains("memory decoding off"), "{out}");
    // `list` does not enable anything.
    assert_eq!(
        fs::read_to_string(off_dir.join("enable"))
            .expect("read")
            .trim(),
        "0"
    );

    let (ok, out, err) = ivchan_guest(sys.root(), &["inspect"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("0000:00:1f.0\n"), "{out}");
    assert!(out.contains("identity  matches this VM"), "{out}");
    assert!(out.contains("name      \"ours\""), "{out}");
    assert!(
        out.contains("guest->host  head 0  tail 0  used 0 of"),
        "{out}"
    );
    if std::env::var_os("IVCHAN_SHOW").is_some() {
        println!("{out}");
    }

    let (ok, out, err) = ivchan_guest(sys.root(), &["inspect", "--address", "0000:00:1e.0"]);
    assert!(ok, "{err}");
    assert!(out.contains("identity  MISMATCH"), "{out}");

    let (ok, _, err) = ivchan_guest(sys.root(), &["inspect", "--address", "0000:00:02.0"]);
    assert!(!ok);
    assert!(err.contains("no ivshmem device at 0000:00:02.0"), "{err}");
}

#[test]
fn json_output_has_stable_fields() {
    let sys = FakeSysfs::new();
    sys.set_product_uuid(VM_A);
    sys.add(&Dev::ivshmem("0000:00:1e.0"));
    sys.add(&Dev::ivshmem("0000:00:1f.0"));
    sys.add(&Dev {
        enabled: false,
        ..Dev::ivshmem("0000:00:10.0")
    });
    write_header(&sys, "0000:00:1e.0", VM_B, "theirs");
    write_header(&sys, "0000:00:1f.0", VM_A, "ours");

    let (ok, out, err) = ivchan_guest(sys.root(), &["list", "--json"]);
    assert!(ok, "{err}");
    golden("guest-list.json", &out);
    let parsed: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(parsed["devices"][2]["identity"], "this-vm");

    let (ok, out, err) = ivchan_guest(sys.root(), &["inspect", "--json"]);
    assert!(ok, "{err}");
    golden("guest-inspect.json", &out);
}

#[test]
fn completions_and_man_pages() {
    let sys = FakeSysfs::new();
    let (ok, script, err) = ivchan_guest(sys.root(), &["completions", "bash"]);
    assert!(ok, "{err}");
    assert!(script.contains("inspect") && script.contains("--address"));
    let (ok, out, err) = ivchan_guest(sys.root(), &["--version"]);
    assert!(ok, "{err}");
    assert_eq!(out, format!("ivchan-guest {}\n", env!("CARGO_PKG_VERSION")));
    let (ok, page, err) = ivchan_guest(sys.root(), &["man"]);
    assert!(ok, "{err}");
    assert!(page.contains(".TH ivchan-guest 1"), "{page}");
}

#[test]
fn very_verbose_says_why_each_device_was_passed_over() {
    let sys = FakeSysfs::new();
    sys.set_product_uuid(VM_A);
    sys.add(&Dev::ivshmem("0000:00:1e.0"));
    sys.add(&Dev::ivshmem("0000:00:1f.0"));
    write_header(&sys, "0000:00:1e.0", VM_B, "theirs");
    write_header(&sys, "0000:00:1f.0", VM_A, "ours");
    let (ok, _, err) = ivchan_guest(sys.root(), &["-vv", "inspect"]);
    assert!(ok, "{err}");
    assert!(
        err.contains(&format!(
            "0000:00:1e.0: channel \"theirs\" of VM {VM_B}: passed over (looking for"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "0000:00:1f.0: channel \"ours\" of VM {VM_A}: matches"
        )),
        "{err}"
    );
    let (ok, _, err) = ivchan_guest(sys.root(), &["inspect"]);
    assert!(ok && err.is_empty(), "{err}");
}
