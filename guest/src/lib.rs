//! ivchan's guest side: find the ivshmem device under sysfs, map its BAR2,
//! check that the region is this VM's, and exchange messages
//! ([`GuestChannel`]).
//!
//! ```no_run
//! use std::path::Path;
//! use std::time::Duration;
//! use ivchan_guest::{select_waiting, MapOptions, Selector};
//!
//! // The device whose header carries this VM's UUID (product_uuid).
//! let bar = select_waiting(Path::new("/sys"), &Selector::Identity,
//!                          &MapOptions::default(), Duration::from_secs(30))?;
//! let header = bar.header()?;
//! println!("{}", ivchan_protocol::report::describe(&header));
//! # Ok::<(), ivchan_guest::GuestError>(())
//! ```
//!
//! Mapping needs root (sysfs `resource2` is 0600) and a kernel that is not in
//! lockdown mode. All `unsafe` code is in [`mapping`].

pub mod channel;
pub mod discovery;
mod error;
pub mod mapping;
pub mod select;

pub use channel::{GuestChannel, GuestChannelBuilder, DEFAULT_OPEN_TIMEOUT};
pub use discovery::{discover, product_uuid, DeviceKind, IvshmemDevice};
pub use error::GuestError;
pub use ivchan_protocol::{
    Channel, ChannelError, ChannelOptions, OwnedChannel, PeerEvent, WaitStrategy,
};
pub use ivchan_protocol::{UuidError, VmUuid};
pub use mapping::{MapOptions, MappedBar, Registers};
pub use select::{select, select_waiting, Selector};
