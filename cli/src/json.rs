//! The `--json` output of `list` and `inspect`, on the host (`ivchan`) and in
//! the guest (`ivchan-guest`).
//!
//! Field names are a stable interface: scripts read them, and the golden
//! tests in `cli/tests/` fail when one changes. Fields are only ever added.
//! Every field is always present; `null` means "not known" (a header that
//! could not be read, a side block that is invalid). Sizes, positions and
//! counters are numbers; PCI ids and file modes are strings (`"1af4"`,
//! `"0600"`), as `lspci` and `ls` show them.
//!
//! Everything in a header may come from an untrusted peer: positions are
//! shown as found, and `used` is `null` when they make no sense.
//!
//! # Schema
//!
//! `ivchan list --json`: `{"dir", "prefix", "regions": [Region…]}`;
//! `ivchan inspect --json`: one `Region`.
//!
//! ```text
//! Region   {"path", "file": File|null, "error": string|null,
//!           "header": Header|null, "header_error": string|null,
//!           "liveness": {"host": Liveness, "guest": Liveness}|null}
//! File     {"size", "uid", "owner": string|null, "mode": "0600"}
//! Liveness "alive" | "stale" | "absent" | "closed" | "invalid"
//! ```
//!
//! `ivchan-guest list --json`: `{"this_vm": uuid|null, "this_vm_error",
//! "devices": [Device…]}`; `ivchan-guest inspect --json`: one `Device`.
//!
//! ```text
//! Device   {"address", "vendor": "1af4", "device": "1110", "vendor_name",
//!           "device_name", "subsystem_vendor", "subsystem_device",
//!           "revision", "kind": "plain"|"doorbell", "bar2_size", "enabled",
//!           "memory_decoding": bool|null, "header": Header|null,
//!           "header_error": string|null,
//!           "identity": "this-vm"|"another-vm"|"unknown"|null}
//! ```
//!
//! Both sides:
//!
//! ```text
//! Header   {"protocol": {"major", "minor", "compat_features"}, "vm_uuid",
//!           "name": string|null (null: not UTF-8), "size",
//!           "rings": {"host_to_guest": Ring, "guest_to_host": Ring},
//!           "sides": {"host": Side, "guest": Side}}
//! Ring     {"control_offset", "data_offset", "capacity", "head", "tail",
//!           "used": number|null}
//! Side     {"state": "absent"|"ready"|"closed"|null, "epoch"|null,
//!           "heartbeat"|null, "doorbell": {"peer", "vectors"}|null,
//!           "error": string|null}
//! ```

use serde::Serialize;

use ivchan_protocol::layout::VERSION_MAJOR;
use ivchan_protocol::{Direction, Header, PeerState, RingPlace, Side as ProtoSide, VmUuid};

/// A region header, as both tools report it.
#[derive(Debug, Clone, Serialize)]
pub struct HeaderReport {
    /// Protocol version and compatible feature bits.
    pub protocol: ProtocolVersion,
    /// The VM UUID the header carries.
    pub vm_uuid: String,
    /// The channel name; `None` if it is not UTF-8.
    pub name: Option<String>,
    /// Region size in bytes, as the header states it.
    pub size: u64,
    /// Both rings.
    pub rings: Rings,
    /// Both side blocks.
    pub sides: Sides<SideReport>,
}

/// `{"major", "minor", "compat_features"}`.
#[derive(Debug, Clone, Serialize)]
pub struct ProtocolVersion {
    /// Major version (the layout).
    pub major: u16,
    /// Minor version.
    pub minor: u16,
    /// Compatible feature bits.
    pub compat_features: u32,
}

/// One ring per direction.
#[derive(Debug, Clone, Serialize)]
pub struct Rings {
    /// The host-to-guest ring.
    pub host_to_guest: RingReport,
    /// The guest-to-host ring.
    pub guest_to_host: RingReport,
}

/// Where a ring is and how full it is.
#[derive(Debug, Clone, Serialize)]
pub struct RingReport {
    /// Byte offset of the ring's control block.
    pub control_offset: u64,
    /// Byte offset of the ring's data area.
    pub data_offset: u64,
    /// Size of the data area in bytes.
    pub capacity: u64,
    /// Consumer position, as found.
    pub head: u64,
    /// Producer position, as found.
    pub tail: u64,
    /// `tail - head`, or `None` when that is outside `0..=capacity`.
    pub used: Option<u64>,
}

/// Something per side: `{"host", "guest"}`.
#[derive(Debug, Clone, Serialize)]
pub struct Sides<T> {
    /// The host's.
    pub host: T,
    /// The guest's.
    pub guest: T,
}

/// A side block: state, epoch, heartbeat and doorbell.
#[derive(Debug, Clone, Serialize)]
pub struct SideReport {
    /// `"absent"`, `"ready"` or `"closed"`; `None` if the block is invalid.
    pub state: Option<&'static str>,
    /// Session epoch.
    pub epoch: Option<u64>,
    /// Heartbeat counter.
    pub heartbeat: Option<u64>,
    /// How to ring this side, if it has a doorbell.
    pub doorbell: Option<DoorbellReport>,
    /// Why the block is invalid.
    pub error: Option<String>,
}

/// `{"peer", "vectors"}`.
#[derive(Debug, Clone, Serialize)]
pub struct DoorbellReport {
    /// ivshmem peer id.
    pub peer: u16,
    /// Interrupt vectors.
    pub vectors: u16,
}

/// The protocol's name of a side state.
pub fn state_name(state: PeerState) -> &'static str {
    match state {
        PeerState::Absent => "absent",
        PeerState::Ready => "ready",
        PeerState::Closed => "closed",
    }
}

fn ring(header: &Header<'_>, direction: Direction) -> RingReport {
    let RingPlace {
        control,
        data,
        size,
    } = header.layout().ring(direction);
    let (head, tail) = header.ring_positions(direction);
    let capacity = size as u64;
    RingReport {
        control_offset: control as u64,
        data_offset: data as u64,
        capacity,
        head,
        tail,
        used: tail.checked_sub(head).filter(|used| *used <= capacity),
    }
}

fn side(header: &Header<'_>, side: ProtoSide) -> SideReport {
    match header.status(side) {
        Ok(status) => SideReport {
            state: Some(state_name(status.state)),
            epoch: Some(status.epoch),
            heartbeat: Some(status.heartbeat),
            doorbell: header.doorbell(side).map(|d| DoorbellReport {
                peer: d.peer,
                vectors: d.vectors,
            }),
            error: None,
        },
        Err(e) => SideReport {
            state: None,
            epoch: None,
            heartbeat: None,
            doorbell: None,
            error: Some(e.to_string()),
        },
    }
}

impl HeaderReport {
    /// Everything [`ivchan_protocol::report::describe`] shows, as data.
    pub fn new(header: &Header<'_>) -> Self {
        let layout = header.layout();
        Self {
            protocol: ProtocolVersion {
                major: VERSION_MAJOR,
                minor: layout.version_minor,
                compat_features: layout.compat_features,
            },
            vm_uuid: VmUuid::from_bytes(layout.uuid).to_string(),
            name: layout.name_str().map(str::to_owned),
            size: layout.region_size as u64,
            rings: Rings {
                host_to_guest: ring(header, Direction::HostToGuest),
                guest_to_host: ring(header, Direction::GuestToHost),
            },
            sides: Sides {
                host: side(header, ProtoSide::Host),
                guest: side(header, ProtoSide::Guest),
            },
        }
    }
}

/// `ivchan list --json`.
#[derive(Debug, Clone, Serialize)]
pub struct RegionList {
    /// The directory listed.
    pub dir: String,
    /// The file-name prefix before the VM UUID.
    pub prefix: String,
    /// Every region file found, in name order.
    pub regions: Vec<RegionReport>,
}

/// One region file on the host: `ivchan inspect --json`, and each entry of
/// `ivchan list --json`.
#[derive(Debug, Clone, Serialize)]
pub struct RegionReport {
    /// The file's path.
    pub path: String,
    /// Size, owner and mode; `None` if the file could not be opened.
    pub file: Option<FileReport>,
    /// Why the file could not be opened.
    pub error: Option<String>,
    /// The header; `None` if there is none yet or it is invalid.
    pub header: Option<HeaderReport>,
    /// Why there is no header (`"no header yet (all zeros)"`, or what is
    /// wrong with it).
    pub header_error: Option<String>,
    /// Each side's agent, judged from two looks at its heartbeat; `None`
    /// without a header.
    pub liveness: Option<Sides<&'static str>>,
}

/// A region file's size, owner and permission bits.
#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    /// Length in bytes.
    pub size: u64,
    /// Owner's uid.
    pub uid: u32,
    /// Owner's name, if the user database has one.
    pub owner: Option<String>,
    /// Permission bits in octal, e.g. `"0600"`.
    pub mode: String,
}

/// `ivchan-guest list --json`.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceList {
    /// This VM's UUID (`product_uuid`), if it could be read.
    pub this_vm: Option<String>,
    /// Why it could not be read.
    pub this_vm_error: Option<String>,
    /// Every ivshmem device, in address order.
    pub devices: Vec<DeviceReport>,
}

/// One ivshmem device in the guest: `ivchan-guest inspect --json`, and each
/// entry of `ivchan-guest list --json`.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceReport {
    /// PCI address, e.g. `0000:00:1f.0`.
    pub address: String,
    /// PCI vendor id, 4 hex digits.
    pub vendor: String,
    /// PCI device id, 4 hex digits.
    pub device: String,
    /// The PCI ID repository's vendor name.
    pub vendor_name: &'static str,
    /// The PCI ID repository's device name.
    pub device_name: &'static str,
    /// Subsystem vendor id, 4 hex digits.
    pub subsystem_vendor: String,
    /// Subsystem device id, 4 hex digits.
    pub subsystem_device: String,
    /// PCI revision.
    pub revision: u8,
    /// `"plain"` or `"doorbell"`.
    pub kind: &'static str,
    /// BAR2 (the shared memory) size in bytes.
    pub bar2_size: u64,
    /// Whether the kernel has enabled the device.
    pub enabled: bool,
    /// The command register's Memory Space bit; `None` if unknown.
    pub memory_decoding: Option<bool>,
    /// The region header in BAR2; `None` if not read or invalid.
    pub header: Option<HeaderReport>,
    /// Why there is no header.
    pub header_error: Option<String>,
    /// Whether the header's UUID is this VM's: `"this-vm"`, `"another-vm"`,
    /// or `"unknown"` (this VM's UUID is unknown); `None` without a header.
    pub identity: Option<&'static str>,
}

impl DeviceReport {
    /// The device's facts; the header and identity are filled in by the
    /// caller, which maps BAR2.
    pub fn new(device: &ivchan_guest::IvshmemDevice) -> Self {
        use ivchan_guest::discovery::{IVSHMEM_DEVICE, IVSHMEM_VENDOR};
        Self {
            address: device.address.clone(),
            vendor: format!("{IVSHMEM_VENDOR:04x}"),
            device: format!("{IVSHMEM_DEVICE:04x}"),
            vendor_name: device.vendor_name(),
            device_name: device.device_name(),
            subsystem_vendor: format!("{:04x}", device.subsystem_vendor),
            subsystem_device: format!("{:04x}", device.subsystem_device),
            revision: device.revision,
            kind: device.kind.as_str(),
            bar2_size: device.bar2_size,
            enabled: device.enabled,
            memory_decoding: device.memory_decoding,
            header: None,
            header_error: None,
            identity: None,
        }
    }

    /// Records the header read from BAR2 and how its UUID compares with
    /// this VM's (`None`: unknown).
    pub fn with_header(mut self, header: &Header<'_>, this_vm: Option<&VmUuid>) -> Self {
        let found = VmUuid::from_bytes(header.layout().uuid);
        self.identity = Some(match this_vm {
            Some(vm) if *vm == found => "this-vm",
            Some(_) => "another-vm",
            None => "unknown",
        });
        self.header = Some(HeaderReport::new(header));
        self
    }
}

/// Writes `value` as pretty-printed JSON and a newline to stdout, through
/// [`emit`](crate::emit).
pub fn print<T: Serialize>(program: &str, value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => crate::emit(program, format_args!("{text}\n")),
        Err(e) => {
            // Only a Serialize impl can fail here, and ours cannot.
            eprintln!("{program}: cannot encode JSON: {e}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ivchan_protocol::{InitParams, Region};

    #[test]
    fn hostile_positions_give_no_fill_level() {
        let mut memory = vec![0u64; (1 << 20) / 8];
        let control = {
            let region = Region::from_words(&mut memory);
            let params = InitParams {
                uuid: [7; 16],
                name: "t",
                ring_size: None,
            };
            let header = Header::create(region, &params).expect("create");
            let report = HeaderReport::new(&header);
            assert_eq!(report.rings.host_to_guest.used, Some(0));
            assert_eq!(report.name.as_deref(), Some("t"));
            assert_eq!(report.sides.guest.state, Some("absent"));
            header.layout().ring(Direction::HostToGuest).control
        };
        // A peer writes a tail behind the head (tail at +0x00, head at +0x80).
        memory[control / 8] = 5;
        memory[(control + 0x80) / 8] = 10;
        let header = Header::open(Region::from_words(&mut memory)).expect("open");
        let ring = HeaderReport::new(&header).rings.host_to_guest;
        assert_eq!((ring.head, ring.tail, ring.used), (10, 5, None));
    }
}
