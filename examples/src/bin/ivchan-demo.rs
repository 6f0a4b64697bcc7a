//! Both sides of an ivchan channel as two processes over one `/dev/shm`
//! region, no VM needed. The host process creates `/dev/shm/fg_<uuid>` the
//! way a host agent does; the guest process maps the same file shared, the
//! way a guest maps BAR2. Prints messages/s and MB/s for an echo of small
//! messages and a checksummed bulk stream.
//!
//! Usage: `ivchan-demo [--echo N] [--bulk-mib M]`

use std::fs::OpenOptions;
use std::process::{Command, ExitCode};
use std::time::Instant;

use ivchan_examples::{checksum, Backoff};
use ivchan_host::{RegionOptions, VmUuid};
use ivchan_protocol::{Consumer, Header, Producer, Region, RegionRing, Side};

type Tx<'a> = Producer<RegionRing<'a>>;
type Rx<'a> = Consumer<RegionRing<'a>>;
type AnyError = Box<dyn std::error::Error>;

const ECHO_SIZE: usize = 64;
const BULK_SIZE: usize = 64 * 1024;

fn send(tx: &mut Tx<'_>, msg: &[u8]) -> Result<(), AnyError> {
    let mut backoff = Backoff::default();
    while !tx.send(msg)? {
        backoff.wait();
    }
    Ok(())
}

fn recv(rx: &mut Rx<'_>, buf: &mut [u8]) -> Result<usize, AnyError> {
    let mut backoff = Backoff::default();
    loop {
        if let Some(n) = rx.recv_into(buf)? {
            return Ok(n);
        }
        backoff.wait();
    }
}

/// The guest side: echo small messages; checksum bulk messages and answer
/// with the checksum when an empty message ends the stream.
fn guest(path: &str) -> Result<(), AnyError> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    // SAFETY: the region file is shared with the host process, which only
    // touches it through the ring protocol; the map outlives every Region.
    let mut map = unsafe { memmap2::MmapMut::map_mut(&file)? };
    let len = map.len();
    // SAFETY: as above; the mapping is 8-byte aligned (page aligned).
    let region = unsafe { Region::from_raw_parts(map.as_mut_ptr(), len)? };
    let header = Header::open(region)?;
    header.begin_session(Side::Guest);
    let (mut tx, mut rx) = header.split(Side::Guest)?;
    let mut buf = vec![0u8; rx.max_message()];
    let mut sum = 0u64;
    loop {
        let n = recv(&mut rx, &mut buf)?;
        match n {
            0 => {
                send(&mut tx, &sum.to_le_bytes())?;
                sum = 0;
            }
            ECHO_SIZE => send(&mut tx, &buf[..n])?,
            1 => break,
            _ => sum = sum.wrapping_add(checksum(&buf[..n])),
        }
    }
    header.set_state(Side::Guest, ivchan_protocol::PeerState::Closed);
    Ok(())
}

fn rate(count: u64, bytes: u64, secs: f64) -> String {
    format!(
        "{:>10.0} msg/s {:>9.1} MB/s",
        count as f64 / secs,
        bytes as f64 / secs / 1e6
    )
}

fn host(echo: u64, bulk_mib: u64) -> Result<(), AnyError> {
    let uuid: VmUuid = format!("00000000-0000-4000-8000-{:012x}", std::process::id()).parse()?;
    let file = RegionOptions::new().create(&uuid)?;
    println!(
        "region {} ({} MiB)",
        file.path().display(),
        file.len() >> 20
    );
    // The region is the demo's own: remove it whatever happens.
    let result = session(&file, echo, bulk_mib);
    file.remove()?;
    result
}

fn session(file: &ivchan_host::RegionFile, echo: u64, bulk_mib: u64) -> Result<(), AnyError> {
    let header = file.attach_or_init("demo")?;
    header.begin_session(Side::Host);
    let (mut tx, mut rx) = header.split(Side::Host)?;
    let mut child = Command::new(std::env::current_exe()?)
        .arg("--guest")
        .arg(file.path())
        .spawn()?;

    // Echo: keep a window of messages in flight, check each reply.
    let mut buf = vec![0u8; BULK_SIZE];
    let start = Instant::now();
    let window = 64u64.min(echo);
    let mut msg = [0u8; ECHO_SIZE];
    for seq in 0..window {
        msg[..8].copy_from_slice(&seq.to_le_bytes());
        send(&mut tx, &msg)?;
    }
    for seq in 0..echo {
        let n = recv(&mut rx, &mut buf)?;
        let got = u64::from_le_bytes(buf[..8].try_into()?);
        if n != ECHO_SIZE || got != seq {
            return Err(format!("echo {seq}: got {n} bytes, sequence {got}").into());
        }
        if seq + window < echo {
            msg[..8].copy_from_slice(&(seq + window).to_le_bytes());
            send(&mut tx, &msg)?;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "echo  {echo} x {ECHO_SIZE} B round trips: {}",
        rate(echo, 2 * echo * ECHO_SIZE as u64, secs)
    );

    // Bulk: stream 64 KiB messages, compare checksums at the end.
    let count = bulk_mib * (1 << 20) / BULK_SIZE as u64;
    let mut expected = 0u64;
    let start = Instant::now();
    for seq in 0..count {
        for (i, chunk) in buf.chunks_mut(8).enumerate() {
            chunk.copy_from_slice(&(seq ^ (i as u64) << 20).to_le_bytes());
        }
        expected = expected.wrapping_add(checksum(&buf));
        send(&mut tx, &buf)?;
    }
    send(&mut tx, &[])?;
    let n = recv(&mut rx, &mut buf)?;
    let secs = start.elapsed().as_secs_f64();
    let got = u64::from_le_bytes(buf[..n.min(8)].try_into()?);
    if got != expected {
        return Err(
            format!("bulk checksum mismatch: sent {expected:#x}, guest saw {got:#x}").into(),
        );
    }
    println!(
        "bulk  {count} x 64 KiB, checksum ok:      {}",
        rate(count, count * BULK_SIZE as u64, secs)
    );
    send(&mut tx, &[0])?;
    let status = child.wait()?;
    if !status.success() {
        return Err(format!("guest process failed: {status}").into());
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("--guest") => match args.get(2) {
            Some(path) => guest(path),
            None => Err("--guest needs the region path".into()),
        },
        _ => {
            let flag = |name: &str, default: u64| {
                args.iter()
                    .position(|a| a == name)
                    .and_then(|i| args.get(i + 1))
                    .map_or(Ok(default), |v| v.parse::<u64>())
            };
            match (flag("--echo", 200_000), flag("--bulk-mib", 2048)) {
                (Ok(echo), Ok(bulk)) => host(echo, bulk),
                _ => Err("usage: ivchan-demo [--echo N] [--bulk-mib M]".into()),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ivchan-demo: {e}");
            ExitCode::FAILURE
        }
    }
}
