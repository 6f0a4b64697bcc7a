//! How the guest sleeps until the host has written: the device's MSI-X
//! interrupt through VFIO (an eventfd) or through ivchan's small kernel
//! driver (`guest-driver/`, a file to `poll`), or, without either,
//! adaptive polling.
//!
//! The host rings the guest's vector only when the guest asked to be woken
//! (`WAKE_ME`, PROTOCOL.md section 8): the channel sets the flag, fences,
//! looks at the ring once more, and only then sleeps here. An interrupt
//! that lands between that look and the sleep is not lost: the driver's
//! count and the eventfd's counter keep it until read, so the sleep ends
//! at once.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::discovery::{DeviceKind, IvshmemDevice};
use crate::vfio::{self, VfioDevice};
use crate::GuestError;

/// The name ivchan's guest driver registers (`guest-driver/`).
pub const DRIVER_NAME: &str = "ivshmem_doorbell";

/// How the guest waits for incoming messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WakeSource {
    /// MSI-X vector 0 on an eventfd through VFIO (`vfio-pci`, IOMMU).
    Vfio,
    /// MSI-X through ivchan's guest driver (`/dev/ivshmemN`).
    Driver,
    /// No interrupts: spin, yield, then sleep up to 1 ms at a time.
    Polling,
}

impl WakeSource {
    /// `"vfio"`, `"driver"` or `"polling"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Vfio => "vfio",
            Self::Driver => "driver",
            Self::Polling => "polling",
        }
    }
}

impl fmt::Display for WakeSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for WakeSource {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "vfio" => Ok(Self::Vfio),
            "driver" => Ok(Self::Driver),
            "polling" | "poll" => Ok(Self::Polling),
            _ => Err(format!(
                "{s:?} is not a wake source: vfio, driver or polling"
            )),
        }
    }
}

/// Which wake source to use: the best available, or one forced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WakePreference {
    /// VFIO if the device is bound to `vfio-pci`, or unbound while
    /// `vfio-pci` is loaded and the device has an IOMMU group; else the
    /// driver if it has bound the device; else polling. A route that fails
    /// to set up falls through to the next.
    #[default]
    Auto,
    /// This source or an error ([`GuestError::Wake`]). Forcing VFIO
    /// rebinds the device from whatever driver has it.
    Only(WakeSource),
}

/// How the guest's sleeps on its interrupt ended, since the channel opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WakeStats {
    /// Sleeps ended by an interrupt (or one already pending).
    pub interrupts: u64,
    /// Sleeps that ran out their timeout (the channel naps at most a
    /// heartbeat interval, so an idle guest times out ten times a second).
    pub timeouts: u64,
}

/// Counters shared between the channel's notifier and the guest channel.
#[derive(Debug, Default)]
pub(crate) struct WakeCounters {
    interrupts: AtomicU64,
    timeouts: AtomicU64,
}

impl WakeCounters {
    pub(crate) fn get(&self) -> WakeStats {
        WakeStats {
            interrupts: self.interrupts.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
        }
    }
}

/// What a guest sleeps on once set up.
#[derive(Debug)]
pub(crate) enum Interrupts {
    Vfio(VfioDevice),
    Driver(DriverFile),
}

impl Interrupts {
    pub(crate) fn source(&self) -> WakeSource {
        match self {
            Self::Vfio(_) => WakeSource::Vfio,
            Self::Driver(_) => WakeSource::Driver,
        }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Self::Vfio(v) => v.eventfd(),
            Self::Driver(d) => d.file.as_fd(),
        }
    }

    fn read_len(&self) -> usize {
        match self {
            // An eventfd reads 8 bytes, the driver's count 4.
            Self::Vfio(_) => 8,
            Self::Driver(_) => 4,
        }
    }

    /// Sleeps until an interrupt came since the last wait (then takes it),
    /// or `timeout` passed. A device that went away (hot-unplug) makes it
    /// sleep out the timeout, up to 10 ms at a time, rather than spin.
    pub(crate) fn wait(&self, timeout: Duration, counters: &WakeCounters) {
        let fd = self.fd();
        let ms = timeout.as_micros().div_ceil(1000);
        let ms = u16::try_from(ms).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => {
                counters.timeouts.fetch_add(1, Ordering::Relaxed);
            }
            Err(Errno::EINTR) => {}
            Ok(_) => {
                let revents = fds[0].revents().unwrap_or(PollFlags::empty());
                if revents.intersects(PollFlags::POLLERR | PollFlags::POLLHUP) {
                    std::thread::sleep(timeout.min(Duration::from_millis(10)));
                } else {
                    counters.interrupts.fetch_add(1, Ordering::Relaxed);
                    self.take();
                }
            }
            Err(_) => std::thread::sleep(timeout.min(Duration::from_millis(10))),
        }
    }

    /// Reads (clears) the pending interrupt count without waiting.
    fn take(&self) {
        let mut buf = [0u8; 8];
        let len = self.read_len();
        // Non-blocking: EAGAIN means nothing is pending.
        let _ = nix::unistd::read(self.fd().as_raw_fd(), &mut buf[..len]);
    }
}

/// An open `/dev/ivshmemN` of ivchan's driver.
#[derive(Debug)]
pub(crate) struct DriverFile {
    file: File,
    path: std::path::PathBuf,
}

impl DriverFile {
    /// The driver's device file for `device`: its sysfs directory lists it
    /// under `misc/`; the node is `/dev/NAME`.
    pub(crate) fn open(device: &IvshmemDevice) -> Result<Self, GuestError> {
        let wake_err = |reason: String| GuestError::Wake {
            address: device.address.clone(),
            route: "driver",
            reason,
        };
        if vfio::bound_driver(device).as_deref() != Some(DRIVER_NAME) {
            return Err(wake_err(format!(
                "the device is not bound to {DRIVER_NAME} (is the module loaded? `modprobe {DRIVER_NAME}`)"
            )));
        }
        let misc = device.sysfs_dir.join("misc");
        let name = fs::read_dir(&misc)
            .map_err(|e| GuestError::from_io(&misc, "list", e))?
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .find(|n| n.starts_with("ivshmem"))
            .ok_or_else(|| wake_err(format!("no ivshmem device file under {}", misc.display())))?;
        let path = Path::new("/dev").join(&name);
        // Read and write: BAR0 is mapped through it too.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| GuestError::from_io(&path, "open", e))?;
        Ok(Self { file, path })
    }

    /// The open device file (its `mmap` maps the BARs).
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Its path, for messages.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// What [`WakePreference::Auto`] would pick for `device`, and why, without
/// setting anything up (no rebinding, no device file opened): for tools
/// that only inspect.
pub fn likely_source(device: &IvshmemDevice) -> (WakeSource, String) {
    if device.kind != DeviceKind::Doorbell {
        return (
            WakeSource::Polling,
            "ivshmem-plain has no interrupts".into(),
        );
    }
    match vfio::bound_driver(device).as_deref() {
        Some("vfio-pci") => (WakeSource::Vfio, "bound to vfio-pci".into()),
        None if vfio::available(device) => (
            WakeSource::Vfio,
            "unbound, vfio-pci loaded, IOMMU group present".into(),
        ),
        Some(DRIVER_NAME) => (WakeSource::Driver, format!("bound to {DRIVER_NAME}")),
        Some(other) => (
            WakeSource::Polling,
            format!("bound to {other}, which offers no interrupts to ivchan"),
        ),
        None => (
            WakeSource::Polling,
            format!("no driver bound: load {DRIVER_NAME} (or vfio-pci with an IOMMU)"),
        ),
    }
}

/// Sets up the wake source `preference` asks for on `device`; `None`
/// means polling.
pub(crate) fn open(
    device: &IvshmemDevice,
    preference: WakePreference,
) -> Result<Option<Interrupts>, GuestError> {
    let doorbell = device.kind == DeviceKind::Doorbell;
    let no_msix = |route: &'static str| GuestError::Wake {
        address: device.address.clone(),
        route,
        reason: "an ivshmem-plain device has no interrupts (use ivshmem-doorbell)".into(),
    };
    match preference {
        WakePreference::Only(WakeSource::Polling) => Ok(None),
        WakePreference::Only(WakeSource::Vfio) if !doorbell => Err(no_msix("VFIO")),
        WakePreference::Only(WakeSource::Driver) if !doorbell => Err(no_msix("driver")),
        WakePreference::Only(WakeSource::Vfio) => {
            VfioDevice::open(device).map(|v| Some(Interrupts::Vfio(v)))
        }
        WakePreference::Only(WakeSource::Driver) => {
            DriverFile::open(device).map(|d| Some(Interrupts::Driver(d)))
        }
        WakePreference::Auto if !doorbell => Ok(None),
        WakePreference::Auto => {
            let driver = vfio::bound_driver(device);
            let vfio_fits = match driver.as_deref() {
                Some("vfio-pci") => true,
                None => vfio::available(device),
                Some(_) => false,
            };
            if vfio_fits {
                if let Ok(v) = VfioDevice::open(device) {
                    return Ok(Some(Interrupts::Vfio(v)));
                }
            }
            if driver.as_deref() == Some(DRIVER_NAME) {
                if let Ok(d) = DriverFile::open(device) {
                    return Ok(Some(Interrupts::Driver(d)));
                }
            }
            Ok(None)
        }
    }
}
