//! The host agent: opens (or creates) one VM's region, waits for the guest
//! agent, then runs an exchange of checked messages both ways, an echo and,
//! optionally, a file transfer; prints rates and exits non-zero on any
//! mismatch.
//!
//! - `ivchan-host-agent --uuid U --exchange 10000 --file big.iso`: one VM.
//! - `ivchan-host-agent --supervise 3`: every VM whose region appears in
//!   `--dir`, each in its own thread, until 3 have finished.
//! - `ivchan-host-agent --uuid U --stream 20000 --state FILE`: a stream that
//!   survives either side restarting; rerun with the same state file after
//!   a kill and it resumes. If the guest leaves this host while running
//!   (a live migration away), the agent says so and exits 0: the stream
//!   goes on with the destination's agent, started with `--incoming`.
//!
//! Region files are trusted as `ivchan` trusts them (`--allow-owner`,
//! `--allow-group`; the hook's, QEMU's and `ivchan init`'s files open with
//! no flag). SIGINT or SIGTERM stops the agent cleanly: its side is marked
//! closed, so a guest agent waits for the next host agent instead of
//! trusting a dead one; a second signal ends it at once. A new host agent
//! on the same region resynchronises with the running guest agent.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use ivchan_cli::args::RegionArgs;
use ivchan_cli::generate::{self, Shell};
use ivchan_cli::logging::Verbosity;
use ivchan_examples::{agent, cancel_on_signals, traffic, EXIT_INTERRUPTED};
use ivchan_host::{
    ChannelError, ChannelOptions, DepartureWatch, OwnedChannel, RegionFile, RegionOptions,
    ServerEvent, Supervisor, VmChannel, VmEvent, VmOptions, VmUuid, WaitStrategy,
};
use ivchan_protocol::{poll_until, CancelToken};
use ivchan_testkit::process::cpu_time;

#[derive(Parser, Clone)]
#[command(
    name = "ivchan-host-agent",
    version,
    about = "ivchan host agent: talk to one VM's guest agent"
)]
struct Args {
    /// The VM's UUID (its region is DIR/PREFIXUUID, by default /dev/shm/fg_UUID).
    #[arg(long, required_unless_present = "supervise")]
    uuid: Option<VmUuid>,
    /// Serve every VM whose region appears in --dir until this many have
    /// completed the conversation.
    #[arg(long, conflicts_with_all = ["uuid", "stream"])]
    supervise: Option<usize>,
    /// Instead of the conversation, stream this many acknowledged messages,
    /// resuming from --state.
    #[arg(long, requires = "state")]
    stream: Option<u64>,
    /// Progress file of --stream.
    #[arg(long)]
    state: Option<PathBuf>,
    #[command(flatten)]
    region: RegionArgs,
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
    /// The VM arrives by live migration: serve its doorbell socket at once;
    /// once SIGUSR1 says the migration completed (send it when the
    /// hypervisor reports the VM running here) and the guest beats in the
    /// region, attach and resume from the migrated rings (within --wait).
    #[arg(long, conflicts_with = "supervise")]
    incoming: bool,
    /// Seconds to wait for the guest agent to attach.
    #[arg(long, default_value_t = 120)]
    wait: u64,
    /// Leave the guest agent running instead of sending `quit`.
    #[arg(long)]
    keep_guest: bool,
    /// Serve QEMU's ivshmem-doorbell device on this UNIX socket (the host
    /// agent is its peer 1, the VM's QEMU peer 0) and sleep on the doorbell when idle.
    #[arg(long, conflicts_with = "supervise")]
    doorbell: Option<PathBuf>,
    /// Group (name) allowed to connect to the doorbell socket, e.g.
    /// libvirt-qemu.
    #[arg(long, requires = "doorbell")]
    socket_group: Option<String>,
    /// Round trips of one 64-byte message to time (p50/p99/p99.9/max).
    #[arg(long, default_value_t = 0)]
    ping: u64,
    /// Then stay idle this many seconds, waiting to receive, and report the
    /// CPU time this process used meanwhile.
    #[arg(long, default_value_t = 0)]
    idle: u64,
    /// Then the same idle wait busy-polling, for comparison.
    #[arg(long, default_value_t = 0)]
    busy_idle: u64,
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

fn rate(uuid: &VmUuid, what: &str, count: u64, bytes: u64, secs: f64) {
    println!(
        "{uuid}: {what:<30} {:>10.0} msg/s {:>9.1} MB/s  ({count} messages, {:.1} MB, {secs:.3} s)",
        count as f64 / secs,
        bytes as f64 / secs / 1e6,
        bytes as f64 / 1e6,
    );
}

fn regions(args: &Args) -> RegionOptions {
    args.region.options()
}

/// Waits for a live guest agent (a stale "ready" left by a crash does not
/// count).
fn wait_for_guest(vm: &mut VmChannel, wait: Duration) -> Result<(), String> {
    let start = Instant::now();
    match vm.wait_for_peer(Some(wait)) {
        Ok(epoch) => {
            println!(
                "{}: guest attached (epoch {epoch}) after {:.2} s",
                vm.uuid(),
                start.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Err(ChannelError::Timeout { .. }) => {
            Err(format!("{}: no guest agent within {wait:?}", vm.uuid()))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Reports the guest peers that connected to this VM's ivshmem server,
/// waiting up to `wait` for the first.
fn wait_for_doorbell(vm: &VmChannel, wait: Duration) -> Result<(), String> {
    let cancelled = || vm.cancel_token().is_some_and(CancelToken::is_cancelled);
    let Some(server) = vm.doorbell() else {
        return Ok(());
    };
    let strategy = WaitStrategy::backoff(Duration::from_millis(5), Duration::from_millis(100));
    let peer = poll_until(strategy, Some(wait), || -> Result<_, String> {
        if cancelled() {
            return Err(ChannelError::Cancelled.to_string());
        }
        let mut connected = None;
        for event in server.events() {
            match event {
                ServerEvent::PeerConnected { vm, peer } => {
                    println!("{vm}: guest peer {peer} connected");
                    connected = Some(peer);
                }
                other => println!("{}: ivshmem server: {other:?}", vm.uuid()),
            }
        }
        Ok(connected)
    })?;
    if peer.is_none() {
        return Err("no guest connected to the ivshmem server".to_owned());
    }
    println!("{}: sleeping on the doorbell when idle", vm.uuid());
    Ok(())
}

/// Waits to receive for `secs` while the guest stays quiet; returns the CPU
/// time used.
fn idle(vm: &mut VmChannel, secs: u64) -> Result<Duration, String> {
    let before = cpu_time("self");
    let mut buf = [0u8; 64];
    match vm.recv(&mut buf, Some(Duration::from_secs(secs))) {
        Err(ChannelError::Timeout { .. }) => Ok(cpu_time("self").saturating_sub(before)),
        Ok(n) => Err(format!("unexpected {n}-byte message while idle")),
        Err(e) => Err(e.to_string()),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

/// The conversation with one guest: exchange, echo, file, ping, idle, quit.
fn converse(vm: &mut VmChannel, args: &Args) -> Result<(), String> {
    let wait = Duration::from_secs(args.wait);
    wait_for_guest(vm, wait)?;
    wait_for_doorbell(vm, wait)?;
    let stall = Duration::from_secs(30);
    let uuid = *vm.uuid();
    let ch: &mut OwnedChannel<RegionFile> = vm;
    // A new conversation: whatever an earlier host agent left in the rings
    // is discarded, and the guest agent drops what it was doing.
    let mut session = agent::hello(ch, wait)?;
    println!("{uuid}: in session with the guest agent (epoch {session})");
    let exchange_bytes: u64 = (0..args.exchange).map(|s| traffic::len(s) as u64).sum();
    let t = Instant::now();
    agent::step(ch, &mut session, wait, "exchange", |ch| {
        agent::run_exchange(ch, args.exchange, false, stall)
    })?;
    let secs = t.elapsed().as_secs_f64();
    let what = "exchange (each way, checked)";
    rate(&uuid, what, 2 * args.exchange, 2 * exchange_bytes, secs);

    let echo_bytes: u64 = (0..args.echo).map(|s| traffic::len(s) as u64).sum();
    let t = Instant::now();
    agent::step(ch, &mut session, wait, "echo", |ch| {
        agent::run_exchange(ch, args.echo, true, stall)
    })?;
    let secs = t.elapsed().as_secs_f64();
    rate(
        &uuid,
        "echo (round trips, checked)",
        args.echo,
        2 * echo_bytes,
        secs,
    );

    // Each direction carried the exchange and the echo; the file went
    // to the guest only.
    let checked = exchange_bytes + echo_bytes;
    let mut to_guest = checked;
    if let Some(path) = &args.file {
        let t = Instant::now();
        let size = agent::step(ch, &mut session, wait, "file", |ch| {
            agent::send_file(ch, path, stall)
        })?;
        to_guest += size;
        let secs = t.elapsed().as_secs_f64();
        rate(&uuid, "file transfer (checksum ok)", 1, size, secs);
    }
    let messages = args.exchange + args.echo;
    println!(
        "{uuid}: totals to-guest {messages} msgs {to_guest} bytes, from-guest {messages} msgs {checked} bytes"
    );
    if args.ping > 0 {
        let mut times = agent::step(ch, &mut session, wait, "ping", |ch| {
            agent::ping(ch, args.ping, stall)
        })?;
        times.sort();
        println!(
            "{uuid}: ping 64 B x {}: p50 {:?} p99 {:?} p99.9 {:?} max {:?}",
            args.ping,
            percentile(&times, 0.50),
            percentile(&times, 0.99),
            percentile(&times, 0.999),
            times.last().copied().unwrap_or_default()
        );
    }
    if args.idle > 0 {
        let cpu = idle(vm, args.idle)?;
        println!(
            "{uuid}: idle {} s (default wait): host cpu {} ms",
            args.idle,
            cpu.as_millis()
        );
    }
    if args.busy_idle > 0 {
        vm.set_wait_strategy(WaitStrategy::busy_poll());
        let cpu = idle(vm, args.busy_idle)?;
        println!(
            "{uuid}: idle {} s (busy-poll): host cpu {} ms",
            args.busy_idle,
            cpu.as_millis()
        );
    }
    if !args.keep_guest {
        agent::step(vm, &mut session, wait, "quit", |ch| {
            agent::command(ch, "quit", stall)
        })?;
    }
    Ok(())
}

fn stream(
    vm: &mut VmChannel,
    count: u64,
    state: &std::path::Path,
    args: &Args,
) -> Result<(), String> {
    // A guest that leaves this host (a live migration away) ends the
    // stream here without failing it: a watcher sees it and cancels.
    let departed = watch_departure(vm)?;
    let mut state = agent::StreamState::open(state)?;
    println!(
        "{}: stream of {count}, resuming at {} sent, {} acknowledged",
        vm.uuid(),
        state.sent,
        state.acked
    );
    let deadline = Duration::from_secs(args.wait);
    let uuid = *vm.uuid();
    let t = Instant::now();
    let stats = match agent::stream_host(vm, count, &mut state, deadline) {
        Err(_) if departed.get().is_some() => {
            let how = departed.get().map(ToString::to_string).unwrap_or_default();
            println!(
                "{uuid}: guest {how}: stream handed over at {} sent, {} acknowledged (of {count})",
                state.sent, state.acked
            );
            return Ok(());
        }
        other => other?,
    };
    println!(
        "{uuid}: stream complete: {} sent by this process, {} duplicate acknowledgements, {} guest restarts seen, {:.2} s",
        stats.sent,
        stats.duplicate_acks,
        stats.guest_restarts,
        t.elapsed().as_secs_f64()
    );
    // Totals of the whole stream, across every incarnation of both sides.
    let bytes: u64 = (0..count).map(|s| 12 + traffic::len(s) as u64).sum();
    println!(
        "{uuid}: totals to-guest {count} msgs {bytes} bytes, from-guest {count} msgs {} bytes",
        12 * count
    );
    if !args.keep_guest {
        // The guest agent takes commands only within a session.
        agent::hello(vm, deadline)?;
        agent::command(vm, "quit", Duration::from_secs(30))?;
    }
    Ok(())
}

/// Starts a thread that watches the VM's region for its guest leaving
/// this host (migrated, not merely closed) and then cancels the channel (whose token also follows the
/// signal token); returns where the departure will be recorded.
fn watch_departure(
    vm: &mut VmChannel,
) -> Result<std::sync::Arc<std::sync::OnceLock<ivchan_host::GuestDeparture>>, String> {
    let timeout = vm.options().peer_timeout.unwrap_or(Duration::from_secs(5));
    let mut watch = DepartureWatch::new(vm.path(), timeout).map_err(|e| e.to_string())?;
    let signals = vm.cancel_token().cloned();
    let token = CancelToken::new();
    vm.set_cancel(Some(token.clone()));
    let departed = std::sync::Arc::new(std::sync::OnceLock::new());
    let seen = departed.clone();
    std::thread::spawn(move || loop {
        if signals.as_ref().is_some_and(CancelToken::is_cancelled) {
            token.cancel();
            return;
        }
        // Only a guest that left this host ends the stream: one that
        // closed its side (an agent restart) is waited for as before.
        if let Some(how @ ivchan_host::GuestDeparture::Migrated) = watch.poll() {
            let _ = seen.set(how);
            token.cancel();
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    });
    Ok(departed)
}

fn supervise(args: &Args, count: usize, token: &CancelToken) -> Result<(), String> {
    let mut sup = Supervisor::new(regions(args), &args.name, ChannelOptions::default())
        .map_err(|e| e.to_string())?;
    println!(
        "supervising {} for {count} VMs",
        args.region.place.dir.display()
    );
    let deadline = Instant::now() + Duration::from_secs(args.wait);
    let mut workers = Vec::new();
    while workers.len() < count {
        if token.is_cancelled() {
            return Err(ChannelError::Cancelled.to_string());
        }
        if Instant::now() > deadline {
            return Err(format!("only {} of {count} VMs appeared", workers.len()));
        }
        for event in sup
            .poll(Some(Duration::from_millis(200)))
            .map_err(|e| e.to_string())?
        {
            match event {
                VmEvent::Appeared(mut vm) => {
                    println!("{}: region appeared", vm.uuid());
                    vm.set_cancel(Some(token.clone()));
                    let args = args.clone();
                    workers.push(std::thread::spawn(move || {
                        let uuid = *vm.uuid();
                        converse(&mut vm, &args).map_err(|e| format!("{uuid}: {e}"))
                    }));
                }
                VmEvent::Gone(uuid) => println!("{uuid}: region removed"),
                VmEvent::Departed { uuid, how } => println!("{uuid}: guest {how}"),
                VmEvent::Refused { uuid, error } => println!("{uuid}: refused: {error}"),
            }
        }
    }
    let mut failures = Vec::new();
    for w in workers {
        match w.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(e),
            Err(_) => failures.push("a worker thread panicked".into()),
        }
    }
    if failures.is_empty() {
        println!("all {count} VMs served");
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

fn run(args: &Args, token: &CancelToken) -> Result<(), String> {
    if let Some(count) = args.supervise {
        return supervise(args, count, token);
    }
    let uuid = args.uuid.ok_or("--uuid is required")?;
    let mut builder = VmChannel::builder(&uuid)
        .regions(regions(args))
        .name(&args.name);
    if let Some(socket) = &args.doorbell {
        let mut server = VmOptions::new(socket);
        if let Some(group) = &args.socket_group {
            server = server.group_named(group).map_err(|e| e.to_string())?;
        }
        builder = builder.doorbell(server);
        println!("{uuid}: ivshmem server on {}", socket.display());
    }
    if args.incoming {
        let arrived = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGUSR1, arrived.clone())
            .map_err(|e| format!("cannot handle SIGUSR1: {e}"))?;
        println!("{uuid}: waiting for the guest to arrive by live migration (SIGUSR1)");
        builder = builder.incoming(Duration::from_secs(args.wait), arrived);
    }
    let mut vm = builder.open().map_err(|e| e.to_string())?;
    vm.set_cancel(Some(token.clone()));
    println!("region {}", vm.path().display());
    match (args.stream, &args.state) {
        (Some(count), Some(state)) => stream(&mut vm, count, state, args),
        _ => converse(&mut vm, args),
    }
    // `vm` is dropped here, on every path: the host side is marked closed.
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Packaging: generated from these definitions (`cargo xtask install-check`).
    if let Some(shell) = args.completions {
        generate::completions::<Args>("ivchan-host-agent", shell);
        return ExitCode::SUCCESS;
    }
    if args.man {
        generate::man::<Args>("ivchan-host-agent", None);
        return ExitCode::SUCCESS;
    }
    args.verbosity.init();
    let token = match cancel_on_signals() {
        Ok(token) => token,
        Err(e) => {
            eprintln!("ivchan-host-agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = run(&args, &token);
    if token.is_cancelled() {
        eprintln!("ivchan-host-agent: interrupted; the host side is closed");
        return ExitCode::from(EXIT_INTERRUPTED);
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ivchan-host-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
