//! The host's end of one VM's channel: the VM's region file and the channel
//! over it, and optionally the ivshmem server that gives the VM doorbells.
//!
//! [`VmChannel`] dereferences to [`OwnedChannel`], so the whole channel API
//! (copy and zero-copy calls, `std::io` adapters, wait strategies, peer
//! events) is called on it directly.

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ivchan_protocol::naming::RegionSize;
use ivchan_protocol::{
    Channel, ChannelError, ChannelOptions, DoorbellAddress, Header, OwnedChannel, PeerState,
    Region, Side, SideStatus, VmUuid,
};

use crate::doorbell::{DoorbellError, DoorbellService, HostBell, VmOptions, HOST_PEER_ID};
use crate::region_file::{InspectedRegion, RegionError, RegionFile, RegionOptions};

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
    /// A VM expected by live migration did not arrive: no running guest
    /// showed up in its region within the wait.
    #[error("VM {uuid}: no guest arrived in {path} within {waited:?} (was the migration's completion signalled, and does the destination QEMU map this file?)")]
    NotArrived {
        /// The VM.
        uuid: VmUuid,
        /// Its region file.
        path: PathBuf,
        /// How long this side waited.
        waited: Duration,
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
    incoming: Option<(Duration, Arc<AtomicBool>)>,
}

impl VmChannelBuilder {
    /// The VM arrives by live migration. The region is opened (and its
    /// ivshmem server started, so that the incoming QEMU can connect) at
    /// once, but this side attaches only after `arrived` is set — by the
    /// caller, when its hypervisor reports the migration complete and the
    /// VM running here (libvirt's "resumed (migrated)" event, QMP's
    /// `RESUME` event or `query-status`) — and the region holds a ready,
    /// beating guest side; up to `wait` in all. The region alone cannot
    /// tell: during pre-copy QEMU keeps writing newer copies of the guest's
    /// pages into it, heartbeat included, and anything this side wrote
    /// before the last of them would be overwritten under it. Then it
    /// resumes from the migrated rings (PROTOCOL.md, section 10).
    pub fn incoming(mut self, wait: Duration, arrived: Arc<AtomicBool>) -> Self {
        self.incoming = Some((wait, arrived));
        self
    }

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
        if let Some((wait, arrived)) = &self.incoming {
            wait_for_arrival(&file, *wait, arrived)?;
        }
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
            incoming: None,
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

    /// Bytes of host→guest messages the guest has not consumed yet, as the
    /// region says now (the guest's `head` against the published `tail`;
    /// a `head` the guest made up is clamped to the ring). Before a live
    /// migration's switchover the host stops sending and waits for this to
    /// be 0: QEMU does not carry the host's unconsumed records reliably
    /// (PROTOCOL.md, section 10).
    pub fn unread_by_guest(&self) -> u64 {
        let Ok(header) = Header::open(self.channel.memory().region()) else {
            return 0;
        };
        let (head, tail) = header.ring_positions(ivchan_protocol::Direction::HostToGuest);
        let capacity = header
            .layout()
            .ring(ivchan_protocol::Direction::HostToGuest)
            .size as u64;
        tail.wrapping_sub(head).min(capacity)
    }

    /// Detaches cleanly (the guest sees `closed`) and hands back the file,
    /// still locked.
    pub fn close(self) -> RegionFile {
        self.channel.into_memory()
    }
}

/// The guest's side block, if the region holds a valid header.
fn guest_status(region: Region<'_>) -> Option<SideStatus> {
    let header = Header::open(region).ok()?;
    header.status(Side::Guest).ok()
}

/// Waits until `arrived` is set, then until `file` holds a header whose
/// guest side is ready and whose heartbeat moves: the guest runs here.
fn wait_for_arrival(
    file: &RegionFile,
    wait: Duration,
    arrived: &AtomicBool,
) -> Result<(), HostError> {
    let start = Instant::now();
    let mut first = None;
    loop {
        // SYNC POINT: pairs with the caller's store once its hypervisor
        // reported the VM running here.
        let here = arrived.load(Ordering::Acquire);
        if here && first.is_none() {
            first = Some(guest_status(file.region()));
        }
        if let (Some(first), Some(now)) = (first, guest_status(file.region()).filter(|_| here)) {
            let moved = first.is_none_or(|f| f.heartbeat != now.heartbeat || f.epoch != now.epoch);
            if now.state == PeerState::Ready && moved {
                return Ok(());
            }
        }
        if start.elapsed() >= wait {
            return Err(HostError::NotArrived {
                uuid: *file.uuid(),
                path: file.path().to_path_buf(),
                waited: start.elapsed(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How a guest left this host, as [`DepartureWatch`] tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestDeparture {
    /// The guest was attached and running when it stopped, and no other
    /// process maps its region any more: its QEMU let go of the region with
    /// the guest still in it. That is what a live migration looks like from
    /// the source (QEMU stops the guest at the switchover and exits once
    /// the destination runs it); a QEMU killed outright looks the same.
    /// Not a failure of the channel: the conversation goes on wherever the
    /// guest went, with the host agent there (PROTOCOL.md, section 10).
    Migrated,
    /// The guest agent closed its side: it exited, or its VM shut down.
    Gone,
}

impl std::fmt::Display for GuestDeparture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Migrated => "migrated (left this host while running)",
            Self::Gone => "gone (its agent closed its side)",
        })
    }
}

/// Watches a VM's region, from any thread and without touching it, for the
/// guest leaving this host: a live migration away, or the guest closing.
/// A guest that is only paused or slow (QEMU still maps the region) is not
/// reported, however long it stays silent.
#[derive(Debug)]
pub struct DepartureWatch {
    view: InspectedRegion,
    timeout: Duration,
    last: Option<SideStatus>,
    moved_at: Instant,
}

impl DepartureWatch {
    /// Watches the region file at `path`; a heartbeat that stands still
    /// for `timeout` (see [`ChannelOptions::peer_timeout`]) is silence.
    pub fn new(path: impl Into<PathBuf>, timeout: Duration) -> Result<Self, RegionError> {
        Ok(Self {
            view: InspectedRegion::open(path)?,
            timeout,
            last: None,
            moved_at: Instant::now(),
        })
    }

    /// Reads the guest's side block once and says whether the guest has
    /// left: [`GuestDeparture::Gone`] once it closed its side,
    /// [`GuestDeparture::Migrated`] once it has been silent for the timeout
    /// while ready and no process but this one maps the region.
    pub fn poll(&mut self) -> Option<GuestDeparture> {
        let now = guest_status(self.view.region())?;
        let moved = self
            .last
            .is_none_or(|l| l.heartbeat != now.heartbeat || l.epoch != now.epoch);
        let first = self.last.is_none();
        self.last = Some(now);
        if moved && !first {
            self.moved_at = Instant::now();
        }
        match now.state {
            PeerState::Closed => Some(GuestDeparture::Gone),
            PeerState::Ready
                if self.moved_at.elapsed() >= self.timeout
                    && !mapped_by_others(self.view.path()) =>
            {
                Some(GuestDeparture::Migrated)
            }
            _ => None,
        }
    }
}

/// Whether a process other than this one maps the file at `path` (QEMU
/// maps a VM's region for as long as the VM runs on this host). Reads
/// `/proc/*/maps`, matching the file's device and inode; processes whose
/// maps cannot be read (another user's, without privilege) do not count.
pub fn mapped_by_others(path: &Path) -> bool {
    mapped_by(path, Some(std::process::id()))
}

/// As [`mapped_by_others`], excluding process `except` (none: any process).
fn mapped_by(path: &Path, except: Option<u32>) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    let (ino, dev) = (meta.ino(), meta.dev());
    // `major:minor` as /proc/PID/maps writes it (hex), for the file's device.
    let major = nix::sys::stat::major(dev);
    let minor = nix::sys::stat::minor(dev);
    let device = format!("{major:02x}:{minor:02x}");
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| Some(*pid) != except)
        .any(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/maps")).is_ok_and(|maps| {
                maps.lines().any(|line| {
                    let mut f = line.split_whitespace().skip(3);
                    f.next() == Some(device.as_str())
                        && f.next().and_then(|i| i.parse::<u64>().ok()) == Some(ino)
                })
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ivchan_protocol::InitParams;

    fn region_in(dir: &Path) -> PathBuf {
        let path = dir.join("fg_5b7e6a0c-1d2e-4f3a-9b8c-7d6e5f4a3b2c");
        std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
        path
    }

    /// Another process that maps a region until its stdin closes.
    /// (The child's stdout is kept open: it writes nothing more.)
    struct MapHolder(
        std::process::Child,
        #[allow(dead_code)] std::io::BufReader<std::process::ChildStdout>,
    );

    impl MapHolder {
        fn spawn(path: &Path) -> Self {
            use std::io::BufRead;
            use std::process::Stdio;
            let mut child = ivchan_testkit::child::ChildTest::new("channel::tests::hold_a_mapping")
                .env("IVCHAN_HOLD_MAPPING", path)
                .command()
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            // The harness prints its own lines first.
            let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
            let mut line = String::new();
            while line.trim() != "mapped" {
                line.clear();
                assert!(
                    out.read_line(&mut line).unwrap() > 0,
                    "the child never mapped"
                );
            }
            Self(child, out)
        }
    }

    impl Drop for MapHolder {
        fn drop(&mut self) {
            drop(self.0.stdin.take());
            let _ = self.0.wait();
        }
    }

    #[test]
    #[ignore = "child process entry, run by the tests in this file"]
    fn hold_a_mapping() {
        use std::io::Read;
        let Some(path) = std::env::var_os("IVCHAN_HOLD_MAPPING") else {
            return;
        };
        let map = crate::PeerMapping::open(PathBuf::from(path)).unwrap();
        println!("mapped");
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        drop(map);
    }

    /// The incoming side attaches only once told the VM arrived, and then
    /// only to a guest that beats; untold, it gives up with a typed error.
    #[test]
    fn incoming_waits_for_the_arrival_and_a_beating_guest() {
        let dir = tempfile::tempdir().unwrap();
        let uuid: VmUuid = "5b7e6a0c-1d2e-4f3a-9b8c-7d6e5f4a3b2c".parse().unwrap();
        let regions = RegionOptions::new().dir(dir.path());
        let arrived = Arc::new(AtomicBool::new(false));
        // The source's region, as the migration leaves it at the
        // destination: a header, a ready guest.
        let file = regions.open_or_create(&uuid).unwrap();
        file.attach_or_init("t").unwrap();
        let path = file.path().to_path_buf();
        drop(file);
        let guest = crate::PeerMapping::open(&path).unwrap();
        let header = Header::open(guest.region()).unwrap();
        header.begin_session(Side::Guest);
        let builder = VmChannel::builder(&uuid)
            .regions(regions)
            .incoming(Duration::ZERO, arrived.clone());
        let err = builder.clone().open_existing().unwrap_err();
        assert!(matches!(err, HostError::NotArrived { .. }), "{err}");
        // Told, it waits for the guest to beat, and attaches.
        arrived.store(true, Ordering::Release);
        let stop = Arc::new(AtomicBool::new(false));
        let beating = {
            let (stop, path) = (stop.clone(), path.clone());
            std::thread::spawn(move || {
                let guest = crate::PeerMapping::open(&path).unwrap();
                let header = Header::open(guest.region()).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    header.heartbeat(Side::Guest);
                    std::thread::yield_now();
                }
            })
        };
        let mut vm = builder
            .incoming(Duration::from_secs(600), arrived)
            .open_existing()
            .unwrap();
        // Nothing sent: nothing for the guest to drain; then one message,
        // until the guest consumes it.
        assert_eq!(vm.unread_by_guest(), 0);
        vm.send(b"hi", None).unwrap();
        assert_eq!(
            vm.unread_by_guest(),
            16,
            "one record: 8 bytes of header, 8 of payload"
        );
        let (_tx, mut rx) = header.split(Side::Guest).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(rx.recv_into(&mut buf).unwrap(), Some(2));
        rx.publish();
        assert_eq!(vm.unread_by_guest(), 0);
        stop.store(true, Ordering::Relaxed);
        beating.join().unwrap();
        assert_eq!(header.status(Side::Host).unwrap().state, PeerState::Ready);
        drop(vm);
    }

    #[test]
    fn maps_are_found_by_device_and_inode() {
        let dir = tempfile::tempdir().unwrap();
        let path = region_in(dir.path());
        assert!(!mapped_by(&path, None), "nobody maps it yet");
        let peer = crate::PeerMapping::open(&path).unwrap();
        assert!(mapped_by(&path, None), "this process maps it");
        assert!(!mapped_by_others(&path), "only this process maps it");
        drop(peer);
        assert!(!mapped_by(&path, None));
        let holder = MapHolder::spawn(&path);
        assert!(mapped_by_others(&path), "the child maps it");
        drop(holder);
        assert!(!mapped_by_others(&path));
    }

    /// A guest that is ready with a frozen heartbeat and no QEMU mapping
    /// the region left while running (migrated); one that closed is gone;
    /// one that another process still maps is only silent.
    #[test]
    fn departures() {
        let dir = tempfile::tempdir().unwrap();
        let path = region_in(dir.path());
        let guest = crate::PeerMapping::open(&path).unwrap();
        let header = Header::create(
            guest.region(),
            &InitParams {
                uuid: [7; 16],
                name: "t",
                ring_size: None,
            },
        )
        .unwrap();
        let mut watch = DepartureWatch::new(&path, Duration::ZERO).unwrap();
        // No guest yet: absent is not a departure.
        assert_eq!(watch.poll(), None);
        header.begin_session(Side::Guest);
        header.heartbeat(Side::Guest);
        // Ready, silent (timeout zero), but this process maps it as the
        // guest would: its own mapping does not count, so this is the
        // migrated case.
        assert_eq!(watch.poll(), Some(GuestDeparture::Migrated));
        // Another process mapping the region (QEMU still running the
        // guest, paused or slow) makes it no departure.
        let holder = MapHolder::spawn(&path);
        assert_eq!(watch.poll(), None);
        drop(holder);
        assert_eq!(watch.poll(), Some(GuestDeparture::Migrated));
        header.set_state(Side::Guest, PeerState::Closed);
        assert_eq!(watch.poll(), Some(GuestDeparture::Gone));
        // A watch with a real timeout does not call a guest that just
        // attached silent.
        header.begin_session(Side::Guest);
        let mut patient = DepartureWatch::new(&path, Duration::from_secs(3600)).unwrap();
        assert_eq!(patient.poll(), None);
    }
}
