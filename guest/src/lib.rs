//! ivchan's guest side: find the ivshmem device under sysfs, map its BAR2,
//! check that the region is this VM's, and exchange messages
//! ([`GuestChannel`]).
//!
//! ```no_run
//! use ivchan_guest::GuestChannel;
//! use std::time::Duration;
//!
//! // The device whose header carries this VM's UUID (product_uuid).
//! let mut ch = GuestChannel::open()?;
//! ch.send(b"hello from the guest", None)?;
//! let mut buf = vec![0u8; ch.max_message()];
//! let n = ch.recv(&mut buf, Some(Duration::from_secs(30)))?;
//! # let _ = n;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`GuestChannel::builder`] selects by address or channel name, maps
//! write-combining, and sets the timeout and the sysfs root; [`select()`] and
//! [`MappedBar`] are the pieces underneath, for tools that only inspect.
//!
//! Mapping needs root (sysfs `resource2` is 0600) and a kernel that is not in
//! lockdown mode. All `unsafe` code is in [`mapping`] and the VFIO ioctls.
//!
//! On an `ivshmem-doorbell` device the guest sleeps on the device's MSI-X
//! interrupt when it can: through VFIO, or through ivchan's small kernel
//! driver (`guest-driver/` in the repository); otherwise it polls
//! ([`wake`]).

#![warn(missing_docs)]

pub mod channel;
pub mod discovery;
mod error;
pub mod mapping;
pub mod select;
mod vfio;
pub mod wake;

pub use channel::{GuestChannel, GuestChannelBuilder, DEFAULT_OPEN_TIMEOUT};
pub use discovery::{discover, product_uuid, DeviceKind, IvshmemDevice};
pub use error::GuestError;
pub use ivchan_protocol::{
    Channel, ChannelError, ChannelOptions, OwnedChannel, PeerEvent, WaitStrategy,
};
pub use ivchan_protocol::{UuidError, VmUuid};
pub use mapping::{MapOptions, MappedBar, Registers};
pub use select::{parse_pci_address, select, select_waiting, Selector};
pub use wake::{WakePreference, WakeSource, WakeStats};

/// The crate README's examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
