//! The host's end of one VM's channel: the VM's region file and the channel
//! over it, and optionally the ivshmem server that gives the VM doorbells.
//!
//! [`VmChannel`] dereferences to [`OwnedChannel`], so the whole channel API
//! (copy and zero-copy calls, `std::io` adapters, wait strategies, peer
//! events) is called on it directly.

use std::ops::{Deref, DerefMut};
use std::path::Path;

use ivchan_protocol::naming::RegionSize;
use ivchan_protocol::{
    Channel, ChannelError, ChannelOptions, DoorbellAddress, OwnedChannel, Side, VmUuid,
};

use crate::doorbell::{DoorbellError, DoorbellService, HostBell, VmOptions, HOST_PEER_ID};
use crate::region_file::{RegionError, RegionFile, RegionOptions};

/// Errors from opening a host channel.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// Opening, checking or initialising the region file failed.
    #[error(transparent)]
    Region(#[from] RegionError),
    /// Attaching to the region failed.
    #[error("VM {uuid}: {source}")]
    Channel {
        /// The VM.
        uuid: VmUuid,
        /// What failed.
        #[source]
        source: ChannelError,
    },
    /// Serving the VM's doorbells failed.
    #[error("VM {uuid}: doorbell: {source}")]
    Doorbell {
        /// The VM.
        uuid: VmUuid,
        /// What failed.
        #[source]
        source: DoorbellError,
    },
    /// Starting the doorbell server failed.
    #[error("doorbell server: {0}")]
    DoorbellServer(#[source] DoorbellError),
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

/// The host's end of one VM's channel, owning the VM's region file (and its
/// lock) for as long as it lives. Dropping it detaches cleanly: the guest
/// sees `closed`.
///
/// ```no_run
/// use ivchan_host::{VmChannel, VmUuid};
/// use std::time::Duration;
///
/// let uuid: VmUuid = "5b7e6a0c-1d2e-4f3a-9b8c-7d6e5f4a3b2c".parse()?;
/// let mut vm = VmChannel::open(&uuid)?; // /dev/shm/fg_<uuid>, made if missing
/// vm.wait_for_peer(Some(Duration::from_secs(60)))?;
/// vm.send(b"hello", None)?;
/// let mut buf = vec![0; vm.max_message()];
/// let n = vm.recv(&mut buf, Some(Duration::from_secs(5)))?;
/// println!("guest says {:?}", &buf[..n]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct VmChannel {
    /// Dropped first: detaches before the doorbell server stops.
    channel: OwnedChannel<RegionFile>,
    doorbell: Option<DoorbellService>,
    /// The channel's doorbell (also its notifier), for waiting on it
    /// elsewhere (the async channel).
    bell: Option<HostBell>,
}

impl Deref for VmChannel {
    type Target = OwnedChannel<RegionFile>;

    fn deref(&self) -> &Self::Target {
        &self.channel
    }
}

impl DerefMut for VmChannel {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.channel
    }
}

/// How to open a [`VmChannel`]: where its region lives and what it may look
/// like, the header name, channel options and doorbells.
#[derive(Debug, Clone)]
pub struct VmChannelBuilder {
    uuid: VmUuid,
    regions: RegionOptions,
    name: String,
    options: ChannelOptions,
    doorbell: Option<VmOptions>,
}

impl VmChannelBuilder {
    /// Where region files live and what they may look like (directory,
    /// prefix, size, owners, modes).
    pub fn regions(mut self, regions: RegionOptions) -> Self {
        self.regions = regions;
        self
    }

    /// Size of the region when this creates it.
    pub fn size(mut self, size: RegionSize) -> Self {
        self.regions = self.regions.size(size.bytes());
        self
    }

    /// Channel name written into a new header (default `ivchan`).
    pub fn name(mut self, name: &str) -> Self {
        name.clone_into(&mut self.name);
        self
    }

    /// Wait strategy, heartbeat and peer timeout.
    pub fn options(mut self, options: ChannelOptions) -> Self {
        self.options = options;
        self
    }

    /// Serves QEMU's `ivshmem-doorbell` device for this VM on the socket
    /// `server` names: the channel sleeps on the doorbell when idle and
    /// rings the guest when it asked to be woken.
    pub fn doorbell(mut self, server: VmOptions) -> Self {
        self.doorbell = Some(server);
        self
    }

    /// Opens the VM's region file, creating it if it does not exist.
    pub fn open(self) -> Result<VmChannel, HostError> {
        let file = self.regions.open_or_create(&self.uuid)?;
        self.attach(file)
    }

    /// Opens the VM's existing region file (never creates one).
    pub fn open_existing(self) -> Result<VmChannel, HostError> {
        let file = self.regions.open(&self.uuid)?;
        self.attach(file)
    }

    /// Creates the VM's region file; fails if it exists.
    pub fn create(self) -> Result<VmChannel, HostError> {
        let file = self.regions.create(&self.uuid)?;
        self.attach(file)
    }

    /// Attaches as the host to an already open region file.
    pub fn attach(self, file: RegionFile) -> Result<VmChannel, HostError> {
        let uuid = *file.uuid();
        let err = |source| HostError::Doorbell { uuid, source };
        let (service, bell) = match self.doorbell {
            Some(server) => {
                let service = DoorbellService::start().map_err(err)?;
                let bell = service.add(&file, server).map_err(err)?;
                (Some(service), Some(bell))
            }
            None => (None, None),
        };
        let mut vm = attach_host(file, &self.name, self.options, bell)?;
        vm.doorbell = service;
        Ok(vm)
    }
}

/// Attaches as the host to `file`, writing a fresh header named `name` if
/// the region is all zeros (QEMU created it, or we just did); an existing
/// header is kept, with every message in flight. With a `bell`, the
/// channel sleeps on it and publishes the host's doorbell address.
pub(crate) fn attach_host(
    file: RegionFile,
    name: &str,
    options: ChannelOptions,
    bell: Option<HostBell>,
) -> Result<VmChannel, HostError> {
    let uuid = *file.uuid();
    // Checked before the channel takes the file: the region's header, its
    // version and its UUID.
    file.attach_or_init(name)?;
    let mut channel = OwnedChannel::new(file, |region| {
        let header = ivchan_protocol::Header::open(region)?;
        Channel::attach(header, Side::Host, options)
    })
    .map_err(|source| HostError::Channel { uuid, source })?;
    if let Some(bell) = &bell {
        channel.set_notifier(Some(Box::new(bell.clone())));
        channel.publish_doorbell(Some(DoorbellAddress {
            peer: HOST_PEER_ID,
            vectors: 1,
        }));
    }
    Ok(VmChannel {
        channel,
        doorbell: None,
        bell,
    })
}

impl VmChannel {
    /// Opens (or creates) `/dev/shm/fg_<uuid>` with the defaults and
    /// attaches as the host. See [`builder`](Self::builder) for the rest.
    pub fn open(uuid: &VmUuid) -> Result<Self, HostError> {
        Self::builder(uuid).open()
    }

    /// Options for opening the VM's channel, starting from the defaults:
    /// `/dev/shm/fg_<uuid>`, 8 MiB, owned by this user, mode 0600, header
    /// name `ivchan`, default channel options, no doorbells.
    pub fn builder(uuid: &VmUuid) -> VmChannelBuilder {
        VmChannelBuilder {
            uuid: *uuid,
            regions: RegionOptions::new(),
            name: "ivchan".to_owned(),
            options: ChannelOptions::default(),
            doorbell: None,
        }
    }

    /// Attaches as the host to an already open region file, with `options`.
    pub fn from_file(
        file: RegionFile,
        name: &str,
        options: ChannelOptions,
    ) -> Result<Self, HostError> {
        attach_host(file, name, options, None)
    }

    /// The doorbell the channel rings and sleeps on, when it has one (a
    /// clone shares it).
    pub fn host_bell(&self) -> Option<&HostBell> {
        self.bell.as_ref()
    }

    /// The VM's UUID.
    pub fn uuid(&self) -> &VmUuid {
        self.channel.memory().uuid()
    }

    /// The region file's path.
    pub fn path(&self) -> &Path {
        self.channel.memory().path()
    }

    /// The region file.
    pub fn file(&self) -> &RegionFile {
        self.channel.memory()
    }

    /// The ivshmem server of this VM, when the channel serves doorbells.
    pub fn doorbell(&self) -> Option<&DoorbellService> {
        self.doorbell.as_ref()
    }

    /// Detaches cleanly (the guest sees `closed`) and hands back the file,
    /// still locked.
    pub fn close(self) -> RegionFile {
        self.channel.into_memory()
    }
}
