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
use ivchan_cli::generate::{self, Shell};
use ivchan_cli::logging::Verbosity;
use ivchan_examples::{agent, cancel_on_signals, EXIT_INTERRUPTED};
use ivchan_guest::{
    parse_pci_address, ChannelOptions, GuestChannel, MapOptions, OwnedChannel, Selector,
    WakePreference,
};
use ivchan_protocol::{CancelToken, PeerState, SharedMemory};

#[derive(Parser)]
#[command(
    name = "ivchan-guest-agent",
    version,
    about = "ivchan guest agent: serve the host agent's commands"
)]
struct Args {
    /// sysfs root.
    #[arg(long, default_value = "/sys")]
    sysfs: PathBuf,
    /// Use the device at this PCI address (default: the one whose header
    /// carries this VM's UUID).
    #[arg(long, conflicts_with = "name", value_parser = address_arg)]
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
    /// How to wait for the host's messages: auto (VFIO, then ivchan's
    /// guest driver, then polling), vfio, driver or polling.
    #[arg(long, default_value = "auto", value_parser = wake_arg)]
    wake: WakePreference,
    /// Seconds without progress before a transfer fails.
    #[arg(long, default_value_t = 30)]
    stall: u64,
    /// Print the shell completion script for SHELL (bash, zsh, fish,
    /// elvish, powershell) and exit.
    #[arg(long, value_name = "SHELL", exclusive = true, hide = true)]
    completions: Option<Shell>,
    /// Print the man page (roff) and exit.
    #[arg(long, exclusive = true, hide = true)]
    man: bool,
    /// -v/-vv/-vvv: the libraries' log records (region files, device
    /// selection) on stderr; -q errors only.
    #[command(flatten)]
    verbosity: Verbosity,
}

fn wake_arg(text: &str) -> Result<WakePreference, String> {
    match text {
        "auto" => Ok(WakePreference::Auto),
        other => other.parse().map(WakePreference::Only),
    }
}

fn address_arg(text: &str) -> Result<String, String> {
    parse_pci_address(text).map_err(|e| e.to_string())
}

/// Says where the guest side stands before it starts serving: a guest
/// agent that waits must say what for.
fn serve(
    ch: &mut OwnedChannel<impl SharedMemory>,
    what: &str,
    args: &Args,
    token: &CancelToken,
) -> Result<(), String> {
    ch.set_cancel(Some(token.clone()));
    let _ = ch.poll_peer();
    let host = match ch.peer_status().map(|s| s.state) {
        Some(PeerState::Ready) => "the host side is ready",
        Some(PeerState::Closed) => "the host agent has closed its side",
        _ => "no host agent has attached yet",
    };
    eprintln!(
        "ivchan-guest-agent: attached to {what} as the guest (epoch {}); {host}: waiting for the host agent's commands",
        ch.epoch()
    );
    agent::serve(ch, &args.dir, Duration::from_secs(args.stall))
}

fn run(args: &Args, token: &CancelToken) -> Result<(), String> {
    let wait = Duration::from_secs(args.wait);
    let options = ChannelOptions::default();
    if let Some(path) = &args.region_file {
        eprintln!(
            "ivchan-guest-agent: waiting up to {wait:?} for {} to carry a host's header",
            path.display()
        );
        let mut ch = ivchan_examples::attach_region_file(path, options, wait)?;
        return serve(&mut ch, &path.display().to_string(), args, token);
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
    let looking_for = match &selector {
        Selector::Address(a) => format!("the ivshmem device at {a}"),
        Selector::Name(n) => format!("an ivshmem device whose channel is named {n:?}"),
        Selector::Identity => "the ivshmem device whose header carries this VM's UUID".to_owned(),
    };
    eprintln!("ivchan-guest-agent: waiting up to {wait:?} for {looking_for}");
    let mut ch = GuestChannel::builder()
        .sysfs_root(&args.sysfs)
        .selector(selector)
        .map_options(map)
        .options(options)
        .timeout(wait)
        .wake(args.wake)
        .open()
        .map_err(|e| e.to_string())?;
    match ch.peer_id() {
        Some(peer) => eprintln!(
            "ivchan-guest-agent: waits for the host's messages by {}, as doorbell peer {peer}",
            ch.wake_source()
        ),
        None => eprintln!(
            "ivchan-guest-agent: waits for the host's messages by {}",
            ch.wake_source()
        ),
    }
    let address = ch.address().to_owned();
    let served = serve(&mut ch, &address, args, token);
    let stats = ch.wake_stats();
    eprintln!(
        "ivchan-guest-agent: woken by {} interrupts, {} sleeps timed out",
        stats.interrupts, stats.timeouts
    );
    served
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Packaging: generated from these definitions (`cargo xtask install-check`).
    if let Some(shell) = args.completions {
        generate::completions::<Args>("ivchan-guest-agent", shell);
        return ExitCode::SUCCESS;
    }
    if args.man {
        generate::man::<Args>("ivchan-guest-agent", None);
        return ExitCode::SUCCESS;
    }
    args.verbosity.init();
    let token = match cancel_on_signals() {
        Ok(token) => token,
        Err(e) => {
            eprintln!("ivchan-guest-agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = run(&args, &token);
    if token.is_cancelled() {
        eprintln!("ivchan-guest-agent: interrupted; the guest side is closed");
        return ExitCode::from(EXIT_INTERRUPTED);
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ivchan-guest-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
