//! A real libvirt daemon for the end-to-end runs, set up as DESIGN.md
//! describes, and test domains that boot the e2e kernel and initramfs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const URI: &str = "qemu:///system";

fn sh(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `virsh -c qemu:///system ARGS`; its stdout, or an error with its
/// stderr.
pub fn virsh(args: &[&str]) -> Result<String, String> {
    let out = Command::new("virsh")
        .arg("-c")
        .arg(URI)
        .args(args)
        .output()
        .map_err(|e| format!("virsh: {e} (install libvirt-clients)"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "virsh {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Makes sure `libvirtd` answers on qemu:///system, starting `virtlogd` and
/// `libvirtd` (and creating their `libvirt-qemu` user) if needed.
///
/// It also gives the `libvirt-qemu` group read/write on `/dev/kvm`, as
/// Debian's `kvm` group does on an ordinary host. Without it libvirt sees
/// KVM while probing QEMU as root but not as the QEMU user, throws its
/// capability cache away and re-probes QEMU on every `define` (~40 s each
/// here). The domains stay `type='qemu'` (TCG) either way.
pub fn ensure() -> Result<(), String> {
    if !sh("id libvirt-qemu >/dev/null 2>&1") {
        sh("getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu");
        sh("useradd -r -g libvirt-qemu libvirt-qemu");
    }
    if Path::new("/dev/kvm").exists() {
        sh("chgrp libvirt-qemu /dev/kvm && chmod g+rw /dev/kvm");
    }
    if virsh(&["version"]).is_ok() {
        return Ok(());
    }
    for dir in ["/var/log/libvirt", "/var/run/libvirt"] {
        fs::create_dir_all(dir).map_err(|e| format!("{dir}: {e}"))?;
    }
    sh("pgrep -x virtlogd >/dev/null || virtlogd -d");
    sh("pgrep -x libvirtd >/dev/null || libvirtd -d");
    let start = Instant::now();
    while let Err(e) = virsh(&["version"]) {
        if start.elapsed() > Duration::from_secs(30) {
            return Err(format!("libvirtd did not come up: {e}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// Restarts `libvirtd`, which reads its hooks only when it starts.
pub fn restart() -> Result<(), String> {
    sh("pkill -x libvirtd");
    let start = Instant::now();
    while sh("pgrep -x libvirtd >/dev/null") {
        if start.elapsed() > Duration::from_secs(30) {
            return Err("libvirtd did not stop".to_owned());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    ensure()
}

/// The uid of the user libvirt runs QEMU as.
pub fn qemu_uid() -> Result<u32, String> {
    let out = Command::new("id")
        .args(["-u", "libvirt-qemu"])
        .output()
        .map_err(|e| e.to_string())?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| "no libvirt-qemu user".to_owned())
}

/// A transient-named test domain; destroyed and undefined on drop.
pub struct Domain {
    pub name: String,
    pub xml: PathBuf,
    pub console: PathBuf,
}

impl Domain {
    /// Writes the XML of a domain that boots `kernel` + `initrd` under TCG
    /// with ACPI (needed for hotplug) and its serial console in a file.
    pub fn new(
        name: &str,
        uuid: &str,
        kernel: &Path,
        initrd: &Path,
        dir: &Path,
    ) -> Result<Self, String> {
        Self::with_machine(name, uuid, "pc", kernel, initrd, dir)
    }

    /// As [`new`](Self::new), of machine type `machine` (e.g. `q35`).
    pub fn with_machine(
        name: &str,
        uuid: &str,
        machine: &str,
        kernel: &Path,
        initrd: &Path,
        dir: &Path,
    ) -> Result<Self, String> {
        fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let console = dir.join(format!("{name}.console"));
        let _ = fs::remove_file(&console);
        let xml = format!(
            "<domain type='qemu'>\n\
             \x20 <!-- ivchan e2e domain -->\n\
             \x20 <name>{name}</name>\n\
             \x20 <uuid>{uuid}</uuid>\n\
             \x20 <memory unit='MiB'>256</memory>\n\
             \x20 <vcpu>1</vcpu>\n\
             \x20 <os>\n\
             \x20   <type arch='x86_64' machine='{machine}'>hvm</type>\n\
             \x20   <kernel>{}</kernel>\n\
             \x20   <initrd>{}</initrd>\n\
             \x20   <cmdline>console=ttyS0 quiet panic=-1</cmdline>\n\
             \x20 </os>\n\
             \x20 <features>\n\
             \x20   <acpi/>\n\
             \x20 </features>\n\
             \x20 <on_poweroff>destroy</on_poweroff>\n\
             \x20 <on_reboot>destroy</on_reboot>\n\
             \x20 <devices>\n\
             \x20   <emulator>/usr/bin/qemu-system-x86_64</emulator>\n\
             \x20   <serial type='file'>\n\
             \x20     <source path='{}'/>\n\
             \x20   </serial>\n\
             \x20 </devices>\n\
             </domain>\n",
            kernel.display(),
            initrd.display(),
            console.display()
        );
        let path = dir.join(format!("{name}.xml"));
        fs::write(&path, xml).map_err(|e| e.to_string())?;
        let _ = virsh(&["destroy", name]);
        let _ = virsh(&["undefine", name]);
        Ok(Self {
            name: name.to_owned(),
            xml: path,
            console,
        })
    }

    /// `virsh define` + `virsh start`.
    pub fn define_and_start(&self) -> Result<(), String> {
        virsh(&["define", &self.xml.to_string_lossy()])?;
        virsh(&["start", &self.name]).map(drop)
    }

    /// The running QEMU's command line.
    pub fn qemu_cmdline(&self) -> Result<String, String> {
        let pidfile = format!("/var/run/libvirt/qemu/{}.pid", self.name);
        let pid = fs::read_to_string(&pidfile).map_err(|e| format!("{pidfile}: {e}"))?;
        let raw = fs::read(format!("/proc/{}/cmdline", pid.trim())).map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&raw).replace('\0', " "))
    }

    /// The console so far.
    pub fn console(&self) -> String {
        fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// Waits until the domain is shut off (the guest powered off).
    pub fn wait_shut_off(&self, timeout: Duration) -> Result<(), String> {
        let start = Instant::now();
        loop {
            let state = virsh(&["domstate", &self.name])?;
            if state.trim() == "shut off" {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "{} still {} after {timeout:?}",
                    self.name,
                    state.trim()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", &self.name]);
        let _ = virsh(&["undefine", &self.name]);
    }
}
