//! The async host agent: serves every VM whose region appears in `--dir`
//! from one tokio runtime (two worker threads, however many VMs), one task
//! per VM, no thread per VM. Each task waits for the VM's guest agent
//! (`ivchan-guest-agent`), opens a session (`hello NONCE`), has it echo
//! checked traffic messages, and tells it to quit.
//!
//! - `ivchan-host-agent-async --count 3`: until 3 VMs have finished.
//! - `--doorbells DIR`: serve each VM's `ivshmem-doorbell` device on
//!   `DIR/<uuid>.sock` (QEMU: `-chardev socket,path=DIR/<uuid>.sock,id=ivs
//!   -device ivshmem-doorbell,chardev=ivs,vectors=1`); each task's receives
//!   then sleep on the VM's eventfd instead of polling on a timer.
//!
//! SIGINT or SIGTERM stops every task within a heartbeat; each VM's side is
//! marked closed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::StreamExt;
use ivchan_cli::args::RegionArgs;
use ivchan_examples::{cancel_on_signals, traffic, EXIT_INTERRUPTED};
use ivchan_host::{AsyncVmChannel, ChannelError, ChannelOptions, Supervisor, VmEvent, VmOptions};

#[derive(Parser, Clone)]
#[command(
    name = "ivchan-host-agent-async",
    version,
    about = "ivchan async host agent: serve many VMs' guest agents from one tokio runtime"
)]
struct Args {
    #[command(flatten)]
    region: RegionArgs,
    /// Channel name written into a new header.
    #[arg(long, default_value = "ivchan")]
    name: String,
    /// Stop once this many VMs have finished (0: serve until interrupted).
    #[arg(long, default_value_t = 0)]
    count: usize,
    /// Messages (1 B to 64 KiB, checked) each guest echoes.
    #[arg(long, default_value_t = 1_000)]
    echo: u64,
    /// Serve each VM's ivshmem-doorbell device on the socket DIR/UUID.sock.
    #[arg(long, value_name = "DIR")]
    doorbells: Option<PathBuf>,
    /// Seconds to wait for a VM's guest agent.
    #[arg(long, default_value_t = 120)]
    wait: u64,
    /// Leave the guest agents running instead of sending `quit`.
    #[arg(long)]
    keep_guest: bool,
}

/// Messages in flight each way during the echo: at most this many 64 KiB
/// messages are queued in either ring, far below its size, so neither
/// side can block the other.
const WINDOW: u64 = 8;

/// How often `hello` is repeated until it is answered.
const HELLO_EVERY: Duration = Duration::from_millis(500);

fn chan(e: ChannelError) -> String {
    e.to_string()
}

/// Sends `hello NONCE` until the guest agent answers `ok hello NONCE`,
/// discarding what an earlier session left in the ring.
async fn hello(vm: &mut AsyncVmChannel) -> Result<(), String> {
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ u32::from(vm.get_ref().uuid().as_bytes()[15]);
    let line = format!("hello {nonce:x}");
    let answer = format!("ok hello {nonce:x}");
    loop {
        vm.send(line.as_bytes()).await.map_err(chan)?;
        let until = tokio::time::Instant::now() + HELLO_EVERY;
        while let Ok(msg) = tokio::time::timeout_at(until, vm.recv_vec()).await {
            if msg.map_err(chan)? == answer.as_bytes() {
                return Ok(());
            }
        }
    }
}

/// Sends a command line and waits for `ok …`.
async fn command(vm: &mut AsyncVmChannel, line: &str) -> Result<String, String> {
    vm.send(line.as_bytes()).await.map_err(chan)?;
    reply(vm).await
}

/// The guest's answer: `ok …`, or an error.
async fn reply(vm: &mut AsyncVmChannel) -> Result<String, String> {
    let reply = vm.recv_vec().await.map_err(chan)?;
    let text = String::from_utf8_lossy(&reply).into_owned();
    match text.strip_prefix("ok") {
        Some(rest) => Ok(rest.trim().to_owned()),
        None => Err(format!("guest answered: {text}")),
    }
}

/// `echo N`: traffic 0..N out, each checked as it comes back.
async fn echo(vm: &mut AsyncVmChannel, n: u64) -> Result<(u64, f64), String> {
    vm.send(format!("echo {n}").as_bytes())
        .await
        .map_err(chan)?;
    let start = Instant::now();
    let (mut sent, mut received, mut bytes) = (0u64, 0u64, 0u64);
    while received < n {
        if sent < n && sent - received < WINDOW {
            let msg = traffic::message(sent);
            bytes += msg.len() as u64;
            vm.send(&msg).await.map_err(chan)?;
            sent += 1;
            continue;
        }
        let msg = vm.recv_vec().await.map_err(chan)?;
        traffic::check(received, &msg).map_err(|e| format!("echo {received}: {e}"))?;
        received += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    reply(vm).await?;
    Ok((bytes, secs))
}

async fn converse(mut vm: AsyncVmChannel, args: Args) -> Result<(), String> {
    let uuid = *vm.get_ref().uuid();
    let wait = Duration::from_secs(args.wait);
    let epoch = tokio::time::timeout(wait, vm.wait_for_peer())
        .await
        .map_err(|_| format!("no guest agent within {wait:?}"))?
        .map_err(chan)?;
    println!("{uuid}: guest attached (epoch {epoch})");
    hello(&mut vm).await?;
    let (bytes, secs) = echo(&mut vm, args.echo).await?;
    println!(
        "{uuid}: echo of {} messages: {:.1} MB/s each way",
        args.echo,
        bytes as f64 / secs / 1e6
    );
    if !args.keep_guest {
        command(&mut vm, "quit").await?;
    }
    Ok(())
}

async fn serve(args: Args) -> Result<(), String> {
    let token = cancel_on_signals()?;
    let mut sup = Supervisor::new(args.region.options(), &args.name, ChannelOptions::default())
        .map_err(|e| e.to_string())?;
    if let Some(dir) = args.doorbells.clone() {
        sup = sup
            .serve_doorbells(move |uuid| VmOptions::new(dir.join(format!("{uuid}.sock"))))
            .map_err(|e| e.to_string())?;
    }
    let mut vms = sup.into_async().map_err(|e| e.to_string())?;
    println!("serving {} on one runtime", args.region.place.dir.display());
    let mut tasks = tokio::task::JoinSet::new();
    let (mut finished, mut failures) = (0usize, Vec::new());
    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    while args.count == 0 || finished < args.count {
        tokio::select! {
            event = vms.next() => match event.ok_or("the supervisor stopped")?.map_err(|e| e.to_string())? {
                VmEvent::Appeared(mut vm) => {
                    vm.set_cancel(Some(token.clone()));
                    let vm = vm.into_async().map_err(|e| e.to_string())?;
                    let uuid = *vm.get_ref().uuid();
                    let how = if vm.has_readiness() { "doorbell" } else { "timer" };
                    println!("{uuid}: region appeared; waking by {how}");
                    let args = args.clone();
                    tasks.spawn(async move {
                        converse(vm, args).await.map_err(|e| format!("{uuid}: {e}"))
                    });
                }
                VmEvent::Gone(uuid) => println!("{uuid}: region removed"),
                VmEvent::Departed { uuid, how } => println!("{uuid}: guest {how}"),
                VmEvent::Refused { uuid, error } => println!("{uuid}: refused: {error}"),
            },
            Some(done) = tasks.join_next() => {
                finished += 1;
                match done {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => failures.push(e),
                    Err(e) => failures.push(format!("a task failed: {e}")),
                }
            }
            _ = ticker.tick() => {
                if token.is_cancelled() {
                    return Err(ChannelError::Cancelled.to_string());
                }
            }
        }
    }
    if failures.is_empty() {
        println!("all {finished} VMs served");
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ivchan-host-agent-async: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e == ChannelError::Cancelled.to_string() => {
            eprintln!("ivchan-host-agent-async: interrupted; every VM's host side is closed");
            ExitCode::from(EXIT_INTERRUPTED)
        }
        Err(e) => {
            eprintln!("ivchan-host-agent-async: {e}");
            ExitCode::FAILURE
        }
    }
}
