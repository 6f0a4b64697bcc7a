//! ivchan's host side: the region file of each VM (create, open, check,
//! lock, map), host channels that own their region, and a supervisor that
//! serves many VMs from one process.
//!
//! ```no_run
//! use ivchan_host::{VmChannel, VmUuid};
//! use std::time::Duration;
//!
//! let uuid: VmUuid = "5b7e6a0c-1d2e-4f3a-9b8c-7d6e5f4a3b2c".parse()?;
//! // /dev/shm/fg_<uuid>, 8 MiB, 0600; QEMU may have created it already.
//! let mut vm = VmChannel::open(&uuid)?;
//! vm.wait_for_peer(Some(Duration::from_secs(60)))?;
//! vm.send(b"hello", None)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Many VMs: [`Supervisor`] (with [`Supervisor::serve_doorbells`] for
//! `ivshmem-doorbell` devices); one VM with doorbells:
//! [`VmChannelBuilder::doorbell`].
//!
//! The crate has no `unsafe` code: mappings are the protocol crate's
//! [`Mapping`](ivchan_protocol::Mapping). [`doorbell`] is an ivshmem
//! server for QEMU's `ivshmem-doorbell` device and eventfd
//! waiting over many VMs.

#![warn(missing_docs)]

pub mod channel;
pub mod doorbell;
pub mod region_file;
pub mod supervisor;

pub use channel::{HostError, VmChannel, VmChannelBuilder};
pub use doorbell::{
    ChannelBell, Doorbell, DoorbellError, DoorbellServer, DoorbellService, DoorbellSet, HostBell,
    ServerEvent, VmOptions, HOST_PEER_ID,
};
pub use ivchan_protocol::naming::RegionSize;
pub use ivchan_protocol::{
    Channel, ChannelError, ChannelOptions, DoorbellAddress, OwnedChannel, PeerEvent, WaitStrategy,
};
pub use region_file::{
    list_regions, InspectedRegion, PeerMapping, RegionError, RegionFile, RegionOptions,
    TrustPolicy, UuidError, VmUuid,
};
pub use supervisor::{Supervisor, VmEvent};

/// The crate README's examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
