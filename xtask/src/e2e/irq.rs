//! Guest interrupts: scenarios where the guest agent sleeps on the
//! `ivshmem-doorbell`'s MSI-X vector (ivchan's guest driver, or VFIO) and
//! the host rings it only when it asked (`WAKE_ME`).
//!
//! Each guest's init script samples the agent's CPU time from `/proc`
//! every second (`ivchan-cpu UPTIME RUN_NS SWITCHES IRQS` on the console); the
//! idle figure is the quietest 10 s window of the run, which falls in the
//! host agent's `--idle 10` phase.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{
    check_guest, echo_lines, region_for, totals, wait_for, Cleanup, HostAgent, Kit, Outcome,
};
use crate::vm::{self, Guest};
use crate::{cargo, run, target_dir};

/// Shell lines that start the guest agent with `agent_args`, sample its
/// CPU each second while it runs, and report its exit status and the
/// device's interrupt count.
fn agent_script(agent_args: &str) -> String {
    format!(
        "/bin/ivchan-guest-agent --wait 300 --dir /tmp {agent_args} &\n\
         pid=$!\n\
         (while [ -d /proc/$pid ]; do \
           echo \"ivchan-cpu $(cut -d' ' -f1 /proc/uptime) $(cut -d' ' -f1 /proc/$pid/schedstat 2>/dev/null) \
$(grep '^voluntary_ctxt_switches' /proc/$pid/status 2>/dev/null | tr -dc 0-9) \
$(grep -iE 'ivshmem|vfio' /proc/interrupts | head -1 | tr -s ' ' | cut -d' ' -f3)\"; \
           sleep 1; done) &\n\
         wait $pid\n\
         echo \"ivchan-vm: agent exit $?\"\n\
         grep -iE 'ivshmem|vfio' /proc/interrupts | tr -s ' ' | sed 's/^/ivchan-irq /'\n"
    )
}

/// The initramfs for the driver route: the module is loaded before the
/// agent starts and unloaded after it exits.
fn driver_initrd(kit: &Kit, name: &str, agent_args: &str) -> Result<PathBuf, String> {
    let module = vm::guest_driver(&kit.kernel)?;
    let script = format!(
        "insmod /lib/ivshmem_doorbell.ko && echo 'ivchan-vm: driver loaded'\n\
         ls /sys/bus/pci/devices/*/misc/ 2>/dev/null | sed 's/^/ivchan-vm: misc /'\n\
         /bin/ivchan-guest inspect 2>&1 | grep 'wakes by' | sed 's/^/ivchan-vm: inspect /'\n\
         {}\
         rmmod ivshmem_doorbell && echo 'ivchan-vm: driver unloaded'\n",
        agent_script(agent_args)
    );
    vm::initramfs_with(
        name,
        &kit.agent,
        &[
            (module, "/lib/ivshmem_doorbell.ko".to_owned()),
            (static_guest_cli(), "/bin/ivchan-guest".to_owned()),
        ],
        &script,
    )
}

/// `ivchan-guest` (the guest's inspection tool), static like the agent.
fn static_guest_cli() -> PathBuf {
    run(cargo()
        .args(["build", "--release", "--target", "x86_64-unknown-linux-gnu"])
        .args(["-p", "ivchan-cli", "--bin", "ivchan-guest"])
        .env("RUSTFLAGS", "-C target-feature=+crt-static"));
    target_dir().join("x86_64-unknown-linux-gnu/release/ivchan-guest")
}

/// Agent CPU over the quietest 10 s window: (milliseconds, wake-ups).
fn idle_cpu(console: &str) -> Option<(f64, u64)> {
    let samples: Vec<(f64, u64, u64)> = console
        .lines()
        .filter_map(|l| l.split("ivchan-cpu ").nth(1))
        .filter_map(|rest| {
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((
                f.first()?.parse().ok()?,
                f.get(1)?.parse().ok()?,
                f.get(2)?.parse().ok()?,
            ))
        })
        .collect();
    let mut best: Option<(f64, u64)> = None;
    for (i, a) in samples.iter().enumerate() {
        let Some(b) = samples[i..].iter().find(|b| b.0 - a.0 >= 10.0) else {
            break;
        };
        // Scale to exactly 10 s (samples are about a second apart).
        let scale = 10.0 / (b.0 - a.0);
        let ms = (b.1.saturating_sub(a.1)) as f64 / 1e6 * scale;
        let wakes = (b.2.saturating_sub(a.2) as f64 * scale) as u64;
        if best.is_none_or(|(m, _)| ms < m) {
            best = Some((ms, wakes));
        }
    }
    best
}

/// One doorbell guest against a host agent: exchange, echo, ping, 10 s
/// idle. Returns the host agent's output and the guest's console.
fn run_doorbell_guest(
    kit: &Kit,
    name: &str,
    uuid: &str,
    initrd: &Path,
    machine: &[String],
    ping: u64,
) -> Result<(String, String), String> {
    let region = region_for(uuid);
    let socket = vm::cache_dir().join(format!("{name}.sock"));
    let _cleanup = Cleanup(vec![region.clone(), socket.clone()]);
    let socket_arg = socket.to_string_lossy().into_owned();
    let ping = ping.to_string();
    let mut host = HostAgent::spawn(
        kit,
        name,
        &[
            "--uuid",
            uuid,
            "--doorbell",
            &socket_arg,
            "--exchange",
            "2000",
            "--echo",
            "100",
            "--ping",
            &ping,
            "--idle",
            "12",
            "--wait",
            "240",
        ],
    )?;
    wait_for("the doorbell socket", Duration::from_secs(10), || {
        socket.exists()
    })?;
    let mut args = machine.to_vec();
    args.extend([
        "-uuid".to_owned(),
        uuid.to_owned(),
        "-chardev".to_owned(),
        format!("socket,path={},id=ivshmem", socket.display()),
        "-device".to_owned(),
        format!(
            "ivshmem-doorbell,chardev=ivshmem,vectors=1,{}",
            pci_place(machine)
        ),
    ]);
    let mut guest = Guest::boot(name, &kit.kernel, initrd, &args)?;
    let out = host
        .finish_unless(Duration::from_secs(600), || guest.died())
        .map_err(|e| super::with_console(e, &guest))?;
    check_guest(&mut guest, "0000:00:")?;
    Ok((out, guest.console()))
}

/// Where the device goes: slot 0x1f of pc's root bus, or a q35 root port.
fn pci_place(machine: &[String]) -> &'static str {
    if machine.iter().any(|a| a.starts_with("q35")) {
        "bus=pcie.0,addr=0x5"
    } else {
        "bus=pci.0,addr=0x1f"
    }
}

/// The device's interrupt count in `/proc/interrupts`: the last line
/// printed after the agent exited (the driver's), or the most sampled while
/// it ran (VFIO's line goes when the agent closes the device).
fn interrupts(console: &str) -> u64 {
    let after = console
        .lines()
        .filter_map(|l| l.split("ivchan-irq ").nth(1))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok());
    let during = console
        .lines()
        .filter_map(|l| l.split("ivchan-cpu ").nth(1))
        .filter_map(|l| l.split_whitespace().nth(3)?.parse::<u64>().ok());
    after.chain(during).max().unwrap_or(0)
}

/// The interrupts the guest agent says woke it ("woken by N interrupts").
fn agent_interrupts(console: &str) -> u64 {
    console
        .lines()
        .filter_map(|l| l.split("woken by ").nth(1))
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .max()
        .unwrap_or(0)
}

fn must_contain(console: &str, needles: &[&str]) -> Result<(), String> {
    for needle in needles {
        if !console.contains(needle) {
            let tail: Vec<&str> = console.lines().rev().take(30).collect();
            return Err(format!(
                "guest console lacks {needle:?}; tail:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
    }
    Ok(())
}

fn report(label: &str, out: &str, console: &str) {
    echo_lines(out, &["ping", "idle"]);
    match idle_cpu(console) {
        Some((ms, wakes)) => {
            eprintln!("xtask:   {label}: guest agent idle 10 s: cpu {ms:.1} ms, {wakes} wake-ups")
        }
        None => eprintln!("xtask:   {label}: no guest CPU samples"),
    }
}

/// 13. The driver route: ivchan's guest driver, built against the guest
///     kernel's headers, is loaded in the initramfs; the guest agent sleeps
///     on `/dev/ivshmemN` (forced: no fallback), the host on its eventfd.
///     Then the same conversation with a polling guest, side by side: idle
///     CPU of the guest agent from its `/proc`, and the ping round trip.
///     The module unloads cleanly afterwards.
pub(super) fn doorbell_driver(kit: &Kit) -> Result<Outcome, String> {
    let initrd = driver_initrd(kit, "irq-driver", "--wake driver")?;
    let (out, console) = run_doorbell_guest(
        kit,
        "irq-driver",
        "5b7e6a0c-1d2e-4f3a-9b8c-00000000e213",
        &initrd,
        &[],
        10_000,
    )?;
    must_contain(
        &console,
        &[
            "ivchan-vm: driver loaded",
            "ivchan-vm: inspect wakes by  driver (bound to ivshmem_doorbell)",
            // IVPosition read through the driver's mapping of BAR0.
            "waits for the host's messages by driver, as doorbell peer 0",
            "ivchan-vm: driver unloaded",
        ],
    )?;
    let irqs = interrupts(&console);
    if irqs == 0 {
        return Err(format!(
            "no ivshmem interrupt counted in /proc/interrupts:\n{console}"
        ));
    }
    eprintln!("xtask:   driver route: {irqs} interrupts taken");
    report("driver", &out, &console);
    let mut outcome = totals(&out);

    let initrd = vm::initramfs_with(
        "irq-polling",
        &kit.agent,
        &[],
        &agent_script("--wake polling"),
    )?;
    let (out, console) = run_doorbell_guest(
        kit,
        "irq-polling",
        "5b7e6a0c-1d2e-4f3a-9b8c-00000000e214",
        &initrd,
        &[],
        10_000,
    )?;
    must_contain(&console, &["waits for the host's messages by polling"])?;
    report("polling", &out, &console);
    let more = totals(&out);
    outcome.to_guest_msgs += more.to_guest_msgs;
    outcome.to_guest_bytes += more.to_guest_bytes;
    outcome.from_guest_msgs += more.from_guest_msgs;
    outcome.from_guest_bytes += more.from_guest_bytes;
    Ok(outcome)
}

/// The VFIO modules of the guest kernel, in load order (`irqbypass` must
/// precede `vfio-pci-core`).
const VFIO_MODULES: &[&str] = &[
    "kernel/virt/lib/irqbypass.ko",
    "kernel/drivers/vfio/vfio.ko",
    "kernel/drivers/vfio/vfio_iommu_type1.ko",
    "kernel/drivers/vfio/vfio_virqfd.ko",
    "kernel/drivers/vfio/pci/vfio-pci-core.ko",
    "kernel/drivers/vfio/pci/vfio-pci.ko",
];

/// The initramfs for the VFIO route: the guest kernel's VFIO modules are
/// loaded before the agent starts.
fn vfio_initrd(kit: &Kit, name: &str, agent_args: &str) -> Result<PathBuf, String> {
    let mut files = Vec::new();
    let mut load = String::new();
    for module in VFIO_MODULES {
        let path = vm::kernel_module(&kit.kernel, module)?;
        let file = Path::new(module)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("module.ko")
            .to_owned();
        load.push_str(&format!(
            "insmod /lib/{file} || echo 'ivchan-vm: insmod {file} failed'\n"
        ));
        files.push((path, format!("/lib/{file}")));
    }
    let script = format!(
        "{load}echo 'ivchan-vm: vfio loaded'\n\
         ls /sys/kernel/iommu_groups | sed 's/^/ivchan-vm: iommu group /'\n\
         {}",
        agent_script(agent_args)
    );
    vm::initramfs_with(name, &kit.agent, &files, &script)
}

/// q35 with an emulated Intel IOMMU (interrupt remapping on) and the
/// guest kernel told to use it: the machine VFIO needs, since Debian's
/// kernels have no VFIO no-IOMMU mode.
fn q35_iommu() -> Vec<String> {
    [
        "-machine",
        "q35",
        "-device",
        "intel-iommu,intremap=on",
        "-append",
        // no_timer_check: on a loaded host the kernel's boot-time check of
        // the timer through the remapped IO-APIC can time out under TCG
        // and panic ("timer doesn't work through Interrupt-remapped IO-APIC").
        "console=ttyS0 quiet panic=-1 intel_iommu=on no_timer_check",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// 14. The VFIO route (q35 + intel-iommu): the guest crate binds the
///     device to vfio-pci, maps its BARs through VFIO, sets bus mastering
///     and sleeps on MSI-X vector 0's eventfd (forced: no fallback).
pub(super) fn doorbell_vfio(kit: &Kit) -> Result<Outcome, String> {
    let initrd = vfio_initrd(kit, "irq-vfio", "--wake vfio")?;
    let (out, console) = run_doorbell_guest(
        kit,
        "irq-vfio",
        "5b7e6a0c-1d2e-4f3a-9b8c-00000000e215",
        &initrd,
        &q35_iommu(),
        10_000,
    )?;
    must_contain(
        &console,
        &[
            "ivchan-vm: vfio loaded",
            // IVPosition read through VFIO's mapping of BAR0.
            "waits for the host's messages by vfio, as doorbell peer 0",
        ],
    )?;
    // The vfio-msix line exists only while the agent holds the device, so
    // /proc/interrupts is sampled during the run; a wake that lands after
    // the last sample (the final message) is counted by the agent's reads
    // of the eventfd, which only the kernel's MSI-X handler signals.
    let irqs = interrupts(&console);
    let wakes = agent_interrupts(&console);
    eprintln!(
        "xtask:   vfio route: {irqs} interrupts sampled on the vfio-msix line, \
         {wakes} eventfd wakes counted by the agent"
    );
    if irqs == 0 && wakes == 0 {
        return Err(format!(
            "no vfio-msix interrupt counted in /proc/interrupts or by the agent:\n{console}"
        ));
    }
    report("vfio", &out, &console);
    Ok(totals(&out))
}

/// Runs `ivchan-wake-bench` against one doorbell guest; returns its output
/// and the guest's console.
fn run_wake_bench(
    name: &str,
    uuid: &str,
    initrd: &Path,
    kit: &Kit,
    machine: &[String],
    rounds: u64,
) -> Result<(String, String), String> {
    let region = region_for(uuid);
    let socket = vm::cache_dir().join(format!("{name}.sock"));
    let _cleanup = Cleanup(vec![region.clone(), socket.clone()]);
    let log = vm::cache_dir().join(format!("{name}.host.log"));
    let out = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    let bench = target_dir().join("release/ivchan-wake-bench");
    let child = std::process::Command::new(&bench)
        .args(["--uuid", uuid, "--doorbell"])
        .arg(&socket)
        .args(["--rounds", &rounds.to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().map_err(|e| e.to_string())?)
        .stderr(out)
        .spawn()
        .map_err(|e| format!("{}: {e}", bench.display()))?;
    let mut host = HostAgent { child, log };
    wait_for("the doorbell socket", Duration::from_secs(10), || {
        socket.exists()
    })?;
    let mut args = machine.to_vec();
    args.extend([
        "-uuid".to_owned(),
        uuid.to_owned(),
        "-chardev".to_owned(),
        format!("socket,path={},id=ivshmem", socket.display()),
        "-device".to_owned(),
        format!(
            "ivshmem-doorbell,chardev=ivshmem,vectors=1,{}",
            pci_place(machine)
        ),
    ]);
    let mut guest = Guest::boot(name, &kit.kernel, initrd, &args)?;
    // A few milliseconds a round under TCG, with room to spare.
    let limit = Duration::from_secs(120 + rounds / 100);
    let out = host
        .finish_unless(limit, || guest.died())
        .map_err(|e| super::with_console(e, &guest))?;
    check_guest(&mut guest, "0000:00:")?;
    Ok((out, guest.console()))
}

/// 15. Wake-ups: rounds of one message sent only once the guest agent
///     sleeps (its `WAKE_ME` is set), through the driver, then against a
///     polling guest; round trip p50/p99, and no lost wake-up (a round
///     that waits out the guest's nap). `IVCHAN_WAKE_ROUNDS` sets the
///     rounds of the driver guest (default 10,000; the polling guest runs
///     10,000).
pub(super) fn wake(kit: &Kit) -> Result<Outcome, String> {
    run(cargo()
        .args(["build", "--release", "-p", "ivchan-examples"])
        .args(["--bin", "ivchan-wake-bench"]));
    let rounds = std::env::var("IVCHAN_WAKE_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10_000u64);
    let initrd = driver_initrd(kit, "wake-driver", "--wake driver")?;
    let (out, console) = run_wake_bench(
        "wake-driver",
        "5b7e6a0c-1d2e-4f3a-9b8c-00000000e216",
        &initrd,
        kit,
        &[],
        rounds,
    )?;
    must_contain(&console, &["waits for the host's messages by driver"])?;
    echo_lines(&out, &["wake "]);
    echo_lines(&console, &["woken by"]);
    let irqs = interrupts(&console);
    check_rings(&out, irqs, "took", "interrupts")?;
    let initrd = vm::initramfs_with(
        "wake-polling",
        &kit.agent,
        &[],
        &agent_script("--wake polling"),
    )?;
    let (out, _) = run_wake_bench(
        "wake-polling",
        "5b7e6a0c-1d2e-4f3a-9b8c-00000000e217",
        &initrd,
        kit,
        &[],
        10_000,
    )?;
    echo_lines(&out, &["wake "]);
    Ok(Outcome {
        to_guest_msgs: rounds + 10_000,
        to_guest_bytes: 64 * (rounds + 10_000),
        from_guest_msgs: rounds + 10_000,
        from_guest_bytes: 64 * (rounds + 10_000),
    })
}

/// Checks a wake bench's rings against what the guest received.
///
/// No lost wake-up, the protocol's promise: the host rang at least once
/// for every round it published while the guest had asked to be woken.
/// Delivery: each ring is one eventfd write and, normally, one MSI-X
/// interrupt; two writes before QEMU's main loop reads the eventfd merge
/// into one (seen 4 times in 975,853 rings with the host's load average
/// at 10), and the guest's bounded nap covers that round. A route that
/// drops interrupts (bus mastering off) loses them all, so a shortfall
/// of more than one in a thousand fails.
fn check_rings(out: &str, received: u64, verb: &str, what: &str) -> Result<(), String> {
    let asleep = number_before(out, ", host rang").ok_or("the bench did not report its rounds")?;
    let rings = number_before(out, " times:").ok_or("the bench did not report its rings")?;
    eprintln!(
        "xtask:   guest asleep at {asleep} publishes; host rang {rings} times; guest {verb} {received} {what}"
    );
    if rings < asleep {
        return Err(format!(
            "lost wake-up: the guest was asleep at {asleep} publishes but the host rang {rings} times"
        ));
    }
    if received < rings - rings / 1000 {
        return Err(format!(
            "host rang {rings} times but the guest {verb} only {received} {what}"
        ));
    }
    Ok(())
}

/// The number just before `marker` in `text` (`rang 42 times:` -> 42).
fn number_before(text: &str, marker: &str) -> Option<u64> {
    let head = &text[..text.find(marker)?];
    head.rsplit(' ').next()?.parse().ok()
}

/// 16. The driver survives hot-unplug: a reader blocks in `read` on
///     `/dev/ivshmem0`, the device is removed through QEMU's monitor
///     (`device_del`, ACPI eject), the reader gets an error instead of
///     hanging, and the module still unloads cleanly.
pub(super) fn driver_unplug(kit: &Kit) -> Result<Outcome, String> {
    let module = vm::guest_driver(&kit.kernel)?;
    let script = "insmod /lib/ivshmem_doorbell.ko && echo 'ivchan-vm: driver loaded'\n\
         (dd if=/dev/ivshmem0 of=/dev/null bs=4 count=1 2>/tmp/dd.err; \
          echo \"ivchan-vm: reader returned $? $(head -1 /tmp/dd.err)\") &\n\
         sleep 1\n\
         echo 'ivchan-vm: reader waiting'\n\
         n=0; while [ -e /sys/bus/pci/devices/0000:00:1f.0 ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n+1)); done\n\
         echo 'ivchan-vm: device gone'\n\
         wait\n\
         rmmod ivshmem_doorbell && echo 'ivchan-vm: driver unloaded'\n\
         dmesg | grep -iE 'ivshmem|BUG|WARNING|Oops' | sed 's/^/ivchan-dmesg /'\n";
    let initrd = vm::initramfs_with(
        "irq-unplug",
        &kit.agent,
        &[(module, "/lib/ivshmem_doorbell.ko".to_owned())],
        script,
    )?;
    let uuid = "5b7e6a0c-1d2e-4f3a-9b8c-00000000e218";
    let region = region_for(uuid);
    let socket = vm::cache_dir().join("irq-unplug.sock");
    let monitor = vm::cache_dir().join("irq-unplug.monitor");
    let _cleanup = Cleanup(vec![region.clone(), socket.clone(), monitor.clone()]);
    let socket_arg = socket.to_string_lossy().into_owned();
    // Only the ivshmem server is wanted: no guest agent runs.
    let _host = HostAgent::spawn(
        kit,
        "irq-unplug",
        &["--uuid", uuid, "--doorbell", &socket_arg, "--wait", "120"],
    )?;
    wait_for("the doorbell socket", Duration::from_secs(10), || {
        socket.exists()
    })?;
    let args = [
        "-uuid".to_owned(),
        uuid.to_owned(),
        "-monitor".to_owned(),
        format!("unix:{},server=on,wait=off", monitor.display()),
        "-chardev".to_owned(),
        format!("socket,path={},id=ivshmem", socket.display()),
        "-device".to_owned(),
        "ivshmem-doorbell,id=ivs0,chardev=ivshmem,vectors=1,bus=pci.0,addr=0x1f".to_owned(),
    ];
    let mut guest = Guest::boot("irq-unplug", &kit.kernel, &initrd, &args)?;
    wait_for("the reader", Duration::from_secs(120), || {
        guest.console().contains("ivchan-vm: reader waiting")
    })
    .map_err(|e| format!("{e}; console:\n{}", guest.console_tail(20)))?;
    {
        use std::io::Write;
        let mut mon = std::os::unix::net::UnixStream::connect(&monitor)
            .map_err(|e| format!("{}: {e}", monitor.display()))?;
        mon.write_all(b"device_del ivs0\n")
            .map_err(|e| format!("monitor: {e}"))?;
        std::thread::sleep(Duration::from_millis(500));
    }
    guest.wait(Duration::from_secs(120))?;
    let console = guest.console();
    must_contain(
        &console,
        &[
            "ivchan-vm: device gone",
            "ivchan-vm: reader returned 1",
            "ivchan-vm: driver unloaded",
        ],
    )?;
    for bad in ["BUG", "WARNING", "Oops"] {
        if console
            .lines()
            .any(|l| l.starts_with("ivchan-dmesg") && l.contains(bad))
        {
            return Err(format!("the kernel logged {bad}:\n{console}"));
        }
    }
    echo_lines(&console, &["reader returned", "ivchan-dmesg"]);
    Ok(Outcome::default())
}

/// 17. Wake-ups through VFIO (q35 + intel-iommu): as `wake`, 10,000 rounds
///     sent once the guest sleeps on MSI-X vector 0's eventfd; every ring
///     must end one of the guest's sleeps.
pub(super) fn wake_vfio(kit: &Kit) -> Result<Outcome, String> {
    run(cargo()
        .args(["build", "--release", "-p", "ivchan-examples"])
        .args(["--bin", "ivchan-wake-bench"]));
    let rounds = 10_000;
    let initrd = vfio_initrd(kit, "wake-vfio", "--wake vfio")?;
    let (out, console) = run_wake_bench(
        "wake-vfio",
        "5b7e6a0c-1d2e-4f3a-9b8c-00000000e219",
        &initrd,
        kit,
        &q35_iommu(),
        rounds,
    )?;
    must_contain(&console, &["waits for the host's messages by vfio"])?;
    echo_lines(&out, &["wake "]);
    echo_lines(&console, &["woken by"]);
    // VFIO's /proc/interrupts line leaves with the agent, so the guest's
    // own count of sleeps ended by its eventfd stands in for it.
    let woken = console
        .split("woken by ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next()?.parse::<u64>().ok())
        .ok_or("the guest agent did not report its wake-ups")?;
    check_rings(&out, woken, "ended", "sleeps on its eventfd")?;
    Ok(Outcome {
        to_guest_msgs: rounds,
        to_guest_bytes: 64 * rounds,
        from_guest_msgs: rounds,
        from_guest_bytes: 64 * rounds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_cpu_is_the_quietest_ten_seconds_scaled() {
        // Busy for the first 2 s, then 1 ms and 10 wake-ups a second.
        let mut console = String::from("ivchan-vm: guest up\n");
        let mut ns = 0u64;
        let mut switches = 0u64;
        for t in 0..15u64 {
            console.push_str(&format!("ivchan-cpu {t}.00 {ns} {switches} 3\n"));
            ns += if t < 2 { 500_000_000 } else { 1_000_000 };
            switches += if t < 2 { 5_000 } else { 10 };
        }
        let (ms, wakes) = idle_cpu(&console).unwrap();
        assert!((ms - 10.0).abs() < 1e-9, "{ms}");
        assert_eq!(wakes, 100);
        assert_eq!(idle_cpu("ivchan-cpu 1.00 5 5 0\n"), None);
    }

    #[test]
    fn interrupts_take_the_count_after_exit_or_the_most_sampled() {
        let driver =
            "ivchan-cpu 1.0 10 1 4\nivchan-irq  24: 9 PCI-MSI 507904-edge ivshmem_doorbell\n";
        assert_eq!(interrupts(driver), 9);
        let vfio = "ivchan-cpu 1.0 10 1 4\nivchan-cpu 2.0 10 1 7\nivchan-cpu 3.0 10 1\n";
        assert_eq!(interrupts(vfio), 7);
        assert_eq!(interrupts("nothing"), 0);
        let agent = "ivchan-guest-agent: woken by 3 interrupts, 117 sleeps timed out\n";
        assert_eq!(agent_interrupts(agent), 3);
        assert_eq!(agent_interrupts(vfio), 0);
    }

    #[test]
    fn the_bench_reports_its_rings() {
        let out = "U: wake 10 rounds in 1.0 s, guest asleep at 9, host rang 9 times: p50 1ms";
        assert_eq!(number_before(out, " times:"), Some(9));
        assert_eq!(number_before(out, ", host rang"), Some(9));
        assert_eq!(number_before("no rings", " times:"), None);
        assert!(check_rings(out, 9, "took", "interrupts").is_ok());
        assert!(check_rings(out, 0, "took", "interrupts").is_err());
        let lost = "U: wake 10 rounds in 1.0 s, guest asleep at 9, host rang 8 times: p50 1ms";
        assert!(check_rings(lost, 8, "took", "interrupts").is_err());
    }
}
