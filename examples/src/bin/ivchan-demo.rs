//! Both agents as two processes over one `/dev/shm` region, no VM needed.
//!
//! The host side creates `/dev/shm/fg_<uuid>` as the host agent does; the
//! guest side is this same program run again as a child (`--guest-region`),
//! mapping the same file shared as a guest maps BAR2, so the demo needs no
//! other binary built first. The demo runs a checked exchange
//! both ways, an echo and a file transfer, prints messages/s and MB/s, and
//! removes the region and the files it made.
//!
//! Ctrl-C (SIGINT) or SIGTERM stops it cleanly, at any point: both sides
//! unwind, the guest child is stopped and waited for, and the region and
//! the private work directory (random name, mode 0700) are removed.
//!
//! `ivchan-demo [--exchange N] [--file-mib M]`

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use clap::Parser;
use ivchan_examples::{agent, attach_region_file, cancel_on_signals, traffic, EXIT_INTERRUPTED};
use ivchan_host::{ChannelOptions, OwnedChannel, RegionFile, RegionOptions, VmChannel, VmUuid};
use ivchan_protocol::CancelToken;

#[derive(Parser)]
#[command(
    name = "ivchan-demo",
    version,
    about = "ivchan demo: host and guest agents over one /dev/shm region"
)]
struct Args {
    /// Checked messages (1 B to 64 KiB) each way.
    #[arg(long, default_value_t = 100_000)]
    exchange: u64,
    /// Round trips for the echo.
    #[arg(long, default_value_t = 20_000)]
    echo: u64,
    /// Size of the file transferred, in MiB.
    #[arg(long, default_value_t = 256)]
    file_mib: u64,
    /// Run as the demo's guest side over this region file (the demo starts
    /// itself this way).
    #[arg(long, hide = true, requires = "guest_dir")]
    guest_region: Option<PathBuf>,
    /// Where the guest side puts received files.
    #[arg(long, hide = true)]
    guest_dir: Option<PathBuf>,
}

/// The guest side: the guest agent's loop over the host's region file.
fn guest(region: &Path, dir: &Path, token: &CancelToken) -> Result<(), String> {
    let stall = Duration::from_secs(30);
    let mut ch = attach_region_file(region, ChannelOptions::default(), stall)?;
    ch.set_cancel(Some(token.clone()));
    agent::serve(&mut ch, dir, stall)
}

fn rate(what: &str, count: u64, bytes: u64, secs: f64) {
    println!(
        "{what:<34} {:>10.0} msg/s {:>9.1} MB/s",
        count as f64 / secs,
        bytes as f64 / secs / 1e6
    );
}

fn throughput(what: &str, bytes: u64, secs: f64) {
    println!(
        "{what:<34} {:>16} {:>9.1} MB/s",
        "",
        bytes as f64 / secs / 1e6
    );
}

/// Removes the region file however the demo ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The guest child: stopped (SIGTERM, then SIGKILL) and waited for however
/// the demo ends, so it is never orphaned.
struct GuestChild(Option<std::process::Child>);

impl GuestChild {
    /// Waits for a normal exit.
    fn wait(&mut self) -> Result<std::process::ExitStatus, String> {
        let mut child = self.0.take().ok_or("the guest side was already reaped")?;
        child.wait().map_err(|e| e.to_string())
    }
}

impl Drop for GuestChild {
    fn drop(&mut self) {
        let Some(mut child) = self.0.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            for _ in 0..100 {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn run(args: &Args, token: &CancelToken) -> Result<(), String> {
    let uuid: VmUuid = format!("00000000-0000-4000-8000-{:012x}", std::process::id())
        .parse()
        .map_err(|e| format!("{e}"))?;
    let regions = RegionOptions::new();
    // Work in /dev/shm too, so the file transfer measures the channel, not
    // a disk; in a private directory of unpredictable name, removed on drop.
    let work = tempfile::Builder::new()
        .prefix("ivchan-demo-")
        .tempdir_in("/dev/shm")
        .map_err(|e| format!("creating a work directory in /dev/shm: {e}"))?;
    let file = work.path().join("payload.bin");
    let received = work.path().join("received");
    std::fs::create_dir_all(&received).map_err(|e| e.to_string())?;

    let mut vm = VmChannel::builder(&uuid)
        .regions(regions.clone())
        .name("demo")
        .create()
        .map_err(|e| e.to_string())?;
    let _region = RemoveOnDrop(regions.path_for(&uuid));
    vm.set_cancel(Some(token.clone()));
    println!(
        "region {} ({} MiB)",
        vm.path().display(),
        std::fs::metadata(vm.path())
            .map_err(|e| e.to_string())?
            .len()
            >> 20
    );
    let me = std::env::current_exe().map_err(|e| format!("finding this program: {e}"))?;
    let mut guest = GuestChild(Some(
        Command::new(&me)
            .arg("--guest-region")
            .arg(vm.path())
            .arg("--guest-dir")
            .arg(&received)
            .spawn()
            .map_err(|e| format!("starting the guest side ({}): {e}", me.display()))?,
    ));

    let result = (|| -> Result<(), String> {
        vm.wait_for_peer(Some(Duration::from_secs(30)))
            .map_err(|e| format!("the guest side did not attach: {e}"))?;
        let data: Vec<u8> = (0..args.file_mib << 20)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        std::fs::write(&file, &data).map_err(|e| e.to_string())?;
        if token.is_cancelled() {
            return Err(ivchan_host::ChannelError::Cancelled.to_string());
        }
        let stall = Duration::from_secs(30);
        let ch: &mut OwnedChannel<RegionFile> = &mut vm;
        // A session first: the guest side takes commands only within one.
        agent::hello(ch, stall)?;
        {
            let bytes: u64 = (0..args.exchange).map(|s| traffic::len(s) as u64).sum();
            let t = Instant::now();
            agent::run_exchange(ch, args.exchange, false, stall)?;
            rate(
                "exchange, 1 B-64 KiB, both ways",
                2 * args.exchange,
                2 * bytes,
                t.elapsed().as_secs_f64(),
            );
            let bytes: u64 = (0..args.echo).map(|s| traffic::len(s) as u64).sum();
            let t = Instant::now();
            agent::run_exchange(ch, args.echo, true, stall)?;
            rate(
                "echo round trips, 1 B-64 KiB",
                args.echo,
                2 * bytes,
                t.elapsed().as_secs_f64(),
            );
            let t = Instant::now();
            let size = agent::send_file(ch, &file, stall)?;
            let what = format!("file transfer, {} MiB, checked", size >> 20);
            throughput(&what, size, t.elapsed().as_secs_f64());
            agent::command(ch, "quit", stall).map(drop)
        }
    })();
    // On failure the guest child is stopped when `guest` drops.
    result?;
    let status = guest.wait()?;
    if !status.success() {
        return Err(format!("guest agent failed: {status}"));
    }
    let copy = std::fs::read(received.join("payload.bin")).map_err(|e| e.to_string())?;
    if copy != std::fs::read(&file).map_err(|e| e.to_string())? {
        return Err("the received file differs".into());
    }
    drop(vm);
    drop(_region);
    drop(work);
    println!("all messages and the file checked; region removed");
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let token = match cancel_on_signals() {
        Ok(token) => token,
        Err(e) => {
            eprintln!("ivchan-demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match (&args.guest_region, &args.guest_dir) {
        (Some(region), Some(dir)) => guest(region, dir, &token),
        _ => run(&args, &token),
    };
    if token.is_cancelled() {
        if args.guest_region.is_none() {
            eprintln!("ivchan-demo: interrupted; stopped the guest side, removed the region and work files");
        }
        return ExitCode::from(EXIT_INTERRUPTED);
    }
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ivchan-demo: {e}");
            ExitCode::FAILURE
        }
    }
}
