//! The doorbell server against hostile local clients (issue 13, finding 1
//! and the socket half of finding 7): strangers refused by their
//! credentials, idle clients that can neither pile up fds in flight nor
//! starve a VM's slot, the socket's mode set without a path race, and a
//! cross-process watchdog run of misbehaving clients against a real server
//! process running as `nobody` with a low `RLIMIT_NOFILE`.
//!
//! The server process and the "stranger" clients are this test binary
//! re-run as a child (`ivchan_testkit::child`) under uid 65534; these tests
//! need root to start them (they are skipped otherwise).

use std::fs;
use std::io::{self, BufRead, BufReader, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use ivchan_host::doorbell::{DoorbellServer, LeaveReason, RefuseReason, ServerEvent, VmOptions};
use ivchan_testkit::child::ChildTest;
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

const ROLE: &str = "IVCHAN_HOSTILE_ROLE";
const DIR_ENV: &str = "IVCHAN_HOSTILE_DIR";
const PATH_ENV: &str = "IVCHAN_HOSTILE_PATH";
const COUNT_ENV: &str = "IVCHAN_HOSTILE_COUNT";
const NOBODY: u32 = 65534;
const PATIENCE: Duration = Duration::from_secs(30);
/// How long a well-behaved client waits for one message before calling the
/// server hung.
const HANG: Duration = Duration::from_secs(10);

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

// ---------------------------------------------------------------------------
// A small ivshmem client, independent of the server's code.

type Msg = (i64, Option<OwnedFd>);

/// One message (blocking up to the socket's read timeout); `None` at end
/// of stream.
fn recv_msg(sock: &UnixStream) -> io::Result<Option<Msg>> {
    let mut buf = [0u8; 8];
    let mut got = 0;
    let mut fd = None;
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
                    // process's fd table; nothing else refers to it.
                    fd = Some(unsafe { OwnedFd::from_raw_fd(raw) });
                }
            }
        }
        if msg.bytes == 0 {
            return Ok(None);
        }
        got += msg.bytes;
    }
    Ok(Some((i64::from_le_bytes(buf), fd)))
}

fn connect(path: &Path) -> UnixStream {
    let sock = UnixStream::connect(path).unwrap();
    sock.set_read_timeout(Some(HANG)).unwrap();
    sock
}

/// Reads a whole handshake for `vectors` vectors: its id and the fds it
/// carried (shared memory, peers', own).
fn handshake(sock: &UnixStream, vectors: usize) -> Result<(u16, usize), String> {
    let next = |what: &str| match recv_msg(sock) {
        Ok(Some(m)) => Ok(m),
        Ok(None) => Err(format!("{what}: end of stream")),
        Err(e) => Err(format!("{what}: {e}")),
    };
    let (version, _) = next("version")?;
    let (id, _) = next("id")?;
    let (minus_one, shm) = next("shared memory")?;
    if version != 0 || minus_one != -1 || shm.is_none() {
        return Err(format!("bad start: {version} {id} {minus_one}"));
    }
    let mut fds = 1;
    let mut own = 0;
    while own < vectors {
        let (peer, fd) = next("peer")?;
        if fd.is_none() {
            return Err(format!("peer {peer} without an fd"));
        }
        fds += 1;
        if peer == id {
            own += 1;
        }
    }
    Ok((u16::try_from(id).map_err(|e| e.to_string())?, fds))
}

// ---------------------------------------------------------------------------
// An in-process server run on its own thread.

type Events = Vec<ServerEvent<String>>;

struct Pump {
    stop: Arc<AtomicBool>,
    events: mpsc::Receiver<ServerEvent<String>>,
    thread: thread::JoinHandle<DoorbellServer<String>>,
    log: Events,
}

impl Pump {
    fn start(mut server: DoorbellServer<String>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, events) = mpsc::channel();
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                for e in server.process(Some(Duration::from_millis(20))).unwrap() {
                    let _ = tx.send(e);
                }
            }
            server
        });
        Self {
            stop,
            events,
            thread,
            log: Vec::new(),
        }
    }

    fn until(&mut self, what: &str, done: impl Fn(&Events) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !done(&self.log) {
            assert!(
                Instant::now() < deadline,
                "timed out: {what}; {:?}",
                self.log
            );
            if let Ok(e) = self.events.recv_timeout(Duration::from_millis(20)) {
                self.log.push(e);
            }
        }
    }

    fn finish(self) -> (DoorbellServer<String>, Events) {
        self.stop.store(true, Ordering::Relaxed);
        let server = self.thread.join().unwrap();
        let mut log = self.log;
        log.extend(self.events.try_iter());
        (server, log)
    }
}

fn connected(log: &Events) -> usize {
    log.iter()
        .filter(|e| matches!(e, ServerEvent::PeerConnected { .. }))
        .count()
}

// ---------------------------------------------------------------------------
// Child processes.

/// The child processes: a server (`server`) or stranger clients
/// (`stranger`), both as uid 65534.
#[test]
#[ignore = "child process entry, run by the tests in this file"]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    match role.as_str() {
        "server" => serve(),
        "stranger" => stranger(),
        other => panic!("unknown role {other}"),
    }
}

/// Serves VMs "a" and "b" (2 vectors each, mode 0666) in `DIR_ENV`,
/// printing every event, until stdin closes.
fn serve() {
    let dir = PathBuf::from(std::env::var(DIR_ENV).unwrap());
    let shm = tempfile::tempfile_in(&dir).unwrap();
    shm.set_len(1 << 20).unwrap();
    let mut server = DoorbellServer::<String>::new().unwrap();
    for vm in ["a", "b"] {
        let opts = VmOptions::new(dir.join(format!("{vm}.sock")))
            .vectors(2)
            .mode(0o666);
        server.add_vm(vm.to_owned(), &shm, opts).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    thread::spawn(move || {
        let _ = io::copy(&mut io::stdin(), &mut io::sink());
        flag.store(true, Ordering::Relaxed);
    });
    println!("ready");
    while !stop.load(Ordering::Relaxed) {
        for e in server.process(Some(Duration::from_millis(50))).unwrap() {
            println!("event {e:?}");
        }
    }
    println!("done");
}

/// Connects `COUNT_ENV` times to `PATH_ENV`, holding every connection, and
/// reports what the server sent.
fn stranger() {
    let path = PathBuf::from(std::env::var(PATH_ENV).unwrap());
    let count: usize = std::env::var(COUNT_ENV).unwrap().parse().unwrap();
    let socks: Vec<UnixStream> = (0..count)
        .map(|_| UnixStream::connect(&path).unwrap())
        .collect();
    let (mut bytes, mut fds, mut eofs) = (0, 0, 0);
    for sock in &socks {
        sock.set_read_timeout(Some(HANG)).unwrap();
        loop {
            match recv_msg(sock) {
                Ok(Some((_, fd))) => {
                    bytes += 8;
                    fds += usize::from(fd.is_some());
                }
                Ok(None) => {
                    eofs += 1;
                    break;
                }
                Err(_) => break,
            }
        }
    }
    println!(
        "stranger pid={} bytes={bytes} fds={fds} eofs={eofs}",
        std::process::id()
    );
}

/// The child's command, as uid/gid 65534 with `RLIMIT_NOFILE` at `nofile`.
fn child_command(role: &str, env: &[(&str, String)], nofile: u64) -> Command {
    child_command_as(role, env, nofile, NOBODY)
}

/// [`child_command`] as uid and gid `uid`.
fn child_command_as(role: &str, env: &[(&str, String)], nofile: u64, uid: u32) -> Command {
    let test = ChildTest::new("child_entry")
        .env(ROLE, role)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    let inner = test.command();
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--nofile={nofile}:{nofile}"))
        .arg(inner.get_program())
        .args(inner.get_args());
    for (k, v) in inner.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    cmd.uid(uid).gid(uid);
    cmd
}

/// A directory uid 65534 may create sockets in.
fn shared_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// The server child: its events as lines, its pid for /proc.
struct ServerChild {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
    dir: tempfile::TempDir,
}

impl ServerChild {
    fn spawn(nofile: u64) -> Self {
        let dir = shared_dir();
        let mut child = child_command(
            "server",
            &[(DIR_ENV, dir.path().display().to_string())],
            nofile,
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
        let stdin = child.stdin.take();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut me = Self {
            child,
            stdin,
            lines,
            log: Vec::new(),
            dir,
        };
        me.until("ready", |l| l.iter().any(|s| s == "ready"));
        me
    }

    fn path(&self, vm: &str) -> PathBuf {
        self.dir.path().join(format!("{vm}.sock"))
    }

    fn pull(&mut self) {
        self.log.extend(self.lines.try_iter());
    }

    fn until(&mut self, what: &str, done: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            self.pull();
            if done(&self.log) {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "server exited ({status}) waiting for {what}: {:?}",
                    self.log
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out: {what}; {:?}",
                self.log
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn count(&mut self, pattern: &str) -> usize {
        self.pull();
        self.log.iter().filter(|l| l.contains(pattern)).count()
    }

    fn fds(&self) -> usize {
        fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .count()
    }

    fn rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// Closes stdin and checks the server exits cleanly.
    fn stop(mut self) -> Vec<String> {
        drop(self.stdin.take());
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("server did not stop: {:?}", self.log);
            }
            thread::sleep(Duration::from_millis(10));
        };
        self.pull();
        thread::sleep(Duration::from_millis(50));
        self.pull();
        assert!(status.success(), "server failed ({status}): {:?}", self.log);
        self.log
    }
}

// ---------------------------------------------------------------------------

/// A client whose uid and gid the VM does not allow is closed at once,
/// without a byte, is reported with its credentials, and takes no slot.
#[test]
fn strangers_are_refused_by_credentials_and_take_no_slot() {
    if !is_root() {
        eprintln!("skipped: needs root to run a client as uid {NOBODY}");
        return;
    }
    let dir = shared_dir();
    let path = dir.path().join("vm.sock");
    let shm = tempfile::tempfile().unwrap();
    let mut server = DoorbellServer::<String>::new().unwrap();
    let opts = VmOptions::new(&path).mode(0o666).max_clients(2);
    server.add_vm("vm".into(), &shm, opts).unwrap();
    let mut pump = Pump::start(server);

    let out = child_command(
        "stranger",
        &[
            (PATH_ENV, path.display().to_string()),
            (COUNT_ENV, "8".to_owned()),
        ],
        1024,
    )
    .stdout(Stdio::piped())
    .output()
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("bytes=0 fds=0 eofs=8"),
        "strangers got something: {report}"
    );
    let pid: i32 = report
        .split("pid=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    pump.until("8 refusals", |l| l.len() >= 8);
    for e in &pump.log {
        match e {
            ServerEvent::Refused {
                reason: RefuseReason::Credentials,
                peer: Some(peer),
                ..
            } => {
                assert_eq!((peer.uid, peer.gid, peer.pid), (NOBODY, NOBODY, pid));
            }
            other => panic!("expected a credential refusal: {other:?}"),
        }
    }
    // Both slots are still free for allowed peers (root here).
    let a = connect(&path);
    let b = connect(&path);
    // The first guest peer is 0 (QEMU's master), the next 2 (1 is the host).
    assert_eq!(handshake(&a, 1).unwrap().0, 0);
    assert_eq!(handshake(&b, 1).unwrap().0, 2);
    pump.until("2 peers", |l| connected(l) == 2);
    let (_server, log) = pump.finish();
    eprintln!(
        "refused 8 strangers (uid {NOBODY}, pid {pid}); events: {}",
        log.len()
    );
}

/// Idle clients of VM "a" (never reading, or reading three messages then
/// stopping) leave the server, running as `nobody` with `RLIMIT_NOFILE`
/// 512, able to hand VM "b"'s client all its fds. Before the fix each idle
/// client was sent its whole handshake and every join notice, thousands of
/// fds in flight, and "b"'s handshake failed with `ETOOMANYREFS`.
#[test]
fn idle_clients_of_one_vm_leave_fds_for_another_vms_handshake() {
    if !is_root() {
        eprintln!("skipped: needs root to run the server as uid {NOBODY}");
        return;
    }
    let mut server = ServerChild::spawn(512);
    let a = server.path("a");
    let mut idle = Vec::new();
    for i in 0..64 {
        let c = connect(&a);
        if i % 4 == 0 {
            // Reads the version, its id and the shared memory, then stops.
            for _ in 0..3 {
                assert!(recv_msg(&c).unwrap().is_some());
            }
        }
        idle.push(c);
    }
    server.until("64 peers on a", |l| {
        l.iter()
            .filter(|s| s.contains("PeerConnected { vm: \"a\""))
            .count()
            >= 64
    });
    let fds_a = server.fds();
    let b = connect(&server.path("b"));
    let (id, fds) = handshake(&b, 2).unwrap_or_else(|e| panic!("b's handshake: {e}"));
    assert_eq!((id, fds), (0, 5), "shared memory, host x2, own x2");
    assert_eq!(server.count("TOOMANYREFS"), 0);
    drop((b, idle));
    let log = server.stop();
    eprintln!(
        "64 idle clients on a ({fds_a} server fds), b's handshake got its 5 fds; {} events",
        log.len()
    );
}

/// Idle clients of VM "a" cannot take the server's last fds either: with
/// `RLIMIT_NOFILE` at 100 (each client costs the server 3 fds: its socket
/// and 2 eventfds), "a" stops admitting while "b" still has room for its
/// clients, and "b"'s handshake succeeds. Before, "a"'s clients took every
/// fd and "b"'s connection was refused for lack of them.
#[test]
fn idle_clients_of_one_vm_leave_open_fds_for_another_vm() {
    if !is_root() {
        eprintln!("skipped: needs root to run the server as uid {NOBODY}");
        return;
    }
    let mut server = ServerChild::spawn(100);
    let a = server.path("a");
    let idle: Vec<UnixStream> = (0..64).map(|_| connect(&a)).collect();
    server.until("64 connections on a handled", |l| {
        l.iter().filter(|s| s.contains("vm: \"a\"")).count() >= 64
    });
    let fds_a = server.fds();
    // Two clients of "b" at once (QEMU and, say, an incoming migration):
    // the second also gets the first's eventfds.
    let mut b = Vec::new();
    for (attempt, expected) in [(0, 5), (1, 7)] {
        let c = connect(&server.path("b"));
        let (_, fds) = handshake(&c, 2)
            .unwrap_or_else(|e| panic!("b's handshake {attempt} with {fds_a} server fds: {e}"));
        assert_eq!(fds, expected);
        b.push(c);
    }
    drop(b);
    drop(idle);
    let log = server.stop();
    let count = |p: &str| log.iter().filter(|l| l.contains(p)).count();
    eprintln!(
        "a: {} admitted, {} refused ({fds_a} server fds, limit 100); b's handshakes got their fds",
        count("PeerConnected { vm: \"a\""),
        count("Refused { vm: \"a\"")
    );
}

/// 64 connected clients that never read do not keep a real client out:
/// the newcomer takes the slot of one that never took its handshake.
#[test]
fn idle_clients_cannot_starve_the_vms_slot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.sock");
    let shm = tempfile::tempfile().unwrap();
    let mut server = DoorbellServer::<String>::new().unwrap();
    server
        .add_vm("vm".into(), &shm, VmOptions::new(&path))
        .unwrap();
    let mut pump = Pump::start(server);
    let idle: Vec<UnixStream> = (0..64).map(|_| connect(&path)).collect();
    pump.until("64 idle peers", |l| connected(l) == 64);
    let good = connect(&path);
    let (id, _) = handshake(&good, 1).unwrap_or_else(|e| panic!("refused: {e}"));
    let evicted = |l: &Events| {
        l.iter()
            .filter(|e| {
                matches!(
                    e,
                    ServerEvent::PeerLeft {
                        reason: LeaveReason::Evicted,
                        ..
                    }
                )
            })
            .count()
    };
    pump.until("the newcomer, one evicted", |l| {
        connected(l) == 65 && evicted(l) == 1
    });
    assert_eq!(id, 65);
    // A second and third newcomer each take another idle client's slot;
    // the first good client, which read its handshake, is never evicted.
    let mut good = vec![good];
    for _ in 0..2 {
        let c = connect(&path);
        handshake(&c, 1).unwrap();
        good.push(c);
    }
    pump.until("two more", |l| connected(l) == 67 && evicted(l) == 3);
    let (_server, log) = pump.finish();
    assert!(!log.iter().any(|e| matches!(
        e,
        ServerEvent::PeerLeft { peer, .. } if *peer == id
    )));
    drop((idle, good));
}

/// The socket's mode is never applied through the path: a symlink swapped
/// in at the socket path right after `bind` must not redirect a chmod to
/// the file it points at.
#[test]
fn socket_mode_is_not_set_through_a_swappable_path() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    fs::write(&victim, b"secret").unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).unwrap();
    let path = dir.path().join("vm.sock");
    let shm = tempfile::tempfile().unwrap();

    // The attacker swaps a symlink to the victim in as soon as a socket
    // appears at the path.
    let stop = Arc::new(AtomicBool::new(false));
    let attacker = {
        let (stop, path, victim) = (Arc::clone(&stop), path.clone(), victim.clone());
        let link = dir.path().join("link");
        thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let is_socket = fs::symlink_metadata(&path)
                    .map(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
                    .unwrap_or(false);
                if is_socket {
                    let _ = fs::remove_file(&link);
                    std::os::unix::fs::symlink(&victim, &link).unwrap();
                    if fs::rename(&link, &path).is_ok() {
                        swaps += 1;
                    }
                }
            }
            swaps
        })
    };
    let mut served = 0;
    for _ in 0..3000 {
        let _ = fs::remove_file(&path);
        let mut server = DoorbellServer::<String>::new().unwrap();
        if server
            .add_vm("vm".into(), &shm, VmOptions::new(&path).mode(0o666))
            .is_ok()
        {
            served += 1;
        }
        drop(server);
        let mode = fs::metadata(&victim).unwrap().permissions().mode() & 0o777;
        if mode != 0o600 {
            stop.store(true, Ordering::Relaxed);
            attacker.join().unwrap();
            panic!("the victim's mode became {mode:o} after {served} binds");
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = attacker.join().unwrap();
    eprintln!("3000 binds ({served} served), {swaps} symlink swaps: the victim kept 0600");
    assert!(swaps > 0, "the attacker never got to swap");
    // No temporary directory is left behind.
    let left: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "victim" && n != "vm.sock" && n != "link")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    // And the mode and group asked for are exact, umask or not.
    let _ = fs::remove_file(&path);
    let gid = nix::unistd::getegid().as_raw();
    let mut server = DoorbellServer::<String>::new().unwrap();
    server
        .add_vm(
            "vm".into(),
            &shm,
            VmOptions::new(&path).mode(0o666).group(gid),
        )
        .unwrap();
    let meta = fs::symlink_metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o666);
    assert_eq!(meta.gid(), gid);
}

/// Misbehaving clients for a bounded time against a server process (uid
/// 65534, `RLIMIT_NOFILE` 256): idle holders, garbage senders, clients
/// that close mid-handshake, a connect/close flood, and strangers. A
/// watchdog probes VM "b" with a real handshake throughout (a hang fails
/// it) and watches the server's fds and memory; afterwards the server's
/// fd count returns to where it started and it exits cleanly.
#[test]
fn hostile_clients_against_a_server_process() {
    if !is_root() {
        eprintln!("skipped: needs root to run the server as uid {NOBODY}");
        return;
    }
    let mut server = ServerChild::spawn(256);
    let baseline_fds = server.fds();
    let baseline_rss = server.rss_kib();
    let a = server.path("a");
    let stop = Arc::new(AtomicBool::new(false));
    let mut attackers = Vec::new();
    // Idle holders: connect and never read, keeping up to 150 open.
    attackers.push({
        let (a, stop) = (a.clone(), Arc::clone(&stop));
        thread::spawn(move || {
            let mut held = std::collections::VecDeque::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if let Ok(c) = UnixStream::connect(&a) {
                    held.push_back(c);
                    n += 1;
                }
                if held.len() > 150 {
                    held.pop_front();
                }
                thread::sleep(Duration::from_millis(2));
            }
            format!("idle {n}")
        })
    });
    // Garbage senders and mid-handshake closers.
    attackers.push({
        let (a, stop) = (a.clone(), Arc::clone(&stop));
        thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if let Ok(mut c) = UnixStream::connect(&a) {
                    c.set_read_timeout(Some(Duration::from_millis(200)))
                        .unwrap();
                    if n % 2 == 0 {
                        let _ = c.write_all(&[0xa5; 4096]);
                    } else {
                        let mut buf = [0u8; 11];
                        let _ = c.read(&mut buf);
                    }
                    n += 1;
                }
            }
            format!("garbage/half-read {n}")
        })
    });
    // A connect/close flood.
    attackers.push({
        let (a, stop) = (a.clone(), Arc::clone(&stop));
        thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if UnixStream::connect(&a).is_ok() {
                    n += 1;
                }
            }
            format!("flood {n}")
        })
    });
    // Strangers: a uid the server does not allow (it runs as 65534).
    let strangers = child_command_as(
        "stranger",
        &[
            (PATH_ENV, a.display().to_string()),
            (COUNT_ENV, "50".to_owned()),
        ],
        1024,
        4242,
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();

    let started = Instant::now();
    let (mut probes, mut max_fds, mut max_rss) = (0, 0, 0);
    while started.elapsed() < Duration::from_secs(4) {
        let b = connect(&server.path("b"));
        let (_, fds) = handshake(&b, 2).unwrap_or_else(|e| panic!("probe {probes}: {e}"));
        assert_eq!(fds, 5);
        probes += 1;
        max_fds = max_fds.max(server.fds());
        max_rss = max_rss.max(server.rss_kib());
        assert!(server.child.try_wait().unwrap().is_none(), "server died");
        thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let mut counts: Vec<String> = attackers.into_iter().map(|t| t.join().unwrap()).collect();
    let out = strangers.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("bytes=0 fds=0 eofs=50"), "{report}");
    counts.push("strangers 50".to_owned());

    // Everything closed: the server's fds come back to where they started.
    let deadline = Instant::now() + PATIENCE;
    while server.fds() != baseline_fds {
        assert!(
            Instant::now() < deadline,
            "server fds {} != baseline {baseline_fds}",
            server.fds()
        );
        thread::sleep(Duration::from_millis(20));
    }
    let rss = server.rss_kib();
    assert!(
        max_rss < baseline_rss + 32 * 1024,
        "memory grew from {baseline_rss} KiB to {max_rss} KiB"
    );
    let log = server.stop();
    let count = |p: &str| log.iter().filter(|l| l.contains(p)).count();
    eprintln!(
        "{counts:?}; {probes} probe handshakes; server fds {baseline_fds} -> max {max_fds} -> \
         {baseline_fds}; RSS {baseline_rss} -> max {max_rss} -> {rss} KiB; connected {}, \
         refused {}, left {}",
        count("PeerConnected"),
        count("Refused"),
        count("PeerLeft")
    );
    assert_eq!(count("reason: Credentials"), 50);
}

/// Real QEMU behind 64 connected-but-silent clients: it is admitted (an
/// idle client is evicted for it), takes its handshake and stays.
#[test]
fn qemu_is_not_refused_behind_64_idle_clients() {
    let Some(qemu) = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("qemu-system-x86_64"))
            .find(|p| p.is_file())
    }) else {
        assert!(
            std::env::var("IVCHAN_REQUIRE_REAL").as_deref() != Ok("1"),
            "qemu-system-x86_64 not found and IVCHAN_REQUIRE_REAL=1"
        );
        eprintln!("skipped: qemu-system-x86_64 not found");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.sock");
    let shm = tempfile::tempfile().unwrap();
    shm.set_len(1 << 20).unwrap();
    let mut server = DoorbellServer::<String>::new().unwrap();
    server
        .add_vm("vm".into(), &shm, VmOptions::new(&path))
        .unwrap();
    let mut pump = Pump::start(server);
    let idle: Vec<UnixStream> = (0..64).map(|_| connect(&path)).collect();
    pump.until("64 idle peers", |l| connected(l) == 64);

    let err = dir.path().join("qemu.err");
    let mut child = Command::new(qemu)
        .args(["-accel", "tcg", "-machine", "pc", "-m", "64", "-nodefaults"])
        .args(["-display", "none", "-monitor", "none", "-serial", "none"])
        .arg("-chardev")
        .arg(format!("socket,path={},id=ivs", path.display()))
        .args(["-device", "ivshmem-doorbell,chardev=ivs,vectors=1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let qemu_err = || fs::read_to_string(&err).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while connected(&pump.log) < 65 {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("QEMU exited ({status}): {}", qemu_err());
        }
        assert!(Instant::now() < deadline, "QEMU never connected");
        if let Ok(e) = pump.events.recv_timeout(Duration::from_millis(50)) {
            pump.log.push(e);
        }
    }
    // It reads its handshake while realizing the device (and exits if it
    // cannot); give it time, then check it is still there and connected.
    thread::sleep(Duration::from_secs(2));
    pump.log.extend(pump.events.try_iter());
    let alive = child.try_wait().unwrap().is_none();
    let before_kill = pump.log.clone();
    let _ = child.kill();
    let _ = child.wait();
    let (_server, _log) = pump.finish();
    assert!(alive, "QEMU exited: {}", qemu_err());
    let qemu_peer = 65;
    assert!(
        !before_kill.iter().any(|e| matches!(
            e,
            ServerEvent::PeerLeft { peer, .. } if *peer == qemu_peer
        )),
        "QEMU was disconnected: {before_kill:?}"
    );
    let evicted = before_kill
        .iter()
        .filter(|e| {
            matches!(
                e,
                ServerEvent::PeerLeft {
                    reason: LeaveReason::Evicted,
                    ..
                }
            )
        })
        .count();
    assert_eq!(evicted, 1, "{before_kill:?}");
    drop(idle);
    eprintln!("QEMU admitted as peer {qemu_peer} behind 64 idle clients (1 evicted) and stayed");
}
