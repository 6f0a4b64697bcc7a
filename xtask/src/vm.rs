//! Real guests for the end-to-end runs: a Debian cloud kernel fetched with
//! `apt-get download`, a busybox initramfs carrying the static guest agent,
//! and QEMU under TCG (nested KVM does not work here) with the serial
//! console captured to a file.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ivchan_protocol::naming::RegionSize;

use crate::{cargo, project_root, run, target_dir};

/// Where fetched and built artefacts are cached.
pub fn cache_dir() -> PathBuf {
    project_root().join("target/ivchan-vm")
}

fn output(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The Debian cloud kernel image, downloaded and unpacked once.
pub fn kernel() -> Result<PathBuf, String> {
    let dir = cache_dir().join("kernel");
    if let Some(found) = find_vmlinuz(&dir) {
        return Ok(found);
    }
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let deps = output(Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"]))?;
    let package = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .ok_or("apt-cache names no linux-image package for linux-image-cloud-amd64 (run apt-get update)")?
        .trim()
        .to_owned();
    eprintln!("xtask: fetching kernel {package}");
    output(
        Command::new("apt-get")
            .args(["download", &package])
            .current_dir(&dir),
    )?;
    let deb = fs::read_dir(&dir)
        .map_err(|e| e.to_string())?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or("apt-get download left no .deb")?;
    output(
        Command::new("dpkg")
            .arg("-x")
            .arg(&deb)
            .arg(dir.join("root")),
    )?;
    let _ = fs::remove_file(&deb);
    find_vmlinuz(&dir).ok_or_else(|| format!("no vmlinuz in {}", deb.display()))
}

fn find_vmlinuz(dir: &Path) -> Option<PathBuf> {
    fs::read_dir(dir.join("root/boot"))
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
}

/// The guest kernel's version (`6.1.0-N-cloud-amd64`), from its image name.
pub fn kernel_version(vmlinuz: &Path) -> Result<String, String> {
    vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .map(str::to_owned)
        .ok_or_else(|| format!("{}: not a vmlinuz-VERSION file", vmlinuz.display()))
}

/// A module shipped with the guest kernel (`kernel/drivers/vfio/vfio.ko`).
pub fn kernel_module(vmlinuz: &Path, relative: &str) -> Result<PathBuf, String> {
    let version = kernel_version(vmlinuz)?;
    let path = cache_dir()
        .join("kernel/root/lib/modules")
        .join(version)
        .join(relative);
    if path.exists() {
        Ok(path)
    } else {
        Err(format!("{} is not in the kernel package", path.display()))
    }
}

/// The guest kernel's build tree: Debian's `linux-headers-VERSION` and the
/// packages it depends on for building modules (`-common`, `linux-kbuild`),
/// fetched with `apt-get download` and unpacked once. The flavour's Makefile
/// includes the common one by absolute path: pointed at the unpacked copy.
pub fn kernel_headers(vmlinuz: &Path) -> Result<PathBuf, String> {
    let version = kernel_version(vmlinuz)?;
    let dir = cache_dir().join("headers");
    let root = dir.join("root");
    let build = root
        .join("usr/src")
        .join(format!("linux-headers-{version}"));
    if build.join("Makefile").exists() && build.join("scripts").exists() {
        return Ok(build);
    }
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let package = format!("linux-headers-{version}");
    // Debian drops an old kernel ABI's headers from the archive: a kernel
    // cached before that needs fetching again.
    let stale = |e: String| {
        format!(
            "{e}\n(no {package} to fetch: if the cached kernel is older than the archive's, remove {} to fetch the current one)",
            cache_dir().join("kernel").display()
        )
    };
    let deps = output(Command::new("apt-cache").args(["depends", &package])).map_err(stale)?;
    let mut packages = vec![package.clone()];
    packages.extend(
        deps.lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .map(str::trim)
            .filter(|p| p.starts_with("linux-headers-") || p.starts_with("linux-kbuild-"))
            .map(str::to_owned),
    );
    eprintln!("xtask: fetching {}", packages.join(" "));
    output(
        Command::new("apt-get")
            .arg("download")
            .args(&packages)
            .current_dir(&dir),
    )
    .map_err(stale)?;
    for entry in fs::read_dir(&dir).map_err(|e| e.to_string())? {
        let deb = entry.map_err(|e| e.to_string())?.path();
        if deb.extension().is_some_and(|x| x == "deb") {
            output(Command::new("dpkg").arg("-x").arg(&deb).arg(&root))?;
            let _ = fs::remove_file(&deb);
        }
    }
    let makefile = build.join("Makefile");
    let text = fs::read_to_string(&makefile).map_err(|e| format!("{}: {e}", makefile.display()))?;
    let local = format!("include {}/usr/src/", root.display());
    fs::write(&makefile, text.replace("include /usr/src/", &local)).map_err(|e| e.to_string())?;
    Ok(build)
}

/// Builds ivchan's guest driver (`guest-driver/`) against the guest
/// kernel's headers, in a copy under the cache (the sources stay clean).
/// Kbuild's `-Werror` makes any warning a failure. Returns the `.ko`.
pub fn guest_driver(vmlinuz: &Path) -> Result<PathBuf, String> {
    let headers = kernel_headers(vmlinuz)?;
    let src = project_root().join("guest-driver");
    let build = cache_dir().join("guest-driver");
    let _ = fs::remove_dir_all(&build);
    fs::create_dir_all(&build).map_err(|e| e.to_string())?;
    for file in ["Kbuild", "Makefile", "ivshmem_doorbell.c"] {
        fs::copy(src.join(file), build.join(file)).map_err(|e| format!("{file}: {e}"))?;
    }
    let out = Command::new("make")
        .arg(format!("KDIR={}", headers.display()))
        .current_dir(&build)
        .output()
        .map_err(|e| format!("make: {e} (install make and gcc)"))?;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(format!("building the guest driver failed:\n{log}"));
    }
    if log.contains("warning:") {
        return Err(format!("the guest driver built with warnings:\n{log}"));
    }
    Ok(build.join("ivshmem_doorbell.ko"))
}

/// Builds the guest agent as a static binary (it runs from a bare
/// initramfs) and returns its path.
pub fn static_guest_agent() -> PathBuf {
    run(cargo()
        .args(["build", "--release", "--target", "x86_64-unknown-linux-gnu"])
        .args(["-p", "ivchan-examples", "--bin", "ivchan-guest-agent"])
        .env("RUSTFLAGS", "-C target-feature=+crt-static"));
    target_dir().join("x86_64-unknown-linux-gnu/release/ivchan-guest-agent")
}

/// Packs an initramfs: busybox, the guest agent, and `/init` running
/// `script` (shell lines) after mounting proc, sysfs and devtmpfs. The
/// guest powers off when the script ends.
pub fn initramfs(name: &str, agent: &Path, script: &str) -> Result<PathBuf, String> {
    initramfs_with(name, agent, &[], script)
}

/// As [`initramfs`], with `files` copied in too (source, path inside).
pub fn initramfs_with(
    name: &str,
    agent: &Path,
    files: &[(PathBuf, String)],
    script: &str,
) -> Result<PathBuf, String> {
    let root = cache_dir().join(format!("initramfs-{name}"));
    let _ = fs::remove_dir_all(&root);
    for d in ["bin", "proc", "sys", "dev", "tmp", "lib"] {
        fs::create_dir_all(root.join(d)).map_err(|e| e.to_string())?;
    }
    for (from, to) in files {
        let dest = root.join(to.trim_start_matches('/'));
        fs::copy(from, &dest)
            .map_err(|e| format!("{} -> {}: {e}", from.display(), dest.display()))?;
    }
    fs::copy("/bin/busybox", root.join("bin/busybox"))
        .map_err(|e| format!("/bin/busybox (install busybox-static): {e}"))?;
    fs::copy(agent, root.join("bin/ivchan-guest-agent"))
        .map_err(|e| format!("{}: {e}", agent.display()))?;
    let init = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s /bin\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t devtmpfs devtmpfs /dev\n\
         echo 'ivchan-vm: guest up'\n\
         {script}\n\
         echo 'ivchan-vm: script done'\n\
         poweroff -f\n"
    );
    let init_path = root.join("init");
    fs::write(&init_path, init).map_err(|e| e.to_string())?;
    output(Command::new("chmod").arg("755").arg(&init_path))?;
    let image = cache_dir().join(format!("initramfs-{name}.cpio.gz"));
    let pack = format!(
        "cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
        root.display(),
        image.display()
    );
    output(Command::new("sh").arg("-c").arg(pack))?;
    Ok(image)
}

/// A QEMU guest under TCG whose serial console goes to a file.
pub struct Guest {
    child: Child,
    console: PathBuf,
    name: String,
}

impl Guest {
    /// Boots `kernel` + `initrd` with extra QEMU arguments `extra`.
    pub fn boot(
        name: &str,
        kernel: &Path,
        initrd: &Path,
        extra: &[String],
    ) -> Result<Self, String> {
        Self::boot_with(
            name,
            Path::new("qemu-system-x86_64"),
            &[],
            kernel,
            initrd,
            extra,
        )
    }

    /// As [`boot`](Self::boot), running `qemu` (the real QEMU or a wrapper
    /// standing in for it) with `env` added to its environment.
    pub fn boot_with(
        name: &str,
        qemu: &Path,
        env: &[(&str, &str)],
        kernel: &Path,
        initrd: &Path,
        extra: &[String],
    ) -> Result<Self, String> {
        let console = cache_dir().join(format!("{name}.console"));
        let log = fs::File::create(&console).map_err(|e| e.to_string())?;
        let child = Command::new(qemu)
            .envs(env.iter().copied())
            .args(["-accel", "tcg", "-m", "256", "-nographic", "-no-reboot"])
            .arg("-kernel")
            .arg(kernel)
            .arg("-initrd")
            .arg(initrd)
            .args(["-append", "console=ttyS0 quiet panic=-1"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{}: {e} (install qemu-system-x86)", qemu.display()))?;
        Ok(Self {
            child,
            console,
            name: name.to_owned(),
        })
    }

    /// The console so far.
    pub fn console(&self) -> String {
        fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// The last `n` lines of the console, for failure reports.
    pub fn console_tail(&self, n: usize) -> String {
        let text = self.console();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Why QEMU exited with an error, if it did (e.g. a bad device option);
    /// `None` while it runs or after a clean power-off.
    pub fn died(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) if !status.success() => Some(format!(
                "{}: QEMU exited with {status}:\n{}",
                self.name,
                self.console_tail(10)
            )),
            _ => None,
        }
    }

    /// Waits for the guest to power off; kills it after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                return if status.success() {
                    Ok(())
                } else {
                    Err(format!("{}: QEMU exited with {status}", self.name))
                };
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(format!(
                    "{}: guest still running after {timeout:?}",
                    self.name
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// QEMU arguments that give a guest the device the way ivchan's QEMU
/// wrapper does: a shared `memory-backend-file` on the region and an
/// `ivshmem-plain` at bus 0, `slot`.
pub fn ivshmem_args(uuid: &str, region: &Path, size: RegionSize, slot: u8) -> Vec<String> {
    // A region size is a power of two of at least 1 MiB: whole MiB.
    let size_mib = size.bytes() >> 20;
    vec![
        "-uuid".into(),
        uuid.into(),
        "-object".into(),
        format!(
            "memory-backend-file,id=ivchan{slot:x},mem-path={},size={size_mib}M,share=on",
            region.display()
        ),
        "-device".into(),
        format!("ivshmem-plain,memdev=ivchan{slot:x},bus=pci.0,addr=0x{slot:x}"),
    ]
}

/// A file of `size` pseudo-random bytes for transfer checks.
pub fn payload_file(path: &Path, size: usize) -> Result<(), String> {
    let mut f = fs::File::create(path).map_err(|e| e.to_string())?;
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut buf = Vec::with_capacity(size);
    while buf.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf.extend_from_slice(&x.to_le_bytes());
    }
    buf.truncate(size);
    f.write_all(&buf).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ivshmem_args_size_the_backend_in_mib() {
        let args = ivshmem_args("u", Path::new("/dev/shm/fg_u"), RegionSize::DEFAULT, 0x1f);
        assert_eq!(
            args[3],
            "memory-backend-file,id=ivchan1f,mem-path=/dev/shm/fg_u,size=8M,share=on"
        );
        assert_eq!(args[5], "ivshmem-plain,memdev=ivchan1f,bus=pci.0,addr=0x1f");
    }
}
