//! Finding ivshmem devices under sysfs.
//!
//! Every function takes the sysfs root (normally `/sys`) so tests can point
//! it at a fake tree of plain files. Devices are read from
//! `<root>/bus/pci/devices/<address>/`: `vendor`, `device`, `revision`,
//! `subsystem_vendor`, `subsystem_device`, `resource` and `enable`.
//!
//! ## Plain or doorbell
//!
//! Both `ivshmem-plain` and `ivshmem-doorbell` have a 256-byte register BAR0
//! and the shared memory in BAR2. QEMU gives the doorbell device MSI-X with
//! an exclusive BAR for its table, BAR1 (`msix_init_exclusive_bar(dev,
//! vectors, 1, …)` in `hw/misc/ivshmem.c`); the plain device never has it.
//! So a non-empty BAR1 means doorbell. (A doorbell device started with
//! `msi=off` has no BAR1 and shows as plain; without MSI-X it cannot raise
//! guest interrupts anyway.)

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::{GuestError, VmUuid};

/// PCI vendor of ivshmem (Red Hat, Inc. / Qumranet).
pub const IVSHMEM_VENDOR: u16 = 0x1af4;
/// PCI device id of ivshmem (all variants).
pub const IVSHMEM_DEVICE: u16 = 0x1110;
/// The PCI ID repository's name for [`IVSHMEM_VENDOR`].
pub const IVSHMEM_VENDOR_NAME: &str = "Red Hat, Inc.";
/// The PCI ID repository's name for [`IVSHMEM_DEVICE`] of that vendor.
pub const IVSHMEM_DEVICE_NAME: &str = "QEMU Inter-VM shared memory device";
/// The default sysfs mount point.
pub const DEFAULT_SYSFS: &str = "/sys";

/// Which ivshmem variant a device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// `ivshmem-plain`: memory only, no interrupts.
    Plain,
    /// `ivshmem-doorbell`: registers in BAR0 and MSI-X (table in BAR1).
    Doorbell,
}

impl DeviceKind {
    /// `"plain"` or `"doorbell"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Doorbell => "doorbell",
        }
    }
}

/// One ivshmem device as sysfs describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IvshmemDevice {
    /// PCI address, e.g. `0000:00:1f.0`.
    pub address: String,
    /// The device's sysfs directory.
    pub sysfs_dir: PathBuf,
    /// PCI revision (1 for ivshmem-plain/doorbell, 0 for the removed legacy device).
    pub revision: u8,
    /// Subsystem vendor id.
    pub subsystem_vendor: u16,
    /// Subsystem device id.
    pub subsystem_device: u16,
    /// Plain or doorbell.
    pub kind: DeviceKind,
    /// Size of BAR2 (the shared memory) in bytes, 0 if unassigned.
    pub bar2_size: u64,
    /// Whether the kernel has enabled the device (`enable` > 0). No kernel
    /// driver binds ivshmem, so in a real guest this is usually `false`
    /// until someone writes `1` to `enable`, even though the firmware has
    /// already turned memory decoding on (see [`memory_decoding`](Self::memory_decoding)).
    pub enabled: bool,
    /// The Memory Space bit of the PCI command register (byte 4 of
    /// `config`, bit 1): whether BAR2 reads reach the memory right now.
    /// `None` if `config` is missing or too short.
    pub memory_decoding: Option<bool>,
}

impl IvshmemDevice {
    /// Vendor name, as the PCI ID repository has it ([`IVSHMEM_VENDOR_NAME`]:
    /// discovery only returns ivshmem devices, so it is always that one).
    pub fn vendor_name(&self) -> &'static str {
        IVSHMEM_VENDOR_NAME
    }

    /// Device name, as the PCI ID repository has it ([`IVSHMEM_DEVICE_NAME`]).
    pub fn device_name(&self) -> &'static str {
        IVSHMEM_DEVICE_NAME
    }

    /// Path of the BAR2 resource file (`resource2`, or `resource2_wc`).
    pub fn bar2_path(&self, write_combining: bool) -> PathBuf {
        self.sysfs_dir.join(if write_combining {
            "resource2_wc"
        } else {
            "resource2"
        })
    }

    /// True if BAR2 can be read now: memory decoding on per `config`, or,
    /// when `config` cannot be read, the device is enabled.
    pub fn readable(&self) -> bool {
        self.memory_decoding.unwrap_or(self.enabled)
    }

    /// Turns memory decoding on (writes `1` to `enable`) unless it is on.
    pub fn enable(&mut self) -> Result<(), GuestError> {
        if self.enabled {
            return Ok(());
        }
        let path = self.sysfs_dir.join("enable");
        fs::write(&path, b"1").map_err(|e| GuestError::from_io(&path, "enable the device", e))?;
        log::info!("{}: enabled the device", self.address);
        self.enabled = true;
        self.memory_decoding = read_memory_decoding(&self.sysfs_dir);
        Ok(())
    }
}

fn read_text(path: &Path) -> Result<String, GuestError> {
    fs::read_to_string(path).map_err(|e| GuestError::from_io(path, "read", e))
}

fn bad_value(path: &Path, value: &str) -> GuestError {
    GuestError::BadSysfsValue {
        path: path.to_path_buf(),
        value: value.chars().take(80).collect(),
    }
}

/// Reads a `0x…` hex number file such as `vendor` or `revision`.
fn read_hex(path: &Path) -> Result<u64, GuestError> {
    let text = read_text(path)?;
    let trimmed = text.trim();
    let digits = trimmed
        .strip_prefix("0x")
        .ok_or_else(|| bad_value(path, trimmed))?;
    u64::from_str_radix(digits, 16).map_err(|_| bad_value(path, trimmed))
}

fn read_id(path: &Path) -> Result<u16, GuestError> {
    let value = read_hex(path)?;
    u16::try_from(value).map_err(|_| bad_value(path, &format!("{value:#x}")))
}

/// Sizes of the BARs from a `resource` file (`0xSTART 0xEND 0xFLAGS` per
/// line; an unused BAR is all zeros).
fn bar_sizes(path: &Path) -> Result<Vec<u64>, GuestError> {
    let text = read_text(path)?;
    let mut sizes = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace().map(|f| {
            f.strip_prefix("0x")
                .and_then(|d| u64::from_str_radix(d, 16).ok())
        });
        let (Some(Some(start)), Some(Some(end))) = (fields.next(), fields.next()) else {
            return Err(bad_value(path, line));
        };
        sizes.push(if end == 0 && start == 0 {
            0
        } else {
            end.checked_sub(start)
                .and_then(|s| s.checked_add(1))
                .ok_or_else(|| bad_value(path, line))?
        });
    }
    Ok(sizes)
}

/// Reads one device directory; `None` if it is not ivshmem.
fn read_device(dir: &Path, address: &str) -> Result<Option<IvshmemDevice>, GuestError> {
    if read_id(&dir.join("vendor"))? != IVSHMEM_VENDOR
        || read_id(&dir.join("device"))? != IVSHMEM_DEVICE
    {
        return Ok(None);
    }
    let revision_path = dir.join("revision");
    let revision = read_hex(&revision_path)?;
    let revision =
        u8::try_from(revision).map_err(|_| bad_value(&revision_path, &format!("{revision:#x}")))?;
    let bars = bar_sizes(&dir.join("resource"))?;
    let bar = |i: usize| bars.get(i).copied().unwrap_or(0);
    let enable_path = dir.join("enable");
    let enable = read_text(&enable_path)?;
    let enabled = enable
        .trim()
        .parse::<u64>()
        .map_err(|_| bad_value(&enable_path, enable.trim()))?
        > 0;
    Ok(Some(IvshmemDevice {
        address: address.to_owned(),
        sysfs_dir: dir.to_path_buf(),
        revision,
        subsystem_vendor: read_id(&dir.join("subsystem_vendor"))?,
        subsystem_device: read_id(&dir.join("subsystem_device"))?,
        kind: if bar(1) > 0 {
            DeviceKind::Doorbell
        } else {
            DeviceKind::Plain
        },
        bar2_size: bar(2),
        enabled,
        memory_decoding: read_memory_decoding(dir),
    }))
}

/// Bit 1 (Memory Space) of the command register at offset 4 of `config`.
fn read_memory_decoding(dir: &Path) -> Option<bool> {
    let config = fs::read(dir.join("config")).ok()?;
    config.get(4).map(|command| command & 0x02 != 0)
}

/// All ivshmem devices under `<sysfs_root>/bus/pci/devices`, sorted by
/// address. Other devices are ignored; an empty list is not an error here
/// (see [`GuestError::NoDevice`] in selection).
pub fn discover(sysfs_root: &Path) -> Result<Vec<IvshmemDevice>, GuestError> {
    let devices_dir = sysfs_root.join("bus/pci/devices");
    let entries =
        fs::read_dir(&devices_dir).map_err(|e| GuestError::from_io(&devices_dir, "list", e))?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| GuestError::from_io(&devices_dir, "list", e))?;
        let Some(address) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        // Entries are symlinks into /sys/devices; join follows them.
        let dir = devices_dir.join(&address);
        // A device that is not ivshmem may lack some files: only a read
        // error on an ivshmem device's own files is reported.
        match read_id(&dir.join("vendor")) {
            Ok(IVSHMEM_VENDOR) => {}
            _ => continue,
        }
        if let Some(device) = read_device(&dir, &address)? {
            found.push(device);
        }
    }
    found.sort_by(|a, b| a.address.cmp(&b.address));
    log::debug!(
        "{} ivshmem device(s) under {}: {}",
        found.len(),
        devices_dir.display(),
        found
            .iter()
            .map(|d| format!(
                "{} ({}, BAR2 {} bytes)",
                d.address,
                d.kind.as_str(),
                d.bar2_size
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(found)
}

/// This VM's UUID from `<sysfs_root>/class/dmi/id/product_uuid` (readable by
/// root only; upper or lower case).
pub fn product_uuid(sysfs_root: &Path) -> Result<VmUuid, GuestError> {
    let path = sysfs_root.join("class/dmi/id/product_uuid");
    let text = read_text(&path)?;
    text.trim()
        .parse()
        .map_err(|_| bad_value(&path, text.trim()))
}

impl GuestError {
    /// Classifies an I/O error on a sysfs path.
    pub(crate) fn from_io(path: &Path, op: &'static str, source: io::Error) -> Self {
        let path = path.to_path_buf();
        match source.kind() {
            io::ErrorKind::PermissionDenied => Self::PermissionDenied {
                path,
                op,
                hint: not_root_hint(),
            },
            _ => Self::Io { path, op, source },
        }
    }
}

pub(crate) fn not_root_hint() -> &'static str {
    if nix::unistd::geteuid().is_root() {
        ""
    } else {
        " (not running as root: sysfs PCI resources need root)"
    }
}
