//! ivchan's wire protocol: the layout of the shared region and a lock-free
//! single-producer/single-consumer ring per direction.
//!
//! The crate does no I/O and no allocation on the data path; it works on any
//! region of at least 1 MiB that it is handed as a pointer and a length
//! ([`Region`]). `no_std` without the default `std` feature.
//!
//! ```
//! use ivchan_protocol::{Header, InitParams, Region, Side};
//!
//! // Normally an mmap of /dev/shm/fg_<uuid> or of the guest's BAR2.
//! let mut memory = vec![0u64; (1 << 20) / 8];
//! let region = Region::from_words(&mut memory);
//! let params = InitParams { uuid: [7; 16], name: "demo", ring_size: None };
//! let header = Header::create(region, &params)?;
//!
//! let (mut host_tx, _host_rx) = header.split(Side::Host)?;
//! let (_guest_tx, mut guest_rx) = header.split(Side::Guest)?;
//!
//! // Copy API.
//! assert!(host_tx.send(b"hello")?);
//! let mut buf = [0u8; 64];
//! assert_eq!(guest_rx.recv_into(&mut buf)?, Some(5));
//! assert_eq!(&buf[..5], b"hello");
//!
//! // Zero-copy API: reserve, write in place, commit; peek, read, release.
//! let mut grant = host_tx.reserve(4)?.expect("ring has room");
//! grant.write(0, b"ping")?;
//! grant.commit(4)?;
//! // Peer-writable bytes are never a `&[u8]`: read them through a view.
//! let msg = guest_rx.peek()?.expect("a message");
//! assert_eq!(msg.volatile().read_u32_le(0)?, u32::from_le_bytes(*b"ping"));
//! let mut copy = [0u8; 64];
//! assert_eq!(msg.snapshot_into(&mut copy)?, b"ping");
//! msg.release();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! With the default `std` feature, [`Channel`] adds the handshake, liveness,
//! blocking calls with timeouts and `std::io` adapters on top;
//! [`OwnedChannel`] is a channel together with the memory it runs over (any
//! [`SharedMemory`], such as a [`Mapping`]): what the host and guest crates
//! hand out. [`naming`] says where a VM's region lives and how large it may
//! be; [`poll_until`] is the one retry loop.
//!
//! `docs/PROTOCOL.md` specifies the format for other implementations.

#![cfg_attr(not(feature = "std"), no_std)]
#![warn(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;

#[cfg(feature = "tokio")]
pub mod asynch;
#[cfg(feature = "std")]
pub mod channel;
mod error;
pub mod layout;
#[cfg(feature = "std")]
pub mod mapping;
#[cfg(feature = "alloc")]
mod model;
#[cfg(feature = "std")]
pub mod naming;
mod region;
#[cfg(feature = "std")]
pub mod report;
pub mod ring;
#[cfg(feature = "std")]
mod sigbus;
mod sync;
#[cfg(feature = "std")]
mod uuid;
pub mod volatile;

#[cfg(feature = "std")]
pub use channel::{
    poll_until, release_chunk, CancelToken, Channel, ChannelError, ChannelOptions, ChannelReader,
    ChannelWriter, HeartbeatHandle, Notifier, OwnedChannel, Pace, PeerEvent, WaitStrategy, Waiter,
    PUBLISH_EVERY, RELEASE_EVERY,
};
pub use error::{LayoutError, RingError, Violation};
pub use layout::{
    Direction, DoorbellAddress, Header, InitParams, Layout, PeerState, RegionRing, RingPlace, Side,
    SideStatus,
};
#[cfg(feature = "std")]
pub use mapping::{Mapping, SharedMemory};
#[cfg(feature = "alloc")]
pub use model::HeapRing;
pub use region::Region;
pub use ring::{Consumer, DirectMemory, Producer, ReadGrant, RingMemory, Word, WriteGrant};
pub use sync::Ordering;
#[cfg(feature = "std")]
pub use uuid::{UuidError, VmUuid};
pub use volatile::{VolatileError, VolatileSlice, VolatileSliceMut};
