//! The `ivchan-guest` binary against a fake sysfs tree made of plain files
//! (a regular `resource2` file of the right length maps like a BAR).

use std::fs;
use std::path::{Path, PathBuf};

use ivchan_guest::{select, MapOptions, Selector, VmUuid};
use ivchan_protocol::{Header, InitParams};

const MIB: u64 = 1 << 20;
const VM_A: &str = "5b7e6a0c-1d2e-4f3a-9b8c-7d6e5f4a3b2c";
const VM_B: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";

/// A sysfs root with ivshmem-plain devices (8 MiB BAR2, no BAR1) in it.
struct FakeSysfs {
    dir: tempfile::TempDir,
}

impl FakeSysfs {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(dir.path().join("bus/pci/devices")).expect("mkdir");
        Self { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn set_product_uuid(&self, text: &str) {
        let dir = self.root().join("class/dmi/id");
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join("product_uuid"), format!("{text}\n")).expect("write");
    }

    /// Adds an ivshmem-plain device at `address`; returns its directory.
    fn add_ivshmem(&self, address: &str, enabled: bool) -> PathBuf {
        let bar2 = 8 * MIB;
        let dir = self.root().join("bus/pci/devices").join(address);
        fs::create_dir_all(&dir).expect("mkdir");
        let w = |name: &str, text: String| fs::write(dir.join(name), text).expect("write");
        w("vendor", "0x1af4\n".into());
        w("device", "0x1110\n".into());
        w("revision", "0x01\n".into());
        w("subsystem_vendor", "0x1af4\n".into());
        w("subsystem_device", "0x1100\n".into());
        w("enable", if enabled { "1\n" } else { "0\n" }.into());
        let line = |start: u64, size: u64, flags: u64| {
            if size == 0 {
                "0x0000000000000000 0x0000000000000000 0x0000000000000000\n".to_owned()
            } else {
                format!("{start:#018x} {:#018x} {flags:#018x}\n", start + size - 1)
            }
        };
        let mut resource = line(0xfebf_1000, 256, 0x40200);
        resource += &line(0xfebf_2000, 0, 0x40200);
        resource += &line(0xfe00_0000_0000, bar2, 0x14220c);
        for _ in 3..7 {
            resource += &line(0, 0, 0);
        }
        w("resource", resource);
        let bar = fs::File::create(dir.join("resource2")).expect("create");
        bar.set_len(bar2).expect("size");
        dir
    }

    /// Writes an ivchan header into a device's fake BAR.
    fn write_header(&self, address: &str, uuid: &str, name: &str) {
        let bar = select(
            self.root(),
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
}

fn ivchan_guest(root: &Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ivchan-guest"))
        .arg("--sysfs")
        .arg(root)
        .args(args)
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
    sys.add_ivshmem("0000:00:1e.0", true);
    sys.add_ivshmem("0000:00:1f.0", true);
    let off_dir = sys.add_ivshmem("0000:00:10.0", false);
    sys.write_header("0000:00:1e.0", VM_B, "theirs");
    sys.write_header("0000:00:1f.0", VM_A, "ours");

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
