//! Serving many VMs from one process: watch the region directory and hand
//! each VM's channel to the application as it appears and as it goes away.
//!
//! The supervisor scans the directory once, then follows it with inotify.
//! A region file that exists but is not usable yet (QEMU creates it empty,
//! then sizes it) is retried on its next change. One that can never be used
//! (a symlink, a foreign owner, another agent's lock) is reported once as
//! [`VmEvent::Refused`] so operators see it.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Duration;

use ivchan_protocol::{ChannelOptions, VmUuid};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use crate::channel::{HostError, VmChannel};
use crate::region_file::{list_regions, RegionError, RegionOptions};

/// Something that happened to a VM's region.
#[derive(Debug)]
pub enum VmEvent {
    /// A usable region appeared: its channel, attached as the host.
    Appeared(VmChannel),
    /// The region file of a VM handed out before was removed.
    Gone(VmUuid),
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
        })
    }

    /// VMs currently served.
    pub fn served(&self) -> impl Iterator<Item = &VmUuid> {
        self.served.iter()
    }

    /// Waits up to `timeout` (`None`: until something happens) and returns
    /// what happened. The first call reports every region already there.
    pub fn poll(&mut self, timeout: Option<Duration>) -> Result<Vec<VmEvent>, HostError> {
        let mut events = Vec::new();
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
            None => PollTimeout::NONE,
            Some(t) => PollTimeout::try_from(t).unwrap_or(PollTimeout::MAX),
        };
        let mut fds = [PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN)];
        let dir = self.regions.directory().to_path_buf();
        match poll(&mut fds, timeout) {
            Ok(0) => return Ok(events),
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
                if self.served.remove(&uuid) {
                    events.push(VmEvent::Gone(uuid));
                }
            } else if !self.served.contains(&uuid) {
                self.try_open(uuid, &mut events);
            }
        }
        Ok(events)
    }

    fn uuid_of(&self, name: &OsStr) -> Option<VmUuid> {
        name.to_str()?
            .strip_prefix(self.regions.name_prefix())?
            .parse()
            .ok()
    }

    fn try_open(&mut self, uuid: VmUuid, events: &mut Vec<VmEvent>) {
        match VmChannel::open_existing(&uuid, &self.regions, &self.name, self.options) {
            Ok(channel) => {
                self.waiting.remove(&uuid);
                self.refused.remove(&uuid);
                self.served.insert(uuid);
                events.push(VmEvent::Appeared(channel));
            }
            // Still being made by its creator: wait for its next change.
            Err(HostError::Region(
                RegionError::Unsized { path } | RegionError::SizeTooSmall { path, .. },
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
