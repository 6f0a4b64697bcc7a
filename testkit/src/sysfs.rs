//! Fake sysfs trees made of plain files, for testing ivshmem discovery
//! without a VM: PCI device directories under `bus/pci/devices` with
//! `vendor`, `device`, `enable`, `resource` and a regular `resource2` file
//! of the BAR's length (which maps like a BAR), and the DMI `product_uuid`.
//!
//! Only files are written here; anything that needs ivchan's own types
//! (such as writing a region header into a BAR) stays with the tests.

use std::fs;
use std::path::{Path, PathBuf};

const MIB: u64 = 1 << 20;

/// A sysfs root in a temporary directory, removed on drop.
pub struct FakeSysfs {
    dir: tempfile::TempDir,
}

/// One fake PCI device; [`Dev::ivshmem`] gives an ivshmem-plain one.
#[derive(Debug, Clone)]
pub struct Dev<'a> {
    /// PCI address, the device's directory name (`0000:00:1f.0`).
    pub address: &'a str,
    /// PCI vendor id (`vendor`).
    pub vendor: u16,
    /// PCI device id (`device`).
    pub device: u16,
    /// BAR1 size; 0 for none (ivshmem-plain).
    pub bar1: u64,
    /// BAR2 size: the length of `resource2`.
    pub bar2: u64,
    /// What `enable` says.
    pub enabled: bool,
    /// Whether a `resource2_wc` file exists too.
    pub wc: bool,
}

impl<'a> Dev<'a> {
    /// An enabled ivshmem-plain device (1af4:1110) with an 8 MiB BAR2,
    /// no BAR1 and no `resource2_wc`.
    pub fn ivshmem(address: &'a str) -> Self {
        Self {
            address,
            vendor: 0x1af4,
            device: 0x1110,
            bar1: 0,
            bar2: 8 * MIB,
            enabled: true,
            wc: false,
        }
    }
}

impl FakeSysfs {
    /// An empty tree: `bus/pci/devices` and nothing in it.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(dir.path().join("bus/pci/devices")).expect("mkdir");
        Self { dir }
    }

    /// The sysfs mount point to hand to the code under test.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `class/dmi/id/product_uuid` (with a trailing newline).
    pub fn set_product_uuid(&self, text: &str) {
        let dir = self.root().join("class/dmi/id");
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join("product_uuid"), format!("{text}\n")).expect("write");
    }

    /// Adds `dev`; returns its directory.
    pub fn add(&self, dev: &Dev<'_>) -> PathBuf {
        let dir = self.root().join("bus/pci/devices").join(dev.address);
        fs::create_dir_all(&dir).expect("mkdir");
        let w = |name: &str, text: String| fs::write(dir.join(name), text).expect("write");
        w("vendor", format!("{:#06x}\n", dev.vendor));
        w("device", format!("{:#06x}\n", dev.device));
        w("revision", "0x01\n".into());
        w("subsystem_vendor", "0x1af4\n".into());
        w("subsystem_device", "0x1100\n".into());
        w("enable", if dev.enabled { "1\n" } else { "0\n" }.into());
        let line = |start: u64, size: u64, flags: u64| {
            if size == 0 {
                "0x0000000000000000 0x0000000000000000 0x0000000000000000\n".to_owned()
            } else {
                format!("{start:#018x} {:#018x} {flags:#018x}\n", start + size - 1)
            }
        };
        let mut resource = line(0xfebf_1000, 256, 0x40200);
        resource += &line(0xfebf_2000, dev.bar1, 0x40200);
        resource += &line(0xfe00_0000_0000, dev.bar2, 0x14220c);
        for _ in 3..7 {
            resource += &line(0, 0, 0);
        }
        w("resource", resource);
        let bar = fs::File::create(dir.join("resource2")).expect("create");
        bar.set_len(dev.bar2).expect("size");
        if dev.wc {
            let bar = fs::File::create(dir.join("resource2_wc")).expect("create");
            bar.set_len(dev.bar2).expect("size");
        }
        dir
    }
}

impl Default for FakeSysfs {
    fn default() -> Self {
        Self::new()
    }
}
