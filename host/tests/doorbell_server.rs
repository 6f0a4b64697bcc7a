//! The built-in ivshmem server with real UNIX sockets and a client written
//! here (independent of the server's code): the handshake exactly as QEMU's
//! `docs/specs/ivshmem-spec.rst` says, ringing both ways, misbehaving
//! clients without fd leaks, the socket file, a two-process eventfd
//! ping-pong, and real QEMU when it is installed.
//!
//! Every test takes `serial()`: the leak test counts this process's fds,
//! so nothing else may open or close fds meanwhile.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ivchan_host::doorbell::{
    Doorbell, DoorbellError, DoorbellServer, DoorbellSet, LeaveReason, RefuseReason, ServerEvent,
    VmOptions, HOST_PEER_ID,
};
use ivchan_host::{RegionFile, RegionOptions, VmUuid};
use ivchan_testkit::child::ChildTest;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const STEP: Duration = Duration::from_millis(5);
const PATIENCE: Duration = Duration::from_secs(20);

fn uuid(n: u64) -> VmUuid {
    format!("00000000-0000-4000-8000-{n:012x}").parse().unwrap()
}

fn region(dir: &Path, n: u64) -> RegionFile {
    RegionOptions::new()
        .dir(dir)
        .size(1 << 20)
        .create(&uuid(n))
        .unwrap()
}

fn fd_count() -> usize {
    fs::read_dir("/proc/self/fd").unwrap().count()
}

fn is_eventfd(fd: &OwnedFd) -> bool {
    let link = fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
    link.to_string_lossy() == "anon_inode:[eventfd]"
}

type Events = Vec<ServerEvent<VmUuid>>;

/// Runs the server until `done(events so far)`, failing after `PATIENCE`.
fn pump_until(
    server: &mut DoorbellServer,
    log: &mut Events,
    mut done: impl FnMut(&Events) -> bool,
) {
    let deadline = Instant::now() + PATIENCE;
    while !done(log) {
        assert!(Instant::now() < deadline, "timed out; events: {log:?}");
        log.extend(server.process(Some(STEP)).unwrap());
    }
}

/// Runs the server for `time`, returning the events.
fn pump_for(server: &mut DoorbellServer, time: Duration) -> Events {
    let deadline = Instant::now() + time;
    let mut log = Vec::new();
    while Instant::now() < deadline {
        log.extend(server.process(Some(STEP)).unwrap());
    }
    log
}

fn connected(log: &Events) -> Vec<u16> {
    log.iter()
        .filter_map(|e| match e {
            ServerEvent::PeerConnected { peer, .. } => Some(*peer),
            _ => None,
        })
        .collect()
}

fn left(log: &Events) -> Vec<(u16, LeaveReason)> {
    log.iter()
        .filter_map(|e| match e {
            ServerEvent::PeerLeft { peer, reason, .. } => Some((*peer, *reason)),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The test's own ivshmem client.

/// One server message: the value, and the fd that came with it.
type Msg = (i64, Option<OwnedFd>);

/// Receives one message (blocking, up to the socket's read timeout);
/// `None` at end of stream.
fn recv_msg(sock: &UnixStream) -> io::Result<Option<Msg>> {
    let mut buf = [0u8; 8];
    let mut got = 0;
    let mut fd: Option<OwnedFd> = None;
    while got < 8 {
        let mut cmsg = nix::cmsg_space!([RawFd; 4]);
        let mut iov = [IoSliceMut::new(&mut buf[got..])];
        let msg = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for raw in fds {
                    // SAFETY: SCM_RIGHTS just installed `raw` in this
                    // process's fd table; nothing else refers to it, so it
                    // is ours to own and close.
                    let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                    assert!(fd.is_none(), "more than one fd with one message");
                    fd = Some(owned);
                }
            }
        }
        if msg.bytes == 0 {
            assert!(got == 0 && fd.is_none(), "end of stream inside a message");
            return Ok(None);
        }
        got += msg.bytes;
    }
    Ok(Some((i64::from_le_bytes(buf), fd)))
}

/// A message if one is ready now.
fn try_recv(sock: &UnixStream) -> Option<Msg> {
    let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
    let ready = poll(&mut fds, PollTimeout::ZERO).unwrap();
    if ready == 0 {
        return None;
    }
    recv_msg(sock).unwrap()
}

fn connect(path: &Path) -> UnixStream {
    let sock = UnixStream::connect(path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    sock
}

/// What a client learnt from its handshake.
struct Hello {
    id: u16,
    shm: OwnedFd,
    /// Other peers' eventfds, per vector.
    peers: BTreeMap<u16, Vec<OwnedFd>>,
    /// Its own eventfds, per vector.
    own: Vec<OwnedFd>,
    /// The values in order, with whether an fd came along.
    trace: Vec<(i64, bool)>,
}

/// Reads a handshake, checking the spec's order as it goes.
fn handshake(sock: &UnixStream, vectors: usize) -> Hello {
    let mut trace = Vec::new();
    let mut next = || {
        let (v, fd) = recv_msg(sock).unwrap().expect("handshake cut short");
        trace.push((v, fd.is_some()));
        (v, fd)
    };
    let (version, fd) = next();
    assert_eq!((version, fd.is_some()), (0, false), "1: version 0, no fd");
    let (id, fd) = next();
    assert!(fd.is_none(), "2: own id without fd");
    let id = u16::try_from(id).expect("2: id in 0..=65535");
    let (minus_one, shm) = next();
    assert_eq!(minus_one, -1, "3: -1 with the shared memory");
    let shm = shm.expect("3: shared-memory fd");
    let mut peers: BTreeMap<u16, Vec<OwnedFd>> = BTreeMap::new();
    let mut own = Vec::new();
    while own.len() < vectors {
        let (v, fd) = next();
        let fd = fd.expect("4/5: peer id with an eventfd");
        assert!(is_eventfd(&fd));
        let v = u16::try_from(v).expect("peer id in 0..=65535");
        if v == id {
            own.push(fd);
        } else {
            assert!(own.is_empty(), "4 after 5: peer {v} after own vectors");
            peers.entry(v).or_default().push(fd);
        }
    }
    let trace = std::mem::take(&mut trace);
    Hello {
        id,
        shm,
        peers,
        own,
        trace,
    }
}

/// Reads a handshake while the server runs on this thread: the server
/// sends a client at most two messages ahead of what it has read, so a
/// handshake needs the server running while it is read.
fn handshake_pumped(
    server: &mut DoorbellServer,
    log: &mut Events,
    sock: &UnixStream,
    vectors: usize,
) -> Hello {
    std::thread::scope(|s| {
        let reader = s.spawn(|| handshake(sock, vectors));
        while !reader.is_finished() {
            log.extend(server.process(Some(STEP)).unwrap());
        }
        reader
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// A client that follows join/leave notices and checks them.
struct Observer {
    sock: UnixStream,
    vectors: usize,
    hello: Hello,
    joins: usize,
    leaves: usize,
}

impl Observer {
    fn new(path: &Path, vectors: usize) -> Self {
        let sock = connect(path);
        Self {
            sock,
            vectors,
            hello: Hello {
                id: 0,
                shm: File::open("/dev/null").unwrap().into(),
                peers: BTreeMap::new(),
                own: Vec::new(),
                trace: Vec::new(),
            },
            joins: 0,
            leaves: 0,
        }
    }

    fn read_hello(&mut self, server: &mut DoorbellServer, log: &mut Events) {
        self.hello = handshake_pumped(server, log, &self.sock, self.vectors);
    }

    /// Applies every notice ready now.
    fn drain(&mut self) {
        while let Some((v, fd)) = try_recv(&self.sock) {
            let id = u16::try_from(v).expect("notice: peer id");
            assert_ne!(id, self.hello.id, "notice about ourselves");
            match fd {
                Some(fd) => {
                    assert!(is_eventfd(&fd));
                    let fds = self.hello.peers.entry(id).or_default();
                    assert!(fds.len() < self.vectors, "peer {id} joined twice");
                    fds.push(fd);
                    if fds.len() == self.vectors {
                        self.joins += 1;
                    }
                }
                None => {
                    let fds = self.hello.peers.remove(&id).expect("leave of unknown peer");
                    assert_eq!(fds.len(), self.vectors, "peer {id} left half-joined");
                    self.leaves += 1;
                }
            }
        }
    }

    /// Guest peers it knows of (not the host).
    fn guests(&self) -> Vec<u16> {
        self.hello
            .peers
            .keys()
            .copied()
            .filter(|&p| p != HOST_PEER_ID)
            .collect()
    }
}

fn eventfd_count(fd: &OwnedFd, wait: Duration) -> u64 {
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    let ms = u16::try_from(wait.as_millis()).unwrap();
    if poll(&mut fds, PollTimeout::from(ms)).unwrap() == 0 {
        return 0;
    }
    let mut buf = [0u8; 8];
    assert_eq!(nix::unistd::read(fd.as_raw_fd(), &mut buf).unwrap(), 8);
    u64::from_ne_bytes(buf)
}

fn write_eventfd(fd: &OwnedFd) {
    nix::unistd::write(fd, &1u64.to_ne_bytes()).unwrap();
}

fn server_with(
    dir: &Path,
    n: u64,
    opts: impl FnOnce(VmOptions) -> VmOptions,
) -> (DoorbellServer, RegionFile, PathBuf) {
    let file = region(dir, n);
    let path = dir.join(format!("vm{n}.sock"));
    let mut server = DoorbellServer::new().unwrap();
    server
        .add_vm(uuid(n), file.file(), opts(VmOptions::new(&path)))
        .unwrap();
    (server, file, path)
}

// ---------------------------------------------------------------------------

#[test]
fn handshake_order_for_one_then_two_clients() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (mut server, file, path) = server_with(dir.path(), 1, |o| o.vectors(2));
    let vm = uuid(1);
    let mut log = Vec::new();

    let a = connect(&path);
    pump_until(&mut server, &mut log, |l| connected(l) == [0]);
    let hello_a = handshake_pumped(&mut server, &mut log, &a, 2);
    // version, id 0 (QEMU's master), -1+shm, host 1 twice (one eventfd
    // each), own 0 twice.
    assert_eq!(
        hello_a.trace,
        [
            (0, false),
            (0, false),
            (-1, true),
            (1, true),
            (1, true),
            (0, true),
            (0, true)
        ]
    );
    assert_eq!(
        hello_a.peers.keys().copied().collect::<Vec<_>>(),
        [HOST_PEER_ID]
    );
    assert_eq!(hello_a.peers[&HOST_PEER_ID].len(), 2);
    assert!(try_recv(&a).is_none(), "nothing after the handshake");

    let b = connect(&path);
    pump_until(&mut server, &mut log, |l| connected(l) == [0, 2]);
    let hello_b = handshake_pumped(&mut server, &mut log, &b, 2);
    assert_eq!(
        hello_b.trace,
        [
            (0, false),
            (2, false),
            (-1, true),
            (1, true),
            (1, true),
            (0, true),
            (0, true),
            (2, true),
            (2, true)
        ]
    );
    assert_eq!(server.peers(&vm).unwrap(), [0, 2]);

    // The first client learns of the second: id 2 once per vector, each
    // with an eventfd, and those ring what the second waits on.
    let (v0, fd0) = recv_msg(&a).unwrap().unwrap();
    let (v1, fd1) = recv_msg(&a).unwrap().unwrap();
    assert_eq!((v0, v1), (2, 2));
    let (fd0, fd1) = (fd0.unwrap(), fd1.unwrap());
    write_eventfd(&fd1);
    assert_eq!(eventfd_count(&hello_b.own[1], Duration::from_secs(1)), 1);
    assert_eq!(eventfd_count(&hello_b.own[0], Duration::ZERO), 0);
    write_eventfd(&fd0);
    assert_eq!(eventfd_count(&hello_b.own[0], Duration::from_secs(1)), 1);
    // ... and what the first gave the second rings the first.
    write_eventfd(&hello_b.peers[&0][0]);
    assert_eq!(eventfd_count(&hello_a.own[0], Duration::from_secs(1)), 1);

    // The shared memory is the region file: same inode, and bytes written
    // through a mapping of the received fd are read back through the file.
    let shm = File::from(hello_a.shm);
    let (m1, m2) = (shm.metadata().unwrap(), file.file().metadata().unwrap());
    assert_eq!((m1.dev(), m1.ino()), (m2.dev(), m2.ino()));
    // SAFETY: a shared mapping of the 1 MiB region file this test created;
    // only this test touches the bytes at the offset used.
    let mut map = unsafe { memmap2::MmapOptions::new().len(1 << 20).map_mut(&shm) }.unwrap();
    map[0x8_0000..0x8_0010].copy_from_slice(b"hello from guest");
    let mut back = [0u8; 16];
    file.file().read_exact_at(&mut back, 0x8_0000).unwrap();
    assert_eq!(&back, b"hello from guest");
    drop(map);

    // The second leaves: the server reports it, the first is told (id
    // without fd), and nothing else.
    drop(b);
    pump_until(&mut server, &mut log, |l| !left(l).is_empty());
    assert_eq!(left(&log), [(2, LeaveReason::Closed)]);
    let (v, fd) = recv_msg(&a).unwrap().unwrap();
    assert_eq!((v, fd.is_none()), (2, true));
    assert!(try_recv(&a).is_none());
    assert_eq!(server.peers(&vm).unwrap(), [0]);
    assert!(matches!(
        server.ring_peer(&vm, 2, 0),
        Err(DoorbellError::UnknownPeer { peer: 2, .. })
    ));
    assert!(matches!(
        server.ring_peer(&vm, 0, 2),
        Err(DoorbellError::BadVector {
            vector: 2,
            vectors: 2
        })
    ));

    // A new client gets a fresh id (2 is free again, but ids move on).
    let c = connect(&path);
    pump_until(&mut server, &mut log, |l| connected(l).len() == 3);
    assert_eq!(handshake_pumped(&mut server, &mut log, &c, 2).id, 3);
}

#[test]
fn ringing_both_ways_over_many_vms() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut server = DoorbellServer::new().unwrap();
    let files: Vec<RegionFile> = (1..=3).map(|n| region(dir.path(), n)).collect();
    for (n, file) in (1..=3).zip(&files) {
        let opts = VmOptions::new(dir.path().join(format!("vm{n}.sock")));
        server.add_vm(uuid(n), file.file(), opts).unwrap();
    }
    let mut set = DoorbellSet::new().unwrap();
    for n in 1..=3 {
        set.add(uuid(n), server.host_eventfd(&uuid(n), 0).unwrap())
            .unwrap();
    }
    assert_eq!(set.len(), 3);

    let mut log = Vec::new();
    let clients: Vec<UnixStream> = (1..=3)
        .map(|n| connect(&dir.path().join(format!("vm{n}.sock"))))
        .collect();
    pump_until(&mut server, &mut log, |l| connected(l).len() == 3);
    let hellos: Vec<Hello> = clients
        .iter()
        .map(|c| handshake_pumped(&mut server, &mut log, c, 1))
        .collect();
    for h in &hellos {
        assert_eq!(h.id, 0, "each VM has its own id space");
    }

    // Nothing rang yet.
    assert!(set
        .wait(Some(Duration::from_millis(20)))
        .unwrap()
        .is_empty());

    // Guest of VM 2 rings the host (peer 0, vector 0): the set names VM 2.
    write_eventfd(&hellos[1].peers[&HOST_PEER_ID][0]);
    assert_eq!(set.wait(Some(PATIENCE)).unwrap(), [uuid(2)]);
    // Drained: nothing more.
    assert!(set.wait(Some(Duration::ZERO)).unwrap().is_empty());

    // Two rings before a wait coalesce into one report, VMs 1 and 3 both.
    write_eventfd(&hellos[0].peers[&HOST_PEER_ID][0]);
    write_eventfd(&hellos[0].peers[&HOST_PEER_ID][0]);
    write_eventfd(&hellos[2].peers[&HOST_PEER_ID][0]);
    let mut counts = set.wait_counts(Some(PATIENCE)).unwrap();
    counts.sort();
    assert_eq!(counts, [(uuid(1), 2), (uuid(3), 1)]);

    // The host rings a guest: its own eventfd becomes readable.
    server.ring_peer(&uuid(3), hellos[2].id, 0).unwrap();
    assert_eq!(eventfd_count(&hellos[2].own[0], Duration::from_secs(1)), 1);
    assert_eq!(eventfd_count(&hellos[0].own[0], Duration::ZERO), 0);

    // A ring before the guest has read its handshake is not lost.
    let late = connect(&dir.path().join("vm1.sock"));
    pump_until(&mut server, &mut log, |l| connected(l).len() == 4);
    server.ring_peer(&uuid(1), 2, 0).unwrap();
    let hello = handshake_pumped(&mut server, &mut log, &late, 1);
    assert_eq!(hello.id, 2);
    assert_eq!(eventfd_count(&hello.own[0], Duration::from_secs(1)), 1);

    assert_eq!(set.remove(&uuid(2)), 1);
    server.remove_vm(&uuid(2)).unwrap();
    assert!(!dir.path().join("vm2.sock").exists(), "socket file removed");
    assert!(matches!(
        server.host_eventfd(&uuid(2), 0),
        Err(DoorbellError::UnknownVm { .. })
    ));
    // The removed VM's client sees its connection end.
    let mut rest = Vec::new();
    (&clients[1]).read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

#[test]
fn misbehaving_clients_leak_nothing() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (mut server, _file, path) = server_with(dir.path(), 1, |o| o.vectors(2).max_clients(200));
    let vm = uuid(1);
    let mut log = Vec::new();
    let mut obs = Observer::new(&path, 2);
    pump_until(&mut server, &mut log, |l| connected(l).len() == 1);
    obs.read_hello(&mut server, &mut log);
    let observer_id = obs.hello.id;
    // Settle, then count.
    let _ = pump_for(&mut server, Duration::from_millis(20));
    let baseline = fd_count();
    log.clear();

    // Closes right after connecting (before the server even accepts).
    for _ in 0..20 {
        drop(UnixStream::connect(&path).unwrap());
    }
    pump_until(&mut server, &mut log, |l| left(l).len() == 20);
    // Closes after reading part of its handshake.
    for i in 0..20 {
        let c = connect(&path);
        pump_until(&mut server, &mut log, |l| connected(l).len() == 21 + i);
        let _ = recv_msg(&c).unwrap();
        let _ = recv_msg(&c).unwrap();
        drop(c);
        obs.drain();
    }
    pump_until(&mut server, &mut log, |l| left(l).len() == 40);
    assert!(
        left(&log).iter().all(|&(_, r)| r == LeaveReason::Closed),
        "{log:?}"
    );

    // Sends garbage: disconnected (clients must not send anything).
    for i in 0..10 {
        let mut c = connect(&path);
        c.write_all(b"garbage from a misbehaving client").unwrap();
        pump_until(&mut server, &mut log, |l| left(l).len() == 41 + i);
        // It got (part of) its handshake, then the end of the stream.
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest);
        obs.drain();
    }
    assert_eq!(
        left(&log)
            .iter()
            .filter(|&&(_, r)| r == LeaveReason::SentData)
            .count(),
        10
    );

    // 100 sequential well-behaved connect/handshake/leave.
    for _ in 0..100 {
        let before = connected(&log).len();
        let c = connect(&path);
        pump_until(&mut server, &mut log, |l| connected(l).len() == before + 1);
        let hello = handshake_pumped(&mut server, &mut log, &c, 2);
        assert!(hello.peers.contains_key(&observer_id));
        drop(c);
        pump_until(&mut server, &mut log, |l| {
            connected(l).len() == left(l).len()
        });
        obs.drain();
    }

    // Concurrently: 4 threads × 25 connect/handshake/leave while the
    // server runs here, plus 50 connections held open at once.
    let held: Vec<UnixStream> = (0..50).map(|_| connect(&path)).collect();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || {
                for _ in 0..25 {
                    let c = connect(&path);
                    let hello = handshake(&c, 2);
                    assert!(hello.peers.contains_key(&HOST_PEER_ID));
                }
            })
        })
        .collect();
    let deadline = Instant::now() + PATIENCE;
    while !threads.iter().all(|t| t.is_finished()) {
        assert!(Instant::now() < deadline, "threads stuck");
        log.extend(server.process(Some(STEP)).unwrap());
        obs.drain();
    }
    for t in threads {
        t.join().unwrap();
    }
    pump_until(&mut server, &mut log, |l| {
        connected(l).len() == left(l).len() + 50
    });
    let in_use = server.peers(&vm).unwrap();
    assert_eq!(in_use.len(), 51, "observer + 50 held");
    for c in &held {
        let hello = handshake_pumped(&mut server, &mut log, c, 2);
        assert!(in_use.contains(&hello.id));
    }
    drop(held);
    pump_until(&mut server, &mut log, |l| {
        connected(l).len() == left(l).len()
    });

    // The observer was told of every join it was sent and of the leave of
    // each of those peers, in order (a peer that left before the observer
    // was sent any of its eventfds is never mentioned to it).
    let deadline = Instant::now() + PATIENCE;
    loop {
        log.extend(server.process(Some(STEP)).unwrap());
        obs.drain();
        if obs.guests().is_empty() {
            // Nothing more comes.
            log.extend(pump_for(&mut server, Duration::from_millis(50)));
            obs.drain();
            if obs.guests().is_empty() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "observer missed notices");
    }
    let total = 20 + 20 + 10 + 100 + 100 + 50;
    assert_eq!(connected(&log).len(), total);
    assert_eq!(left(&log).len(), total);
    assert_eq!(obs.joins, obs.leaves);
    assert!(obs.joins > 0 && obs.joins <= total, "{}", obs.joins);
    eprintln!("observer told of {} of {total} peers", obs.joins);
    assert_eq!(server.peers(&vm).unwrap(), [observer_id]);
    // Ids are never handed out twice while in use: each join above had a
    // fresh id from the observer's point of view (checked in `drain`).

    // The server survived and still serves.
    let c = connect(&path);
    pump_until(&mut server, &mut log, |l| connected(l).len() == total + 1);
    assert_eq!(
        usize::from(handshake_pumped(&mut server, &mut log, &c, 2).id),
        total + 2
    );
    drop(c);
    pump_until(&mut server, &mut log, |l| left(l).len() == total + 1);
    obs.drain();

    let _ = pump_for(&mut server, Duration::from_millis(20));
    obs.drain();
    assert_eq!(fd_count(), baseline, "fds leaked");
}

/// A client that never reads is sent two messages (no fd) and costs the
/// server nothing more, however many peers come and go meanwhile: their
/// join notices are dropped from its queue when they leave, with their
/// eventfds. No call to `process` ever waits on it.
#[test]
fn a_client_that_never_reads_costs_nothing_and_is_not_waited_for() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (mut server, _file, path) = server_with(dir.path(), 1, |o| o.vectors(2));
    let vm = uuid(1);
    let mut log = Vec::new();
    let baseline = fd_count();
    let sleeper = connect(&path);
    pump_until(&mut server, &mut log, |l| connected(l) == [0]);

    let mut slowest = Duration::ZERO;
    let mut after_first = 0;
    for cycle in 0..300 {
        let before = connected(&log).len();
        let c = connect(&path);
        while connected(&log).len() == before {
            let t = Instant::now();
            log.extend(server.process(Some(STEP)).unwrap());
            slowest = slowest.max(t.elapsed());
        }
        let hello = handshake_pumped(&mut server, &mut log, &c, 2);
        assert!(hello.peers.contains_key(&0), "the sleeper is a peer");
        drop((c, hello));
        pump_until(&mut server, &mut log, |l| left(l).len() == before);
        if cycle == 0 {
            after_first = fd_count();
        }
    }
    assert!(
        slowest < Duration::from_millis(500),
        "process took {slowest:?}"
    );
    // 299 departed peers' eventfds are not kept open for the sleeper.
    assert_eq!(fd_count(), after_first, "fds kept for the sleeper");
    assert_eq!(server.peers(&vm).unwrap(), [0], "the sleeper stays");
    eprintln!("300 join/leave cycles past a sleeper; slowest process(): {slowest:?}");

    // What it got: the version and its id, no fd (a client that does not
    // read is never sent more than two messages ahead).
    sleeper
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut got = Vec::new();
    while let Ok(Some((v, fd))) = recv_msg(&sleeper) {
        got.push((v, fd.is_some()));
    }
    assert_eq!(got, [(0, false), (0, false)]);
    drop(sleeper);
    pump_until(&mut server, &mut log, |l| {
        left(l).len() == connected(l).len()
    });
    assert_eq!(fd_count(), baseline, "fds leaked");
}

#[test]
fn too_many_clients_are_closed() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (mut server, _file, path) = server_with(dir.path(), 1, |o| o.max_clients(3));
    let mut log = Vec::new();
    // Three clients that take their handshakes fill the VM; two more are
    // refused (none of the three can be evicted).
    let mut clients: Vec<UnixStream> = Vec::new();
    for i in [0, 2, 3] {
        let c = connect(&path);
        assert_eq!(handshake_pumped(&mut server, &mut log, &c, 1).id, i);
        clients.push(c);
    }
    clients.extend((0..2).map(|_| connect(&path)));
    pump_until(&mut server, &mut log, |l| l.len() == 5);
    assert_eq!(connected(&log), [0, 2, 3]);
    let refused = log
        .iter()
        .filter(|e| {
            matches!(
                e,
                ServerEvent::Refused {
                    reason: RefuseReason::TooManyClients,
                    peer: Some(_),
                    ..
                }
            )
        })
        .count();
    assert_eq!(refused, 2);
    for c in &clients[3..] {
        assert!(recv_msg(c).unwrap().is_none(), "refused: closed, no bytes");
    }
    // A leave makes room again.
    drop(clients);
    pump_until(&mut server, &mut log, |l| left(l).len() == 3);
    let c = connect(&path);
    pump_until(&mut server, &mut log, |l| connected(l).len() == 4);
    // Id 0 is free again: the next guest peer takes it (QEMU's master).
    assert_eq!(handshake_pumped(&mut server, &mut log, &c, 1).id, 0);
}

#[test]
fn socket_file_stale_replaced_others_refused() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let file = region(dir.path(), 1);
    let path = dir.path().join("vm.sock");

    // A stale socket (its listener is gone) is replaced.
    drop(UnixListener::bind(&path).unwrap());
    assert!(fs::symlink_metadata(&path).unwrap().file_type().is_socket());
    let mut server = DoorbellServer::new().unwrap();
    let gid = nix::unistd::getegid().as_raw();
    server
        .add_vm(uuid(1), file.file(), VmOptions::new(&path).group(gid))
        .unwrap();
    let meta = fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660, "default mode");
    assert_eq!(meta.gid(), gid);
    let mut log = Vec::new();
    let c = connect(&path);
    pump_until(&mut server, &mut log, |l| connected(l) == [0]);
    assert_eq!(handshake_pumped(&mut server, &mut log, &c, 1).id, 0);

    // A live socket (this server's) is not taken over.
    let mut other = DoorbellServer::new().unwrap();
    let err = other
        .add_vm(uuid(2), file.file(), VmOptions::new(&path))
        .unwrap_err();
    assert!(matches!(err, DoorbellError::SocketInUse { .. }), "{err}");
    assert!(matches!(
        server.add_vm(uuid(1), file.file(), VmOptions::new(dir.path().join("x"))),
        Err(DoorbellError::DuplicateVm { .. })
    ));
    assert!(matches!(
        server.add_vm(
            uuid(3),
            file.file(),
            VmOptions::new(dir.path().join("y")).vectors(0)
        ),
        Err(DoorbellError::BadVectorCount { vectors: 0 })
    ));

    // Shutdown removes the socket file.
    drop(server);
    assert!(!path.exists(), "socket removed on drop");

    // A regular file there is refused, with a clear error, and kept.
    fs::write(&path, b"not a socket").unwrap();
    let err = other
        .add_vm(uuid(2), file.file(), VmOptions::new(&path))
        .unwrap_err();
    assert!(matches!(err, DoorbellError::NotASocket { .. }), "{err}");
    assert!(err.to_string().contains("is not a socket"), "{err}");
    assert_eq!(fs::read(&path).unwrap(), b"not a socket");
    // So is a directory, and a symlink to a socket is not followed.
    let sub = dir.path().join("sub.sock");
    fs::create_dir(&sub).unwrap();
    assert!(matches!(
        other.add_vm(uuid(2), file.file(), VmOptions::new(&sub)),
        Err(DoorbellError::NotASocket { .. })
    ));
    let real = dir.path().join("real.sock");
    drop(UnixListener::bind(&real).unwrap());
    let link = dir.path().join("link.sock");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    assert!(matches!(
        other.add_vm(uuid(2), file.file(), VmOptions::new(&link)),
        Err(DoorbellError::NotASocket { .. })
    ));
    assert!(real.exists());
    // Groups by name.
    assert!(matches!(
        VmOptions::new(&path).group_named("no-such-group-for-ivchan"),
        Err(DoorbellError::UnknownGroup { .. })
    ));
    assert!(VmOptions::new(&path).group_named("root").is_ok());
    // Custom mode.
    let custom = dir.path().join("custom.sock");
    other
        .add_vm(uuid(2), file.file(), VmOptions::new(&custom).mode(0o600))
        .unwrap();
    let mode = fs::metadata(&custom).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

// ---------------------------------------------------------------------------
// Two processes, eventfds only.

const CYCLES_ENV: &str = "IVCHAN_DOORBELL_CYCLES";
const PING_ENV: &str = "IVCHAN_DOORBELL_PING_FD";
const PONG_ENV: &str = "IVCHAN_DOORBELL_PONG_FD";
const WAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn cycles() -> u64 {
    std::env::var(CYCLES_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn set_cloexec(fd: &impl AsFd, on: bool) {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let flags = if on {
        FdFlag::FD_CLOEXEC
    } else {
        FdFlag::empty()
    };
    fcntl(fd.as_fd().as_raw_fd(), FcntlArg::F_SETFD(flags)).unwrap();
}

/// The child side of `ping_pong_two_processes`: waits for each ping (with a
/// timeout), checks it was rung exactly once, rings pong.
#[test]
#[ignore = "child process of ping_pong_two_processes"]
fn child_entry() {
    let (Ok(ping), Ok(pong)) = (std::env::var(PING_ENV), std::env::var(PONG_ENV)) else {
        return;
    };
    let take = |v: String| -> Doorbell {
        let raw: RawFd = v.parse().unwrap();
        // SAFETY: the parent left this eventfd open across exec for us and
        // names it in the environment; nothing else in this process owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Doorbell::from_fd(fd).unwrap()
    };
    let (ping, pong) = (take(ping), take(pong));
    for i in 0..cycles() {
        let n = ping.wait(Some(WAKE_TIMEOUT)).unwrap();
        assert_eq!(n, 1, "cycle {i}: ping count {n} (0 = lost wakeup)");
        pong.ring().unwrap();
    }
}

#[test]
fn ping_pong_two_processes() {
    let _g = serial();
    let cycles = cycles();
    let ping = Doorbell::new().unwrap();
    let pong = Doorbell::new().unwrap();
    set_cloexec(&ping, false);
    set_cloexec(&pong, false);
    let mut child = ChildTest::new("child_entry")
        .env(PING_ENV, ping.as_fd().as_raw_fd().to_string())
        .env(PONG_ENV, pong.as_fd().as_raw_fd().to_string())
        .env(CYCLES_ENV, cycles.to_string())
        .command()
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    set_cloexec(&ping, true);
    set_cloexec(&pong, true);

    // This side waits through a DoorbellSet (epoll), the child through
    // Doorbell::wait (poll).
    let mut set = DoorbellSet::new().unwrap();
    set.add("pong", &pong).unwrap();
    let start = Instant::now();
    for i in 0..cycles {
        ping.ring().unwrap();
        let rang = set.wait_counts(Some(WAKE_TIMEOUT)).unwrap();
        assert_eq!(rang, [("pong", 1)], "cycle {i}: lost or doubled wakeup");
    }
    let elapsed = start.elapsed();
    let status = child.wait().unwrap();
    assert!(status.success(), "child failed: {status}");
    assert_eq!(ping.take().unwrap(), 0);
    let rate = cycles as f64 / elapsed.as_secs_f64();
    eprintln!(
        "ping-pong: {cycles} cycles in {:.2} s ({rate:.0} cycles/s, {:.2} µs per round trip)",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / cycles as f64
    );
}

// ---------------------------------------------------------------------------
// Real QEMU.

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

#[test]
fn qemu_ivshmem_doorbell_connects_and_leaves() {
    let _g = serial();
    let Some(qemu) = find_in_path("qemu-system-x86_64") else {
        assert!(
            std::env::var("IVCHAN_REQUIRE_REAL").as_deref() != Ok("1"),
            "qemu-system-x86_64 not found and IVCHAN_REQUIRE_REAL=1"
        );
        eprintln!("skipped: qemu-system-x86_64 not found");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut server, _file, path) = server_with(dir.path(), 1, |o| o.vectors(2));
    let vm = uuid(1);
    let log_path = dir.path().join("qemu.log");
    let mut child = Command::new(qemu)
        .args(["-accel", "tcg", "-machine", "pc", "-m", "64", "-nodefaults"])
        .args(["-display", "none", "-monitor", "none", "-serial", "none"])
        .arg("-chardev")
        .arg(format!("socket,path={},id=ivs", path.display()))
        .args([
            "-device",
            "ivshmem-doorbell,chardev=ivs,vectors=2,master=on",
        ])
        .stdin(Stdio::null())
        .stdout(File::create(&log_path).unwrap())
        .stderr(File::create(dir.path().join("qemu.err")).unwrap())
        .spawn()
        .unwrap();
    let qemu_err = || fs::read_to_string(dir.path().join("qemu.err")).unwrap_or_default();

    let mut log = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while connected(&log).is_empty() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("QEMU exited early ({status}): {}", qemu_err());
        }
        assert!(Instant::now() < deadline, "QEMU never connected");
        log.extend(server.process(Some(Duration::from_millis(50))).unwrap());
    }
    assert_eq!(connected(&log), [0]);
    assert_eq!(server.peers(&vm).unwrap(), [0]);
    assert_eq!(server.vectors(&vm).unwrap(), 2);

    // QEMU takes the handshake (it reads it while realizing the device and
    // exits if it is malformed) and stays connected.
    log.extend(pump_for(&mut server, Duration::from_secs(2)));
    assert!(left(&log).is_empty(), "QEMU left: {log:?} {}", qemu_err());
    assert!(
        child.try_wait().unwrap().is_none(),
        "QEMU exited: {}",
        qemu_err()
    );
    for vector in 0..2 {
        server.ring_peer(&vm, 1, vector).unwrap();
    }
    log.extend(pump_for(&mut server, Duration::from_millis(200)));
    assert!(
        child.try_wait().unwrap().is_none(),
        "QEMU exited: {}",
        qemu_err()
    );

    // Killing QEMU makes it leave.
    child.kill().unwrap();
    child.wait().unwrap();
    pump_until(&mut server, &mut log, |l| !left(l).is_empty());
    assert_eq!(left(&log), [(0, LeaveReason::Closed)]);
    assert!(server.peers(&vm).unwrap().is_empty());
    eprintln!("qemu: ivshmem-doorbell connected as peer 0 with 2 vectors, left when killed");
}

/// The library's own doorbells: a supervisor serving doorbells hands out
/// channels that publish the host's peer id, ring the guest peer that
/// connected when it asked to be woken, and sleep on the host's eventfd.
#[test]
fn supervisor_doorbells_ring_the_connected_guest() {
    use ivchan_host::{Channel, DoorbellAddress, PeerMapping, Supervisor, VmEvent};
    use ivchan_protocol::{Header, Side};

    let _serial = serial();
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    drop(region(dir.path(), 7)); // made, then left for the supervisor
    let sockets = dir.path().to_path_buf();
    let regions = RegionOptions::new().dir(dir.path());
    let mut sup = Supervisor::new(regions, "bells", Default::default())
        .unwrap()
        .serve_doorbells(move |uuid| VmOptions::new(sockets.join(format!("{uuid}.sock"))))
        .unwrap();
    let mut vm = match sup.poll(Some(Duration::from_secs(5))).unwrap().pop() {
        Some(VmEvent::Appeared(vm)) => vm,
        other => panic!("expected the region to appear: {other:?}"),
    };
    assert!(vm.has_notifier());

    // QEMU's side of the server: the guest peer's handshake.
    let sock = connect(&dir.path().join(format!("{}.sock", uuid(7))));
    let hello = handshake(&sock, 1);
    assert_eq!(
        hello.peers.keys().copied().collect::<Vec<_>>(),
        [HOST_PEER_ID]
    );
    let server = sup.doorbell().expect("serving doorbells");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|e| matches!(e, ServerEvent::PeerConnected { peer, .. } if *peer == hello.id))
    {
        assert!(Instant::now() < deadline, "no PeerConnected: {seen:?}");
        seen.extend(server.events());
        std::thread::sleep(Duration::from_millis(5));
    }

    // The guest side of the channel, over the same file.
    let map = PeerMapping::open(vm.path()).unwrap();
    let header = Header::open(map.region()).unwrap();
    assert_eq!(
        header.doorbell(Side::Host),
        Some(DoorbellAddress {
            peer: HOST_PEER_ID,
            vectors: 1
        })
    );
    let mut guest = Channel::attach(header, Side::Guest, Default::default()).unwrap();
    // A guest about to sleep asks to be woken; the host's send rings it.
    assert!(guest.prepare_to_sleep().unwrap());
    vm.send(b"wake up", None).unwrap();
    assert_eq!(eventfd_count(&hello.own[0], Duration::from_secs(5)), 1);
    guest.finish_sleep();
    // A guest that did not ask is not rung.
    vm.send(b"again", None).unwrap();
    assert_eq!(eventfd_count(&hello.own[0], Duration::from_millis(50)), 0);

    // The host sleeps on its eventfd: the guest's ring (QEMU writes peer
    // 0's eventfd) wakes a receive that is asleep.
    let receiver = std::thread::spawn(move || {
        let mut buf = [0u8; 16];
        let n = vm.recv(&mut buf, Some(Duration::from_secs(10))).unwrap();
        buf[..n].to_vec()
    });
    std::thread::sleep(Duration::from_millis(50));
    guest.send(b"hello host", None).unwrap();
    write_eventfd(&hello.peers[&HOST_PEER_ID][0]);
    assert_eq!(receiver.join().unwrap(), b"hello host");
    drop(guest);
}
