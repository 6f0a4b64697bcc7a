//! Doorbells: eventfd notifications between the host agent and its guests.
//!
//! QEMU's `ivshmem-doorbell` device gets its shared memory and its eventfds
//! from an *ivshmem server* over a UNIX socket (QEMU
//! `docs/specs/ivshmem-spec.rst`). [`DoorbellServer`] is that server, built
//! into the host agent, for one VM or many from one thread. The host agent is
//! itself a peer of every VM's server, with id [`HOST_PEER_ID`]: a guest
//! writing `(HOST_PEER_ID << 16) | vector` to its Doorbell register makes the
//! host's eventfd for that vector readable, and [`DoorbellServer::ring_peer`]
//! interrupts a guest.
//!
//! [`DoorbellSet`] waits on the host's eventfds of many VMs with one epoll
//! instance and reports which VMs rang. [`Doorbell`] is one plain eventfd,
//! for two processes on one host (or threads) without QEMU.
//!
//! ```no_run
//! use ivchan_host::doorbell::{DoorbellServer, DoorbellSet, ServerEvent, VmOptions};
//! use ivchan_host::{RegionOptions, VmUuid};
//! use std::time::Duration;
//!
//! let uuid: VmUuid = "5b7e6a0c-1d2e-4f3a-9b8c-7d6e5f4a3b2c".parse()?;
//! let region = RegionOptions::new().open_or_create(&uuid)?;
//! let mut server = DoorbellServer::new()?;
//! // QEMU: -chardev socket,path=/run/ivchan/<uuid>.sock,id=ivs
//! //       -device ivshmem-doorbell,chardev=ivs,vectors=1
//! server.add_region(&region, VmOptions::new(format!("/run/ivchan/{uuid}.sock")))?;
//! let mut rang = DoorbellSet::new()?;
//! rang.add(uuid, server.host_eventfd(&uuid, 0)?)?;
//! loop {
//!     for event in server.process(Some(Duration::from_millis(10)))? {
//!         if let ServerEvent::PeerConnected { vm, peer } = event {
//!             server.ring_peer(&vm, peer, 0)?; // "hello" interrupt
//!         }
//!     }
//!     for vm in rang.wait(Some(Duration::from_millis(10)))? {
//!         println!("VM {vm} rang");
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! This module has no `unsafe` code: file descriptors are owned through
//! `OwnedFd`, and nix's wrappers do the system calls.

mod notify;
mod server;
mod service;

use std::io;
use std::path::PathBuf;

pub use notify::{ChannelBell, Doorbell, DoorbellSet};
pub use server::{
    DoorbellServer, LeaveReason, PeerCredentials, RefuseReason, ServerEvent, VmOptions,
};
pub use service::{DoorbellService, HostBell};

/// The host agent's peer id on every VM's ivshmem server. Guests ring the
/// host by writing `(HOST_PEER_ID << 16) | vector` to BAR0's Doorbell
/// register (the host publishes it in its side block). A guest peer gets
/// id 0 whenever it is free, then ids from 2: QEMU refuses to start an
/// `ivshmem-doorbell` device with `master=on` (the migratable one, which
/// ivchan provisions by default) unless it is peer 0 ("master must connect
/// to the server before any peers"), and a VM's QEMU is its region's only
/// guest peer.
pub const HOST_PEER_ID: u16 = 1;

/// The guest peer id a VM's QEMU gets when it is the only guest peer: the
/// one QEMU requires of a `master=on` device.
pub const MASTER_PEER_ID: u16 = 0;

/// The highest peer id (the Doorbell register has 16 bits for it).
pub const MAX_PEER_ID: u16 = u16::MAX;

/// The most interrupt vectors a VM may be configured with.
pub const MAX_VECTORS: u16 = 64;

/// Errors of the doorbell server and of waiting on doorbells.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DoorbellError {
    /// Something other than a socket is at the socket path: not removed.
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A live server already listens on the socket path.
    #[error("{path} is in use: another server accepts connections on it")]
    SocketInUse {
        /// The path.
        path: PathBuf,
    },
    /// A socket operation on a path failed.
    #[error("cannot {op} {path}: {source}")]
    Socket {
        /// The path.
        path: PathBuf,
        /// What we were doing.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// A system call failed.
    #[error("{op}: {source}")]
    Sys {
        /// What we were doing.
        op: &'static str,
        /// The OS error.
        source: nix::Error,
    },
    /// The VM is already served.
    #[error("VM {vm} is already served")]
    DuplicateVm {
        /// The VM's key.
        vm: String,
    },
    /// The VM is not served by this server.
    #[error("VM {vm} is not served by this server")]
    UnknownVm {
        /// The VM's key.
        vm: String,
    },
    /// No guest peer with this id is connected.
    #[error("VM {vm}: no peer {peer} is connected")]
    UnknownPeer {
        /// The VM's key.
        vm: String,
        /// The peer id asked for.
        peer: u16,
    },
    /// A vector beyond the VM's configured vectors.
    #[error("vector {vector} is out of range: {vectors} vector(s) configured")]
    BadVector {
        /// The vector asked for.
        vector: u16,
        /// Vectors configured.
        vectors: u16,
    },
    /// No group has this name.
    #[error("no group named {name:?}")]
    UnknownGroup {
        /// The name.
        name: String,
    },
    /// A vector count of 0 or above [`MAX_VECTORS`].
    #[error("{vectors} vectors: must be between 1 and {MAX_VECTORS}")]
    BadVectorCount {
        /// The count asked for.
        vectors: u16,
    },
}

fn sys(op: &'static str) -> impl FnOnce(nix::Error) -> DoorbellError {
    move |source| DoorbellError::Sys { op, source }
}
