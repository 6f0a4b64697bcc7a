//! One VM's state: its listener, shared memory, the host's eventfds and the
//! connected peers; accepting (with the handshake), client events, and
//! settling (flushing, disconnecting, telling the others).

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use nix::sys::socket::{getsockopt, sockopt};
use nix::unistd::{Gid, Uid};

use super::client::{Client, Outgoing};
use super::socket::SocketFile;
use super::{errno_of, token, LeaveReason, PeerCredentials, RefuseReason, ServerEvent, VmOptions};
use crate::doorbell::notify::new_eventfd;
use crate::doorbell::{DoorbellError, HOST_PEER_ID, MASTER_PEER_ID, MAX_PEER_ID};

/// Connections accepted per readiness event of a listening socket, so a
/// connection storm on one VM's socket cannot starve the others.
const ACCEPT_BATCH: usize = 32;
/// How long a listening socket rests after `accept` ran out of resources
/// (e.g. `EMFILE`), instead of spinning on it.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Clients of every VM the server keeps fds for, whatever the other VMs'
/// clients do: QEMU, and a second one (an incoming migration or a restart
/// that overlaps the old process).
const RESERVED_CLIENTS: usize = 2;
/// Fds kept free beyond the reserves, for the server's own transient needs
/// (reading `/proc`, accepting).
const FD_SLACK: usize = 4;

/// This process's open fds and its soft `RLIMIT_NOFILE`, from `/proc/self`;
/// `None` if unlimited or unknown (then no budget applies).
fn fd_room() -> Option<(usize, usize)> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let soft = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let open = std::fs::read_dir("/proc/self/fd").ok()?.count();
    Some((open, soft))
}

/// One served VM.
#[derive(Debug)]
pub(super) struct Vm<K> {
    key: K,
    pub(super) listener: UnixListener,
    pub(super) vectors: u16,
    shm: Arc<OwnedFd>,
    /// The host agent's eventfds (peer [`HOST_PEER_ID`]), one per vector.
    pub(super) host: Vec<Arc<OwnedFd>>,
    pub(super) clients: BTreeMap<u16, Client>,
    next_id: u16,
    max_clients: usize,
    /// Who may connect (the options' credential rules).
    opts: VmOptions,
    /// Most messages queued for one client.
    queue_limit: usize,
    /// Set while accepting rests after running out of resources.
    pub(super) paused_until: Option<Instant>,
    /// Last, so the socket file is removed after the listener is closed.
    pub(super) socket: SocketFile,
}

/// A peer's eventfds, one per vector, shared with the messages that carry
/// them.
pub(super) fn new_eventfds(vectors: u16) -> Result<Vec<Arc<OwnedFd>>, DoorbellError> {
    (0..vectors).map(|_| new_eventfd().map(Arc::new)).collect()
}

/// The next guest peer id: [`MASTER_PEER_ID`] (0) whenever it is free
/// (QEMU requires it of a migratable, `master=on` device, so a VM's QEMU
/// gets it again after a restart), else the next from `next` on (2 to
/// 65535, wrapping to 2 like QEMU's server counts), skipping the host's
/// id and ids in use; `None` when all are in use.
fn next_free_id(next: &mut u16, in_use: impl Fn(u16) -> bool) -> Option<u16> {
    if !in_use(MASTER_PEER_ID) {
        return Some(MASTER_PEER_ID);
    }
    let first = HOST_PEER_ID + 1;
    for _ in 0..MAX_PEER_ID {
        let id = (*next).max(first);
        *next = if id == MAX_PEER_ID { first } else { id + 1 };
        if id != HOST_PEER_ID && id != MASTER_PEER_ID && !in_use(id) {
            return Some(id);
        }
    }
    None
}

impl<K: Clone> Vm<K> {
    /// A VM with no clients yet, served as `opts` says on `listener`.
    pub(super) fn new(
        key: K,
        listener: UnixListener,
        socket: SocketFile,
        shm: OwnedFd,
        host: Vec<Arc<OwnedFd>>,
        opts: &VmOptions,
    ) -> Self {
        let vectors = usize::from(opts.vectors);
        let queue_limit = opts
            .max_clients
            .saturating_add(1)
            .saturating_mul(vectors)
            .saturating_add(3 + vectors)
            .saturating_add(opts.backlog);
        Self {
            key,
            listener,
            vectors: opts.vectors,
            shm: Arc::new(shm),
            host,
            clients: BTreeMap::new(),
            next_id: HOST_PEER_ID + 1,
            max_clients: opts.max_clients,
            opts: opts.clone(),
            queue_limit,
            paused_until: None,
            socket,
        }
    }

    fn alloc_id(&mut self) -> Option<u16> {
        let clients = &self.clients;
        next_free_id(&mut self.next_id, |id| clients.contains_key(&id))
    }

    fn pause_accept(&mut self, epoll: &Epoll, slot: usize) {
        let mut event = EpollEvent::new(EpollFlags::empty(), token(slot, None));
        let _ = epoll.modify(&self.listener, &mut event);
        self.paused_until = Some(Instant::now() + ACCEPT_PAUSE);
    }

    pub(super) fn resume_accept(&mut self, epoll: &Epoll, slot: usize) {
        let mut event = EpollEvent::new(EpollFlags::EPOLLIN, token(slot, None));
        if epoll.modify(&self.listener, &mut event).is_ok() {
            self.paused_until = None;
        }
    }

    /// The fds this VM keeps room for while it has fewer than
    /// [`RESERVED_CLIENTS`] clients: its socket and eventfds for each
    /// missing one. Other VMs admit clients only while that room stays.
    pub(super) fn reserve(&self) -> usize {
        let live = self.clients.values().filter(|c| c.doomed.is_none()).count();
        RESERVED_CLIENTS.saturating_sub(live) * (1 + usize::from(self.vectors))
    }

    /// Accepts pending connections (a batch); `others` is the fds the
    /// other VMs keep room for.
    pub(super) fn accept(
        &mut self,
        epoll: &Epoll,
        slot: usize,
        others: usize,
        events: &mut Vec<ServerEvent<K>>,
    ) {
        for _ in 0..ACCEPT_BATCH {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    let creds =
                        getsockopt(&stream, sockopt::PeerCredentials).map(|c| PeerCredentials {
                            pid: c.pid(),
                            uid: c.uid(),
                            gid: c.gid(),
                        });
                    let result = match creds {
                        Ok(creds) => self
                            .admit(epoll, slot, stream, creds, others, events)
                            .map_err(|reason| (reason, Some(creds))),
                        Err(e) => Err((RefuseReason::Resources(e), None)),
                    };
                    if let Err((reason, peer)) = result {
                        self.refuse(epoll, slot, reason, peer, events);
                        if self.paused_until.is_some() {
                            return;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    let reason = RefuseReason::Resources(errno_of(&e));
                    self.refuse(epoll, slot, reason, None, events);
                    return;
                }
            }
        }
    }

    /// Reports a refused connection; when resources ran out, accepting
    /// also pauses.
    fn refuse(
        &mut self,
        epoll: &Epoll,
        slot: usize,
        reason: RefuseReason,
        peer: Option<PeerCredentials>,
        events: &mut Vec<ServerEvent<K>>,
    ) {
        if let RefuseReason::Resources(_) = reason {
            self.pause_accept(epoll, slot);
        }
        events.push(ServerEvent::Refused {
            vm: self.key.clone(),
            reason,
            peer,
        });
    }

    /// The client a newcomer may replace when the VM is full: one that has
    /// not taken its handshake, the one that took least of it, the oldest
    /// first. A client that read its handshake (as QEMU does at once) is
    /// never chosen, so idle connections cannot keep a real QEMU out, and
    /// a stream of newcomers only displaces each other.
    fn eviction_candidate(&self) -> Option<u16> {
        self.clients
            .iter()
            .filter(|(_, c)| !c.took_handshake() && c.doomed.is_none())
            .min_by_key(|(_, c)| (c.sent, c.since))
            .map(|(&peer, _)| peer)
    }

    /// Takes a new connection as a peer, or refuses it (the stream is
    /// dropped, closing it).
    fn admit(
        &mut self,
        epoll: &Epoll,
        slot: usize,
        stream: UnixStream,
        creds: PeerCredentials,
        others: usize,
        events: &mut Vec<ServerEvent<K>>,
    ) -> Result<(), RefuseReason> {
        // Strangers first: they never take, or take over, a slot.
        if !self
            .opts
            .admits(Uid::from_raw(creds.uid), Gid::from_raw(creds.gid))
        {
            return Err(RefuseReason::Credentials);
        }
        let live = self.clients.values().filter(|c| c.doomed.is_none()).count();
        // Its eventfds (its socket is open already) must leave the other
        // VMs their room under RLIMIT_NOFILE.
        let cost = usize::from(self.vectors);
        let no_room = fd_room()
            .is_some_and(|(open, limit)| open.saturating_add(cost + others + FD_SLACK) > limit);
        let victim = if no_room || live >= self.max_clients {
            let refusal = if no_room {
                RefuseReason::FdReserve
            } else {
                RefuseReason::TooManyClients
            };
            Some(self.eviction_candidate().ok_or(refusal)?)
        } else {
            None
        };
        let id = self.alloc_id().ok_or(RefuseReason::NoFreeId)?;
        let resources = |e: DoorbellError| match e {
            DoorbellError::Sys { source, .. } => RefuseReason::Resources(source),
            _ => RefuseReason::Resources(Errno::EIO),
        };
        let eventfds = new_eventfds(self.vectors).map_err(resources)?;
        stream
            .set_nonblocking(true)
            .map_err(|e| RefuseReason::Resources(errno_of(&e)))?;
        let event = EpollEvent::new(Client::interest(false), token(slot, Some(id)));
        epoll.add(&stream, event).map_err(RefuseReason::Resources)?;
        let mut client = Client::new(stream, creds, eventfds).map_err(RefuseReason::Resources)?;
        // Nothing can fail from here on: make room. The victim is removed,
        // and the others told, by `settle`.
        if let Some(c) = victim.and_then(|v| self.clients.get_mut(&v)) {
            c.out.clear();
            c.doomed = Some(LeaveReason::Evicted);
        }
        // The handshake, in the spec's order: version, own id, shared
        // memory, every existing peer (the host first) once per
        // vector with its eventfd, then its own id once per vector with its
        // own eventfds.
        let mut hello = vec![
            Outgoing::new(0, None),
            Outgoing::new(i64::from(id), None),
            Outgoing::new(-1, Some(Arc::clone(&self.shm))),
        ];
        let host = self.host.iter().map(|fd| (HOST_PEER_ID, fd));
        let others = self
            .clients
            .iter()
            .filter(|(_, c)| c.doomed.is_none())
            .flat_map(|(&peer, c)| c.eventfds.iter().map(move |fd| (peer, fd)));
        for (peer, fd) in host.chain(others) {
            hello.push(Outgoing::new(i64::from(peer), Some(Arc::clone(fd))));
        }
        for fd in &client.eventfds {
            hello.push(Outgoing::new(i64::from(id), Some(Arc::clone(fd))));
        }
        client.handshake = hello.len();
        for msg in hello {
            client.queue(msg, self.queue_limit);
        }
        // Tell the others, with the eventfds that ring the newcomer.
        for other in self.clients.values_mut() {
            for fd in &client.eventfds {
                let msg = Outgoing::new(i64::from(id), Some(Arc::clone(fd)));
                other.queue(msg, self.queue_limit);
            }
        }
        self.clients.insert(id, client);
        events.push(ServerEvent::PeerConnected {
            vm: self.key.clone(),
            peer: id,
        });
        Ok(())
    }

    pub(super) fn client_event(
        &mut self,
        epoll: &Epoll,
        slot: usize,
        peer: u16,
        flags: EpollFlags,
    ) {
        let Some(client) = self.clients.get_mut(&peer) else {
            return; // already gone
        };
        if flags.contains(EpollFlags::EPOLLOUT) {
            client.flush_or_doom(epoll, token(slot, Some(peer)));
        }
        let hangup = EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR | EpollFlags::EPOLLRDHUP;
        if flags.intersects(EpollFlags::EPOLLIN | hangup) {
            let mut buf = [0u8; 64];
            let reason = match (&client.stream).read(&mut buf) {
                Ok(0) => Some(LeaveReason::Closed),
                Ok(_) => Some(LeaveReason::SentData),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    flags.intersects(hangup).then_some(LeaveReason::Closed)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => None,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Some(LeaveReason::Closed),
                Err(e) => Some(LeaveReason::SocketError(errno_of(&e))),
            };
            if client.doomed.is_none() {
                client.doomed = reason;
            }
        }
    }

    /// Flushes every client that has output and can take it, then removes
    /// doomed clients and tells the others, until nothing changes.
    pub(super) fn settle(&mut self, epoll: &Epoll, slot: usize, events: &mut Vec<ServerEvent<K>>) {
        loop {
            for (&peer, client) in &mut self.clients {
                // A client whose socket was full is flushed on `EPOLLOUT`.
                if !client.want_write && !client.out.is_empty() {
                    client.flush_or_doom(epoll, token(slot, Some(peer)));
                }
            }
            let doomed: Vec<(u16, LeaveReason)> = self
                .clients
                .iter()
                .filter_map(|(&peer, c)| c.doomed.map(|r| (peer, r)))
                .collect();
            if doomed.is_empty() {
                return;
            }
            let mut gone = Vec::with_capacity(doomed.len());
            for &(peer, reason) in &doomed {
                if let Some(client) = self.clients.remove(&peer) {
                    let _ = epoll.delete(&client.stream);
                    // Dropping closes the socket; the peer's eventfds live
                    // on only in messages not yet sent to others.
                    gone.push((peer, client.eventfds.clone()));
                    drop(client);
                }
                events.push(ServerEvent::PeerLeft {
                    vm: self.key.clone(),
                    peer,
                    reason,
                });
            }
            // A client that was never sent any of a departed peer's
            // eventfds forgets it silently; the others are told it left.
            // So queues (and the fds they keep open) only ever refer to
            // live peers, however many come and go while a client does
            // not read.
            for other in self.clients.values_mut() {
                for (peer, fds) in &gone {
                    if other.forget(fds) {
                        other.queue(Outgoing::new(i64::from(*peer), None), self.queue_limit);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn ids_start_at_0_then_2_wrap_at_65535_and_skip_ids_in_use() {
        let mut next = HOST_PEER_ID + 1;
        let mut used = BTreeSet::new();
        // The first guest peer is 0 (QEMU's master), and so is the next
        // one whenever 0 is free again.
        assert_eq!(next_free_id(&mut next, |id| used.contains(&id)), Some(0));
        used.insert(0);
        assert_eq!(next_free_id(&mut next, |id| used.contains(&id)), Some(2));
        used.insert(2);
        assert_eq!(next_free_id(&mut next, |id| used.contains(&id)), Some(3));
        // Freed ids other than 0 are not reused until the counter comes round.
        used.remove(&2);
        assert_eq!(next_free_id(&mut next, |id| used.contains(&id)), Some(4));
        used.remove(&0);
        assert_eq!(next_free_id(&mut next, |id| used.contains(&id)), Some(0));
        used.insert(0);
        used.insert(2);
        next = MAX_PEER_ID;
        assert_eq!(
            next_free_id(&mut next, |id| used.contains(&id)),
            Some(65535)
        );
        // Wraps to 2 (never 1, the host), skipping 2 (in use).
        assert_eq!(next_free_id(&mut next, |id| used.contains(&id)), Some(3));
        // All in use: none, after one lap.
        assert_eq!(next_free_id(&mut next, |_| true), None);
        // Only one free id: found wherever the counter is.
        next = 40_000;
        assert_eq!(next_free_id(&mut next, |id| id != 7), Some(7));
    }
}
