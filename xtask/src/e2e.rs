//! End-to-end runs with real QEMU guests (see `vm`).
//!
//! `cargo xtask smoke`: one TCG guest gets the device at 0000:00:1f.0 the
//! way the QEMU wrapper gives it; the static guest agent in its initramfs
//! finds the device by identity (DMI UUID = header UUID) and serves the host
//! agent, which runs a checked exchange both ways, an echo and a file
//! transfer.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::vm::{self, Guest};
use crate::{cargo, packages, project_root, run, step};

/// Removes a region file when the run ends, however it ends.
struct RegionGuard(PathBuf);

impl Drop for RegionGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn host_agent() -> PathBuf {
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "ivchan-examples",
        "--bin",
        "ivchan-host-agent",
    ]));
    project_root().join("target/release/ivchan-host-agent")
}

pub fn smoke() -> Result<(), String> {
    packages();
    step("smoke: kernel, static guest agent, initramfs");
    let kernel = vm::kernel()?;
    let agent = vm::static_guest_agent();
    let initrd = vm::initramfs(
        "smoke",
        &agent,
        "/bin/ivchan-guest-agent --wait 120 --dir /tmp\necho \"ivchan-vm: agent exit $?\"",
    )?;
    let host = host_agent();

    step("smoke: host agent + TCG guest");
    let uuid = "5b7e6a0c-1d2e-4f3a-9b8c-00000000e2e1";
    let region = PathBuf::from(format!("/dev/shm/fg_{uuid}"));
    let _ = std::fs::remove_file(&region);
    let _guard = RegionGuard(region.clone());
    let payload = vm::cache_dir().join("smoke-payload.bin");
    vm::payload_file(&payload, 3 << 20)?;
    let start = Instant::now();
    let mut host_agent = Command::new(&host)
        .args([
            "--uuid",
            uuid,
            "--exchange",
            "2000",
            "--echo",
            "200",
            "--wait",
            "180",
        ])
        .arg("--file")
        .arg(&payload)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", host.display()))?;
    // QEMU maps the region the host agent created.
    while !region.exists() {
        if start.elapsed() > Duration::from_secs(10) {
            let _ = host_agent.kill();
            return Err("host agent did not create the region".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut guest = Guest::boot(
        "smoke",
        &kernel,
        &initrd,
        &vm::ivshmem_args(uuid, &region, 8, 0x1f),
    )?;
    let status = loop {
        if let Some(status) = host_agent.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if start.elapsed() > Duration::from_secs(300) {
            let _ = host_agent.kill();
            return Err(format!(
                "host agent still running after 300 s; guest console:\n{}",
                guest.console_tail(30)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let powered_off = guest.wait(Duration::from_secs(60));
    let console = guest.console();
    if !status.success() || powered_off.is_err() || !console.contains("ivchan-vm: agent exit 0") {
        return Err(format!(
            "smoke failed (host agent {status}, guest {powered_off:?}); guest console:\n{}",
            guest.console_tail(30)
        ));
    }
    if !console.contains("attached to 0000:00:1f.0") {
        return Err(format!(
            "guest agent used another device:\n{}",
            guest.console_tail(30)
        ));
    }
    eprintln!(
        "xtask: smoke passed in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
