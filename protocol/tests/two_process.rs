//! Two real processes over a real `/dev/shm` file: a sender streams
//! 1,000,000 messages of 1 B to 64 KiB, a receiver checks every one; then
//! the same with the receiver SIGKILLed and restarted at random points.
//!
//! The test binary re-executes itself for the two roles (`child_entry`).
//! Every message is a pure function of its sequence number
//! (`ivchan_testkit::traffic`): its length (log-uniform, 1 B to 64 KiB),
//! its leading bytes (the low bytes of the sequence number), a checksum
//! field and the payload pattern; so the receiver checks length, identity
//! and contents.
//!
//! The receiver reports each sequence number to an append-only file *before*
//! releasing the message (batches of up to `BATCH` releases per publish), so
//! a kill can only cause redelivery of at most `BATCH` messages: the
//! at-least-once contract of `docs/PROTOCOL.md`.

#![cfg(not(miri))]

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use ivchan_protocol::{Header, InitParams, Mapping, Side};
use ivchan_testkit::child::ChildTest;
use ivchan_testkit::traffic::{self, mix};

const REGION_SIZE: u64 = 8 << 20;
const MESSAGES: u64 = 1_000_000;
const BATCH: u64 = 32;

/// Maps the test's region file shared, as each process does.
fn map_region(path: &Path) -> Mapping {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    Mapping::shared(&file, REGION_SIZE as usize).unwrap()
}

fn spin_wait(spins: &mut u32) {
    *spins += 1;
    if *spins < 64 {
        std::hint::spin_loop();
    } else if *spins < 128 {
        std::thread::yield_now();
    } else {
        std::thread::sleep(Duration::from_micros(50));
    }
}

fn run_sender(path: &Path) {
    let mapping = map_region(path);
    let header = Header::open(mapping.region()).unwrap();
    let (mut tx, _) = header.split(Side::Host).unwrap();
    let mut buf = vec![0u8; tx.max_message()];
    for seq in 0..MESSAGES {
        let len = traffic::len(seq);
        let mut spins = 0;
        loop {
            if let Some(mut g) = tx.reserve(len).unwrap() {
                traffic::build(seq, &mut buf[..len]);
                g.write(0, &buf[..len]).unwrap();
                g.commit(len).unwrap();
                break;
            }
            spin_wait(&mut spins);
        }
    }
}

fn run_receiver(path: &Path, reports: &Path) {
    let mapping = map_region(path);
    let header = Header::open(mapping.region()).unwrap();
    let (_, mut rx) = header.split(Side::Guest).unwrap();
    let mut log = OpenOptions::new().append(true).open(reports).unwrap();
    let bytes = std::fs::read(reports).unwrap();
    let last = bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .rfind(|&s| s != u64::MAX);
    // A new incarnation may see up to BATCH redelivered messages.
    let mut window = match last {
        None => 0..=0,
        Some(l) => l.saturating_sub(BATCH - 1)..=l + 1,
    };
    log.write_all(&u64::MAX.to_le_bytes()).unwrap();
    let mut pending: Vec<u8> = Vec::with_capacity(8 * BATCH as usize);
    let mut buf = vec![0u8; rx.max_message()];
    let mut spins = 0;
    loop {
        let grant = rx.peek().unwrap();
        let Some(msg) = grant else {
            // Idle: report and publish what we have, then wait.
            if !pending.is_empty() {
                log.write_all(&pending).unwrap();
                pending.clear();
                rx.publish();
            }
            spin_wait(&mut spins);
            continue;
        };
        spins = 0;
        // Snapshot, then validate: the checks run on a private copy.
        let copy = msg.snapshot_into(&mut buf).unwrap();
        let seq = match traffic::identify(copy, window.clone()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("receiver: {e}");
                std::process::exit(3);
            }
        };
        msg.stage();
        pending.extend_from_slice(&seq.to_le_bytes());
        window = seq + 1..=seq + 1;
        if pending.len() as u64 == 8 * BATCH || seq == MESSAGES - 1 {
            // Report before releasing: a kill in between only redelivers.
            log.write_all(&pending).unwrap();
            pending.clear();
            rx.publish();
        }
        if seq == MESSAGES - 1 {
            return;
        }
    }
}

/// Entry point of the child processes; a no-op when run as a test.
#[test]
#[ignore = "child process entry, run by the two-process tests"]
fn child_entry() {
    let (Ok(role), Ok(path)) = (std::env::var("IVCHAN_ROLE"), std::env::var("IVCHAN_REGION"))
    else {
        return;
    };
    match role.as_str() {
        "send" => run_sender(Path::new(&path)),
        "recv" => run_receiver(
            Path::new(&path),
            Path::new(&std::env::var("IVCHAN_REPORTS").unwrap()),
        ),
        other => panic!("unknown role {other}"),
    }
}

struct Files {
    region: PathBuf,
    reports: PathBuf,
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.region);
        let _ = std::fs::remove_file(&self.reports);
    }
}

fn setup(tag: &str) -> Files {
    let dir = Path::new("/dev/shm");
    let id = format!("ivchan-test-{}-{tag}", std::process::id());
    let files = Files {
        region: dir.join(&id),
        reports: std::env::temp_dir().join(format!("{id}.reports")),
    };
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&files.region)
        .unwrap();
    f.set_len(REGION_SIZE).unwrap();
    File::create(&files.reports).unwrap();
    let mapping = map_region(&files.region);
    let params = InitParams {
        uuid: [0x42; 16],
        name: "two-process",
        ring_size: None,
    };
    Header::create(mapping.region(), &params).unwrap();
    files
}

fn spawn(role: &str, files: &Files) -> Child {
    ChildTest::new("child_entry")
        .env("IVCHAN_ROLE", role)
        .env("IVCHAN_REGION", &files.region)
        .env("IVCHAN_REPORTS", &files.reports)
        .command()
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

fn reported(files: &Files) -> Vec<u64> {
    std::fs::read(&files.reports)
        .unwrap()
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Checks the report log: each incarnation (after a `u64::MAX` marker) is
/// consecutive, a restart replays at most `BATCH` messages and skips none,
/// and everything up to `MESSAGES` arrived. Returns the duplicate count.
fn verify(log: &[u64]) -> u64 {
    let mut next = 0u64;
    let mut duplicates = 0;
    let mut restart = false;
    for &s in log {
        if s == u64::MAX {
            restart = true;
            continue;
        }
        if restart {
            assert!(s <= next, "restart skipped from {next} to {s}");
            assert!(next - s <= BATCH, "restart replayed {} messages", next - s);
            duplicates += next - s;
            restart = false;
        } else {
            assert_eq!(s, next, "out of order within one receiver");
        }
        next = s + 1;
    }
    assert_eq!(next, MESSAGES, "not every message arrived");
    duplicates
}

fn finish(mut child: Child, what: &str) {
    let status = child.wait().unwrap();
    assert!(status.success(), "{what} failed: {status}");
}

#[test]
fn one_million_messages_between_two_processes() {
    let files = setup("plain");
    let start = Instant::now();
    let receiver = spawn("recv", &files);
    let sender = spawn("send", &files);
    finish(sender, "sender");
    finish(receiver, "receiver");
    let log = reported(&files);
    assert_eq!(verify(&log), 0);
    eprintln!("1,000,000 messages in {:?}", start.elapsed());
}

#[test]
fn receiver_killed_at_random_points_loses_nothing() {
    let files = setup("kill");
    let mut rng = mix(std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64 ^ 7);
    eprintln!("kill schedule seed {rng:#x}");
    let sender = spawn("send", &files);
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(240);
    while kills < 8 {
        rng = mix(rng);
        let mut receiver = spawn("recv", &files);
        // Let it take 2,000 to 150,000 more messages, then kill it.
        let target = reported(&files).len() as u64 + 2_000 + rng % 148_000;
        loop {
            assert!(Instant::now() < deadline, "no progress");
            if reported(&files).len() as u64 >= target.min(MESSAGES - 1000) {
                break;
            }
            if let Some(status) = receiver.try_wait().unwrap() {
                panic!("receiver exited early: {status}");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        receiver.kill().unwrap();
        receiver.wait().unwrap();
        kills += 1;
        if reported(&files).len() as u64 >= MESSAGES - 1000 {
            break;
        }
    }
    let receiver = spawn("recv", &files);
    finish(sender, "sender");
    finish(receiver, "receiver");
    let duplicates = verify(&reported(&files));
    eprintln!("{kills} kills, {duplicates} redelivered messages");
    assert!(kills >= 1);
}
