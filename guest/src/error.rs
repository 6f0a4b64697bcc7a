//! The guest side's error type.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use ivchan_protocol::LayoutError;

use crate::VmUuid;

/// Everything that can go wrong finding, mapping and checking the device.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GuestError {
    /// Not a PCI address.
    #[error("{text:?} is not a PCI address: expected DOMAIN:BUS:SLOT.FUNCTION in hex, e.g. 0000:00:1f.0")]
    BadAddress {
        /// What was given.
        text: String,
    },
    /// An I/O error on a sysfs file.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What we were doing.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// EACCES: sysfs PCI resources and `product_uuid` are root-only.
    #[error("permission denied: cannot {op} {path}{hint}")]
    PermissionDenied {
        /// The file.
        path: PathBuf,
        /// What we were doing.
        op: &'static str,
        /// Extra advice (empty when running as root).
        hint: &'static str,
    },
    /// EPERM from mmap: the kernel refuses to map the BAR.
    #[error("cannot map {path}: operation not permitted; kernel lockdown may forbid mapping PCI BARs (see /sys/kernel/security/lockdown)")]
    Lockdown {
        /// The resource file.
        path: PathBuf,
    },
    /// A sysfs file whose content is not what the kernel writes.
    #[error("unexpected content {value:?} in {path}")]
    BadSysfsValue {
        /// The file.
        path: PathBuf,
        /// What it held (truncated).
        value: String,
    },
    /// A channel operation failed.
    #[error("{address}: {source}")]
    Channel {
        /// PCI address of the device.
        address: String,
        /// What failed.
        #[source]
        source: ivchan_protocol::ChannelError,
    },
    /// No ivshmem device at all.
    #[error("no ivshmem device (PCI 1af4:1110) under {root}/bus/pci/devices; does the VM have an ivshmem-plain device?")]
    NoDevice {
        /// The sysfs root searched.
        root: PathBuf,
    },
    /// The requested PCI address is not an ivshmem device.
    #[error("no ivshmem device at {address}; ivshmem devices present: {available}")]
    NoSuchAddress {
        /// The address asked for.
        address: String,
        /// Addresses that do exist, comma-separated.
        available: String,
    },
    /// BAR2 smaller than ivchan's minimum region.
    #[error("BAR2 of {address} is {size} bytes, smaller than the {min}-byte minimum")]
    BarTooSmall {
        /// PCI address.
        address: String,
        /// BAR2 size in bytes.
        size: u64,
        /// The minimum.
        min: usize,
    },
    /// `resource2_wc` does not exist (BAR not prefetchable, or old kernel).
    #[error("write-combining mapping unavailable: {path} does not exist")]
    NoWriteCombining {
        /// The missing file.
        path: PathBuf,
    },
    /// The region header is missing or invalid.
    #[error("region header of {address}: {source}")]
    Layout {
        /// PCI address.
        address: String,
        /// What is wrong with it.
        source: LayoutError,
    },
    /// The host did not initialise the header in time.
    #[error("no ivchan header in {address} after {waited:?}; is the host agent running?")]
    Timeout {
        /// PCI address.
        address: String,
        /// How long we waited.
        waited: Duration,
    },
    /// The region belongs to another VM.
    #[error("region of {address} belongs to VM {header}, but this VM is {this_vm}")]
    WrongVm {
        /// PCI address.
        address: String,
        /// UUID in the region header.
        header: VmUuid,
        /// This VM's UUID (`product_uuid`).
        this_vm: VmUuid,
    },
    /// No device matched the selector.
    #[error("no ivshmem device matches {wanted}: {reasons}")]
    NoMatch {
        /// What was asked for.
        wanted: String,
        /// Why each device was passed over, `; `-separated.
        reasons: String,
        /// Devices with no header yet (a later attempt may match).
        waiting: Vec<String>,
    },
    /// A wake source could not be set up (asked for explicitly).
    #[error("{address}: cannot wait for interrupts through {route}: {reason}")]
    Wake {
        /// PCI address.
        address: String,
        /// `"VFIO"` or `"driver"`.
        route: &'static str,
        /// Why.
        reason: String,
    },
    /// Several devices matched the selector.
    #[error("several ivshmem devices match {wanted}: {addresses}; pick one by address")]
    Ambiguous {
        /// What was asked for.
        wanted: String,
        /// The matching addresses, comma-separated.
        addresses: String,
    },
}
