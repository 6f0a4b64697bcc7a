//! Serving many VMs from one process: watch the region directory and hand
//! each VM's channel to the application as it appears and as it goes away.
//!
//! The supervisor scans the directory once, then follows it with inotify.
//! A region file that exists but is not usable yet (QEMU creates it empty,
//! then sizes it) is retried on its next change. One that can never be used
//! (a symlink, a foreign owner, another agent's lock) is reported once as
//! [`VmEvent::Refused`] so operators see it.
//!
//! A VM handed out whose guest then leaves this host while running (a live
//! migration away) or closes its side is reported once as
//! [`VmEvent::Departed`] (see [`DepartureWatch`]): the application stops
//! serving it without calling it a failure.
//!
//! On a live migration's destination the region file appears (QEMU or the
//! hook creates it) well before the migration completes, and attaching
//! then would write into a region the incoming migration is still
//! overwriting: [`Supervisor::hold`] the VM when its migration is announced
//! and [`Supervisor::release`] it once the hypervisor reports it running
//! here (PROTOCOL.md, section 10).
//!
//! With [`Supervisor::serve_doorbells`], one ivshmem server (on a thread of
//! its own) serves every VM's `ivshmem-doorbell` device, and each channel
//! handed out sleeps on its doorbell when idle.
//!
//! ```no_run
//! use ivchan_host::{RegionOptions, Supervisor, VmEvent, VmOptions};
//!
//! let mut sup = Supervisor::new(RegionOptions::new(), "agent", Default::default())?
//!     .serve_doorbells(|uuid| VmOptions::new(format!("/run/ivchan/{uuid}.sock")))?;
//! loop {
//!     for event in sup.poll(None)? {
//!         match event {
//!             VmEvent::Appeared(mut vm) => {
//!                 std::thread::spawn(move || vm.send(b"hello", None));
//!             }
//!             VmEvent::Gone(uuid) => println!("{uuid} left"),
//!             VmEvent::Departed { uuid, how } => println!("{uuid}: guest {how}"),
//!             VmEvent::Refused { uuid, error } => eprintln!("{uuid}: {error}"),
//!         }
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::time::Duration;

use ivchan_protocol::{ChannelOptions, VmUuid};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use crate::channel::{attach_host, DepartureWatch, GuestDeparture, HostError, VmChannel};
use crate::doorbell::{DoorbellService, VmOptions};
use crate::region_file::{list_regions, RegionError, RegionOptions};

/// Something that happened to a VM's region.
// A channel is handed out once per VM and then used for every message:
// keeping it inline spares each call an indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum VmEvent {
    /// A usable region appeared: its channel, attached as the host.
    Appeared(VmChannel),
    /// The region file of a VM handed out before was removed.
    Gone(VmUuid),
    /// The guest of a VM handed out before left this host while running
    /// (migrated) or closed its side (gone). Reported once per departure;
    /// the channel handed out stays usable (a guest that comes back is
    /// served by it again).
    Departed {
        /// The VM.
        uuid: VmUuid,
        /// How it left.
        how: GuestDeparture,
    },
    /// A region file that cannot be used, and why (reported once per
    /// change of the file).
    Refused {
        /// The VM.
        uuid: VmUuid,
        /// Why.
        error: HostError,
    },
}

/// Watches a region directory for VMs coming and going.
#[derive(Debug)]
pub struct Supervisor {
    regions: RegionOptions,
    name: String,
    options: ChannelOptions,
    inotify: Inotify,
    /// VMs handed out as `Appeared` and not yet `Gone`.
    served: BTreeSet<VmUuid>,
    /// Files seen but not usable yet, with the path.
    waiting: BTreeMap<VmUuid, PathBuf>,
    /// Files reported as refused; retried on change, reported again only
    /// after they go away and come back.
    refused: BTreeSet<VmUuid>,
    scanned: bool,
    doorbells: Option<Doorbells>,
    /// VMs not to attach to yet (arriving by live migration), and whether
    /// their region was seen meanwhile.
    held: BTreeMap<VmUuid, bool>,
    /// Released VMs whose region was seen while held: opened next poll.
    released: Vec<VmUuid>,
    /// Served VMs watched for their guest leaving, and whether it has
    /// (reported, until it is seen back).
    departures: BTreeMap<VmUuid, (DepartureWatch, bool)>,
}

/// How often served VMs are checked for departures while `poll` waits.
const DEPARTURE_CHECK: Duration = Duration::from_millis(250);

/// The server for every VM's doorbell device, and where each VM's socket is.
struct Doorbells {
    service: DoorbellService,
    options: Box<dyn Fn(&VmUuid) -> VmOptions + Send>,
}

impl std::fmt::Debug for Doorbells {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Doorbells")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl Supervisor {
    /// Watches `regions.directory()` for `<prefix><uuid>` files. Channels are
    /// attached with header name `name` and `options`.
    pub fn new(
        regions: RegionOptions,
        name: &str,
        options: ChannelOptions,
    ) -> Result<Self, HostError> {
        let dir = regions.directory().to_path_buf();
        let watch_err = |source| HostError::Watch {
            dir: dir.clone(),
            source,
        };
        let inotify =
            Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(watch_err)?;
        let mask = AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_MODIFY
            | AddWatchFlags::IN_ATTRIB
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_ONLYDIR;
        inotify.add_watch(&dir, mask).map_err(watch_err)?;
        Ok(Self {
            regions,
            name: name.to_owned(),
            options,
            inotify,
            served: BTreeSet::new(),
            waiting: BTreeMap::new(),
            refused: BTreeSet::new(),
            scanned: false,
            doorbells: None,
            departures: BTreeMap::new(),
            held: BTreeMap::new(),
            released: Vec::new(),
        })
    }

    /// Serves every VM's `ivshmem-doorbell` device, on the socket and with
    /// the options `server` gives for its UUID (QEMU:
    /// `-chardev socket,path=SOCKET,id=ivs -device ivshmem-doorbell,chardev=ivs,vectors=1`).
    /// Channels handed out from now on sleep on their doorbell when idle.
    /// The server stops when the supervisor is dropped; channels handed out
    /// keep their doorbell to the guests connected at that time.
    pub fn serve_doorbells(
        mut self,
        server: impl Fn(&VmUuid) -> VmOptions + Send + 'static,
    ) -> Result<Self, HostError> {
        let service = DoorbellService::start().map_err(HostError::DoorbellServer)?;
        self.doorbells = Some(Doorbells {
            service,
            options: Box::new(server),
        });
        Ok(self)
    }

    /// The doorbell server, when the supervisor serves doorbells: its
    /// [`events`](DoorbellService::events) tell which guests connected.
    pub fn doorbell(&self) -> Option<&DoorbellService> {
        self.doorbells.as_ref().map(|d| &d.service)
    }

    /// Holds VM `uuid` back: its region is not opened (nor reported) until
    /// [`release`](Self::release). For a VM arriving by live migration,
    /// whose region must not be attached to before the migration completes.
    /// A VM already served is not affected. With
    /// [`serve_doorbells`](Self::serve_doorbells), a held VM has no ivshmem
    /// server yet, and an incoming QEMU needs one at start: serve such a VM
    /// with [`VmChannelBuilder::incoming`](crate::VmChannelBuilder::incoming)
    /// and [`doorbell`](crate::VmChannelBuilder::doorbell) instead.
    pub fn hold(&mut self, uuid: VmUuid) {
        self.held.entry(uuid).or_insert(false);
    }

    /// Ends a [`hold`](Self::hold): the region, if it was seen meanwhile,
    /// is opened at the next [`poll`](Self::poll) and reported as usual.
    pub fn release(&mut self, uuid: &VmUuid) {
        if self.held.remove(uuid) == Some(true) {
            self.released.push(*uuid);
        }
    }

    /// VMs currently served.
    pub fn served(&self) -> impl Iterator<Item = &VmUuid> {
        self.served.iter()
    }

    /// Waits up to `timeout` (`None`: until something happens) and returns
    /// what happened. The first call reports every region already there.
    ///
    /// While VMs are served it wakes at least every 250 ms to check their
    /// guests for departures, so it may return an empty list.
    pub fn poll(&mut self, timeout: Option<Duration>) -> Result<Vec<VmEvent>, HostError> {
        let mut events = Vec::new();
        for uuid in std::mem::take(&mut self.released) {
            if !self.served.contains(&uuid) {
                self.try_open(uuid, &mut events);
            }
        }
        self.check_departures(&mut events);
        if !events.is_empty() {
            return Ok(events);
        }
        if !self.scanned {
            self.scanned = true;
            let found = list_regions(self.regions.directory(), self.regions.name_prefix())?;
            for (uuid, _) in found {
                self.try_open(uuid, &mut events);
            }
            if !events.is_empty() {
                return Ok(events);
            }
        }
        let timeout = match timeout {
            _ if !self.departures.is_empty() => {
                let t = timeout.map_or(DEPARTURE_CHECK, |t| t.min(DEPARTURE_CHECK));
                PollTimeout::try_from(t).unwrap_or(PollTimeout::MAX)
            }
            None => PollTimeout::NONE,
            Some(t) => PollTimeout::try_from(t).unwrap_or(PollTimeout::MAX),
        };
        let mut fds = [PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN)];
        let dir = self.regions.directory().to_path_buf();
        match poll(&mut fds, timeout) {
            Ok(0) => {
                self.check_departures(&mut events);
                return Ok(events);
            }
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => return Ok(events),
            Err(source) => return Err(HostError::Watch { dir, source }),
        }
        // Drain every queued notification, then act once per VM.
        let mut touched: BTreeMap<VmUuid, bool> = BTreeMap::new();
        loop {
            let batch = match self.inotify.read_events() {
                Ok(batch) => batch,
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(source) => return Err(HostError::Watch { dir, source }),
            };
            for event in batch {
                if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    // Lost track: rescan everything on the next call.
                    self.scanned = false;
                    continue;
                }
                let Some(uuid) = event.name.as_deref().and_then(|n| self.uuid_of(n)) else {
                    continue;
                };
                let removed = event
                    .mask
                    .intersects(AddWatchFlags::IN_DELETE | AddWatchFlags::IN_MOVED_FROM);
                touched.insert(uuid, removed);
            }
        }
        for (uuid, removed) in touched {
            if removed {
                self.waiting.remove(&uuid);
                self.refused.remove(&uuid);
                self.departures.remove(&uuid);
                if self.served.remove(&uuid) {
                    if let Some(doorbells) = &self.doorbells {
                        let _ = doorbells.service.remove(&uuid);
                    }
                    events.push(VmEvent::Gone(uuid));
                }
            } else if !self.served.contains(&uuid) {
                self.try_open(uuid, &mut events);
            }
        }
        Ok(events)
    }

    /// Reports each served VM's guest that has left since the last check.
    fn check_departures(&mut self, events: &mut Vec<VmEvent>) {
        for (uuid, (watch, reported)) in &mut self.departures {
            match watch.poll() {
                Some(how) if !*reported => {
                    *reported = true;
                    events.push(VmEvent::Departed { uuid: *uuid, how });
                }
                Some(_) => {}
                None => *reported = false,
            }
        }
    }

    #[cfg(feature = "tokio")]
    /// Whether the next [`poll`](Self::poll) rescans the directory (the
    /// first call, or after inotify's queue overflowed) rather than wait.
    pub(crate) fn rescan_due(&self) -> bool {
        !self.scanned
    }

    #[cfg(feature = "tokio")]
    /// The region directory watched.
    pub(crate) fn directory(&self) -> &std::path::Path {
        self.regions.directory()
    }

    fn uuid_of(&self, name: &OsStr) -> Option<VmUuid> {
        name.to_str()?
            .strip_prefix(self.regions.name_prefix())?
            .parse()
            .ok()
    }

    fn open(&self, uuid: &VmUuid) -> Result<VmChannel, HostError> {
        let file = self.regions.open(uuid)?;
        let bell = match &self.doorbells {
            Some(d) => Some(d.service.add(&file, (d.options)(uuid)).map_err(|source| {
                HostError::Doorbell {
                    uuid: *uuid,
                    source,
                }
            })?),
            None => None,
        };
        let channel = attach_host(file, &self.name, self.options, bell);
        if channel.is_err() {
            if let Some(d) = &self.doorbells {
                let _ = d.service.remove(uuid);
            }
        }
        channel
    }

    fn try_open(&mut self, uuid: VmUuid, events: &mut Vec<VmEvent>) {
        if let Some(seen) = self.held.get_mut(&uuid) {
            *seen = true;
            return;
        }
        match self.open(&uuid) {
            Ok(channel) => {
                self.waiting.remove(&uuid);
                self.refused.remove(&uuid);
                self.served.insert(uuid);
                let timeout = self.options.peer_timeout.unwrap_or(Duration::from_secs(5));
                if let Ok(watch) = DepartureWatch::new(channel.path(), timeout) {
                    self.departures.insert(uuid, (watch, false));
                }
                events.push(VmEvent::Appeared(channel));
            }
            // Still being made by its creator (sized, or locked while it
            // writes the header): wait for its next change, which its
            // close at the latest brings (IN_CLOSE_WRITE).
            Err(HostError::Region(
                RegionError::Unsized { path }
                | RegionError::BadSize { path, .. }
                | RegionError::Busy { path },
            )) => {
                self.waiting.insert(uuid, path);
            }
            Err(error) => {
                self.waiting.remove(&uuid);
                if self.refused.insert(uuid) {
                    events.push(VmEvent::Refused { uuid, error });
                }
            }
        }
    }
}

impl AsFd for Supervisor {
    /// The inotify fd: readable when the region directory changed, so a
    /// supervisor can sit in the application's own event loop (call
    /// [`Supervisor::poll`] with a zero timeout when it is readable).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ivchan_protocol::{Header, PeerState, Side};

    /// A served VM whose guest is ready but silent while no other process
    /// maps its region is reported once as migrated; one that closes
    /// after coming back is reported as gone.
    #[test]
    fn a_guest_that_leaves_is_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let uuid: VmUuid = "5b7e6a0c-1d2e-4f3a-9b8c-7d6e5f4a3b2c".parse().unwrap();
        let regions = RegionOptions::new().dir(dir.path());
        let path = regions.open_or_create(&uuid).unwrap().path().to_path_buf();
        let options = ChannelOptions {
            peer_timeout: Some(Duration::ZERO),
            ..ChannelOptions::default()
        };
        let mut sup = Supervisor::new(regions, "t", options).unwrap();
        let events = sup.poll(Some(Duration::ZERO)).unwrap();
        let vm = match events.as_slice() {
            [VmEvent::Appeared(_)] => events.into_iter().next(),
            other => panic!("{other:?}"),
        };
        let guest = crate::PeerMapping::open(&path).unwrap();
        let header = Header::open(guest.region()).unwrap();
        header.begin_session(Side::Guest);
        let events = sup.poll(Some(Duration::ZERO)).unwrap();
        assert!(
            matches!(events.as_slice(), [VmEvent::Departed { uuid: u, how: GuestDeparture::Migrated }] if *u == uuid),
            "{events:?}"
        );
        assert!(
            sup.poll(Some(Duration::ZERO)).unwrap().is_empty(),
            "reported once"
        );
        // The guest is absent again (a new header state), then closes.
        header.set_state(Side::Guest, PeerState::Absent);
        assert!(sup.poll(Some(Duration::ZERO)).unwrap().is_empty());
        header.set_state(Side::Guest, PeerState::Closed);
        let events = sup.poll(Some(Duration::ZERO)).unwrap();
        assert!(
            matches!(
                events.as_slice(),
                [VmEvent::Departed {
                    how: GuestDeparture::Gone,
                    ..
                }]
            ),
            "{events:?}"
        );
        drop(vm);
    }

    /// A held VM's region is neither opened nor reported while held (so
    /// nothing is written into it), and is served once released.
    #[test]
    fn a_held_vm_is_served_only_once_released() {
        let dir = tempfile::tempdir().unwrap();
        let uuid: VmUuid = "5b7e6a0c-1d2e-4f3a-9b8c-7d6e5f4a3b2d".parse().unwrap();
        let regions = RegionOptions::new().dir(dir.path());
        let mut sup = Supervisor::new(regions.clone(), "t", ChannelOptions::default()).unwrap();
        sup.hold(uuid);
        assert!(sup.poll(Some(Duration::ZERO)).unwrap().is_empty());
        let path = regions.open_or_create(&uuid).unwrap().path().to_path_buf();
        assert!(sup.poll(Some(Duration::ZERO)).unwrap().is_empty());
        assert!(
            std::fs::read(&path).unwrap().iter().all(|&b| b == 0),
            "nothing written into a held region"
        );
        sup.release(&uuid);
        let events = sup.poll(Some(Duration::ZERO)).unwrap();
        assert!(
            matches!(events.as_slice(), [VmEvent::Appeared(vm)] if *vm.uuid() == uuid),
            "{events:?}"
        );
    }
}
