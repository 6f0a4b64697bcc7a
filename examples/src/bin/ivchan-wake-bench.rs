//! Host-to-guest wake-ups through a real guest: rounds of one 64-byte
//! message that the guest agent returns (its `ping` command), each sent
//! only once the guest is asleep.
//!
//! Before each round the bench waits until the guest agent has set
//! `WAKE_ME` in its ring's control block (it is about to sleep on its
//! interrupt), or, for a guest that never sets it (a polling guest),
//! `--gap-ms`. It then publishes (the channel rings the guest's vector
//! because the flag is set) and polls for the answer, yielding the CPU
//! between looks: the round trip is the host-to-guest wake plus the
//! guest's reply, with no host wake in it.
//! It ends with how many times the host rang the guest: compared with the
//! interrupts the guest took, that shows whether any ring was lost. Rounds
//! longer than `--slow-ms` (a lost wake-up waits out the guest's 100 ms
//! nap; so does a guest the host did not schedule) are listed.
//!
//! `ivchan-wake-bench --uuid U --doorbell SOCK --rounds 10000`

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Parser;
use ivchan_examples::agent;
use ivchan_host::{VmChannel, VmOptions, VmUuid};
use ivchan_protocol::ring::WAKE_ME;
use ivchan_protocol::{Direction, Header, RingMemory, Word};

#[derive(Parser)]
#[command(
    name = "ivchan-wake-bench",
    version,
    about = "time host-to-guest wake-ups"
)]
struct Args {
    /// The VM's UUID (its region is /dev/shm/fg_UUID).
    #[arg(long)]
    uuid: VmUuid,
    /// Serve QEMU's ivshmem-doorbell device on this UNIX socket.
    #[arg(long)]
    doorbell: std::path::PathBuf,
    /// Rounds to run.
    #[arg(long, default_value_t = 10_000)]
    rounds: u64,
    /// Gap before a round when the guest never asks to be woken.
    #[arg(long, default_value_t = 5)]
    gap_ms: u64,
    /// List rounds at least this long.
    #[arg(long, default_value_t = 90)]
    slow_ms: u64,
    /// Seconds to wait for the guest agent.
    #[arg(long, default_value_t = 240)]
    wait: u64,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

/// Whether the guest has asked to be woken (it is asleep or about to be).
fn guest_asleep(vm: &VmChannel) -> bool {
    Header::open(vm.memory().region()).is_ok_and(|h| {
        h.ring(Direction::HostToGuest)
            .load(Word::ConsumerFlags, Ordering::Relaxed)
            & WAKE_ME
            != 0
    })
}

fn run(args: &Args) -> Result<(), String> {
    let wait = Duration::from_secs(args.wait);
    let mut vm = VmChannel::builder(&args.uuid)
        .doorbell(VmOptions::new(&args.doorbell))
        .open()
        .map_err(|e| e.to_string())?;
    vm.wait_for_peer(Some(wait)).map_err(|e| e.to_string())?;
    agent::hello(&mut vm, wait)?;
    let stall = Duration::from_secs(30);
    vm.send(format!("ping {}", args.rounds).as_bytes(), Some(stall))
        .map_err(|e| e.to_string())?;
    let gap = Duration::from_millis(args.gap_ms);
    let lost = Duration::from_millis(args.slow_ms);
    let mut times = Vec::with_capacity(usize::try_from(args.rounds).unwrap_or(0));
    let (mut asleep, mut lost_wakes) = (0u64, 0u64);
    let mut buf = [0u8; 64];
    let start = Instant::now();
    for seq in 0..args.rounds {
        let since = Instant::now();
        let slept = loop {
            if guest_asleep(&vm) {
                break true;
            }
            if since.elapsed() >= gap {
                break false;
            }
            std::thread::sleep(Duration::from_micros(20));
        };
        asleep += u64::from(slept);
        let mut msg = [0u8; 64];
        msg[..8].copy_from_slice(&seq.to_le_bytes());
        let sent = Instant::now();
        vm.send(&msg, Some(stall)).map_err(|e| e.to_string())?;
        let n = loop {
            if let Some(n) = vm.try_recv(&mut buf).map_err(|e| e.to_string())? {
                break n;
            }
            if sent.elapsed() > stall {
                return Err(format!("round {seq}: no answer within {stall:?} (hang)"));
            }
            std::thread::yield_now();
        };
        let took = sent.elapsed();
        if buf[..n] != msg {
            return Err(format!("round {seq}: the answer differs"));
        }
        if took >= lost {
            lost_wakes += 1;
            eprintln!("round {seq}: {took:?}");
        }
        times.push(took);
    }
    let secs = start.elapsed().as_secs_f64();
    let mut answer = [0u8; 256];
    let n = vm
        .recv(&mut answer, Some(stall))
        .map_err(|e| e.to_string())?;
    if !answer[..n].starts_with(b"ok") {
        return Err(format!(
            "guest answered {:?}",
            String::from_utf8_lossy(&answer[..n])
        ));
    }
    agent::command(&mut vm, "quit", stall)?;
    let rings = vm.doorbell().and_then(|d| d.rings(&args.uuid)).unwrap_or(0);
    times.sort();
    println!(
        "{}: wake {} rounds in {secs:.1} s, guest asleep at {asleep}, host rang {rings} times: p50 {:?} p99 {:?} p99.9 {:?} max {:?}; rounds over {:?}: {lost_wakes}",
        args.uuid,
        args.rounds,
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        percentile(&times, 0.999),
        times.last().copied().unwrap_or_default(),
        lost,
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ivchan-wake-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
