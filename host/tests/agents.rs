//! Host channels with real processes over real region files: restarts on
//! either side lose nothing, a silent guest fires the timeout, and one
//! supervisor serves 64 VMs.
//!
//! The test binary re-executes itself for the child roles (`child_entry`).
//! Guests map the region with `PeerMapping`, as a guest maps BAR2.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use ivchan_host::{
    Channel, ChannelError, ChannelOptions, PeerEvent, PeerMapping, RegionOptions, Supervisor,
    VmChannel, VmEvent, VmUuid,
};
use ivchan_protocol::{Header, Side};
use ivchan_testkit::child::ChildTest;

const MESSAGES: u64 = 100_000;

fn options() -> ChannelOptions {
    ChannelOptions {
        heartbeat_interval: Duration::from_millis(5),
        peer_timeout: Some(Duration::from_millis(300)),
        ..ChannelOptions::default()
    }
}

/// Message `seq`: 8 to 4096 bytes, the sequence number then a pattern.
fn message(seq: u64) -> Vec<u8> {
    let len = 8 + (seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 52) as usize;
    let mut m = vec![0u8; len];
    m[..8].copy_from_slice(&seq.to_le_bytes());
    for (i, b) in m[8..].iter_mut().enumerate() {
        *b = (seq as usize + i) as u8;
    }
    m
}

fn check(msg: &[u8]) -> u64 {
    let seq = u64::from_le_bytes(msg[..8].try_into().unwrap());
    assert!(msg == message(seq), "message {seq} corrupted");
    seq
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = Path::new("/dev/shm").join(format!("ivchan-agents-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn regions(dir: &Path) -> RegionOptions {
    RegionOptions::new().dir(dir).size(1 << 20)
}

fn uuid(n: u64) -> VmUuid {
    format!("00000000-0000-4000-8000-{n:012x}").parse().unwrap()
}

fn spawn(role: &str, env: &[(&str, &Path)]) -> Child {
    ChildTest::new("child_entry")
        .env("IVCHAN_ROLE", role)
        .envs(env.iter().copied())
        .command()
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

fn read_u64s(path: &Path) -> Vec<u64> {
    fs::read(path)
        .unwrap_or_default()
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn append(file: &mut File, value: u64) {
    file.write_all(&value.to_le_bytes()).unwrap();
}

/// Maps the region and attaches as the guest, waiting for the host's header.
fn guest_channel(map: &PeerMapping) -> Channel<'_> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Header::open(map.region()) {
            Ok(header) => return Channel::attach(header, Side::Guest, options()).unwrap(),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => panic!("no header: {e}"),
        }
    }
}

/// Retries a blocking call through the peer's absences (restart windows).
fn patiently<T>(mut f: impl FnMut() -> Result<T, ChannelError>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if !e.is_fatal() && Instant::now() < deadline => {}
            Err(e) => panic!("channel failed: {e}"),
        }
    }
}

/// Guest receiver: reports each sequence number, then releases it.
fn guest_receiver(region: &Path, reports: &Path) {
    let map = PeerMapping::open(region).unwrap();
    let mut ch = guest_channel(&map);
    let mut log = OpenOptions::new().append(true).open(reports).unwrap();
    let mut buf = vec![0u8; ch.max_message()];
    let mut last: Option<u64> = None;
    loop {
        let grant = match ch.peek(Some(Duration::from_millis(100))) {
            Ok(g) => g,
            Err(e) if !e.is_fatal() => continue,
            Err(e) => panic!("channel failed: {e}"),
        };
        let n = grant.len();
        grant.read(0, &mut buf[..n]).unwrap();
        let seq = check(&buf[..n]);
        // A restarted host may resend its last message once.
        if let Some(l) = last {
            assert!(seq == l + 1 || seq == l, "gap: {l} then {seq}");
        }
        last = Some(seq);
        // Report before releasing: a kill in between only redelivers.
        append(&mut log, seq);
        grant.release();
        if seq == MESSAGES - 1 {
            return;
        }
    }
}

/// Host sender incarnation: resumes after the last seq it recorded.
fn host_sender(dir: &Path, progress: &Path) {
    let mut ch = VmChannel::builder(&uuid(1))
        .regions(regions(dir))
        .name("agents")
        .options(options())
        .open()
        .unwrap();
    let start = read_u64s(progress).last().map_or(0, |l| l + 1);
    let mut log = OpenOptions::new().append(true).open(progress).unwrap();
    for seq in start..MESSAGES {
        let msg = message(seq);
        patiently(|| ch.send(&msg, Some(Duration::from_millis(100))));
        append(&mut log, seq);
    }
}

#[test]
#[ignore = "child process entry, run by the tests in this file"]
fn child_entry() {
    let Ok(role) = std::env::var("IVCHAN_ROLE") else {
        return;
    };
    let path = |k: &str| PathBuf::from(std::env::var(k).unwrap());
    match role.as_str() {
        "guest-recv" => guest_receiver(&path("IVCHAN_REGION"), &path("IVCHAN_REPORTS")),
        "host-send" => host_sender(&path("IVCHAN_DIR"), &path("IVCHAN_PROGRESS")),
        "guest-silent" => {
            let map = PeerMapping::open(path("IVCHAN_REGION")).unwrap();
            let mut ch = guest_channel(&map);
            ch.send(b"hi", None).unwrap();
            // Then never call in again.
            std::thread::sleep(Duration::from_secs(60));
        }
        "guests" => serve_guests(&path("IVCHAN_DIR")),
        other => panic!("unknown role {other}"),
    }
}

fn kill(mut child: Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

fn wait_ok(mut child: Child, what: &str) {
    let status = child.wait().unwrap();
    assert!(status.success(), "{what}: {status}");
}

/// Waits until `path` holds at least `n` u64s, or the child dies.
fn wait_reports(path: &Path, n: usize, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while read_u64s(path).len() < n {
        assert!(Instant::now() < deadline, "no progress");
        if let Some(status) = child.try_wait().unwrap() {
            panic!("child exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn guest_restarts_while_host_runs_and_nothing_is_lost() {
    let dir = TempDir::new("guest-restart");
    let reports = dir.0.join("reports");
    File::create(&reports).unwrap();
    let mut host = VmChannel::builder(&uuid(1))
        .regions(regions(&dir.0))
        .name("agents")
        .options(options())
        .open()
        .unwrap();
    let region = host.path().to_path_buf();
    let env = [
        ("IVCHAN_REGION", region.as_path()),
        ("IVCHAN_REPORTS", reports.as_path()),
    ];
    let mut events = Vec::new();
    let mut guest = spawn("guest-recv", &env);
    let mut kills = 0;
    for seq in 0..MESSAGES {
        let msg = message(seq);
        loop {
            match host.send(&msg, Some(Duration::from_millis(50))) {
                Ok(()) => break,
                // A restart seen while the send waited ends the send: it is
                // reported there, once, and not again by `poll_peer`.
                Err(ChannelError::PeerRestarted {
                    old_epoch,
                    new_epoch,
                }) => events.push(PeerEvent::Restarted {
                    old_epoch,
                    new_epoch,
                }),
                Err(e) if !e.is_fatal() => {}
                Err(e) => panic!("{e}"),
            }
            if let Some(e) = host.poll_peer().unwrap() {
                events.push(e);
            }
        }
        if let Some(e) = host.poll_peer().unwrap() {
            events.push(e);
        }
        // Kill the guest four times along the way, then let it finish.
        if kills < 4 && seq == (kills + 1) * MESSAGES / 5 {
            kill(guest);
            kills += 1;
            guest = spawn("guest-recv", &env);
        }
    }
    wait_ok(guest, "last guest");
    let log = read_u64s(&reports);
    // Each guest incarnation resumes at the first unreleased message: the
    // log is 0..MESSAGES with, at most, the message in hand at a kill again.
    let mut next = 0;
    for &s in &log {
        assert!(s == next || s + 1 == next, "after {next} got {s}");
        next = s + 1;
    }
    assert_eq!(next, MESSAGES);
    let restarts = events
        .iter()
        .filter(|e| matches!(e, PeerEvent::Restarted { .. }))
        .count();
    assert_eq!(restarts, 4, "events: {events:?}");
}

#[test]
fn host_restarts_while_guest_runs_and_nothing_is_lost() {
    let dir = TempDir::new("host-restart");
    let reports = dir.0.join("reports");
    let progress = dir.0.join("progress");
    File::create(&reports).unwrap();
    File::create(&progress).unwrap();
    // The first host incarnation creates the region; the guest waits for it.
    let region = regions(&dir.0).path_for(&uuid(1));
    let host_env = [
        ("IVCHAN_DIR", dir.0.as_path()),
        ("IVCHAN_PROGRESS", progress.as_path()),
    ];
    let mut host = spawn("host-send", &host_env);
    while !region.exists() {
        std::thread::sleep(Duration::from_millis(1));
    }
    let guest = spawn(
        "guest-recv",
        &[
            ("IVCHAN_REGION", region.as_path()),
            ("IVCHAN_REPORTS", reports.as_path()),
        ],
    );
    for k in 1..=4 {
        wait_reports(&progress, (k * MESSAGES / 5) as usize, &mut host);
        kill(host);
        host = spawn("host-send", &host_env);
    }
    wait_ok(host, "last host");
    wait_ok(guest, "guest");
    let log = read_u64s(&reports);
    assert_eq!(log.last(), Some(&(MESSAGES - 1)));
    let map = PeerMapping::open(&region).unwrap();
    let header = Header::open(map.region()).unwrap();
    assert_eq!(
        header.status(Side::Host).unwrap().epoch,
        5,
        "five host sessions"
    );
}

#[test]
fn silent_guest_fires_the_timeout() {
    let dir = TempDir::new("silent");
    let mut host = VmChannel::builder(&uuid(2))
        .regions(regions(&dir.0))
        .name("agents")
        .options(options())
        .open()
        .unwrap();
    let region = host.path().to_path_buf();
    let guest = spawn("guest-silent", &[("IVCHAN_REGION", region.as_path())]);
    let mut buf = [0u8; 16];
    assert_eq!(
        host.recv(&mut buf, Some(Duration::from_secs(30))).unwrap(),
        2
    );
    let start = Instant::now();
    let err = host
        .recv(&mut buf, Some(Duration::from_secs(30)))
        .unwrap_err();
    assert!(
        matches!(err, ChannelError::PeerSilent { since } if since >= Duration::from_millis(300)),
        "{err}"
    );
    assert!(start.elapsed() < Duration::from_secs(10));
    kill(guest);
}

/// The guest side of 64 VMs in one process: each says hello with its UUID
/// and waits for the host's acknowledgement.
fn serve_guests(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut maps = Vec::new();
    for n in 0..64 {
        let path = regions(dir).path_for(&uuid(100 + n));
        loop {
            match PeerMapping::open(&path) {
                Ok(m) if Header::open(m.region()).is_ok() => break maps.push((n, m)),
                _ => {
                    assert!(Instant::now() < deadline, "region {n} never became usable");
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    let mut channels: Vec<_> = maps.iter().map(|(n, m)| (*n, guest_channel(m))).collect();
    for (n, ch) in &mut channels {
        ch.send(uuid(100 + *n).to_string().as_bytes(), None)
            .unwrap();
    }
    let mut buf = [0u8; 64];
    for (n, ch) in &mut channels {
        let len = ch.recv(&mut buf, Some(Duration::from_secs(60))).unwrap();
        assert_eq!(&buf[..len], format!("ack {}", uuid(100 + *n)).as_bytes());
    }
}

#[test]
fn one_supervisor_serves_64_vms() {
    let dir = TempDir::new("supervisor");
    let opts = regions(&dir.0);
    // Half the files exist before the supervisor starts; the other half
    // appear later the way QEMU makes them: empty first, sized after.
    let make = |n: u64| File::create(opts.path_for(&uuid(100 + n))).unwrap();
    for n in 0..32 {
        make(n).set_len(1 << 20).unwrap();
    }
    let mut sup = Supervisor::new(opts.clone(), "fleet", options()).unwrap();
    let mut late = Vec::new();
    for n in 32..64 {
        late.push(make(n));
    }
    // A symlink planted at a region path is refused, not followed.
    let target = dir.0.join("elsewhere");
    File::create(&target).unwrap().set_len(1 << 20).unwrap();
    std::os::unix::fs::symlink(&target, opts.path_for(&uuid(999))).unwrap();

    let guests = spawn("guests", &[("IVCHAN_DIR", dir.0.as_path())]);
    let mut channels: BTreeMap<VmUuid, VmChannel> = BTreeMap::new();
    let mut refused = Vec::new();
    let mut acked = 0;
    let mut sized = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut buf = [0u8; 64];
    while acked < 64 {
        assert!(Instant::now() < deadline, "served {} of 64", channels.len());
        for event in sup.poll(Some(Duration::from_millis(10))).unwrap() {
            match event {
                VmEvent::Appeared(ch) => {
                    channels.insert(*ch.uuid(), ch);
                }
                VmEvent::Refused { uuid, error } => refused.push((uuid, error.to_string())),
                VmEvent::Gone(u) => panic!("{u} gone early"),
                // A guest process that finished closes its side.
                VmEvent::Departed { .. } => {}
            }
        }
        if !sized && channels.len() == 32 {
            for f in late.drain(..) {
                f.set_len(1 << 20).unwrap();
            }
            sized = true;
        }
        for (id, ch) in channels.iter_mut() {
            if let Some(n) = ch.try_recv(&mut buf).unwrap() {
                assert_eq!(&buf[..n], id.to_string().as_bytes());
                ch.send(format!("ack {id}").as_bytes(), None).unwrap();
                acked += 1;
            }
        }
    }
    wait_ok(guests, "guests");
    assert_eq!(channels.len(), 64);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].0, uuid(999));
    assert!(refused[0].1.contains("symbolic link"), "{}", refused[0].1);

    // Ten VMs go away.
    for n in 0..10 {
        fs::remove_file(opts.path_for(&uuid(100 + n))).unwrap();
    }
    let mut gone = Vec::new();
    while gone.len() < 10 {
        assert!(Instant::now() < deadline);
        for event in sup.poll(Some(Duration::from_millis(100))).unwrap() {
            if let VmEvent::Gone(u) = event {
                gone.push(u);
            }
        }
    }
    gone.sort();
    assert_eq!(gone, (0..10).map(|n| uuid(100 + n)).collect::<Vec<_>>());
    assert_eq!(sup.served().count(), 54);
}
