//! An ivshmem server (QEMU `docs/specs/ivshmem-spec.rst`) for one VM or
//! many, driven from one thread.
//!
//! Each VM has its own socket, shared-memory fd, vector count and peer
//! table. The host agent is peer [`HOST_PEER_ID`] of every VM, with its own
//! eventfds; guests (QEMU `ivshmem-doorbell` devices, or any client) get ids
//! from 1. Every connection is non-blocking: the server queues what it owes
//! each client (bounded) and flushes when the socket is writable, so one
//! slow or hostile client never stalls the others.
//!
//! Clients must never send anything: as in QEMU's reference server, a
//! client that sends a byte (or closes, or resets) is disconnected, its
//! eventfds are closed, and the other clients are told it left.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Display;
use std::fs::{self, Permissions};
use std::io::{self, IoSlice, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{
    bind, listen, sendmsg, socket, AddressFamily, Backlog, ControlMessage, MsgFlags, SockFlag,
    SockType, UnixAddr,
};
use nix::unistd::Gid;

use super::notify::{new_eventfd, ring_fd};
use super::{sys, DoorbellError, HOST_PEER_ID, MAX_PEER_ID, MAX_VECTORS};
use crate::region_file::VmUuid;

/// Connections accepted per readiness event of a listening socket, so a
/// connection storm on one VM's socket cannot starve the others.
const ACCEPT_BATCH: usize = 32;
/// How long a listening socket rests after `accept` ran out of resources
/// (e.g. `EMFILE`), instead of spinning on it.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Epoll token bits for the peer part (`peer + 1`; 0 is the listener).
const SLOT_SHIFT: u32 = 32;

/// How one VM is served.
#[derive(Debug, Clone)]
pub struct VmOptions {
    path: PathBuf,
    vectors: u16,
    mode: u32,
    group: Option<Gid>,
    max_clients: usize,
    backlog: usize,
}

impl VmOptions {
    /// Listen on `path`; 1 vector, mode 0660, the process's group, at most
    /// 64 clients, at most 1024 notices queued for a client that does not
    /// read.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            vectors: 1,
            mode: 0o660,
            group: None,
            max_clients: 64,
            backlog: 1024,
        }
    }

    /// Interrupt vectors per peer (1 to [`MAX_VECTORS`]); QEMU's
    /// `ivshmem-doorbell,vectors=N` should match.
    pub fn vectors(mut self, vectors: u16) -> Self {
        self.vectors = vectors;
        self
    }

    /// Permission bits of the socket file (default 0660). Connecting needs
    /// write permission.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode & 0o777;
        self
    }

    /// Group of the socket file, e.g. libvirt-qemu's group so that QEMU
    /// started by libvirt may connect with mode 0660.
    pub fn group(mut self, gid: u32) -> Self {
        self.group = Some(Gid::from_raw(gid));
        self
    }

    /// Group of the socket file by name (e.g. `"libvirt-qemu"`).
    pub fn group_named(self, name: &str) -> Result<Self, DoorbellError> {
        match nix::unistd::Group::from_name(name) {
            Ok(Some(group)) => Ok(self.group(group.gid.as_raw())),
            Ok(None) => Err(DoorbellError::UnknownGroup {
                name: name.to_owned(),
            }),
            Err(source) => Err(DoorbellError::Sys {
                op: "look up group",
                source,
            }),
        }
    }

    /// Most clients connected at once; further connections are closed
    /// right after they are accepted.
    pub fn max_clients(mut self, max: usize) -> Self {
        self.max_clients = max;
        self
    }

    /// Most join/leave notices queued for a client that does not read its
    /// socket, beyond its handshake; past it the client is disconnected.
    pub fn backlog(mut self, max: usize) -> Self {
        self.backlog = max;
        self
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Something that happened on a VM's server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent<K> {
    /// A guest peer connected; its handshake is queued and its eventfds
    /// exist, so [`DoorbellServer::ring_peer`] works at once (a ring before
    /// the peer has read its eventfds stays pending, not lost).
    PeerConnected {
        /// The VM.
        vm: K,
        /// The peer's id (1 to 65535).
        peer: u16,
    },
    /// A guest peer left or was disconnected; its eventfds are closed (once
    /// the notices that carry them are sent) and the other clients are told.
    PeerLeft {
        /// The VM.
        vm: K,
        /// The peer's id.
        peer: u16,
        /// Why.
        reason: LeaveReason,
    },
    /// A connection was refused (closed right after accept), or accepting
    /// failed for lack of resources.
    Refused {
        /// The VM.
        vm: K,
        /// Why.
        reason: RefuseReason,
    },
}

/// Why a peer left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaveReason {
    /// It closed its end (or hung up, or reset the connection).
    Closed,
    /// It sent data; clients must not send anything.
    SentData,
    /// It let more than the configured backlog of notices pile up.
    NotReading,
    /// Its socket failed.
    SocketError(Errno),
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefuseReason {
    /// The VM's client limit was reached.
    TooManyClients,
    /// Every peer id is in use.
    NoFreeId,
    /// The system ran out of something (fds, memory); accepting pauses
    /// briefly.
    Resources(Errno),
}

/// A peer that closed its end shows up as `EPIPE` or `ECONNRESET` when
/// the server writes before it sees the hang-up.
fn send_failed(e: Errno) -> LeaveReason {
    match e {
        Errno::EPIPE | Errno::ECONNRESET => LeaveReason::Closed,
        e => LeaveReason::SocketError(e),
    }
}

fn errno_of(e: &io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(Errno::EIO as i32))
}

/// One 8-byte message owed to a client, maybe with one fd.
#[derive(Debug)]
struct Outgoing {
    bytes: [u8; 8],
    sent: usize,
    /// Shared with the peer that owns it (and other queues); sent with the
    /// first byte, then dropped.
    fd: Option<Arc<OwnedFd>>,
}

impl Outgoing {
    fn new(value: i64, fd: Option<Arc<OwnedFd>>) -> Self {
        Self {
            bytes: value.to_le_bytes(),
            sent: 0,
            fd,
        }
    }
}

#[derive(Debug)]
struct Client {
    stream: UnixStream,
    /// This peer's eventfds, one per vector (others ring it with these).
    eventfds: Vec<Arc<OwnedFd>>,
    out: VecDeque<Outgoing>,
    /// `EPOLLOUT` is in the interest set (the socket was full).
    want_write: bool,
    /// To be disconnected, and why.
    doomed: Option<LeaveReason>,
}

impl Client {
    fn interest(want_write: bool) -> EpollFlags {
        let base = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
        if want_write {
            base | EpollFlags::EPOLLOUT
        } else {
            base
        }
    }

    fn set_want_write(&mut self, epoll: &Epoll, token: u64, on: bool) -> Result<(), Errno> {
        if self.want_write != on {
            let mut event = EpollEvent::new(Self::interest(on), token);
            epoll.modify(&self.stream, &mut event)?;
            self.want_write = on;
        }
        Ok(())
    }

    /// Sends what can be sent now, without blocking.
    fn flush(&mut self, epoll: &Epoll, token: u64) -> Result<(), Errno> {
        let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
        while let Some(msg) = self.out.front_mut() {
            let iov = [IoSlice::new(&msg.bytes[msg.sent..])];
            let raw = msg.fd.as_ref().map(|fd| [fd.as_raw_fd()]);
            let cmsg;
            let cmsgs: &[ControlMessage<'_>] = match &raw {
                Some(fds) => {
                    cmsg = [ControlMessage::ScmRights(fds)];
                    &cmsg
                }
                None => &[],
            };
            match sendmsg::<()>(self.stream.as_raw_fd(), &iov, cmsgs, flags, None) {
                Ok(0) => return Err(Errno::EPIPE),
                Ok(n) => {
                    // The fd travelled with the first byte.
                    msg.fd = None;
                    msg.sent += n;
                    if msg.sent >= msg.bytes.len() {
                        self.out.pop_front();
                    }
                }
                Err(Errno::EAGAIN) => return self.set_want_write(epoll, token, true),
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
        self.set_want_write(epoll, token, false)
    }
}

/// The socket file this server created; removed on drop if the path
/// still names it.
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(meta) = fs::symlink_metadata(&self.path) {
            if meta.file_type().is_socket() && (meta.dev(), meta.ino()) == (self.dev, self.ino) {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

fn path_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> DoorbellError + 'a {
    move |source| DoorbellError::Socket {
        path: path.to_path_buf(),
        op,
        source,
    }
}

fn nix_path_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(Errno) -> DoorbellError + 'a {
    move |e| DoorbellError::Socket {
        path: path.to_path_buf(),
        op,
        source: e.into(),
    }
}

/// Clears the way for a socket at `path`: nothing there is fine; a stale
/// socket (nobody accepts on it) is removed; a live socket or any other
/// kind of file is refused.
fn clear_stale(path: &Path) -> Result<(), DoorbellError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(path_err(path, "stat")(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(DoorbellError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(DoorbellError::SocketInUse {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            fs::remove_file(path).map_err(path_err(path, "remove stale socket"))
        }
        Err(e) => Err(path_err(path, "probe existing socket")(e)),
    }
}

/// Binds a listening socket at `path` with the options' mode and group.
/// Permissions are set between `bind` and `listen`, so nobody can connect
/// while the file still has the umask's mode.
fn bind_socket(opts: &VmOptions) -> Result<(UnixListener, SocketFile), DoorbellError> {
    let path = opts.path.as_path();
    clear_stale(path)?;
    let sock = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(nix_path_err(path, "create socket for"))?;
    let addr = UnixAddr::new(path).map_err(nix_path_err(path, "address"))?;
    bind(sock.as_raw_fd(), &addr).map_err(nix_path_err(path, "bind"))?;
    let meta = fs::symlink_metadata(path).map_err(path_err(path, "stat"))?;
    // From here on the file is ours: dropping `file` removes it on error.
    let file = SocketFile {
        path: path.to_path_buf(),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    if let Some(gid) = opts.group {
        std::os::unix::fs::lchown(path, None, Some(gid.as_raw()))
            .map_err(path_err(path, "chown"))?;
    }
    fs::set_permissions(path, Permissions::from_mode(opts.mode))
        .map_err(path_err(path, "chmod"))?;
    let backlog = Backlog::new(128).map_err(nix_path_err(path, "listen on"))?;
    listen(&sock, backlog).map_err(nix_path_err(path, "listen on"))?;
    Ok((UnixListener::from(sock), file))
}

#[derive(Debug)]
struct Vm<K> {
    key: K,
    listener: UnixListener,
    vectors: u16,
    shm: Arc<OwnedFd>,
    /// The host agent's eventfds (peer 0), one per vector.
    host: Vec<Arc<OwnedFd>>,
    clients: BTreeMap<u16, Client>,
    next_id: u16,
    max_clients: usize,
    /// Most messages queued for one client.
    queue_limit: usize,
    /// Set while accepting rests after running out of resources.
    paused_until: Option<Instant>,
    /// Last, so the socket file is removed after the listener is closed.
    socket: SocketFile,
}

/// The next guest peer id from `next` on (1 to 65535, wrapping to 1 like
/// QEMU's server), skipping ids in use; `None` when all are in use.
fn next_free_id(next: &mut u16, in_use: impl Fn(u16) -> bool) -> Option<u16> {
    for _ in 0..MAX_PEER_ID {
        let id = (*next).max(1);
        *next = if id == MAX_PEER_ID { 1 } else { id + 1 };
        if id != HOST_PEER_ID && !in_use(id) {
            return Some(id);
        }
    }
    None
}

fn token(slot: usize, peer: Option<u16>) -> u64 {
    ((slot as u64) << SLOT_SHIFT) | peer.map_or(0, |p| u64::from(p) + 1)
}

impl<K: Clone> Vm<K> {
    fn alloc_id(&mut self) -> Option<u16> {
        let clients = &self.clients;
        next_free_id(&mut self.next_id, |id| clients.contains_key(&id))
    }

    fn queue(&self, client: &mut Client, msg: Outgoing) {
        if client.doomed.is_some() {
            return;
        }
        if client.out.len() >= self.queue_limit {
            client.out.clear();
            client.doomed = Some(LeaveReason::NotReading);
            return;
        }
        client.out.push_back(msg);
    }

    fn pause_accept(&mut self, epoll: &Epoll, slot: usize) {
        let mut event = EpollEvent::new(EpollFlags::empty(), token(slot, None));
        let _ = epoll.modify(&self.listener, &mut event);
        self.paused_until = Some(Instant::now() + ACCEPT_PAUSE);
    }

    fn resume_accept(&mut self, epoll: &Epoll, slot: usize) {
        let mut event = EpollEvent::new(EpollFlags::EPOLLIN, token(slot, None));
        if epoll.modify(&self.listener, &mut event).is_ok() {
            self.paused_until = None;
        }
    }

    fn accept(&mut self, epoll: &Epoll, slot: usize, events: &mut Vec<ServerEvent<K>>) {
        for _ in 0..ACCEPT_BATCH {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if let Err(reason) = self.admit(epoll, slot, stream, events) {
                        if let RefuseReason::Resources(_) = reason {
                            self.pause_accept(epoll, slot);
                        }
                        events.push(ServerEvent::Refused {
                            vm: self.key.clone(),
                            reason,
                        });
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
                    self.pause_accept(epoll, slot);
                    events.push(ServerEvent::Refused {
                        vm: self.key.clone(),
                        reason: RefuseReason::Resources(errno_of(&e)),
                    });
                    return;
                }
            }
        }
    }

    /// Takes a new connection as a peer, or refuses it (the stream is
    /// dropped, closing it).
    fn admit(
        &mut self,
        epoll: &Epoll,
        slot: usize,
        stream: UnixStream,
        events: &mut Vec<ServerEvent<K>>,
    ) -> Result<(), RefuseReason> {
        if self.clients.len() >= self.max_clients {
            return Err(RefuseReason::TooManyClients);
        }
        let id = self.alloc_id().ok_or(RefuseReason::NoFreeId)?;
        let resources = |e: DoorbellError| match e {
            DoorbellError::Sys { source, .. } => RefuseReason::Resources(source),
            _ => RefuseReason::Resources(Errno::EIO),
        };
        let eventfds = (0..self.vectors)
            .map(|_| new_eventfd().map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(resources)?;
        stream
            .set_nonblocking(true)
            .map_err(|e| RefuseReason::Resources(errno_of(&e)))?;
        let event = EpollEvent::new(Client::interest(false), token(slot, Some(id)));
        epoll.add(&stream, event).map_err(RefuseReason::Resources)?;
        let mut client = Client {
            stream,
            eventfds,
            out: VecDeque::new(),
            want_write: false,
            doomed: None,
        };
        // The handshake, in the spec's order: version, own id, shared
        // memory, every existing peer (the host first: ids ascend) once per
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
            .flat_map(|(&peer, c)| c.eventfds.iter().map(move |fd| (peer, fd)));
        for (peer, fd) in host.chain(others) {
            hello.push(Outgoing::new(i64::from(peer), Some(Arc::clone(fd))));
        }
        for fd in &client.eventfds {
            hello.push(Outgoing::new(i64::from(id), Some(Arc::clone(fd))));
        }
        for msg in hello {
            self.queue(&mut client, msg);
        }
        // Tell the others, with the eventfds that ring the newcomer.
        let mut clients = std::mem::take(&mut self.clients);
        for other in clients.values_mut() {
            for fd in &client.eventfds {
                self.queue(other, Outgoing::new(i64::from(id), Some(Arc::clone(fd))));
            }
        }
        clients.insert(id, client);
        self.clients = clients;
        events.push(ServerEvent::PeerConnected {
            vm: self.key.clone(),
            peer: id,
        });
        Ok(())
    }

    fn client_event(&mut self, epoll: &Epoll, slot: usize, peer: u16, flags: EpollFlags) {
        let Some(client) = self.clients.get_mut(&peer) else {
            return; // already gone
        };
        if flags.contains(EpollFlags::EPOLLOUT) && client.doomed.is_none() {
            if let Err(e) = client.flush(epoll, token(slot, Some(peer))) {
                client.doomed = Some(send_failed(e));
            }
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
    fn settle(&mut self, epoll: &Epoll, slot: usize, events: &mut Vec<ServerEvent<K>>) {
        loop {
            for (&peer, client) in &mut self.clients {
                // A client whose socket was full is flushed on `EPOLLOUT`.
                if client.doomed.is_none() && !client.want_write && !client.out.is_empty() {
                    if let Err(e) = client.flush(epoll, token(slot, Some(peer))) {
                        client.doomed = Some(send_failed(e));
                    }
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
            for &(peer, reason) in &doomed {
                if let Some(client) = self.clients.remove(&peer) {
                    let _ = epoll.delete(&client.stream);
                    // Dropping closes the socket and this server's
                    // references to the peer's eventfds.
                    drop(client);
                }
                events.push(ServerEvent::PeerLeft {
                    vm: self.key.clone(),
                    peer,
                    reason,
                });
            }
            let mut clients = std::mem::take(&mut self.clients);
            for other in clients.values_mut() {
                for &(peer, _) in &doomed {
                    self.queue(other, Outgoing::new(i64::from(peer), None));
                }
            }
            self.clients = clients;
        }
    }
}

/// An ivshmem server for one or many VMs, keyed by `K` (a VM's UUID by
/// default). Drive it with [`process`](Self::process) from one thread (or
/// poll its fd, [`AsFd`], in your own loop and call `process` with a zero
/// timeout when it is readable).
///
/// Dropping the server (or [`remove_vm`](Self::remove_vm)) closes every
/// connection and removes the socket files it created.
#[derive(Debug)]
pub struct DoorbellServer<K = VmUuid> {
    epoll: Epoll,
    vms: Vec<Option<Vm<K>>>,
    index: BTreeMap<K, usize>,
    events: Vec<EpollEvent>,
}

impl<K: Ord + Clone + Display> DoorbellServer<K> {
    /// A server with no VMs yet.
    pub fn new() -> Result<Self, DoorbellError> {
        Ok(Self {
            epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(sys("epoll_create"))?,
            vms: Vec::new(),
            index: BTreeMap::new(),
            events: vec![EpollEvent::empty(); 64],
        })
    }

    /// Serves VM `key`: listens on `opts.path()`, hands out `shm` (a
    /// duplicate is kept; e.g. [`RegionFile::file`](crate::RegionFile::file))
    /// as the shared memory, and creates the host's eventfds (peer
    /// [`HOST_PEER_ID`]).
    ///
    /// A stale socket at the path is replaced; a socket someone still
    /// accepts on, or any other kind of file, is an error.
    pub fn add_vm(&mut self, key: K, shm: impl AsFd, opts: VmOptions) -> Result<(), DoorbellError> {
        if self.index.contains_key(&key) {
            return Err(DoorbellError::DuplicateVm {
                vm: key.to_string(),
            });
        }
        if opts.vectors == 0 || opts.vectors > MAX_VECTORS {
            return Err(DoorbellError::BadVectorCount {
                vectors: opts.vectors,
            });
        }
        let shm = shm
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| DoorbellError::Sys {
                op: "dup shared-memory fd",
                source: errno_of(&e),
            })?;
        let host = (0..opts.vectors)
            .map(|_| new_eventfd().map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let (listener, socket) = bind_socket(&opts)?;
        let slot = match self.vms.iter().position(Option::is_none) {
            Some(slot) => slot,
            None => {
                self.vms.push(None);
                self.vms.len() - 1
            }
        };
        let event = EpollEvent::new(EpollFlags::EPOLLIN, token(slot, None));
        self.epoll
            .add(&listener, event)
            .map_err(sys("epoll_ctl add"))?;
        let vectors = usize::from(opts.vectors);
        let queue_limit = opts
            .max_clients
            .saturating_add(1)
            .saturating_mul(vectors)
            .saturating_add(3 + vectors)
            .saturating_add(opts.backlog);
        self.vms[slot] = Some(Vm {
            key: key.clone(),
            listener,
            vectors: opts.vectors,
            shm: Arc::new(shm),
            host,
            clients: BTreeMap::new(),
            next_id: 1,
            max_clients: opts.max_clients,
            queue_limit,
            paused_until: None,
            socket,
        });
        self.index.insert(key, slot);
        Ok(())
    }

    /// Serves a VM's region file under its UUID (see
    /// [`add_vm`](Self::add_vm)).
    pub fn add_region(
        &mut self,
        region: &crate::RegionFile,
        opts: VmOptions,
    ) -> Result<(), DoorbellError>
    where
        K: From<VmUuid>,
    {
        self.add_vm(K::from(*region.uuid()), region.file(), opts)
    }

    /// Stops serving `vm`: closes its connections (QEMU keeps the eventfds
    /// it has) and removes its socket file.
    pub fn remove_vm(&mut self, vm: &K) -> Result<(), DoorbellError> {
        let slot = self.slot(vm)?;
        self.index.remove(vm);
        if let Some(state) = self.vms[slot].take() {
            let _ = self.epoll.delete(&state.listener);
            for client in state.clients.values() {
                let _ = self.epoll.delete(&client.stream);
            }
        }
        Ok(())
    }

    /// The VMs served.
    pub fn vms(&self) -> impl Iterator<Item = &K> {
        self.index.keys()
    }

    fn slot(&self, vm: &K) -> Result<usize, DoorbellError> {
        self.index
            .get(vm)
            .copied()
            .ok_or_else(|| DoorbellError::UnknownVm { vm: vm.to_string() })
    }

    fn vm(&self, vm: &K) -> Result<&Vm<K>, DoorbellError> {
        let slot = self.slot(vm)?;
        self.vms[slot]
            .as_ref()
            .ok_or_else(|| DoorbellError::UnknownVm { vm: vm.to_string() })
    }

    /// The eventfd of `peer` ([`HOST_PEER_ID`] or a guest) for `vector` of
    /// `vm`: the one lookup behind the accessors below.
    fn eventfd(&self, vm: &K, peer: u16, vector: u16) -> Result<BorrowedFd<'_>, DoorbellError> {
        let state = self.vm(vm)?;
        let fds = if peer == HOST_PEER_ID {
            &state.host
        } else {
            &state
                .clients
                .get(&peer)
                .ok_or_else(|| DoorbellError::UnknownPeer {
                    vm: vm.to_string(),
                    peer,
                })?
                .eventfds
        };
        let fd = fds
            .get(usize::from(vector))
            .ok_or(DoorbellError::BadVector {
                vector,
                vectors: state.vectors,
            })?;
        Ok(fd.as_fd())
    }

    /// The host's eventfd for `vector` of `vm`: readable when a guest rang
    /// the host (Doorbell register `(HOST_PEER_ID << 16) | vector`). Add it
    /// to a [`DoorbellSet`](super::DoorbellSet) to wait on many VMs.
    pub fn host_eventfd(&self, vm: &K, vector: u16) -> Result<BorrowedFd<'_>, DoorbellError> {
        self.eventfd(vm, HOST_PEER_ID, vector)
    }

    /// Guest `peer`'s eventfd for `vector` of `vm`: writing it interrupts
    /// that guest (what [`ring_peer`](Self::ring_peer) does). Duplicate it
    /// (e.g. into a [`ChannelBell`](super::ChannelBell)) to ring from
    /// another thread.
    pub fn peer_eventfd(
        &self,
        vm: &K,
        peer: u16,
        vector: u16,
    ) -> Result<BorrowedFd<'_>, DoorbellError> {
        self.eventfd(vm, peer, vector)
    }

    /// Rings `peer` of `vm` on `vector`: writes 1 to that peer's eventfd,
    /// which QEMU turns into an MSI-X interrupt in the guest.
    /// [`HOST_PEER_ID`] rings the host's own eventfd.
    pub fn ring_peer(&self, vm: &K, peer: u16, vector: u16) -> Result<(), DoorbellError> {
        ring_fd(self.eventfd(vm, peer, vector)?)
    }

    /// The guest peers of `vm` connected now, ascending.
    pub fn peers(&self, vm: &K) -> Result<Vec<u16>, DoorbellError> {
        Ok(self.vm(vm)?.clients.keys().copied().collect())
    }

    /// The number of vectors `vm` is served with.
    pub fn vectors(&self, vm: &K) -> Result<u16, DoorbellError> {
        Ok(self.vm(vm)?.vectors)
    }

    /// The socket path of `vm`.
    pub fn socket_path(&self, vm: &K) -> Result<&Path, DoorbellError> {
        Ok(&self.vm(vm)?.socket.path)
    }

    /// Serves every VM for up to `timeout` (`None`: until something
    /// happens): accepts clients, sends what they are owed, drops the ones
    /// that close or misbehave. Returns what happened; empty if nothing did.
    pub fn process(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<Vec<ServerEvent<K>>, DoorbellError> {
        let mut out = Vec::new();
        let now = Instant::now();
        let mut deadline = timeout.map(|t| now + t);
        for (slot, vm) in self.vms.iter_mut().enumerate() {
            let Some(vm) = vm else { continue };
            match vm.paused_until {
                Some(until) if until <= now => vm.resume_accept(&self.epoll, slot),
                Some(until) => deadline = Some(deadline.map_or(until, |d| d.min(until))),
                None => {}
            }
        }
        let ms = deadline.map(|d| {
            let ms = d.saturating_duration_since(now).as_micros().div_ceil(1000);
            u16::try_from(ms).unwrap_or(u16::MAX)
        });
        let timeout = ms.map_or(EpollTimeout::NONE, EpollTimeout::from);
        let n = match self.epoll.wait(&mut self.events, timeout) {
            Ok(n) => n,
            Err(Errno::EINTR) => 0,
            Err(e) => {
                return Err(DoorbellError::Sys {
                    op: "epoll_wait",
                    source: e,
                })
            }
        };
        for i in 0..n {
            let event = self.events[i];
            let data = event.data();
            let Ok(slot) = usize::try_from(data >> SLOT_SHIFT) else {
                continue;
            };
            let Some(Some(vm)) = self.vms.get_mut(slot) else {
                continue;
            };
            match data & ((1 << SLOT_SHIFT) - 1) {
                0 => vm.accept(&self.epoll, slot, &mut out),
                sub => {
                    let Ok(peer) = u16::try_from(sub - 1) else {
                        continue;
                    };
                    vm.client_event(&self.epoll, slot, peer, event.events());
                }
            }
            vm.settle(&self.epoll, slot, &mut out);
        }
        Ok(out)
    }
}

impl<K> AsFd for DoorbellServer<K> {
    /// The server's epoll fd: readable when [`process`](Self::process) has
    /// work.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.epoll.0.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn ids_start_at_1_wrap_at_65535_and_skip_ids_in_use() {
        let mut next = 1;
        let mut used = BTreeSet::new();
        assert_eq!(next_free_id(&mut next, |id| used.contains(&id)), Some(1));
        used.insert(1);
        assert_eq!(next_free_id(&mut next, |id| used.contains(&id)), Some(2));
        // Freed ids are not reused until the counter comes round.
        assert_eq!(next_free_id(&mut next, |id| used.contains(&id)), Some(3));
        next = MAX_PEER_ID;
        assert_eq!(
            next_free_id(&mut next, |id| used.contains(&id)),
            Some(65535)
        );
        // Wraps to 1 (never 0, the host), skipping 1 (in use).
        assert_eq!(next_free_id(&mut next, |id| used.contains(&id)), Some(2));
        // All in use: none, after one lap.
        assert_eq!(next_free_id(&mut next, |_| true), None);
        // Only one free id: found wherever the counter is.
        next = 40_000;
        assert_eq!(next_free_id(&mut next, |id| id != 7), Some(7));
    }
}
