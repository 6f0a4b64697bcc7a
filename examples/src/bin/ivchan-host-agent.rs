//! The host agent: opens (or creates) one VM's region, waits for the guest
//! agent, then runs an exchange of checked messages both ways, an echo and,
//! optionally, a file transfer; prints rates and exits non-zero on any
//! mismatch.
//!
//! `ivchan-host-agent --uuid 5b7e6a0c-1d2e-4f3a-9b8c-7d6e5f4a3b2c --exchange 10000 --file big.iso`

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use ivchan_examples::{agent, traffic};
use ivchan_host::{ChannelOptions, PeerEvent, RegionOptions, VmChannel, VmUuid};

#[derive(Parser)]
#[command(about = "ivchan host agent: talk to one VM's guest agent")]
struct Args {
    /// The VM's UUID (its region is <dir>/<prefix><uuid>).
    #[arg(long)]
    uuid: VmUuid,
    /// Directory of region files.
    #[arg(long, default_value = "/dev/shm")]
    dir: PathBuf,
    /// Region file name prefix.
    #[arg(long, default_value = "fg_")]
    prefix: String,
    /// Region size in bytes when creating it.
    #[arg(long, default_value_t = 8 << 20)]
    size: u64,
    /// Also accept a region file owned by this uid (e.g. the libvirt-qemu
    /// user when QEMU created it); repeatable.
    #[arg(long)]
    allow_owner: Vec<u32>,
    /// Channel name written into a new header.
    #[arg(long, default_value = "ivchan")]
    name: String,
    /// Checked messages (1 B to 64 KiB) to send each way.
    #[arg(long, default_value_t = 10_000)]
    exchange: u64,
    /// Messages for the guest to echo back.
    #[arg(long, default_value_t = 1_000)]
    echo: u64,
    /// A file to transfer to the guest agent.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Seconds to wait for the guest agent to attach.
    #[arg(long, default_value_t = 120)]
    wait: u64,
    /// Leave the guest agent running instead of sending `quit`.
    #[arg(long)]
    keep_guest: bool,
}

fn rate(what: &str, count: u64, bytes: u64, secs: f64) {
    println!(
        "{what:<36} {:>10.0} msg/s {:>9.1} MB/s  ({count} messages, {:.1} MB, {secs:.3} s)",
        count as f64 / secs,
        bytes as f64 / secs / 1e6,
        bytes as f64 / 1e6,
    );
}

fn run(args: &Args) -> Result<(), String> {
    let mut regions = RegionOptions::new()
        .dir(&args.dir)
        .prefix(args.prefix.clone())
        .size(args.size);
    for uid in &args.allow_owner {
        regions = regions.allow_owner(*uid);
    }
    let options = ChannelOptions::default();
    let mut vm =
        VmChannel::open(&args.uuid, &regions, &args.name, options).map_err(|e| e.to_string())?;
    println!("region {}", vm.path().display());

    // Wait for the guest agent.
    let start = Instant::now();
    loop {
        match vm.poll_peer().map_err(|e| e.to_string())? {
            Some(
                PeerEvent::Attached { epoch }
                | PeerEvent::Restarted {
                    new_epoch: epoch, ..
                },
            ) => {
                println!(
                    "guest attached (epoch {epoch}) after {:.2} s",
                    start.elapsed().as_secs_f64()
                );
                break;
            }
            _ if start.elapsed() > Duration::from_secs(args.wait) => {
                return Err(format!("no guest agent within {} s", args.wait));
            }
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }

    let stall = Duration::from_secs(30);
    vm.with(|ch| -> Result<(), String> {
        let bytes: u64 = (0..args.exchange).map(|s| traffic::len(s) as u64).sum();
        let t = Instant::now();
        agent::run_exchange(ch, args.exchange, false, stall)?;
        let secs = t.elapsed().as_secs_f64();
        rate(
            "exchange (each way, checked)",
            2 * args.exchange,
            2 * bytes,
            secs,
        );

        let bytes: u64 = (0..args.echo).map(|s| traffic::len(s) as u64).sum();
        let t = Instant::now();
        agent::run_exchange(ch, args.echo, true, stall)?;
        rate(
            "echo (round trips, checked)",
            args.echo,
            2 * bytes,
            t.elapsed().as_secs_f64(),
        );

        if let Some(path) = &args.file {
            let t = Instant::now();
            let size = agent::send_file(ch, path, stall)?;
            rate(
                "file transfer (checksum ok)",
                1,
                size,
                t.elapsed().as_secs_f64(),
            );
        }
        if !args.keep_guest {
            agent::command(ch, "quit", stall)?;
        }
        Ok(())
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ivchan-host-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
