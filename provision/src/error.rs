//! The crate's error type: one variant per way provisioning can fail, each
//! message carrying the offending value.

use std::path::PathBuf;

/// Everything that can go wrong while provisioning.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input is not well-formed XML.
    #[error("malformed XML at byte {pos}: {msg}")]
    Malformed {
        /// Byte offset of the problem.
        pos: usize,
        /// What the tokenizer found wrong.
        msg: String,
    },
    /// The document is not a libvirt domain (the root element's name).
    #[error("the root element is <{0}>, expected <domain>")]
    NotDomain(String),
    /// The domain has no `<uuid>`, so its region cannot be named.
    #[error("the domain has no <uuid> element (libvirt adds one on define; dump the defined domain with `virsh dumpxml`)")]
    NoUuid,
    /// The domain's `<uuid>` is not a UUID (the text found).
    #[error("invalid domain UUID {0:?} (expected 32 hex digits, e.g. 6b9e1e0a-5c1f-4b7e-9a51-1d2c3e4f5a6b)")]
    BadUuid(String),
    /// A region size outside the protocol's limits, or not a size at all;
    /// the message says what is accepted.
    #[error(transparent)]
    Size(#[from] ivchan_protocol::naming::SizeError),
    /// A PCI bus or slot number that does not parse or is out of range.
    #[error("invalid PCI {what} {value:?} (expected e.g. 0x1f)")]
    BadPciNumber {
        /// `"bus"` or `"slot"`.
        what: &'static str,
        /// The text given.
        value: String,
    },
    /// The requested PCI slot is taken by another device.
    #[error("PCI slot 0x{slot:02x} on bus 0x{bus:02x} is already used by {holder}; choose another with --slot or let the tool pick one with --pick-free-slot")]
    SlotConflict {
        /// The bus.
        bus: u8,
        /// The slot asked for.
        slot: u8,
        /// The device that holds it.
        holder: String,
    },
    /// `--pick-free-slot` found every slot of the bus taken.
    #[error("no free PCI slot left on bus 0x{0:02x}")]
    NoFreeSlot(u8),
    /// A device model other than `ivshmem-plain` or `ivshmem-doorbell`.
    #[error("unknown model {0:?} (expected ivshmem-plain or ivshmem-doorbell)")]
    UnknownModel(String),
    /// `ivshmem-doorbell` without the ivshmem server's socket.
    #[error("model ivshmem-doorbell needs the ivshmem server's socket (--server PATH)")]
    DoorbellNeedsServer,
    /// `--server` given for the plain model (the path).
    #[error("--server {0:?} is only for model ivshmem-doorbell; the ivshmem-plain model has no server (add --model ivshmem-doorbell, or drop --server)")]
    PlainWithServer(PathBuf),
    /// `--vectors` given for the plain model.
    #[error(
        "--vectors is only for model ivshmem-doorbell; the ivshmem-plain model has no interrupts"
    )]
    PlainWithVectors,
    /// A region path template without `{uuid}` (the path).
    #[error("region path {0:?} has no {{uuid}} in its file name, so every VM would get the same region; use e.g. /dev/shm/fg_{{uuid}}")]
    RegionWithoutUuid(String),
    /// The requested PCI bus does not exist in the domain.
    #[error("the domain has no PCI bus {bus} (no <controller type='pci' index='{bus}'>); its PCI buses are: {have}")]
    NoSuchBus {
        /// The bus asked for.
        bus: u8,
        /// The buses the domain has.
        have: String,
    },
    /// A slot other than 0 on a single-slot port.
    #[error(
        "bus {bus} is a {model}, which has a single slot 0; slot 0x{slot:02x} does not exist there"
    )]
    PortHasOneSlot {
        /// The bus.
        bus: u8,
        /// Its controller model.
        model: String,
        /// The slot asked for.
        slot: u8,
    },
    /// No free PCIe root port for a live hotplug on q35.
    #[error("domain {dom} has no free hot-pluggable PCIe port (a pcie-root-port with nothing on it), and libvirt cannot add a controller to a running domain; `ivchan-provision apply {dom}` adds the device with its own pcie-root-port for the next start, or define the domain with spare <controller type='pci' model='pcie-root-port'/> elements")]
    NoHotplugPort {
        /// The domain.
        dom: String,
    },
    /// An existing device this tool cannot update in place.
    #[error("the domain already has an ivshmem device through {route} that this tool cannot update ({why}); run `undo` first")]
    CannotUpdate {
        /// The route that added it.
        route: &'static str,
        /// Why it cannot be updated.
        why: String,
    },
    /// A read-only file to rewrite, without `--force`.
    #[error("{path} is read-only (mode {mode:04o}); pass --force to rewrite it anyway")]
    ReadOnly {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The domain has no `<devices>` element.
    #[error("the domain has no <devices> element to add the device to")]
    NoDevices,
    /// The device is already added by another route (its name).
    #[error("the domain already gets an ivshmem device through the {0} route; undo that first (one route per domain)")]
    OtherRoute(&'static str),
    /// A request this route cannot carry out (the reason).
    #[error("{0}")]
    Unsupported(String),
    /// libvirt could not be reached.
    #[error("cannot connect to libvirt at {uri}: {msg}")]
    NoConnection {
        /// The connection URI.
        uri: String,
        /// virsh's message.
        msg: String,
    },
    /// A `virsh` command failed.
    #[error("virsh {args}: {msg}")]
    Libvirt {
        /// The command's arguments.
        args: String,
        /// What it printed.
        msg: String,
    },
    /// Live hotplug into a domain without ACPI (the domain).
    #[error("domain {0} has no ACPI (<features><acpi/></features>), so QEMU cannot hotplug PCI devices into it (\"Bus 'pci.0' does not support hotplugging\"); use `ivchan-provision apply` to change its definition and restart it")]
    NoAcpi(String),
    /// Live hotplug into a domain that is not running (the domain).
    #[error("domain {0} is not running; use `ivchan-provision apply` for a defined domain")]
    NotRunning(String),
    /// A program the route needs (`virsh`, QEMU) cannot be run.
    #[error("{program} is not installed or not in PATH: {source}")]
    MissingProgram {
        /// The program.
        program: String,
        /// Why it could not be started.
        source: std::io::Error,
    },
    /// The QEMU monitor refused a command or answered nonsense.
    #[error("QMP: {0}")]
    Qmp(String),
    /// A region file is unusable.
    #[error("region file {path}: {msg}")]
    Region {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// Creating or checking a region file failed (the host crate's error).
    #[error("region file: {0}")]
    RegionFile(#[from] ivchan_host::RegionError),
    /// The libvirt hook was called with arguments it cannot handle.
    #[error("hook: {0}")]
    Hook(String),
    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
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
