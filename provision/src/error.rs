//! The crate's error type: one variant per way provisioning can fail, each
//! message carrying the offending value.

use std::path::PathBuf;

/// Everything that can go wrong while provisioning.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("malformed XML at byte {pos}: {msg}")]
    Malformed { pos: usize, msg: String },
    #[error("the root element is <{0}>, expected <domain>")]
    NotDomain(String),
    #[error("the domain has no <uuid> element (libvirt adds one on define; dump the defined domain with `virsh dumpxml`)")]
    NoUuid,
    #[error("invalid domain UUID {0:?} (expected 32 hex digits, e.g. 6b9e1e0a-5c1f-4b7e-9a51-1d2c3e4f5a6b)")]
    BadUuid(String),
    /// A region size outside the protocol's limits, or not a size at all;
    /// the message says what is accepted.
    #[error(transparent)]
    Size(#[from] ivchan_protocol::naming::SizeError),
    #[error("invalid PCI {what} {value:?} (expected e.g. 0x1f)")]
    BadPciNumber { what: &'static str, value: String },
    #[error("PCI slot 0x{slot:02x} on bus 0x{bus:02x} is already used by {holder}; choose another with --slot or let the tool pick one with --pick-free-slot")]
    SlotConflict { bus: u8, slot: u8, holder: String },
    #[error("no free PCI slot left on bus 0x{0:02x}")]
    NoFreeSlot(u8),
    #[error("unknown model {0:?} (expected ivshmem-plain or ivshmem-doorbell)")]
    UnknownModel(String),
    #[error("unknown role {0:?} (expected master, the migratable default, or peer)")]
    UnknownRole(String),
    #[error("model ivshmem-doorbell needs the ivshmem server's socket (--server PATH)")]
    DoorbellNeedsServer,
    #[error("--server {0:?} is only for model ivshmem-doorbell; the ivshmem-plain model has no server (add --model ivshmem-doorbell, or drop --server)")]
    PlainWithServer(PathBuf),
    #[error(
        "--vectors is only for model ivshmem-doorbell; the ivshmem-plain model has no interrupts"
    )]
    PlainWithVectors,
    #[error("region path {0:?} has no {{uuid}} in its file name, so every VM would get the same region; use e.g. /dev/shm/fg_{{uuid}}")]
    RegionWithoutUuid(String),
    #[error("the domain has no PCI bus {bus} (no <controller type='pci' index='{bus}'>); its PCI buses are: {have}")]
    NoSuchBus { bus: u8, have: String },
    #[error(
        "bus {bus} is a {model}, which has a single slot 0; slot 0x{slot:02x} does not exist there"
    )]
    PortHasOneSlot { bus: u8, model: String, slot: u8 },
    #[error("domain {dom} has no free hot-pluggable PCIe port (a pcie-root-port with nothing on it), and libvirt cannot add a controller to a running domain; `ivchan-provision apply {dom}` adds the device with its own pcie-root-port for the next start, or define the domain with spare <controller type='pci' model='pcie-root-port'/> elements")]
    NoHotplugPort { dom: String },
    #[error("the domain already has an ivshmem device through {route} that this tool cannot update ({why}); run `undo` first")]
    CannotUpdate { route: &'static str, why: String },
    #[error("{path} is read-only (mode {mode:04o}); pass --force to rewrite it anyway")]
    ReadOnly { path: PathBuf, mode: u32 },
    #[error("the domain has no <devices> element to add the device to")]
    NoDevices,
    #[error("the domain already gets an ivshmem device through the {0} route; undo that first (one route per domain)")]
    OtherRoute(&'static str),
    #[error("{0}")]
    Unsupported(String),
    #[error("cannot connect to libvirt at {uri}: {msg}")]
    NoConnection { uri: String, msg: String },
    #[error("virsh {args}: {msg}")]
    Libvirt { args: String, msg: String },
    #[error("domain {0} has no ACPI (<features><acpi/></features>), so QEMU cannot hotplug PCI devices into it (\"Bus 'pci.0' does not support hotplugging\"); use `ivchan-provision apply` to change its definition and restart it")]
    NoAcpi(String),
    #[error("domain {0} is not running; use `ivchan-provision apply` for a defined domain")]
    NotRunning(String),
    #[error("{program} is not installed or not in PATH: {source}")]
    MissingProgram {
        program: String,
        source: std::io::Error,
    },
    #[error("QMP: {0}")]
    Qmp(String),
    #[error("region file {path}: {msg}")]
    Region { path: PathBuf, msg: String },
    #[error("region file: {0}")]
    RegionFile(#[from] ivchan_host::RegionError),
    #[error("hook: {0}")]
    Hook(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

impl Error {
    /// Wrap an I/O error with what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;
