//! `cargo xtask e2e`: ivchan's host and guest agents through real QEMU
//! guests (TCG), with the device given by ivchan's own tooling.
//!
//! Every scenario boots guests whose initramfs runs the static
//! `ivchan-guest-agent` (the example agent users get; `c-agent` runs the C
//! example agent instead) and drives them with
//! `ivchan-host-agent`, which checks every message it receives and exits
//! non-zero on any mismatch. The run ends with a table: one row per
//! scenario with the result, messages and bytes each way, and time. A
//! failure prints the guest's console tail.
//!
//! `cargo xtask e2e [NAME…]` runs the scenarios whose names contain one of
//! the words; `cargo xtask smoke` runs `raw-qemu` alone.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ivchan_protocol::naming::{self, RegionSize};
use ivchan_protocol::VmUuid;

use crate::libvirt::{self, Domain};
use crate::vm::{self, Guest};
use crate::{cargo, packages, project_root, run, step};

mod irq;

/// What one scenario did.
#[derive(Debug, Default, Clone)]
struct Outcome {
    to_guest_msgs: u64,
    to_guest_bytes: u64,
    from_guest_msgs: u64,
    from_guest_bytes: u64,
}

/// Everything the scenarios need, built once.
struct Kit {
    kernel: PathBuf,
    initrd: PathBuf,
    agent: PathBuf,
    host_agent: PathBuf,
    ivchan: PathBuf,
    wrapper: PathBuf,
    provision: PathBuf,
}

/// Removes files and directories when a scenario ends, however it ends.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            if p.is_dir() {
                let _ = fs::remove_dir_all(p);
            } else {
                let _ = fs::remove_file(p);
            }
        }
    }
}

/// A host agent process whose output goes to a file.
struct HostAgent {
    child: Child,
    log: PathBuf,
}

impl HostAgent {
    fn spawn(kit: &Kit, name: &str, args: &[&str]) -> Result<Self, String> {
        let log = vm::cache_dir().join(format!("{name}.host.log"));
        let out = fs::File::create(&log).map_err(|e| e.to_string())?;
        let child = Command::new(&kit.host_agent)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().map_err(|e| e.to_string())?)
            .stderr(out)
            .spawn()
            .map_err(|e| format!("{}: {e}", kit.host_agent.display()))?;
        Ok(Self { child, log })
    }

    fn output(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the agent to finish; `Err` with its output on failure.
    fn finish(&mut self, timeout: Duration) -> Result<String, String> {
        self.finish_unless(timeout, || None)
    }

    /// As `finish`, but gives up early when `broken` reports a reason (a
    /// guest whose QEMU died, so the agent would only wait out its timeout).
    fn finish_unless(
        &mut self,
        timeout: Duration,
        mut broken: impl FnMut() -> Option<String>,
    ) -> Result<String, String> {
        let start = Instant::now();
        loop {
            if let Some(reason) = broken() {
                self.kill();
                return Err(format!("{reason}\nhost agent output:\n{}", self.output()));
            }
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                let out = self.output();
                return if status.success() {
                    Ok(out)
                } else {
                    Err(format!("host agent failed ({status}):\n{out}"))
                };
            }
            if start.elapsed() > timeout {
                self.kill();
                return Err(format!(
                    "host agent still running after {timeout:?}:\n{}",
                    self.output()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for HostAgent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sums the host agent's `totals` lines.
fn totals(output: &str) -> Outcome {
    let mut o = Outcome::default();
    for line in output.lines() {
        let Some(rest) = line.split("totals ").nth(1) else {
            continue;
        };
        let n: Vec<u64> = rest
            .split(|c: char| !c.is_ascii_digit())
            .filter(|w| !w.is_empty())
            .filter_map(|w| w.parse().ok())
            .collect();
        if let [a, b, c, d] = n[..] {
            o.to_guest_msgs += a;
            o.to_guest_bytes += b;
            o.from_guest_msgs += c;
            o.from_guest_bytes += d;
        }
    }
    o
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Result<(), String> {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > timeout {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Waits for a guest to power off and checks its agent exited cleanly and
/// used the expected device.
fn check_guest(guest: &mut Guest, device: &str) -> Result<(), String> {
    guest.wait(Duration::from_secs(120))?;
    let console = guest.console();
    if !console.contains("ivchan-vm: agent exit 0") {
        return Err(format!(
            "guest agent failed; console:\n{}",
            guest.console_tail(25)
        ));
    }
    let attached = format!("attached to {device}");
    if !console.contains(&attached) {
        return Err(format!(
            "guest agent did not use {device}; console:\n{}",
            guest.console_tail(25)
        ));
    }
    Ok(())
}

/// A scenario's UUID (a literal in this file) as ivchan reads it.
fn vm_uuid(uuid: &str) -> VmUuid {
    uuid.parse()
        .unwrap_or_else(|e| panic!("scenario UUID {uuid:?}: {e}"))
}

/// Where the host agent and QEMU put VM `uuid`'s region.
fn region_for(uuid: &str) -> PathBuf {
    naming::default_region_path(&vm_uuid(uuid))
}

/// 1. The device comes from the QEMU wrapper's arguments; the guest agent
///    finds 0000:00:1f.0 by identity and exchanges 10,000 messages each way.
fn raw_qemu(kit: &Kit) -> Result<Outcome, String> {
    let uuid = "5b7e6a0c-1d2e-4f3a-9b8c-00000000e201";
    let region = region_for(uuid);
    let payload = vm::cache_dir().join("raw-payload.bin");
    let _cleanup = Cleanup(vec![region.clone(), payload.clone()]);
    vm::payload_file(&payload, 4 << 20)?;
    let payload_arg = payload.to_string_lossy().into_owned();
    let mut host = HostAgent::spawn(
        kit,
        "raw-qemu",
        &[
            "--uuid",
            uuid,
            "--exchange",
            "10000",
            "--echo",
            "500",
            "--file",
            &payload_arg,
            "--wait",
            "240",
        ],
    )?;
    wait_for("the region", Duration::from_secs(10), || region.exists())?;
    let mut guest = Guest::boot_with(
        "raw-qemu",
        &kit.wrapper,
        &[("IVCHAN_REAL_QEMU", "/usr/bin/qemu-system-x86_64")],
        &kit.kernel,
        &kit.initrd,
        &["-uuid".into(), uuid.into()],
    )?;
    let out = host
        .finish_unless(Duration::from_secs(300), || guest.died())
        .map_err(|e| with_console(e, &guest))?;
    check_guest(&mut guest, "0000:00:1f.0")?;
    Ok(totals(&out))
}

/// Builds the C example guest agent (`capi/examples/guest_agent.c`)
/// static against `libivchan.a`, with the system compiler, for the
/// busybox initramfs; returns its path.
fn static_c_guest_agent() -> Result<PathBuf, String> {
    run(cargo().args(["build", "--release", "-p", "ivchan-c", "--lib"]));
    let root = project_root();
    let agent = vm::cache_dir().join("guest_agent_c");
    let out = Command::new("cc")
        .args(["-static", "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror"])
        .arg("-I")
        .arg(root.join("capi/include"))
        .arg(root.join("capi/examples/guest_agent.c"))
        .arg(crate::target_dir().join("release/libivchan.a"))
        .args(["-lutil", "-lrt", "-lpthread", "-lm", "-ldl", "-o"])
        .arg(&agent)
        .output()
        .map_err(|e| format!("cc (install gcc): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cc guest_agent.c: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(agent)
}

/// 1b. As `raw-qemu`, with the C example guest agent (libivchan, linked
///     static) in the guest: it finds the device by identity and completes
///     the host agent's checked exchange and echo.
fn c_agent(kit: &Kit) -> Result<Outcome, String> {
    let uuid = "5b7e6a0c-1d2e-4f3a-9b8c-00000000e20c";
    let region = region_for(uuid);
    let _cleanup = Cleanup(vec![region.clone()]);
    let agent = static_c_guest_agent()?;
    let initrd = vm::initramfs(
        "e2e-c",
        &agent,
        "/bin/ivchan-guest-agent --wait 300
echo \"ivchan-vm: agent exit $?\"",
    )?;
    let mut host = HostAgent::spawn(
        kit,
        "c-agent",
        &[
            "--uuid",
            uuid,
            "--exchange",
            "10000",
            "--echo",
            "500",
            "--wait",
            "240",
        ],
    )?;
    wait_for("the region", Duration::from_secs(10), || region.exists())?;
    let mut guest = Guest::boot_with(
        "c-agent",
        &kit.wrapper,
        &[("IVCHAN_REAL_QEMU", "/usr/bin/qemu-system-x86_64")],
        &kit.kernel,
        &initrd,
        &["-uuid".into(), uuid.into()],
    )?;
    let out = host
        .finish_unless(Duration::from_secs(300), || guest.died())
        .map_err(|e| with_console(e, &guest))?;
    guest.wait(Duration::from_secs(120))?;
    let console = guest.console();
    for want in [
        "guest_agent: attached",
        "guest_agent: exchange 10000 checked",
        "guest_agent: echo 500 checked",
        "ivchan-vm: agent exit 0",
    ] {
        if !console.contains(want) {
            return Err(format!(
                "no {want:?} on the guest's console:\n{}",
                guest.console_tail(25)
            ));
        }
    }
    Ok(totals(&out))
}

fn with_console(e: String, guest: &Guest) -> String {
    format!("{e}\nguest console:\n{}", guest.console_tail(25))
}

/// Waits for the region file QEMU creates, at its full size.
fn wait_for_region(region: &Path, size: RegionSize) -> Result<(), String> {
    wait_for(
        "QEMU to create and size the region",
        Duration::from_secs(60),
        || fs::metadata(region).is_ok_and(|m| m.len() == size.bytes()),
    )
}

/// Runs the host agent against a libvirt domain's region (QEMU, running as
/// `libvirt-qemu`, owns the file) and checks the guest's side: its agent
/// attached to the device at 0000:00:1f.0 (i440fx).
fn serve_libvirt_guest(kit: &Kit, dom: &Domain, uuid: &str) -> Result<Outcome, String> {
    serve_libvirt_guest_at(
        kit,
        dom,
        uuid,
        RegionSize::DEFAULT,
        "attached to 0000:00:1f.0",
    )
}

/// As `serve_libvirt_guest`, the guest's console showing `attached`.
fn serve_libvirt_guest_at(
    kit: &Kit,
    dom: &Domain,
    uuid: &str,
    size: RegionSize,
    attached: &str,
) -> Result<Outcome, String> {
    let region = region_for(uuid);
    wait_for_region(&region, size).map_err(|e| {
        format!(
            "{e}
console:\n{}",
            dom.console()
        )
    })?;
    // No trust flags: QEMU's user (libvirt-qemu) is trusted by default.
    let mut host = HostAgent::spawn(
        kit,
        &dom.name,
        &[
            "--uuid",
            uuid,
            "--exchange",
            "10000",
            "--echo",
            "500",
            "--wait",
            "240",
        ],
    )?;
    let out = host
        .finish(Duration::from_secs(300))
        .map_err(|e| format!("{e}\nconsole:\n{}", dom.console()))?;
    dom.wait_shut_off(Duration::from_secs(120))?;
    let console = dom.console();
    if !console.contains("ivchan-vm: agent exit 0") || !console.contains(attached) {
        return Err(format!(
            "guest agent failed (or did not print {attached:?}); console:\n{console}"
        ));
    }
    Ok(totals(&out))
}

/// 2. ivchan injects `<shmem>` into a domain XML; a real libvirtd defines
///    and starts it; its QEMU command line carries the device.
fn libvirt_shmem(kit: &Kit) -> Result<Outcome, String> {
    libvirt::ensure()?;
    let uuid = "5b7e6a0c-1d2e-4f3a-9b8c-00000000e202";
    let _cleanup = Cleanup(vec![region_for(uuid)]);
    let dom = Domain::new(
        "ivchan-e2e-libvirt",
        uuid,
        &kit.kernel,
        &kit.initrd,
        &vm::cache_dir(),
    )?;
    run(Command::new(&kit.provision).arg("inject").arg(&dom.xml));
    dom.define_and_start()?;
    let cmdline = dom.qemu_cmdline()?;
    if !cmdline.contains("ivshmem-plain")
        || !cmdline.contains(&naming::region_file_name(&vm_uuid(uuid)))
    {
        return Err(format!("QEMU command line lacks the device: {cmdline}"));
    }
    serve_libvirt_guest(kit, &dom, uuid)
}

/// Removes the libvirt hook and restarts libvirtd without it, however the
/// hook scenario ends: the other scenarios expect QEMU to create regions.
struct HookInstalled(PathBuf);

impl HookInstalled {
    /// `ivchan-provision install-hook`, then restarts libvirtd so it sees
    /// the hook.
    fn install(kit: &Kit) -> Result<Self, String> {
        let installed = Command::new(&kit.provision)
            .args(["install-hook", "--force"])
            .output()
            .map_err(|e| format!("install-hook: {e}"))?;
        if !installed.status.success() {
            return Err(format!(
                "install-hook failed: {}",
                String::from_utf8_lossy(&installed.stderr)
            ));
        }
        let hook = HookInstalled(kit.provision.clone());
        libvirt::restart()?;
        Ok(hook)
    }
}

impl Drop for HookInstalled {
    fn drop(&mut self) {
        let _ = Command::new(&self.0).arg("uninstall-hook").status();
        if let Err(e) = libvirt::restart() {
            eprintln!("e2e: restarting libvirtd without the hook: {e}");
        }
    }
}

/// 2b. The operator's path through libvirt's hook: `ivchan-provision
///     install-hook` in a real libvirtd (restarted to see it); at the VM's
///     start the hook creates the region (0660, owned by libvirt-qemu) with
///     an ivchan header before QEMU maps it; the host agent attaches with no
///     extra flags, and the guest exchanges checked traffic.
fn libvirt_hook(kit: &Kit) -> Result<Outcome, String> {
    libvirt::ensure()?;
    let uuid = "5b7e6a0c-1d2e-4f3a-9b8c-00000000e20b";
    let region = region_for(uuid);
    let _cleanup = Cleanup(vec![region.clone()]);
    let _ = fs::remove_file(&region);
    let _hook = HookInstalled::install(kit)?;
    let dom = Domain::new(
        "ivchan-e2e-hook",
        uuid,
        &kit.kernel,
        &kit.initrd,
        &vm::cache_dir(),
    )?;
    run(Command::new(&kit.provision).arg("inject").arg(&dom.xml));
    dom.define_and_start()?;
    // The hook made the file before QEMU ran: its mode, owner and header
    // are the hook's (QEMU keeps an existing file as it is).
    let meta = fs::metadata(&region).map_err(|e| format!("{}: {e}", region.display()))?;
    use std::os::unix::fs::MetadataExt;
    let qemu = libvirt::qemu_uid()?;
    if meta.mode() & 0o777 != 0o660 || meta.uid() != qemu {
        return Err(format!(
            "{}: mode {:o} owner {}, expected the hook's 0660 and libvirt-qemu ({qemu})",
            region.display(),
            meta.mode() & 0o777,
            meta.uid()
        ));
    }
    let inspect = Command::new(&kit.ivchan)
        .arg("inspect")
        .arg(&region)
        .output()
        .map_err(|e| format!("ivchan inspect: {e}"))?;
    let report = String::from_utf8_lossy(&inspect.stdout);
    if !report.contains("name      \"ivchan\"") {
        return Err(format!(
            "{}: no header from the hook:\n{report}{}",
            region.display(),
            String::from_utf8_lossy(&inspect.stderr)
        ));
    }
    serve_libvirt_guest(kit, &dom, uuid)
}

/// 2c. The hook fails closed in a real libvirtd: a region file another user
///     planted at `/dev/shm/fg_<uuid>` before the VM's start (any local
///     user can create files there) makes `virsh start` fail with the
///     hook's reason in libvirt's error; the VM does not run and the file
///     is left as it was.
fn libvirt_hook_fails_closed(kit: &Kit) -> Result<Outcome, String> {
    libvirt::ensure()?;
    let uuid = "5b7e6a0c-1d2e-4f3a-9b8c-00000000e20c";
    let region = region_for(uuid);
    let _cleanup = Cleanup(vec![region.clone()]);
    let _hook = HookInstalled::install(kit)?;
    // The squatter: nobody's file, readable and writable by everyone.
    fs::write(&region, vec![0u8; RegionSize::DEFAULT.bytes() as usize])
        .map_err(|e| format!("{}: {e}", region.display()))?;
    run(Command::new("chown").arg("65534:65534").arg(&region));
    run(Command::new("chmod").arg("0666").arg(&region));
    let dom = Domain::new(
        "ivchan-e2e-hook-squatted",
        uuid,
        &kit.kernel,
        &kit.initrd,
        &vm::cache_dir(),
    )?;
    run(Command::new(&kit.provision).arg("inject").arg(&dom.xml));
    libvirt::virsh(&["define", &dom.xml.to_string_lossy()])?;
    let err = match libvirt::virsh(&["start", &dom.name]) {
        Ok(_) => return Err("libvirt started the VM over a squatted region file".into()),
        Err(e) => e,
    };
    if !err.contains("ivchan-provision hook: refusing to start the VM") {
        return Err(format!(
            "virsh start failed without the hook's reason: {err}"
        ));
    }
    eprintln!("xtask:   {err}");
    let state = libvirt::virsh(&["domstate", &dom.name])?;
    let meta = fs::metadata(&region).map_err(|e| e.to_string())?;
    use std::os::unix::fs::MetadataExt;
    if state.trim() != "shut off" || meta.uid() != 65534 || meta.mode() & 0o777 != 0o666 {
        return Err(format!(
            "after the refusal: state {state:?}, file owner {} mode {:o}",
            meta.uid(),
            meta.mode() & 0o777
        ));
    }
    Ok(Outcome::default())
}

/// 3. A running libvirt guest without the device gets it through ivchan's
///    live route (`attach-device --live`); the waiting guest agent finds it.
fn hotplug(kit: &Kit) -> Result<Outcome, String> {
    libvirt::ensure()?;
    let uuid = "5b7e6a0c-1d2e-4f3a-9b8c-00000000e203";
    let _cleanup = Cleanup(vec![region_for(uuid)]);
    let dom = Domain::new(
        "ivchan-e2e-hotplug",
        uuid,
        &kit.kernel,
        &kit.initrd,
        &vm::cache_dir(),
    )?;
    dom.define_and_start()?;
    wait_for("the guest to boot", Duration::from_secs(60), || {
        dom.console().contains("ivchan-vm: guest up")
    })?;
    if dom.qemu_cmdline()?.contains("ivshmem") {
        return Err("the domain has a device before the hotplug".into());
    }
    run(Command::new(&kit.provision).args(["hotplug", &dom.name]));
    serve_libvirt_guest(kit, &dom, uuid)
}

/// The guest's address of the device, as its agent reported it.
fn attached_address(console: &str) -> Option<&str> {
    let rest = console.split("attached to ").nth(1)?;
    rest.split_whitespace().next()
}

/// 9. q35: ivchan injects `<shmem>` into a q35 domain with no PCI
///    controllers; with no free `pcie-root-port` the tool adds one and puts
///    the device behind it; libvirt defines and starts it; the guest agent
///    finds the device there (not at 00:1f, the q35 chipset's slot).
fn libvirt_q35(kit: &Kit) -> Result<Outcome, String> {
    libvirt::ensure()?;
    let uuid = "5b7e6a0c-1d2e-4f3a-9b8c-00000000e209";
    let _cleanup = Cleanup(vec![region_for(uuid)]);
    let dom = Domain::with_machine(
        "ivchan-e2e-q35",
        uuid,
        "q35",
        &kit.kernel,
        &kit.initrd,
        &vm::cache_dir(),
    )?;
    let out = Command::new(&kit.provision)
        .arg("inject")
        .arg(&dom.xml)
        .output()
        .map_err(|e| e.to_string())?;
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() || !said.contains("pcie-root-port") {
        return Err(format!("inject on q35: {said}"));
    }
    eprintln!("xtask:   {}", said.trim());
    dom.define_and_start()?;
    let cmdline = dom.qemu_cmdline()?;
    if !cmdline.contains("ivshmem-plain") || !cmdline.contains("\"bus\":\"ua-ivchan-port\"") {
        return Err(format!(
            "QEMU command line lacks the device behind ivchan's port: {cmdline}"
        ));
    }
    let o = serve_libvirt_guest_at(kit, &dom, uuid, RegionSize::DEFAULT, "attached to 0000:")?;
    report_guest_address(&dom)?;
    Ok(o)
}

/// 10. q35 live: a running q35 guest (as libvirt defines it, with its
///     spare `pcie-root-port`) gets the device through `hotplug`, which
///     picks the free port; the waiting guest agent finds it. The region is
///     2 MiB: SeaBIOS reserves 2 MiB of prefetchable memory behind an empty
///     port, and a larger BAR hot-plugged there gets no space in the guest
///     (the tool warns about it).
fn hotplug_q35(kit: &Kit) -> Result<Outcome, String> {
    libvirt::ensure()?;
    let uuid = "5b7e6a0c-1d2e-4f3a-9b8c-00000000e20a";
    let _cleanup = Cleanup(vec![region_for(uuid)]);
    let dom = Domain::with_machine(
        "ivchan-e2e-hotplug-q35",
        uuid,
        "q35",
        &kit.kernel,
        &kit.initrd,
        &vm::cache_dir(),
    )?;
    dom.define_and_start()?;
    wait_for("the guest to boot", Duration::from_secs(60), || {
        dom.console().contains("ivchan-vm: guest up")
    })?;
    if dom.qemu_cmdline()?.contains("ivshmem") {
        return Err("the domain has a device before the hotplug".into());
    }
    let out = Command::new(&kit.provision)
        .args(["hotplug", &dom.name, "--size", "2M"])
        .output()
        .map_err(|e| e.to_string())?;
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(format!("hotplug on q35 failed: {said}"));
    }
    eprintln!("xtask:   {}", said.lines().next().unwrap_or_default());
    let size = "2M".parse::<RegionSize>().map_err(|e| e.to_string())?;
    let o = serve_libvirt_guest_at(kit, &dom, uuid, size, "attached to 0000:")?;
    report_guest_address(&dom)?;
    Ok(o)
}

/// Prints where the guest found the device, and fails if that is q35's
/// chipset slot 00:1f (where the device must not be).
fn report_guest_address(dom: &Domain) -> Result<(), String> {
    let console = dom.console();
    let at = attached_address(&console).unwrap_or("?");
    eprintln!("xtask:   the guest agent attached to {at}");
    if at.starts_with("0000:00:1f") {
        return Err(format!("device at the chipset's slot on q35: {at}"));
    }
    Ok(())
}

/// Lines of the host agent's output worth showing in the run's log.
fn echo_lines(out: &str, needles: &[&str]) {
    for line in out
        .lines()
        .filter(|l| needles.iter().any(|n| l.contains(n)))
    {
        eprintln!("xtask:   {line}");
    }
}

/// 7. Doorbells: QEMU's `ivshmem-doorbell` device connects to the host
///    agent's ivshmem server; the guest rings the host through BAR0, the
///    host sleeps on its eventfd when idle. Measures the 64 B round trip
///    and the host's CPU time over 10 s idle, against busy-polling.
fn doorbell(kit: &Kit) -> Result<Outcome, String> {
    let uuid = "5b7e6a0c-1d2e-4f3a-9b8c-00000000e207";
    let region = region_for(uuid);
    let socket = vm::cache_dir().join("doorbell.sock");
    let _cleanup = Cleanup(vec![region.clone(), socket.clone()]);
    let socket_arg = socket.to_string_lossy().into_owned();
    let mut host = HostAgent::spawn(
        kit,
        "doorbell",
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
            "10000",
            "--idle",
            "10",
            "--busy-idle",
            "10",
            "--wait",
            "240",
        ],
    )?;
    wait_for("the doorbell socket", Duration::from_secs(10), || {
        socket.exists()
    })?;
    let args = [
        "-uuid".to_owned(),
        uuid.to_owned(),
        "-chardev".to_owned(),
        format!("socket,path={},id=ivshmem", socket.display()),
        "-device".to_owned(),
        "ivshmem-doorbell,chardev=ivshmem,vectors=1,bus=pci.0,addr=0x1f".to_owned(),
    ];
    let mut guest = Guest::boot("doorbell", &kit.kernel, &kit.initrd, &args)?;
    let out = host
        .finish_unless(Duration::from_secs(400), || guest.died())
        .map_err(|e| with_console(e, &guest))?;
    check_guest(&mut guest, "0000:00:1f.0")?;
    for needle in ["sleeping on the doorbell", "guest peer"] {
        if !out.contains(needle) {
            return Err(format!("host agent output lacks {needle:?}:\n{out}"));
        }
    }
    echo_lines(&out, &["ping", "idle"]);
    Ok(totals(&out))
}

/// 8. Doorbells through libvirt: ivchan injects `<shmem>` with model
///    `ivshmem-doorbell` and `<server path>`; libvirt's QEMU connects to the
///    host agent's server.
fn doorbell_libvirt(kit: &Kit) -> Result<Outcome, String> {
    libvirt::ensure()?;
    let uuid = "5b7e6a0c-1d2e-4f3a-9b8c-00000000e208";
    let region = region_for(uuid);
    let dir = PathBuf::from("/var/lib/libvirt/ivchan-e2e");
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let socket = dir.join("doorbell.sock");
    let _cleanup = Cleanup(vec![region.clone(), socket.clone()]);
    let dom = Domain::new(
        "ivchan-e2e-doorbell",
        uuid,
        &kit.kernel,
        &kit.initrd,
        &vm::cache_dir(),
    )?;
    let socket_arg = socket.to_string_lossy().into_owned();
    run(Command::new(&kit.provision)
        .args([
            "inject",
            "--model",
            "ivshmem-doorbell",
            "--server",
            &socket_arg,
        ])
        .arg(&dom.xml));
    // The server must be listening before QEMU starts.
    let mut host = HostAgent::spawn(
        kit,
        &dom.name,
        &[
            "--uuid",
            uuid,
            "--doorbell",
            &socket_arg,
            "--socket-group",
            "libvirt-qemu",
            "--exchange",
            "2000",
            "--echo",
            "100",
            "--wait",
            "240",
        ],
    )?;
    wait_for("the doorbell socket", Duration::from_secs(10), || {
        socket.exists()
    })?;
    dom.define_and_start()?;
    let cmdline = dom.qemu_cmdline()?;
    if !cmdline.contains("ivshmem-doorbell") {
        return Err(format!(
            "QEMU command line lacks ivshmem-doorbell: {cmdline}"
        ));
    }
    let out = host
        .finish(Duration::from_secs(300))
        .map_err(|e| format!("{e}\nconsole:\n{}", dom.console()))?;
    dom.wait_shut_off(Duration::from_secs(120))?;
    let console = dom.console();
    if !console.contains("ivchan-vm: agent exit 0") || !out.contains("sleeping on the doorbell") {
        return Err(format!("doorbell run failed:\n{out}\nconsole:\n{console}"));
    }
    Ok(totals(&out))
}

/// 4. Two devices in one guest: another VM's region at a lower slot, this
///    VM's at 0x1f. The agent must pick by identity, not by order.
fn two_devices(kit: &Kit) -> Result<Outcome, String> {
    let uuid = "5b7e6a0c-1d2e-4f3a-9b8c-00000000e204";
    let other = "0f1e2d3c-4b5a-6978-8796-00000000e204";
    let (region, decoy) = (region_for(uuid), region_for(other));
    let _cleanup = Cleanup(vec![region.clone(), decoy.clone()]);
    run(Command::new(&kit.ivchan).args(["init", other, "--name", "other-vm"]));
    let mut host = HostAgent::spawn(
        kit,
        "two-devices",
        &["--uuid", uuid, "--exchange", "2000", "--echo", "100"],
    )?;
    wait_for("the region", Duration::from_secs(10), || region.exists())?;
    let mut args = vm::ivshmem_args(uuid, &decoy, RegionSize::DEFAULT, 0x05);
    args.extend(
        vm::ivshmem_args(uuid, &region, RegionSize::DEFAULT, 0x1f)
            .into_iter()
            .skip(2),
    );
    let mut guest = Guest::boot("two-devices", &kit.kernel, &kit.initrd, &args)?;
    let out = host
        .finish_unless(Duration::from_secs(300), || guest.died())
        .map_err(|e| with_console(e, &guest))?;
    check_guest(&mut guest, "0000:00:1f.0")?;
    Ok(totals(&out))
}

fn stream_acked(state: &Path) -> u64 {
    fs::read(state)
        .ok()
        .and_then(|raw| raw.get(8..16).and_then(|b| b.try_into().ok()))
        .map_or(0, u64::from_le_bytes)
}

/// 5. Restarts: the guest is reset mid-stream and boots again; later the
///    host agent is killed and restarted. Every message is acknowledged in
///    order; nothing committed is lost.
fn restarts(kit: &Kit) -> Result<Outcome, String> {
    let uuid = "5b7e6a0c-1d2e-4f3a-9b8c-00000000e205";
    let region = region_for(uuid);
    let state = vm::cache_dir().join("restarts.state");
    let _cleanup = Cleanup(vec![region.clone(), state.clone()]);
    let _ = fs::remove_file(&state);
    let state_arg = state.to_string_lossy().into_owned();
    let host_args = [
        "--uuid", uuid, "--stream", "20000", "--state", &state_arg, "--wait", "300",
    ];
    let mut host = HostAgent::spawn(kit, "restarts-1", &host_args)?;
    wait_for("the region", Duration::from_secs(10), || region.exists())?;
    let qemu_args = vm::ivshmem_args(uuid, &region, RegionSize::DEFAULT, 0x1f);
    let first = Guest::boot("restarts-a", &kit.kernel, &kit.initrd, &qemu_args)?;
    wait_for("3,000 acknowledgements", Duration::from_secs(180), || {
        stream_acked(&state) >= 3000
    })
    .map_err(|e| with_console(e, &first))?;
    eprintln!(
        "xtask:   guest reset at {} acknowledged",
        stream_acked(&state)
    );
    drop(first); // kills QEMU: a hard reset
    let mut second = Guest::boot("restarts-b", &kit.kernel, &kit.initrd, &qemu_args)?;
    wait_for("12,000 acknowledgements", Duration::from_secs(180), || {
        stream_acked(&state) >= 12_000
    })
    .map_err(|e| with_console(e, &second))?;
    eprintln!(
        "xtask:   host agent killed at {} acknowledged",
        stream_acked(&state)
    );
    host.kill();
    let mut host = HostAgent::spawn(kit, "restarts-2", &host_args)?;
    let out = host
        .finish_unless(Duration::from_secs(300), || second.died())
        .map_err(|e| with_console(e, &second))?;
    if !out.contains("stream complete") || stream_acked(&state) != 20_000 {
        return Err(format!("stream did not complete:\n{out}"));
    }
    check_guest(&mut second, "0000:00:1f.0")?;
    // The last host agent reports the whole stream.
    Ok(totals(&out))
}

/// 6. Three guests at once, served by one host agent through the
///    supervisor. QEMU creates each region file; the supervisor sees it
///    appear, waits for QEMU to size it, and initialises it.
fn several_guests(kit: &Kit) -> Result<Outcome, String> {
    let dir = Path::new(naming::REGION_DIR).join("ivchan-e2e-fleet");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let _cleanup = Cleanup(vec![dir.clone()]);
    let dir_arg = dir.to_string_lossy().into_owned();
    let mut host = HostAgent::spawn(
        kit,
        "several-guests",
        &[
            "--supervise",
            "3",
            "--dir",
            &dir_arg,
            "--exchange",
            "2000",
            "--echo",
            "100",
            "--wait",
            "300",
        ],
    )?;
    let mut guests = Vec::new();
    for i in 0..3 {
        let uuid = format!("5b7e6a0c-1d2e-4f3a-9b8c-00000000e26{i}");
        let region = dir.join(naming::region_file_name(&vm_uuid(&uuid)));
        let name = format!("several-guests-{i}");
        guests.push(Guest::boot(
            &name,
            &kit.kernel,
            &kit.initrd,
            &vm::ivshmem_args(&uuid, &region, RegionSize::DEFAULT, 0x1f),
        )?);
    }
    let out = host
        .finish_unless(Duration::from_secs(400), || {
            guests.iter_mut().find_map(Guest::died)
        })
        .map_err(|e| {
            let consoles: Vec<String> = guests.iter().map(|g| g.console_tail(10)).collect();
            format!("{e}\nguest consoles:\n{}", consoles.join("\n---\n"))
        })?;
    for g in &mut guests {
        check_guest(g, "0000:00:1f.0")?;
    }
    if !out.contains("all 3 VMs served") {
        return Err(format!("supervisor did not serve all guests:\n{out}"));
    }
    Ok(totals(&out))
}

/// A QMP connection to a QEMU started with `-qmp unix:PATH,server=on,wait=off`,
/// enough for migration: commands are JSON text, replies are read as text.
struct Qmp {
    reader: std::io::BufReader<std::os::unix::net::UnixStream>,
    writer: std::os::unix::net::UnixStream,
}

impl Qmp {
    fn connect(path: &Path) -> Result<Self, String> {
        let start = Instant::now();
        let stream = loop {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if start.elapsed() > Duration::from_secs(30) => {
                    return Err(format!("QMP {}: {e}", path.display()))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        let writer = stream.try_clone().map_err(|e| e.to_string())?;
        let mut qmp = Self {
            reader: std::io::BufReader::new(stream),
            writer,
        };
        qmp.line()?; // the greeting
        qmp.execute(r#"{"execute":"qmp_capabilities"}"#)?;
        Ok(qmp)
    }

    fn line(&mut self) -> Result<String, String> {
        use std::io::BufRead;
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err("QMP: QEMU closed the connection".into()),
            Ok(_) => Ok(line),
            Err(e) => Err(format!("QMP: {e}")),
        }
    }

    /// Sends one command; its reply line (events before it are skipped).
    fn execute(&mut self, command: &str) -> Result<String, String> {
        use std::io::Write;
        writeln!(self.writer, "{command}").map_err(|e| format!("QMP: {e}"))?;
        loop {
            let line = self.line()?;
            if line.contains("\"error\"") {
                return Err(format!("QMP {command}: {}", line.trim()));
            }
            if line.contains("\"return\"") {
                return Ok(line);
            }
        }
    }
}

/// One `u64` of a region file, little-endian, at `offset`.
fn region_word(region: &Path, offset: u64) -> Result<u64, String> {
    use std::os::unix::fs::FileExt;
    let f = fs::File::open(region).map_err(|e| format!("{}: {e}", region.display()))?;
    let mut w = [0u8; 8];
    f.read_exact_at(&mut w, offset)
        .map_err(|e| format!("{}: {e}", region.display()))?;
    Ok(u64::from_le_bytes(w))
}

/// Host-to-guest ring positions (tail, head) in a region with the default
/// layout (PROTOCOL.md, sections 2 and 3.3).
fn host_to_guest_positions(region: &Path) -> Result<(u64, u64), String> {
    Ok((region_word(region, 0x1000)?, region_word(region, 0x1080)?))
}

fn signal(pid: u32, sig: &str) -> Result<(), String> {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .map_err(|e| e.to_string())?
        .success();
    if ok {
        Ok(())
    } else {
        Err(format!("kill {sig} {pid} failed"))
    }
}

/// The value of `"key": N` in a QMP reply line, if present.
fn qmp_number(reply: &str, key: &str) -> Option<u64> {
    let at = reply.find(&format!("\"{key}\": "))? + key.len() + 4;
    let digits: String = reply[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// 11/12. Live migration between two QEMU processes standing for two
///     hosts, each with its own region directory and host agent. The
///     source streams acknowledged messages both ways; the migration runs
///     (bandwidth-limited, so pre-copy lasts seconds) while traffic flows.
///     Before the switchover the source's host agent is quiesced (stopped)
///     and the guest drains the host-to-guest ring, because QEMU does not
///     see the host agent's writes to the region (PROTOCOL.md, section 10);
///     the stream's progress is handed to the destination's agent, which
///     waits for the guest with `--incoming`, attaches to the migrated
///     region and completes the stream, every acknowledgement checked and
///     in order. The source agent reports its guest migrated and exits 0.
fn live_migration(kit: &Kit, doorbell: bool, abort: bool) -> Result<Outcome, String> {
    // About 10,000 messages a second flow here: enough for the stream to
    // outlast the migration by far.
    const COUNT: u64 = 300_000;
    let tag = match (doorbell, abort) {
        (_, true) => "abort",
        (true, _) => "doorbell",
        (false, _) => "plain",
    };
    let uuid = match (doorbell, abort) {
        (_, true) => "5b7e6a0c-1d2e-4f3a-9b8c-00000000e212",
        (true, _) => "5b7e6a0c-1d2e-4f3a-9b8c-00000000e211",
        (false, _) => "5b7e6a0c-1d2e-4f3a-9b8c-00000000e210",
    };
    let src_region = region_for(uuid);
    let dst_dir = Path::new(naming::REGION_DIR).join(format!("ivchan-e2e-dest-{tag}"));
    let dst_region = dst_dir.join(naming::region_file_name(&vm_uuid(uuid)));
    let cache = vm::cache_dir();
    let file = |what: &str| cache.join(format!("migrate-{tag}.{what}"));
    let (src_state, dst_state) = (file("src-state"), file("dst-state"));
    let (src_qmp, dst_qmp, channel) = (file("src.qmp"), file("dst.qmp"), file("migration.sock"));
    let (src_sock, dst_sock) = (file("src.sock"), file("dst.sock"));
    let _ = fs::remove_dir_all(&dst_dir);
    for p in [
        &src_region,
        &src_state,
        &dst_state,
        &channel,
        &src_sock,
        &dst_sock,
    ] {
        let _ = fs::remove_file(p);
    }
    fs::create_dir_all(&dst_dir).map_err(|e| e.to_string())?;
    let _cleanup = Cleanup(vec![
        src_region.clone(),
        dst_dir.clone(),
        src_state.clone(),
        dst_state.clone(),
        channel.clone(),
        src_qmp.clone(),
        dst_qmp.clone(),
        src_sock.clone(),
        dst_sock.clone(),
    ]);
    let arg = |p: &Path| p.to_string_lossy().into_owned();
    let count = COUNT.to_string();
    let agent_args = |state: &Path, sock: &Path, dir: Option<&Path>| {
        let mut a = vec![
            "--uuid".to_owned(),
            uuid.to_owned(),
            "--stream".to_owned(),
            count.clone(),
            "--state".to_owned(),
            arg(state),
            "--wait".to_owned(),
            "300".to_owned(),
        ];
        if doorbell {
            a.extend(["--doorbell".to_owned(), arg(sock)]);
        }
        if let Some(dir) = dir {
            a.extend(["--dir".to_owned(), arg(dir), "--incoming".to_owned()]);
        }
        a
    };
    let device = |region: &Path, sock: &Path| -> Vec<String> {
        let mut a = vec!["-uuid".to_owned(), uuid.to_owned()];
        if doorbell {
            a.extend([
                "-chardev".to_owned(),
                format!("socket,path={},id=ivs", sock.display()),
                "-device".to_owned(),
                "ivshmem-doorbell,chardev=ivs,vectors=1,master=on,bus=pci.0,addr=0x1f".to_owned(),
            ]);
        } else {
            a.extend([
                "-object".to_owned(),
                format!(
                    "memory-backend-file,id=ivchan,mem-path={},size=8M,share=on",
                    region.display()
                ),
                "-device".to_owned(),
                "ivshmem-plain,memdev=ivchan,master=on,bus=pci.0,addr=0x1f".to_owned(),
            ]);
        }
        a
    };
    let refs = |v: &[String]| v.to_vec();

    // The source host: its agent, then its VM.
    let src_args = agent_args(&src_state, &src_sock, None);
    let src_args: Vec<&str> = src_args.iter().map(String::as_str).collect();
    let mut src_agent = HostAgent::spawn(kit, &format!("migrate-{tag}-src"), &src_args)?;
    let ready = if doorbell { &src_sock } else { &src_region };
    wait_for("the source agent", Duration::from_secs(10), || {
        ready.exists()
    })?;
    let mut qemu = device(&src_region, &src_sock);
    qemu.extend([
        "-qmp".to_owned(),
        format!("unix:{},server=on,wait=off", src_qmp.display()),
    ]);
    let mut src = Guest::boot(
        &format!("migrate-{tag}-src"),
        &kit.kernel,
        &kit.initrd,
        &refs(&qemu),
    )?;

    // The destination host: its agent waits for the guest to arrive (with
    // the doorbell model its server must listen before QEMU starts), then
    // QEMU waits for the incoming migration.
    let dst_args = agent_args(&dst_state, &dst_sock, Some(&dst_dir));
    let dst_args: Vec<&str> = dst_args.iter().map(String::as_str).collect();
    let mut dst_agent = HostAgent::spawn(kit, &format!("migrate-{tag}-dst"), &dst_args)?;
    let ready = if doorbell { &dst_sock } else { &dst_region };
    wait_for("the destination agent", Duration::from_secs(10), || {
        ready.exists()
    })?;
    let mut qemu = device(&dst_region, &dst_sock);
    qemu.extend([
        "-qmp".to_owned(),
        format!("unix:{},server=on,wait=off", dst_qmp.display()),
        "-incoming".to_owned(),
        format!("unix:{}", channel.display()),
    ]);
    let mut dst = Guest::boot(
        &format!("migrate-{tag}-dst"),
        &kit.kernel,
        &kit.initrd,
        &refs(&qemu),
    )?;

    wait_for(
        "2,000 acknowledgements on the source",
        Duration::from_secs(180),
        || stream_acked(&src_state) >= 2000,
    )
    .map_err(|e| with_console(format!("{e}\nsource agent:\n{}", src_agent.output()), &src))?;
    let mut q = Qmp::connect(&src_qmp)?;
    // Slow pre-copy: the migration runs for seconds while traffic flows.
    q.execute(r#"{"execute":"migrate-set-parameters","arguments":{"max-bandwidth":4194304}}"#)?;
    let started = Instant::now();
    let acked_at_start = stream_acked(&src_state);
    eprintln!("xtask:   migration started at {acked_at_start} acknowledged");
    q.execute(&format!(
        r#"{{"execute":"migrate","arguments":{{"uri":"unix:{}"}}}}"#,
        channel.display()
    ))?;
    std::thread::sleep(Duration::from_secs(3));
    let status = q.execute(r#"{"execute":"query-migrate"}"#)?;
    if !status.contains("\"active\"") {
        return Err(format!(
            "the migration is not in pre-copy after 3 s: {status}"
        ));
    }
    let acked_in_precopy = stream_acked(&src_state) - acked_at_start;
    if abort {
        return abort_migration(q, acked_in_precopy, &src_state, src_agent, src, dst);
    }
    // Quiesce the source host agent and let the guest drain what it was
    // sent; hand the stream's progress to the destination's agent.
    signal(src_agent.child.id(), "-STOP")?;
    wait_for(
        "the guest to drain the host-to-guest ring",
        Duration::from_secs(30),
        || host_to_guest_positions(&src_region).is_ok_and(|(tail, head)| tail == head),
    )?;
    fs::copy(&src_state, &dst_state).map_err(|e| e.to_string())?;
    let handed = stream_acked(&dst_state);
    q.execute(r#"{"execute":"migrate-set-parameters","arguments":{"max-bandwidth":1073741824}}"#)?;
    let done = loop {
        let status = q.execute(r#"{"execute":"query-migrate"}"#)?;
        if status.contains("\"completed\"") {
            break status;
        }
        if status.contains("\"failed\"") || started.elapsed() > Duration::from_secs(120) {
            return Err(format!("migration did not complete: {status}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!(
        "xtask:   migrated in {:.1} s (downtime {} ms, {} MB sent); {acked_in_precopy} messages acknowledged during pre-copy; handed over at {handed}",
        started.elapsed().as_secs_f64(),
        qmp_number(&done, "downtime").unwrap_or(0),
        qmp_number(&done, "transferred").unwrap_or(0) >> 20,
    );
    // The destination runs the guest: tell its agent (as an orchestrator
    // would on libvirt's "resumed (migrated)" event).
    let mut dq = Qmp::connect(&dst_qmp)?;
    let running = dq.execute(r#"{"execute":"query-status"}"#)?;
    if !running.contains("\"running\"") {
        return Err(format!("the destination does not run the guest: {running}"));
    }
    drop(dq);
    signal(dst_agent.child.id(), "-USR1")?;
    // As libvirt does: the source QEMU quits once the destination runs.
    let _ = q.execute(r#"{"execute":"quit"}"#);
    drop(q);
    src.wait(Duration::from_secs(30))?;
    signal(src_agent.child.id(), "-CONT")?;
    let src_out = src_agent.finish(Duration::from_secs(60))?;
    if !src_out.contains("guest migrated") {
        return Err(format!(
            "the source agent did not report the migration:\n{src_out}"
        ));
    }
    echo_lines(&src_out, &["handed over"]);
    let out = dst_agent
        .finish_unless(Duration::from_secs(300), || dst.died())
        .map_err(|e| with_console(e, &dst))?;
    if !out.contains("stream complete") || stream_acked(&dst_state) != COUNT {
        return Err(format!(
            "the stream did not complete on the destination:\n{out}"
        ));
    }
    echo_lines(&out, &["stream complete"]);
    // The destination's console starts at the switchover: the guest agent
    // that attached on the source exits there.
    dst.wait(Duration::from_secs(120))?;
    if !dst.console().contains("ivchan-vm: agent exit 0") {
        return Err(format!(
            "the guest agent failed on the destination; console:\n{}",
            dst.console_tail(25)
        ));
    }
    Ok(totals(&out))
}

/// The rest of `migrate-abort`: the migration is cancelled halfway
/// through pre-copy; the guest stays on the source, where the stream
/// completes with the same host agent, which never reports a departure
/// (QEMU kept mapping the region) nor sees a restart.
fn abort_migration(
    mut q: Qmp,
    acked_in_precopy: u64,
    src_state: &Path,
    mut src_agent: HostAgent,
    mut src: Guest,
    mut dst: Guest,
) -> Result<Outcome, String> {
    q.execute(r#"{"execute":"migrate_cancel"}"#)?;
    wait_for(
        "the migration to be cancelled",
        Duration::from_secs(30),
        || {
            q.execute(r#"{"execute":"query-migrate"}"#)
                .is_ok_and(|s| s.contains("\"cancelled\""))
        },
    )?;
    let running = q.execute(r#"{"execute":"query-status"}"#)?;
    if !running.contains("\"running\"") {
        return Err(format!(
            "the source does not run the guest after the cancel: {running}"
        ));
    }
    drop(q);
    let after = stream_acked(src_state);
    eprintln!(
        "xtask:   migration cancelled after {acked_in_precopy} messages acknowledged in pre-copy; the guest stays (at {after})"
    );
    // The incoming side gives up on the broken stream.
    let _ = dst.wait(Duration::from_secs(30));
    let out = src_agent
        .finish_unless(Duration::from_secs(300), || src.died())
        .map_err(|e| with_console(e, &src))?;
    if !out.contains("stream complete") || out.contains("guest migrated") {
        return Err(format!("the stream did not complete on the source:\n{out}"));
    }
    if !out.contains("0 guest restarts seen") {
        return Err(format!("the source agent saw the guest restart:\n{out}"));
    }
    echo_lines(&out, &["stream complete"]);
    check_guest(&mut src, "0000:00:1f.0")?;
    Ok(totals(&out))
}

/// 14. libvirt: the domain XML route's `<shmem role='master'>` (the
///     default) passes `virsh define` and starts with `"master":"on"`;
///     libvirt's own migratability check (the Begin phase of `virsh migrate
///     --live`) lets it through, failing only later, because source and
///     destination are the same libvirtd here. The same domain with
///     `--role peer` is refused by that check, with QEMU's "peer mode".
fn migrate_libvirt(kit: &Kit) -> Result<Outcome, String> {
    libvirt::ensure()?;
    for (role, uuid) in [
        ("master", "5b7e6a0c-1d2e-4f3a-9b8c-00000000e213"),
        ("peer", "5b7e6a0c-1d2e-4f3a-9b8c-00000000e214"),
    ] {
        let _cleanup = Cleanup(vec![region_for(uuid)]);
        let dom = Domain::new(
            &format!("ivchan-e2e-migrate-{role}"),
            uuid,
            &kit.kernel,
            &kit.initrd,
            &vm::cache_dir(),
        )?;
        run(Command::new(&kit.provision)
            .args(["inject", "--role", role])
            .arg(&dom.xml));
        dom.define_and_start()?;
        let cmdline = dom.qemu_cmdline()?;
        let want = if role == "master" {
            "\"master\":\"on\""
        } else {
            "\"master\":\"off\""
        };
        if !cmdline.contains(want) {
            return Err(format!("{role}: QEMU command line lacks {want}: {cmdline}"));
        }
        let err = match libvirt::virsh(&["migrate", "--live", &dom.name, "qemu+unix:///system"]) {
            Ok(out) => {
                return Err(format!(
                    "{role}: virsh migrate to the same libvirtd succeeded: {out}"
                ))
            }
            Err(e) => e,
        };
        eprintln!("xtask:   role {role}: virsh migrate --live: {}", err.trim());
        // The peer device is refused in libvirt's Begin phase (libvirt 9.0
        // asks QEMU for its migration blockers); the master one passes it
        // and fails at the destination's Prepare, the same host here.
        let expected = if role == "peer" {
            "peer mode"
        } else {
            "same host"
        };
        if !err.contains(expected) {
            return Err(format!(
                "{role}: unexpected answer from libvirt's migration check: {err}"
            ));
        }
        let state = libvirt::virsh(&["domstate", &dom.name])?;
        if state.trim() != "running" {
            return Err(format!(
                "{role}: the domain is {} after the refused migration",
                state.trim()
            ));
        }
    }
    Ok(Outcome::default())
}

fn migrate_plain(kit: &Kit) -> Result<Outcome, String> {
    live_migration(kit, false, false)
}

fn migrate_doorbell(kit: &Kit) -> Result<Outcome, String> {
    live_migration(kit, true, false)
}

fn migrate_abort(kit: &Kit) -> Result<Outcome, String> {
    live_migration(kit, false, true)
}

type Scenario = fn(&Kit) -> Result<Outcome, String>;

const SCENARIOS: &[(&str, Scenario)] = &[
    ("raw-qemu", raw_qemu),
    ("c-agent", c_agent),
    ("libvirt", libvirt_shmem),
    ("libvirt-hook", libvirt_hook),
    ("hook-fail-closed", libvirt_hook_fails_closed),
    ("hotplug", hotplug),
    ("two-devices", two_devices),
    ("restarts", restarts),
    ("several-guests", several_guests),
    ("doorbell", doorbell),
    ("doorbell-libvirt", doorbell_libvirt),
    ("libvirt-q35", libvirt_q35),
    ("hotplug-q35", hotplug_q35),
    ("migrate-plain", migrate_plain),
    ("migrate-doorbell", migrate_doorbell),
    ("migrate-abort", migrate_abort),
    ("migrate-libvirt", migrate_libvirt),
    ("doorbell-driver", irq::doorbell_driver),
    ("doorbell-vfio", irq::doorbell_vfio),
    ("wake", irq::wake),
    ("driver-unplug", irq::driver_unplug),
    ("wake-vfio", irq::wake_vfio),
];

fn build_kit() -> Result<Kit, String> {
    packages();
    step("e2e: kernel, static guest agent, initramfs, host binaries");
    let kernel = vm::kernel()?;
    let agent = vm::static_guest_agent();
    let initrd = vm::initramfs(
        "e2e",
        &agent,
        "/bin/ivchan-guest-agent --wait 300 --dir /tmp\necho \"ivchan-vm: agent exit $?\"",
    )?;
    run(cargo().args(["build", "--release"]).args([
        "-p",
        "ivchan-examples",
        "--bin",
        "ivchan-host-agent",
        "-p",
        "ivchan-cli",
        "--bin",
        "ivchan",
        "-p",
        "ivchan-provision",
        "--bin",
        "ivchan-qemu-wrapper",
        "--bin",
        "ivchan-provision",
    ]));
    let bin = |name: &str| crate::target_dir().join("release").join(name);
    Ok(Kit {
        kernel,
        initrd,
        agent,
        host_agent: bin("ivchan-host-agent"),
        ivchan: bin("ivchan"),
        wrapper: bin("ivchan-qemu-wrapper"),
        provision: bin("ivchan-provision"),
    })
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// Runs the scenarios whose names contain one of `filters` (all when
/// empty) and prints the table.
pub fn e2e(filters: &[String]) -> Result<(), String> {
    let kit = build_kit()?;
    let chosen: Vec<&(&str, Scenario)> = SCENARIOS
        .iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())))
        .collect();
    if chosen.is_empty() {
        return Err(format!("no scenario matches {filters:?}"));
    }
    let mut rows = Vec::new();
    let total = Instant::now();
    for (i, (name, scenario)) in chosen.iter().enumerate() {
        step(&format!("e2e scenario {}/{}: {name}", i + 1, chosen.len()));
        let start = Instant::now();
        let result = scenario(&kit);
        let secs = start.elapsed().as_secs_f64();
        match &result {
            Ok(_) => eprintln!("xtask: {name} passed in {secs:.1} s"),
            Err(e) => eprintln!("xtask: {name} FAILED in {secs:.1} s:\n{e}"),
        }
        rows.push((name.to_string(), result, secs));
    }
    eprintln!();
    eprintln!(
        "{:<16} {:<6} {:>12} {:>11} {:>12} {:>11} {:>8}",
        "scenario", "result", "to guest", "bytes", "from guest", "bytes", "time"
    );
    let mut failed = 0;
    for (name, result, secs) in &rows {
        match result {
            Ok(o) => eprintln!(
                "{name:<16} {:<6} {:>8} msgs {:>11} {:>8} msgs {:>11} {:>7.1}s",
                "pass",
                o.to_guest_msgs,
                mb(o.to_guest_bytes),
                o.from_guest_msgs,
                mb(o.from_guest_bytes),
                secs
            ),
            Err(_) => {
                failed += 1;
                eprintln!("{name:<16} {:<6} {:>60.1}s", "FAIL", secs);
            }
        }
    }
    eprintln!(
        "e2e: {} passed, {failed} failed ({:.0} s in all)",
        rows.len() - failed,
        total.elapsed().as_secs_f64()
    );
    if failed > 0 {
        return Err(format!("{failed} e2e scenario(s) failed"));
    }
    Ok(())
}

/// `cargo xtask smoke`: the raw-QEMU scenario alone.
pub fn smoke() -> Result<(), String> {
    e2e(&["raw-qemu".to_owned()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_where_ivchan_puts_them() {
        let uuid = "5b7e6a0c-1d2e-4f3a-9b8c-00000000e201";
        assert_eq!(
            region_for(uuid),
            PathBuf::from("/dev/shm/fg_5b7e6a0c-1d2e-4f3a-9b8c-00000000e201")
        );
        assert_eq!(
            naming::region_file_name(&vm_uuid(uuid)),
            format!("fg_{uuid}")
        );
    }
}
