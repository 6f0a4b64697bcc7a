//! Waiting on eventfds: one [`Doorbell`], or a [`DoorbellSet`] of many
//! (the host's eventfds of many VMs) behind one epoll instance.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::{sys, DoorbellError};

/// A new non-blocking, close-on-exec eventfd.
pub(crate) fn new_eventfd() -> Result<OwnedFd, DoorbellError> {
    EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
        .map(OwnedFd::from)
        .map_err(sys("eventfd"))
}

/// Adds 1 to an eventfd's counter. A counter at its maximum (`EAGAIN` on a
/// non-blocking eventfd) is already readable, so that is success too.
pub(crate) fn ring_fd(fd: BorrowedFd<'_>) -> Result<(), DoorbellError> {
    loop {
        return match nix::unistd::write(fd, &1u64.to_ne_bytes()) {
            Ok(_) | Err(Errno::EAGAIN) => Ok(()),
            Err(Errno::EINTR) => continue,
            Err(e) => Err(DoorbellError::Sys {
                op: "write eventfd",
                source: e,
            }),
        };
    }
}

/// Reads (and so resets) an eventfd's counter: 0 if it was not rung.
/// The fd must be non-blocking.
fn take_fd(fd: BorrowedFd<'_>) -> Result<u64, DoorbellError> {
    let mut buf = [0u8; 8];
    loop {
        return match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
            Ok(8) => Ok(u64::from_ne_bytes(buf)),
            // An eventfd reads exactly 8 bytes; anything else is not one.
            Ok(_) => Err(DoorbellError::Sys {
                op: "read eventfd",
                source: Errno::EINVAL,
            }),
            Err(Errno::EAGAIN) => Ok(0),
            Err(Errno::EINTR) => continue,
            Err(e) => Err(DoorbellError::Sys {
                op: "read eventfd",
                source: e,
            }),
        };
    }
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> Result<(), DoorbellError> {
    let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).map_err(sys("fcntl F_GETFL"))?;
    let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags)).map_err(sys("fcntl F_SETFL"))?;
    Ok(())
}

/// Milliseconds left until `deadline` for poll/epoll (rounded up, so a
/// wait never returns early), or `None` for "forever".
fn millis_left(deadline: Option<Instant>) -> Option<u16> {
    deadline.map(|d| {
        let left = d.saturating_duration_since(Instant::now());
        let ms = left.as_micros().div_ceil(1000);
        u16::try_from(ms).unwrap_or(u16::MAX)
    })
}

/// Waits on `epoll` until an event or `deadline` (`None`: forever); an
/// interrupted wait counts as no event. Returns how many of `events` are
/// filled.
pub(super) fn epoll_wait_until(
    epoll: &Epoll,
    events: &mut [EpollEvent],
    deadline: Option<Instant>,
) -> Result<usize, DoorbellError> {
    let timeout = millis_left(deadline).map_or(EpollTimeout::NONE, EpollTimeout::from);
    match epoll.wait(events, timeout) {
        Ok(n) => Ok(n),
        Err(Errno::EINTR) => Ok(0),
        Err(source) => Err(DoorbellError::Sys {
            op: "epoll_wait",
            source,
        }),
    }
}

/// One eventfd: one side rings it, the other waits on it and takes the
/// count. Rings coalesce: several rings before a take are taken as one
/// count, never lost.
///
/// Two processes share a doorbell by passing its fd (inheritance, or
/// `SCM_RIGHTS` over a UNIX socket); a ping-pong needs two doorbells.
#[derive(Debug)]
pub struct Doorbell {
    fd: OwnedFd,
}

impl Doorbell {
    /// A new doorbell (a non-blocking, close-on-exec eventfd).
    pub fn new() -> Result<Self, DoorbellError> {
        Ok(Self { fd: new_eventfd()? })
    }

    /// Wraps an eventfd received from elsewhere (e.g. one of the eventfds an
    /// ivshmem server sent). It is made non-blocking, which applies to
    /// every descriptor sharing its open file.
    pub fn from_fd(fd: OwnedFd) -> Result<Self, DoorbellError> {
        set_nonblocking(fd.as_fd())?;
        Ok(Self { fd })
    }

    /// Another handle on the same eventfd (`dup`).
    pub fn try_clone(&self) -> Result<Self, DoorbellError> {
        let fd = self.fd.try_clone().map_err(|e| DoorbellError::Sys {
            op: "dup",
            source: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
        })?;
        Ok(Self { fd })
    }

    /// Rings: adds 1 to the counter, waking a waiter.
    pub fn ring(&self) -> Result<(), DoorbellError> {
        ring_fd(self.fd.as_fd())
    }

    /// Takes the count of rings since the last take, without waiting
    /// (0 if none).
    pub fn take(&self) -> Result<u64, DoorbellError> {
        take_fd(self.fd.as_fd())
    }

    /// Waits until rung or `timeout` passes (`None`: forever), then takes
    /// the count; 0 means the timeout passed.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<u64, DoorbellError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let count = self.take()?;
            if count != 0 {
                return Ok(count);
            }
            let ms = millis_left(deadline);
            if ms == Some(0) {
                return Ok(0);
            }
            let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
            let timeout = ms.map_or(PollTimeout::NONE, PollTimeout::from);
            match poll(&mut fds, timeout) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => {
                    return Err(DoorbellError::Sys {
                        op: "poll",
                        source: e,
                    })
                }
            }
        }
    }
}

impl AsFd for Doorbell {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl From<Doorbell> for OwnedFd {
    fn from(bell: Doorbell) -> OwnedFd {
        bell.fd
    }
}

/// Many eventfds, each under a key (a VM's UUID, or `(uuid, vector)`),
/// waited on together with one epoll instance.
///
/// The set keeps its own duplicate of each fd, so it never reads a
/// descriptor that was closed and reused behind its back; an entry stays
/// until [`remove`](Self::remove)d. The fds are made non-blocking.
#[derive(Debug)]
pub struct DoorbellSet<K> {
    epoll: Epoll,
    /// Slot `i` is epoll token `i`.
    entries: Vec<Option<(K, OwnedFd)>>,
    events: Vec<EpollEvent>,
}

impl<K: Clone + PartialEq> DoorbellSet<K> {
    /// An empty set.
    pub fn new() -> Result<Self, DoorbellError> {
        Ok(Self {
            epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(sys("epoll_create"))?,
            entries: Vec::new(),
            events: vec![EpollEvent::empty(); 64],
        })
    }

    /// Adds an eventfd under `key` (a duplicate of it is kept). Several
    /// fds may share a key; the key is then reported when any of them rang.
    pub fn add(&mut self, key: K, fd: impl AsFd) -> Result<(), DoorbellError> {
        let fd = fd
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| DoorbellError::Sys {
                op: "dup",
                source: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
            })?;
        set_nonblocking(fd.as_fd())?;
        let slot = match self.entries.iter().position(Option::is_none) {
            Some(slot) => slot,
            None => {
                self.entries.push(None);
                self.entries.len() - 1
            }
        };
        let event = EpollEvent::new(EpollFlags::EPOLLIN, slot as u64);
        self.epoll.add(&fd, event).map_err(sys("epoll_ctl add"))?;
        self.entries[slot] = Some((key, fd));
        Ok(())
    }

    /// Removes every fd under `key`; returns how many there were.
    pub fn remove(&mut self, key: &K) -> usize {
        let mut removed = 0;
        for entry in &mut self.entries {
            if entry.as_ref().is_some_and(|(k, _)| k == key) {
                if let Some((_, fd)) = entry.take() {
                    // Closing our duplicate removes it from the epoll set
                    // too; deleting first just makes that explicit.
                    let _ = self.epoll.delete(&fd);
                    removed += 1;
                }
            }
        }
        removed
    }

    /// Number of fds in the set.
    pub fn len(&self) -> usize {
        self.entries.iter().flatten().count()
    }

    /// True if the set has no fds.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until at least one fd was rung or `timeout` passes (`None`:
    /// forever), drains the fds that were rung, and returns their keys,
    /// each once. Empty means the timeout passed.
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<Vec<K>, DoorbellError> {
        let mut keys: Vec<K> = Vec::new();
        for (key, _) in self.wait_counts(timeout)? {
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        Ok(keys)
    }

    /// As [`wait`](Self::wait), with the count each fd was rung (a key
    /// with several fds may appear several times).
    pub fn wait_counts(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<Vec<(K, u64)>, DoorbellError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut rang = Vec::new();
        loop {
            let n = epoll_wait_until(&self.epoll, &mut self.events, deadline)?;
            for event in &self.events[..n] {
                let slot = usize::try_from(event.data()).unwrap_or(usize::MAX);
                let Some(Some((key, fd))) = self.entries.get(slot) else {
                    continue;
                };
                let count = take_fd(fd.as_fd())?;
                if count != 0 {
                    rang.push((key.clone(), count));
                }
            }
            // Another reader may have drained a ready fd first: then wait
            // on for what is left of the timeout.
            if !rang.is_empty() || millis_left(deadline) == Some(0) {
                return Ok(rang);
            }
        }
    }
}

impl<K> AsFd for DoorbellSet<K> {
    /// The epoll fd: readable when a member was rung, so a set can sit in
    /// the application's own poll loop.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.epoll.0.as_fd()
    }
}

/// A channel's doorbell on the host: rings the guest through the guest
/// peer's eventfd (QEMU turns it into an MSI-X interrupt), and sleeps on the
/// host's own eventfd (written by QEMU when the guest rings [`HOST_PEER_ID`](super::HOST_PEER_ID)).
/// Attach it with [`Channel::set_notifier`](ivchan_protocol::Channel::set_notifier).
#[derive(Debug)]
pub struct ChannelBell {
    guest: Doorbell,
    host: Doorbell,
}

impl ChannelBell {
    /// From the guest peer's eventfd and the host's own (see
    /// [`DoorbellServer::peer_eventfd`](super::DoorbellServer::peer_eventfd)
    /// and [`host_eventfd`](super::DoorbellServer::host_eventfd)); both are
    /// duplicated, so the server keeps its own.
    pub fn new(guest: BorrowedFd<'_>, host: BorrowedFd<'_>) -> Result<Self, DoorbellError> {
        let dup = |fd: BorrowedFd<'_>| {
            fd.try_clone_to_owned().map_err(|e| DoorbellError::Sys {
                op: "dup",
                source: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
            })
        };
        Ok(Self {
            guest: Doorbell::from_fd(dup(guest)?)?,
            host: Doorbell::from_fd(dup(host)?)?,
        })
    }
}

impl ivchan_protocol::Notifier for ChannelBell {
    fn ring(&self) {
        // A full counter or a vanished guest only loses this ring; the
        // guest's own timeout-bounded sleep recovers.
        let _ = self.guest.ring();
    }

    fn can_wait(&self) -> bool {
        true
    }

    fn wait(&self, timeout: Duration) {
        let _ = self.host.wait(Some(timeout));
    }
}
