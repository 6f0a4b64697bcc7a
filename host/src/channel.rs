//! A host-side channel that owns its region file.
//!
//! [`Channel`] borrows the mapped region; a host agent that keeps one per VM
//! in a map wants the file and the channel together. `self_cell` ties the
//! two without `unsafe` here: the channel can only be reached through
//! closures and methods whose borrows end before the file is unmapped.

use std::path::Path;
use std::time::Duration;

use ivchan_protocol::{Channel, ChannelError, ChannelOptions, PeerEvent, Side, VmUuid};

use crate::region_file::{RegionError, RegionFile, RegionOptions};

self_cell::self_cell!(
    struct Cell {
        owner: RegionFile,
        #[covariant]
        dependent: Channel,
    }
    impl {Debug}
);

/// Errors from opening or using a host channel.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// Opening, checking or initialising the region file failed.
    #[error(transparent)]
    Region(#[from] RegionError),
    /// A channel operation failed.
    #[error("VM {uuid}: {source}")]
    Channel {
        /// The VM.
        uuid: VmUuid,
        /// What failed.
        #[source]
        source: ChannelError,
    },
    /// Watching the region directory failed.
    #[error("watching {dir}: {source}")]
    Watch {
        /// The directory.
        dir: std::path::PathBuf,
        /// The system error.
        #[source]
        source: nix::Error,
    },
}

/// The host's end of one VM's channel, owning the VM's region file (and
/// its lock) for as long as it lives.
#[derive(Debug)]
pub struct VmChannel {
    cell: Cell,
    uuid: VmUuid,
}

impl VmChannel {
    /// Opens (or creates) the VM's region file and attaches as the host.
    /// A region QEMU created (all zeros) gets a fresh header named `name`;
    /// an existing header is kept, with every message in flight.
    pub fn open(
        uuid: &VmUuid,
        regions: &RegionOptions,
        name: &str,
        options: ChannelOptions,
    ) -> Result<Self, HostError> {
        Self::from_file(regions.open_or_create(uuid)?, name, options)
    }

    /// Opens an existing region file (never creates one) and attaches.
    pub fn open_existing(
        uuid: &VmUuid,
        regions: &RegionOptions,
        name: &str,
        options: ChannelOptions,
    ) -> Result<Self, HostError> {
        Self::from_file(regions.open(uuid)?, name, options)
    }

    /// Attaches as the host to an already open region file.
    pub fn from_file(
        file: RegionFile,
        name: &str,
        options: ChannelOptions,
    ) -> Result<Self, HostError> {
        let uuid = *file.uuid();
        let cell = Cell::try_new(file, |file| -> Result<_, HostError> {
            let header = file.attach_or_init(name)?;
            Channel::attach(header, Side::Host, options)
                .map_err(|source| HostError::Channel { uuid, source })
        })?;
        Ok(Self { cell, uuid })
    }

    /// The VM's UUID.
    pub fn uuid(&self) -> &VmUuid {
        &self.uuid
    }

    /// The region file's path.
    pub fn path(&self) -> &Path {
        self.cell.borrow_owner().path()
    }

    /// The region file (e.g. to hand its fd to a
    /// [`DoorbellServer`](crate::DoorbellServer)).
    pub fn file(&self) -> &RegionFile {
        self.cell.borrow_owner()
    }

    /// Runs `f` on the channel (for the zero-copy API and everything else
    /// not forwarded below).
    pub fn with<R>(&mut self, f: impl FnOnce(&mut Channel<'_>) -> R) -> R {
        self.cell.with_dependent_mut(|_, channel| f(channel))
    }

    fn wrap<T>(&self, r: Result<T, ChannelError>) -> Result<T, HostError> {
        r.map_err(|source| HostError::Channel {
            uuid: self.uuid,
            source,
        })
    }

    /// Sends, waiting up to `timeout` for room.
    pub fn send(&mut self, msg: &[u8], timeout: Option<Duration>) -> Result<(), HostError> {
        let r = self.with(|c| c.send(msg, timeout));
        self.wrap(r)
    }

    /// Receives into `buf`, waiting up to `timeout`; returns the length.
    pub fn recv(&mut self, buf: &mut [u8], timeout: Option<Duration>) -> Result<usize, HostError> {
        let r = self.with(|c| c.recv(buf, timeout));
        self.wrap(r)
    }

    /// Sends without waiting; `Ok(false)` when the ring is full.
    pub fn try_send(&mut self, msg: &[u8]) -> Result<bool, HostError> {
        let r = self.with(|c| c.try_send(msg));
        self.wrap(r)
    }

    /// Receives without waiting; `Ok(None)` when nothing is queued.
    pub fn try_recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, HostError> {
        let r = self.with(|c| c.try_recv(buf));
        self.wrap(r)
    }

    /// Reports what changed on the guest's side since the last call.
    pub fn poll_peer(&mut self) -> Result<Option<PeerEvent>, HostError> {
        let r = self.with(|c| c.poll_peer());
        self.wrap(r)
    }

    /// The largest message either direction carries.
    pub fn max_message(&mut self) -> usize {
        self.with(|c| c.max_message())
    }

    /// Detaches cleanly (the guest sees `closed`) and hands back the file,
    /// still locked. Dropping the channel detaches the same way.
    pub fn close(self) -> RegionFile {
        self.cell.into_owner()
    }
}
