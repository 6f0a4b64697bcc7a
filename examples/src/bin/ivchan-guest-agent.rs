//! The guest agent: finds this VM's ivshmem device, attaches as the guest
//! and carries out the host agent's commands (see `ivchan_examples::agent`).
//!
//! In a VM: `ivchan-guest-agent` (picks the device whose header carries this
//! VM's UUID). Without a VM: `ivchan-guest-agent --region-file PATH` maps a
//! host region file the way the guest maps BAR2.
//!
//! Build it static for a minimal initramfs:
//! `RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target x86_64-unknown-linux-gnu -p ivchan-examples --bin ivchan-guest-agent`

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ivchan_examples::agent;
use ivchan_guest::{ChannelOptions, GuestChannel, MapOptions, Selector};

#[derive(Parser)]
#[command(about = "ivchan guest agent: serve the host agent's commands")]
struct Args {
    /// sysfs root.
    #[arg(long, default_value = "/sys")]
    sysfs: PathBuf,
    /// Use the device at this PCI address (default: the one whose header
    /// carries this VM's UUID).
    #[arg(long, conflicts_with = "name")]
    address: Option<String>,
    /// Use the device whose channel has this name.
    #[arg(long)]
    name: Option<String>,
    /// Map BAR2 write-combining (resource2_wc).
    #[arg(long)]
    wc: bool,
    /// Instead of a device, map this host region file (no VM needed).
    #[arg(long, conflicts_with_all = ["address", "name"])]
    region_file: Option<PathBuf>,
    /// Seconds to wait for the device and the host's header.
    #[arg(long, default_value_t = 60)]
    wait: u64,
    /// Where received files go.
    #[arg(long, default_value = "/tmp")]
    dir: PathBuf,
    /// Seconds without progress before a transfer fails.
    #[arg(long, default_value_t = 30)]
    stall: u64,
}

fn run(args: &Args) -> Result<(), String> {
    let wait = Duration::from_secs(args.wait);
    let stall = Duration::from_secs(args.stall);
    let options = ChannelOptions::default();
    if let Some(path) = &args.region_file {
        let mut ch = ivchan_examples::attach_region_file(path, options, wait)?;
        return agent::serve(&mut ch, &args.dir, stall);
    }
    let selector = match (&args.address, &args.name) {
        (Some(a), _) => Selector::Address(a.clone()),
        (_, Some(n)) => Selector::Name(n.clone()),
        _ => Selector::Identity,
    };
    let map = MapOptions {
        write_combining: args.wc,
        ..MapOptions::default()
    };
    let mut ch = GuestChannel::builder()
        .sysfs_root(&args.sysfs)
        .selector(selector)
        .map_options(map)
        .options(options)
        .timeout(wait)
        .open()
        .map_err(|e| e.to_string())?;
    eprintln!("ivchan-guest-agent: attached to {}", ch.address());
    agent::serve(&mut ch, &args.dir, stall)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ivchan-guest-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
