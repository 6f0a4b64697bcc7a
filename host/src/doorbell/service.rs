//! Doorbells served for channels: a [`DoorbellServer`] on its own thread,
//! and a [`HostBell`] per VM that a channel rings and sleeps on.
//!
//! `VmChannel::builder(..).doorbell(..)` and `Supervisor::serve_doorbells`
//! use this; an application rarely needs it directly. The thread sleeps in
//! `poll` on the server and on a command eventfd, so an idle service costs
//! nothing but one wake-up a second.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use ivchan_protocol::Notifier;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::{Doorbell, DoorbellError, DoorbellServer, ServerEvent, VmOptions};
use crate::region_file::{RegionFile, VmUuid};

/// A channel's doorbell on the host, kept current by a [`DoorbellService`]:
/// it sleeps on the host's eventfd of its VM (QEMU writes it when the guest
/// rings [`HOST_PEER_ID`](super::HOST_PEER_ID)), and rings whichever guest peer connected last.
#[derive(Debug, Clone)]
pub struct HostBell(Arc<BellState>);

#[derive(Debug)]
struct BellState {
    host: Doorbell,
    /// The guest peer connected now, with its eventfd for vector 0.
    guest: Mutex<Option<(u16, Doorbell)>>,
    /// Rings written to a guest's eventfd since the VM was added.
    rings: AtomicU64,
}

impl HostBell {
    /// The guest peer id of the QEMU connected to this VM's server, if any.
    pub fn guest_peer(&self) -> Option<u16> {
        self.0.guest().as_ref().map(|(peer, _)| *peer)
    }

    /// How many times the channel rang the guest (each ring is one write to
    /// the guest's eventfd, one MSI-X message when the guest takes them):
    /// with `WAKE_ME`, once per sleep of the guest that a message ended.
    pub fn rings(&self) -> u64 {
        self.0.rings.load(Ordering::Relaxed)
    }

    /// The host's eventfd of this VM, which the guest's ring makes
    /// readable: to wait on it in an event loop of one's own (the async
    /// channel registers it with tokio).
    pub fn host_doorbell(&self) -> &Doorbell {
        &self.0.host
    }
}

impl BellState {
    fn guest(&self) -> std::sync::MutexGuard<'_, Option<(u16, Doorbell)>> {
        // A panic elsewhere cannot leave the slot half-written.
        self.guest.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Notifier for HostBell {
    fn ring(&self) {
        if let Some((_, guest)) = self.0.guest().as_ref() {
            // A full counter or a vanished guest only loses this ring; the
            // guest's own timeout-bounded wait recovers.
            if guest.ring().is_ok() {
                self.0.rings.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn can_wait(&self) -> bool {
        true
    }

    fn wait(&self, timeout: Duration) {
        let _ = self.0.host.wait(Some(timeout));
    }
}

enum Command {
    Add {
        uuid: VmUuid,
        shm: OwnedFd,
        options: VmOptions,
        reply: mpsc::Sender<Result<HostBell, DoorbellError>>,
    },
    Remove {
        uuid: VmUuid,
    },
}

/// An ivshmem server for many VMs, run on a thread of its own.
#[derive(Debug)]
pub struct DoorbellService {
    commands: mpsc::Sender<Command>,
    /// Rung after each command (and to stop), so the thread wakes at once.
    wake: Doorbell,
    stop: Arc<AtomicBool>,
    events: Mutex<mpsc::Receiver<ServerEvent<VmUuid>>>,
    /// The bells handed out, for their counters.
    bells: Mutex<BTreeMap<VmUuid, HostBell>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Add { uuid, .. } => write!(f, "Add({uuid})"),
            Self::Remove { uuid } => write!(f, "Remove({uuid})"),
        }
    }
}

impl DoorbellService {
    /// Starts the server thread, serving no VM yet.
    pub fn start() -> Result<Self, DoorbellError> {
        let server = DoorbellServer::new()?;
        let wake = Doorbell::new()?;
        let thread_wake = wake.try_clone()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (commands, received) = mpsc::channel();
        let (events_out, events) = mpsc::channel();
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ivchan-doorbell".into())
            .spawn(move || serve(server, &thread_wake, &thread_stop, &received, &events_out))
            .map_err(|e| DoorbellError::Sys {
                op: "spawn",
                source: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
            })?;
        Ok(Self {
            commands,
            wake,
            stop,
            events: Mutex::new(events),
            bells: Mutex::new(BTreeMap::new()),
            thread: Some(thread),
        })
    }

    /// Serves `file`'s VM on the socket `options` names; the returned bell
    /// goes to the VM's channel
    /// ([`set_notifier`](ivchan_protocol::OwnedChannel::set_notifier)).
    pub fn add(&self, file: &RegionFile, options: VmOptions) -> Result<HostBell, DoorbellError> {
        let shm = file
            .file()
            .as_fd()
            .try_clone_to_owned()
            .map_err(sys("dup"))?;
        let (reply, answer) = mpsc::channel();
        self.send(Command::Add {
            uuid: *file.uuid(),
            shm,
            options,
            reply,
        })?;
        let bell = answer.recv().map_err(|_| stopped())??;
        self.bells
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(*file.uuid(), bell.clone());
        Ok(bell)
    }

    /// How many times VM `uuid`'s channel rang its guest (see
    /// [`HostBell::rings`]); `None` if the VM is not served.
    pub fn rings(&self, uuid: &VmUuid) -> Option<u64> {
        let bells = self.bells.lock().unwrap_or_else(PoisonError::into_inner);
        bells.get(uuid).map(HostBell::rings)
    }

    /// Stops serving `uuid` (its socket is removed, its clients dropped).
    pub fn remove(&self, uuid: &VmUuid) -> Result<(), DoorbellError> {
        self.bells
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(uuid);
        self.send(Command::Remove { uuid: *uuid })
    }

    /// What the server did since the last call: peers that connected, left
    /// or were refused.
    pub fn events(&self) -> Vec<ServerEvent<VmUuid>> {
        let events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        events.try_iter().collect()
    }

    fn send(&self, command: Command) -> Result<(), DoorbellError> {
        self.commands.send(command).map_err(|_| stopped())?;
        self.wake.ring()
    }
}

impl Drop for DoorbellService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.wake.ring();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn sys(op: &'static str) -> impl FnOnce(std::io::Error) -> DoorbellError {
    move |e| DoorbellError::Sys {
        op,
        source: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
    }
}

fn stopped() -> DoorbellError {
    DoorbellError::Sys {
        op: "reach the doorbell thread",
        source: Errno::ESRCH,
    }
}

/// The service thread: sleeps until the server or a command needs it.
fn serve(
    mut server: DoorbellServer<VmUuid>,
    wake: &Doorbell,
    stop: &AtomicBool,
    commands: &mpsc::Receiver<Command>,
    events: &mpsc::Sender<ServerEvent<VmUuid>>,
) {
    let mut bells: BTreeMap<VmUuid, Arc<BellState>> = BTreeMap::new();
    while !stop.load(Ordering::Acquire) {
        let _ = wake.take();
        for command in commands.try_iter() {
            match command {
                Command::Add {
                    uuid,
                    shm,
                    options,
                    reply,
                } => {
                    let added = add(&mut server, uuid, &shm, options);
                    if let Ok(bell) = &added {
                        bells.insert(uuid, bell.0.clone());
                    }
                    let _ = reply.send(added);
                }
                Command::Remove { uuid } => {
                    bells.remove(&uuid);
                    let _ = server.remove_vm(&uuid);
                }
            }
        }
        // The server's own timers (a paused accept) are looked after by
        // `process`; one wake-up a second is enough for them.
        let mut fds = [
            PollFd::new(server.as_fd(), PollFlags::POLLIN),
            PollFd::new(wake.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::from(1000u16)) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
        let Ok(happened) = server.process(Some(Duration::ZERO)) else {
            // Out of descriptors or memory: try again shortly.
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        for event in happened {
            update_bell(&server, &bells, &event);
            let _ = events.send(event);
        }
    }
}

fn add(
    server: &mut DoorbellServer<VmUuid>,
    uuid: VmUuid,
    shm: &OwnedFd,
    options: VmOptions,
) -> Result<HostBell, DoorbellError> {
    server.add_vm(uuid, shm, options)?;
    let host = server
        .host_eventfd(&uuid, 0)
        .and_then(|fd| Doorbell::from_fd(fd.try_clone_to_owned().map_err(sys("dup"))?));
    match host {
        Ok(host) => Ok(HostBell(Arc::new(BellState {
            host,
            guest: Mutex::new(None),
            rings: AtomicU64::new(0),
        }))),
        Err(e) => {
            let _ = server.remove_vm(&uuid);
            Err(e)
        }
    }
}

/// Points a VM's bell at the guest peer that connected, or away from one
/// that left.
fn update_bell(
    server: &DoorbellServer<VmUuid>,
    bells: &BTreeMap<VmUuid, Arc<BellState>>,
    event: &ServerEvent<VmUuid>,
) {
    match event {
        ServerEvent::PeerConnected { vm, peer } => {
            let Some(bell) = bells.get(vm) else { return };
            let guest = server
                .peer_eventfd(vm, *peer, 0)
                .and_then(|fd| Doorbell::from_fd(fd.try_clone_to_owned().map_err(sys("dup"))?));
            if let Ok(guest) = guest {
                *bell.guest() = Some((*peer, guest));
            }
        }
        ServerEvent::PeerLeft { vm, peer, .. } => {
            let Some(bell) = bells.get(vm) else { return };
            let mut slot = bell.guest();
            if slot.as_ref().is_some_and(|(p, _)| p == peer) {
                *slot = None;
            }
        }
        _ => {}
    }
}
