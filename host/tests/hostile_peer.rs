//! A hostile peer in another process scribbles on a live region while a
//! real channel receives on the other side: random and crafted writes to
//! lengths, tags, paddings, positions, part tables, states, epochs,
//! heartbeats, doorbell words and the magic, mixed with valid messages.
//! A watchdog (the test itself) fails on a panic, a hang, runaway memory,
//! or a receiver that keeps burning CPU once the scribbling stops. Run
//! against the host side and, mirrored, against the guest side.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use ivchan_host::{PeerMapping, RegionOptions, VmUuid};
use ivchan_protocol::layout::offsets;
use ivchan_protocol::{
    Channel, ChannelError, ChannelOptions, Header, Ordering, OwnedChannel, Side, WaitStrategy,
};
use ivchan_testkit::child::ChildTest;
use ivchan_testkit::process::{cpu_time, peak_rss_kib, Rng};

const VM: &str = "5b7e6a0c-1d2e-4f3a-9b8c-0000000bad00";
const SCRIBBLE: Duration = Duration::from_secs(3);
/// After the scribbler stops: the receiver keeps calling in, and must sleep.
const QUIET: Duration = Duration::from_secs(1);

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

#[test]
#[ignore = "child process entry, run by the tests in this file"]
fn child_entry() {
    let Some(role) = env("HOSTILE_ROLE") else {
        return;
    };
    let region = PathBuf::from(env("HOSTILE_REGION").expect("region"));
    let victim = match env("HOSTILE_VICTIM").as_deref() {
        Some("host") => Side::Host,
        _ => Side::Guest,
    };
    let seed: u64 = env("HOSTILE_SEED")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    match role.as_str() {
        "scribbler" => scribble(&region, victim.peer(), seed),
        "receiver" => receive(&region, victim),
        other => panic!("unknown role {other}"),
    }
}

/// Offsets worth aiming at: the header's fields, both side blocks, both
/// ring control blocks, and the ring data (record headers). The second
/// value says whether the write is put back at once (see `scribble`).
fn target(rng: &mut Rng, header: &Header<'_>, len: usize) -> (usize, bool) {
    let layout = header.layout();
    let word =
        |rng: &mut Rng, base: usize, span: usize| base + 8 * rng.below(span as u64 / 8) as usize;
    match rng.below(8) {
        0 => (word(rng, 0, 0x100), true),      // header fields, part table
        1 => (word(rng, 0x100, 0x100), false), // side blocks
        2 | 3 => {
            let ring = layout.ring(if rng.below(2) == 0 {
                ivchan_protocol::Direction::HostToGuest
            } else {
                ivchan_protocol::Direction::GuestToHost
            });
            if rng.below(2) == 0 {
                (word(rng, ring.control, 256), true)
            } else {
                (word(rng, ring.data, ring.size.min(1 << 16)), false)
            }
        }
        _ => {
            let at = word(rng, 0, len);
            // Inside a control block or the header: transient too.
            let data_starts = layout
                .ring(ivchan_protocol::Direction::HostToGuest)
                .data
                .min(layout.ring(ivchan_protocol::Direction::GuestToHost).data);
            (at, at < data_starts)
        }
    }
}

fn crafted(rng: &mut Rng, old: u64) -> u64 {
    match rng.below(12) {
        0 => 0,
        1 => u64::MAX,
        2 => old.wrapping_add(rng.below(4096) * 8),
        3 => old.wrapping_sub(rng.below(4096) * 8),
        4 => 99,
        5 => rng.below(4),
        6 => 1 << rng.below(64),
        7 => old ^ (1 << rng.below(64)),
        // A record header: tag and length.
        8 => (rng.below(4) << 32) | rng.below(1 << 24),
        9 => old.wrapping_add(1),
        _ => rng.next_u64(),
    }
}

/// The hostile side: attaches as `side`, then for `SCRIBBLE` mixes valid
/// sends with random and crafted writes anywhere in the region.
fn scribble(region: &Path, side: Side, seed: u64) {
    let map = PeerMapping::open(region).expect("map");
    let r = map.region();
    let header = Header::open(r).expect("header");
    let len = r.len();
    let mut rng = Rng::new(seed);
    let mut me = Channel::attach(header, side, ChannelOptions::default()).ok();
    let start = Instant::now();
    let mut writes = 0u64;
    while start.elapsed() < SCRIBBLE {
        for _ in 0..256 {
            let choice = rng.below(100);
            if choice < 5 {
                if let Some(ch) = me.as_mut() {
                    let n = rng.below(2048) as usize;
                    let _ = ch.try_send(&vec![0x5a; n]);
                }
            } else if choice == 5 {
                // The magic, briefly: a reset or a stray write.
                let magic = r.load(offsets::MAGIC, Ordering::Relaxed);
                r.store(offsets::MAGIC, rng.next_u64(), Ordering::Release);
                r.store(offsets::MAGIC, magic, Ordering::Release);
            } else if choice == 6 {
                // Start over as a new session on a mangled header.
                me = Channel::attach(header, side, ChannelOptions::default()).ok();
            } else {
                let (at, transient) = target(&mut rng, &header, len);
                let old = r.load(at, Ordering::Relaxed);
                r.store(at, crafted(&mut rng, old), Ordering::Release);
                // Header fields and ring positions are put back at once
                // (the victim may still see them, mid-call): a region that
                // stays broken only proves, once, that attaching refuses it.
                if transient {
                    r.store(at, old, Ordering::Release);
                }
            }
            writes += 1;
        }
    }
    std::mem::forget(me);
    eprintln!("scribbler: {writes} writes");
}

/// The victim: a real channel on `side` that receives, peeks, sends and
/// watches the peer through it all; re-attaches when poisoned.
fn receive(region: &Path, side: Side) {
    let options = ChannelOptions {
        wait: WaitStrategy::adaptive(),
        peer_timeout: Some(Duration::from_millis(500)),
        ..ChannelOptions::default()
    };
    let vm: VmUuid = VM.parse().expect("uuid");
    let dir = region.parent().expect("dir").to_path_buf();
    let open = || -> Result<OwnedChannel<Box<dyn ivchan_protocol::SharedMemory>>, String> {
        match side {
            // What `VmChannel` wraps: the locked, checked region file.
            Side::Host => {
                let file = RegionOptions::new()
                    .dir(&dir)
                    .open(&vm)
                    .map_err(|e| e.to_string())?;
                let memory: Box<dyn ivchan_protocol::SharedMemory> = Box::new(file);
                OwnedChannel::new(memory, |r| {
                    Channel::attach(Header::open(r)?, Side::Host, options)
                })
                .map_err(|e| e.to_string())
            }
            Side::Guest => {
                let map = PeerMapping::open(region).map_err(|e| e.to_string())?;
                let memory: Box<dyn ivchan_protocol::SharedMemory> = Box::new(map);
                OwnedChannel::new(memory, |r| {
                    Channel::attach(Header::open(r)?, Side::Guest, options)
                })
                .map_err(|e| e.to_string())
            }
        }
    };
    let start = Instant::now();
    let (mut calls, mut errors, mut attaches, mut refused) = (0u64, 0u64, 0u64, 0u64);
    let mut buf = vec![0u8; 1 << 20];
    let mut quiet_cpu = None;
    let mut channel = None;
    while start.elapsed() < SCRIBBLE + QUIET {
        if quiet_cpu.is_none() && start.elapsed() > SCRIBBLE + Duration::from_millis(100) {
            quiet_cpu = Some((Instant::now(), cpu_time("self")));
        }
        let ch = match channel.as_mut() {
            Some(ch) => ch,
            None => match open() {
                Ok(ch) => {
                    attaches += 1;
                    channel.insert(ch)
                }
                Err(_) => {
                    refused += 1;
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
            },
        };
        calls += 1;
        let result = match calls % 3 {
            0 => ch.recv(&mut buf, Some(Duration::from_millis(20))).map(drop),
            1 => match ch.try_peek() {
                Ok(Some(msg)) => {
                    let n = msg.len().min(buf.len());
                    let read = msg.read(0, &mut buf[..n]);
                    msg.release();
                    read.map_err(ChannelError::from)
                }
                Ok(None) => ch.poll_peer().map(drop),
                Err(e) => Err(e),
            },
            _ => ch.try_send(b"still here").map(drop),
        };
        match result {
            Ok(()) => {}
            Err(e) => {
                errors += 1;
                if e.is_fatal() {
                    // Poisoned: a real agent would report and stop; here
                    // it attaches again to keep the peer busy.
                    channel = None;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    let (since, cpu) = quiet_cpu.expect("quiet phase");
    let quiet_cpu =
        cpu_time("self").saturating_sub(cpu).as_secs_f64() / since.elapsed().as_secs_f64();
    println!(
        "receiver: {calls} calls, {errors} errors, {attaches} attaches, {refused} refused attaches, quiet cpu {:.0}%",
        quiet_cpu * 100.0
    );
    // The scribbling must have reached the channel, not only the attach.
    assert!(calls > 100 && attaches > 1, "the receiver barely ran");
    assert!(
        quiet_cpu < 0.5,
        "the receiver kept {:.0}% of a core busy once the peer stopped",
        quiet_cpu * 100.0
    );
}

fn attack(victim: &str) {
    let dir = tempfile::Builder::new()
        .prefix("ivchan-hostile-")
        .tempdir_in("/dev/shm")
        .expect("temp dir");
    let vm: VmUuid = VM.parse().expect("uuid");
    let file = RegionOptions::new()
        .dir(dir.path())
        .size(4 << 20)
        .create(&vm)
        .expect("create");
    file.attach_or_init("hostile").expect("header");
    let region = file.path().to_path_buf();
    drop(file);
    let seed = Rng::seed_from_env("HOSTILE_SEED");
    let child = |role: &str| {
        ChildTest::new("child_entry")
            .env("HOSTILE_ROLE", role)
            .env("HOSTILE_REGION", &region)
            .env("HOSTILE_VICTIM", victim)
            .env("HOSTILE_SEED", seed.to_string())
            .command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn child")
    };
    let mut receiver = child("receiver");
    // Let the victim attach first, as it would in real life.
    std::thread::sleep(Duration::from_millis(100));
    let mut scribbler = child("scribbler");
    let deadline = Instant::now() + SCRIBBLE + QUIET + Duration::from_secs(20);
    let mut peak = 0;
    let status = loop {
        if let Some(kib) = peak_rss_kib(receiver.id()) {
            peak = peak.max(kib);
        }
        if let Some(status) = receiver.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = receiver.kill();
            let _ = scribbler.kill();
            panic!("{victim}: the receiver hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let scribbled = scribbler.wait_with_output().expect("scribbler");
    let out = receiver.wait_with_output().expect("receiver output");
    let text = format!(
        "{}{}\nscribbler: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&scribbled.stderr)
    );
    assert!(
        status.success(),
        "{victim}: the receiver failed ({status}):\n{text}"
    );
    assert!(text.contains("receiver: "), "{text}");
    // The region is 4 MiB; the receiver's buffers 1 MiB: anything near
    // 100 MiB means memory grows with what the peer writes.
    assert!(
        peak < 100 << 10,
        "{victim}: receiver peak RSS {peak} KiB:\n{text}"
    );
    assert!(scribbled.status.success(), "scribbler failed:\n{text}");
    eprintln!("{victim}: {text}peak RSS {peak} KiB");
}

#[test]
fn a_scribbling_guest_cannot_crash_hang_or_bloat_the_host_side() {
    attack("host");
}

#[test]
fn a_scribbling_host_cannot_crash_hang_or_bloat_the_guest_side() {
    attack("guest");
}
