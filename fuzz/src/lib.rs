//! What each fuzz target checks, as plain functions: `cargo xtask fuzz`
//! runs them under libFuzzer (`fuzz_targets/`), and `tests/regressions.rs`
//! replays every input kept in `regressions/<target>/` through them on
//! stable, so an input that once failed stays a test.
//!
//! Each function panics exactly when the property it checks is broken; any
//! other outcome (typed errors included) is a pass.

use ivchan_protocol::layout::offsets;
use ivchan_protocol::{
    Channel, ChannelError, ChannelOptions, Direction, Header, InitParams, Ordering, Region, Side,
};
use ivchan_provision::qmp::Monitor;
use ivchan_provision::{inject, undo, Route, Spec, VmUuid};
use serde_json::Value;

/// Smallest region: 1 MiB (rings of 256 KiB).
const REGION_WORDS: usize = (1 << 20) / 8;

fn region_with_header(words: &mut [u64]) -> Header<'_> {
    let params = InitParams {
        uuid: [7; 16],
        name: "fuzz",
        ring_size: None,
    };
    Header::create(Region::from_words(words), &params).expect("a fresh header")
}

/// Stores `bytes` into the region from `offset`, word by word (the tail
/// padded with zeros), stopping at the region's end.
fn write_bytes(region: Region<'_>, offset: usize, bytes: &[u8]) {
    for (i, chunk) in bytes.chunks(8).enumerate() {
        let at = offset + 8 * i;
        if at + 8 > region.len() {
            break;
        }
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        region.store(at, u64::from_le_bytes(word), Ordering::Relaxed);
    }
}

fn word(data: &[u8], i: usize) -> u64 {
    let mut w = [0u8; 8];
    for (j, b) in w.iter_mut().enumerate() {
        *b = data.get(8 * i + j).copied().unwrap_or(0);
    }
    u64::from_le_bytes(w)
}

/// The consumer over arbitrary ring bytes and positions: the guest's
/// producer state (tail, and the head the host last published) and the
/// ring's data come from `data`; the host receives, copy and zero-copy,
/// for a bounded number of calls. Every call must end (no hang), return a
/// typed result, and never hand out a message longer than the ring allows.
pub fn ring_consumer(data: &[u8]) {
    let mut words = vec![0u64; REGION_WORDS];
    let header = region_with_header(&mut words);
    let region = header.region();
    let place = header.layout().ring(Direction::GuestToHost);
    // A guest that attached, then wrote what it liked.
    let guest = Channel::attach(header, Side::Guest, ChannelOptions::default())
        .expect("the guest attaches to a fresh header");
    std::mem::forget(guest);
    region.store(
        place.control + offsets::RING_TAIL,
        word(data, 0),
        Ordering::Release,
    );
    // Where the host resumes reading: a position a restarted host finds in
    // the region, planted here like the rest.
    let start = word(data, 1) % (4 * place.size as u64);
    region.store(place.control + offsets::RING_HEAD, start, Ordering::Release);
    write_bytes(region, place.data, data.get(16..).unwrap_or(&[]));
    // Refusing the ring when attaching is a typed outcome too.
    let Ok(mut host) = Channel::attach(header, Side::Host, ChannelOptions::default()) else {
        return;
    };
    let max = host.max_message();
    let mut buf = vec![0u8; max];
    for i in 0..512 {
        let result = if i % 2 == 0 {
            host.try_recv(&mut buf)
        } else {
            match host.try_peek() {
                Ok(Some(msg)) => {
                    let len = msg.len();
                    assert!(len <= max, "a {len}-byte message in a ring of {max}");
                    msg.release();
                    Ok(Some(len))
                }
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            }
        };
        match result {
            Ok(Some(len)) => assert!(len <= max, "a {len}-byte message in a ring of {max}"),
            Ok(None) => break,
            Err(e) => {
                assert!(e.is_fatal(), "a violation that does not poison: {e}");
                // Poisoned: it stays so, at once.
                assert!(host.try_recv(&mut buf).is_err());
                assert!(matches!(
                    host.recv(&mut buf, None),
                    Err(ChannelError::Ring(_) | ChannelError::Layout(_))
                ));
                break;
            }
        }
    }
}

/// Header and side-block parsing: `data` overwrites the first 4 KiB (the
/// header page, side blocks included) of a valid region. Opening it, and
/// when that succeeds reading every field, the report and attaching both
/// sides, must give typed results only.
pub fn header(data: &[u8]) {
    let mut words = vec![0u64; REGION_WORDS];
    let region = region_with_header(&mut words).region();
    write_bytes(region, 0, &data[..data.len().min(4096)]);
    let Ok(header) = Header::open(region) else {
        return;
    };
    let _ = header.status(Side::Host);
    let _ = header.status(Side::Guest);
    let _ = header.doorbell(Side::Host);
    let _ = header.ring_positions(Direction::HostToGuest);
    let _ = header.check_present();
    let _ = ivchan_protocol::report::describe(&header);
    let _ = ivchan_protocol::report::summary(&header);
    for side in [Side::Host, Side::Guest] {
        if let Ok(mut ch) = Channel::attach(header, side, ChannelOptions::default()) {
            let mut buf = vec![0u8; ch.max_message()];
            let _ = ch.try_recv(&mut buf);
            let _ = ch.poll_peer();
        }
    }
}

/// Domain XML: whatever the text, `inject` either refuses it or returns a
/// document from which `undo` gives back the original bytes, and a second
/// `inject` changes nothing (idempotence). Both routes.
pub fn domain_xml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let spec = Spec::default();
    for route in [Route::Shmem, Route::Cmdline] {
        let Ok(added) = inject(text, &spec, route) else {
            continue;
        };
        if !added.changed {
            continue;
        }
        let again = inject(&added.xml, &spec, route).expect("re-inject of our own output");
        assert!(
            !again.changed,
            "{route:?}: inject is not idempotent on:\n{text}\n---\n{}",
            added.xml
        );
        let back = undo(&added.xml, &spec, route).expect("undo of our own output");
        assert_eq!(
            back.xml, text,
            "{route:?}: undo does not give back the original"
        );
    }
}

/// A monitor that answers from fuzz data: one JSON value per line.
struct Replies<'a> {
    lines: std::str::Lines<'a>,
}

impl Monitor for Replies<'_> {
    fn execute(
        &mut self,
        _command: &str,
        _arguments: Option<Value>,
    ) -> ivchan_provision::Result<Value> {
        let line = self
            .lines
            .next()
            .ok_or_else(|| ivchan_provision::Error::Qmp("no more replies".into()))?;
        serde_json::from_str(line)
            .map_err(|e| ivchan_provision::Error::Qmp(format!("bad JSON: {e}")))
    }
}

/// QMP replies: the hot-add conversation, and the `query-pci` scan, over
/// whatever QEMU (or something posing as it) answers. Typed errors only.
pub fn qmp_reply(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(value) = serde_json::from_str::<Value>(text.lines().next().unwrap_or("")) {
        let _ = ivchan_provision::qmp::find_ivshmem(&value);
    }
    let uuid: VmUuid = "5b7e6a0c-1d2e-4f3a-9b8c-7d6e5f4a3b2c"
        .parse()
        .expect("a valid UUID");
    let mut monitor = Replies {
        lines: text.lines(),
    };
    let _ = ivchan_provision::qmp::hot_add(&mut monitor, &Spec::default(), &uuid);
}

/// One doorbell server for the whole fuzzing process (a server per input
/// would measure socket setup, not the server), serving one VM.
struct Bell {
    server: ivchan_host::doorbell::DoorbellServer<u32>,
    path: std::path::PathBuf,
    _dir: std::path::PathBuf,
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

/// The doorbell server's client stream: `data` is a script of clients
/// connecting, writing bytes, reading some of what they are owed, half- or
/// fully closing, in any order. After the script and the closing of every
/// client, the server must have dropped them all, hold no more descriptors
/// than before, and still hand a new client its whole handshake (version,
/// id, shared memory, peer eventfds).
pub fn doorbell_clients(data: &[u8]) {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::sync::Mutex;
    use std::time::Duration;

    static BELL: Mutex<Option<Bell>> = Mutex::new(None);
    let mut guard = BELL.lock().unwrap_or_else(|e| e.into_inner());
    let bell = guard.get_or_insert_with(|| {
        let dir = std::env::temp_dir().join(format!("ivchan-fuzz-bell-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("socket dir");
        let path = dir.join("vm.sock");
        let shm = tempfile_fd(&dir);
        let mut server = ivchan_host::doorbell::DoorbellServer::new().expect("server");
        server
            .add_vm(0, &shm, ivchan_host::doorbell::VmOptions::new(&path))
            .expect("add vm");
        Bell {
            server,
            path,
            _dir: dir,
        }
    });
    let pump = |bell: &mut Bell| {
        for _ in 0..8 {
            match bell.server.process(Some(Duration::ZERO)) {
                Ok(events) if events.is_empty() => break,
                Ok(_) => {}
                Err(e) => panic!("the server failed: {e}"),
            }
        }
    };
    pump(bell);
    let baseline = open_fds();
    let mut clients: Vec<UnixStream> = Vec::new();
    for op in data.chunks(2) {
        let (kind, arg) = (op[0], op.get(1).copied().unwrap_or(0));
        let pick = |n: usize| usize::from(arg) % n.max(1);
        match kind % 6 {
            0 if clients.len() < 16 => {
                if let Ok(c) = UnixStream::connect(&bell.path) {
                    let _ = c.set_nonblocking(true);
                    clients.push(c);
                }
            }
            1 if !clients.is_empty() => {
                let i = pick(clients.len());
                let _ = clients[i].write(&[arg; 8][..usize::from(arg % 9)]);
            }
            2 if !clients.is_empty() => {
                let i = pick(clients.len());
                let mut buf = [0u8; 64];
                let _ = clients[i].read(&mut buf[..usize::from(arg % 65)]);
            }
            3 if !clients.is_empty() => {
                let i = pick(clients.len());
                let _ = clients[i].shutdown(std::net::Shutdown::Write);
            }
            4 if !clients.is_empty() => {
                clients.swap_remove(pick(clients.len()));
            }
            _ => {}
        }
        pump(bell);
    }
    drop(clients);
    pump(bell);
    let peers = bell.server.peers(&0).expect("the VM");
    assert!(peers.is_empty(), "clients gone, peers kept: {peers:?}");
    let now = open_fds();
    assert!(now <= baseline, "descriptors grew from {baseline} to {now}");
    // A well-behaved client still gets its whole handshake.
    let probe = UnixStream::connect(&bell.path).expect("connect");
    probe
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut got = 0;
    let mut fds = 0;
    // version, id, shm (-1 with an fd), then the host peer's eventfd and
    // our own: 5 messages with one vector.
    let mut tries = 0;
    while got < 5 {
        pump(bell);
        match recv_one(&probe) {
            Ok(Some(has_fd)) => {
                got += 1;
                fds += usize::from(has_fd);
            }
            Ok(None) if tries < 2000 => {
                tries += 1;
                std::thread::sleep(Duration::from_micros(200));
            }
            Ok(None) => panic!("the handshake stopped after {got} messages"),
            Err(e) => panic!("the handshake broke after {got} messages: {e}"),
        }
    }
    assert_eq!(fds, 3, "shared memory and two eventfds");
    drop(probe);
    pump(bell);
}

/// A small file to hand out as the shared memory.
fn tempfile_fd(dir: &std::path::Path) -> std::fs::File {
    let path = dir.join("shm");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("shm file");
    file.set_len(1 << 20).expect("size");
    file
}

/// One 8-byte message from the server if one is waiting: whether it
/// carried a descriptor.
fn recv_one(sock: &std::os::unix::net::UnixStream) -> Result<Option<bool>, String> {
    use std::io::IoSliceMut;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    let mut buf = [0u8; 8];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    match nix::sys::socket::recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        nix::sys::socket::MsgFlags::MSG_DONTWAIT,
    ) {
        Ok(msg) if msg.bytes == 8 => {
            let mut has_fd = false;
            for c in msg.cmsgs().map_err(|e| e.to_string())? {
                if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c {
                    for fd in fds {
                        // SAFETY: the kernel just gave us this descriptor,
                        // and nothing else owns it.
                        drop(unsafe { OwnedFd::from_raw_fd(fd) });
                        has_fd = true;
                    }
                }
            }
            Ok(Some(has_fd))
        }
        Ok(msg) => Err(format!("a {}-byte message", msg.bytes)),
        Err(nix::errno::Errno::EAGAIN) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}
