//! The VFIO route: the device bound to `vfio-pci`, its BARs mapped and its
//! MSI-X vector 0 armed on an eventfd through `/dev/vfio`. Needs an IOMMU in
//! the VM (or a kernel with VFIO no-IOMMU mode) and root.
//!
//! `vfio-pci` does not turn on PCI bus mastering, and QEMU sends the
//! device's MSI writes through its bus-master address space: without the
//! bit every interrupt is dropped silently. [`VfioDevice::open`] sets it
//! through the device's config region.
//!
//! The ioctls and structures are those of `include/uapi/linux/vfio.h`
//! (API version 0), called through nix; this module and [`crate::mapping`]
//! are the crate's only `unsafe` code.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::discovery::IvshmemDevice;
use crate::GuestError;

const VFIO_TYPE: u8 = b';';
const VFIO_BASE: u8 = 100;
const VFIO_API_VERSION: i32 = 0;
const VFIO_TYPE1_IOMMU: i32 = 1;
const VFIO_TYPE1V2_IOMMU: i32 = 3;
const VFIO_GROUP_FLAGS_VIABLE: u32 = 1;
const VFIO_REGION_INFO_FLAG_MMAP: u32 = 1 << 2;
const VFIO_IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
const VFIO_IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;
/// Region index of BAR0 (registers) and BAR2 (shared memory).
pub(crate) const BAR0: u32 = 0;
pub(crate) const BAR2: u32 = 2;
const CONFIG_REGION: u32 = 7;
const MSIX_IRQ_INDEX: u32 = 2;
/// PCI command register: memory space and bus master bits.
const PCI_COMMAND: u64 = 4;
const PCI_COMMAND_MEMORY: u16 = 1 << 1;
const PCI_COMMAND_MASTER: u16 = 1 << 2;

#[repr(C)]
#[derive(Debug, Default)]
struct GroupStatus {
    argsz: u32,
    flags: u32,
}

#[repr(C)]
#[derive(Debug, Default)]
struct RegionInfo {
    argsz: u32,
    flags: u32,
    index: u32,
    cap_offset: u32,
    size: u64,
    offset: u64,
}

/// `struct vfio_irq_set` with room for one eventfd.
#[repr(C)]
#[derive(Debug)]
struct IrqSetOne {
    argsz: u32,
    flags: u32,
    index: u32,
    start: u32,
    count: u32,
    fd: i32,
}

const _: () = assert!(std::mem::size_of::<RegionInfo>() == 32);
const _: () = assert!(std::mem::size_of::<IrqSetOne>() == 24);

nix::ioctl_none_bad!(
    get_api_version,
    nix::request_code_none!(VFIO_TYPE, VFIO_BASE)
);
nix::ioctl_write_int_bad!(
    check_extension,
    nix::request_code_none!(VFIO_TYPE, VFIO_BASE + 1)
);
nix::ioctl_write_int_bad!(set_iommu, nix::request_code_none!(VFIO_TYPE, VFIO_BASE + 2));
nix::ioctl_readwrite_bad!(
    group_get_status,
    nix::request_code_none!(VFIO_TYPE, VFIO_BASE + 3),
    GroupStatus
);
nix::ioctl_write_ptr_bad!(
    group_set_container,
    nix::request_code_none!(VFIO_TYPE, VFIO_BASE + 4),
    i32
);
nix::ioctl_write_ptr_bad!(
    group_get_device_fd,
    nix::request_code_none!(VFIO_TYPE, VFIO_BASE + 6),
    u8
);
nix::ioctl_readwrite_bad!(
    device_get_region_info,
    nix::request_code_none!(VFIO_TYPE, VFIO_BASE + 8),
    RegionInfo
);
nix::ioctl_write_ptr_bad!(
    device_set_irqs,
    nix::request_code_none!(VFIO_TYPE, VFIO_BASE + 10),
    IrqSetOne
);

/// One BAR as VFIO describes it: where it sits in the device file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct VfioRegion {
    pub offset: u64,
    pub size: u64,
}

/// An open VFIO device with its MSI-X vector 0 armed on an eventfd. The
/// container and group stay open as long as it lives; dropping it disarms
/// the interrupt (the kernel does, when the device file closes).
#[derive(Debug)]
pub(crate) struct VfioDevice {
    device: File,
    eventfd: OwnedFd,
    _group: File,
    _container: File,
}

fn vfio_err(device: &IvshmemDevice, what: impl Into<String>) -> GuestError {
    GuestError::Wake {
        address: device.address.clone(),
        route: "VFIO",
        reason: what.into(),
    }
}

/// Where `vfio-pci` would be under this device's sysfs root.
fn pci_bus_dir(device: &IvshmemDevice) -> Option<PathBuf> {
    // sysfs_dir is <root>/bus/pci/devices/<address>.
    Some(device.sysfs_dir.parent()?.parent()?.to_path_buf())
}

/// The driver bound to `device`, by name (`None`: unbound).
pub(crate) fn bound_driver(device: &IvshmemDevice) -> Option<String> {
    let link = fs::read_link(device.sysfs_dir.join("driver")).ok()?;
    Some(link.file_name()?.to_string_lossy().into_owned())
}

/// The device's IOMMU group number, if it has one.
pub(crate) fn iommu_group(device: &IvshmemDevice) -> Option<String> {
    let link = fs::read_link(device.sysfs_dir.join("iommu_group")).ok()?;
    Some(link.file_name()?.to_string_lossy().into_owned())
}

/// Whether the VFIO route can be tried: `vfio-pci` is loaded and the
/// device is in an IOMMU group.
pub(crate) fn available(device: &IvshmemDevice) -> bool {
    pci_bus_dir(device).is_some_and(|bus| bus.join("drivers/vfio-pci").exists())
        && iommu_group(device).is_some()
        && Path::new("/dev/vfio/vfio").exists()
}

/// Binds `device` to `vfio-pci` (through `driver_override`, unbinding the
/// driver it has), unless it already is.
fn bind_vfio(device: &IvshmemDevice) -> Result<(), GuestError> {
    let current = bound_driver(device);
    if current.as_deref() == Some("vfio-pci") {
        return Ok(());
    }
    let bus = pci_bus_dir(device).ok_or_else(|| vfio_err(device, "no sysfs bus directory"))?;
    let write = |path: PathBuf, value: &str| {
        fs::write(&path, value).map_err(|e| GuestError::from_io(&path, "write", e))
    };
    write(device.sysfs_dir.join("driver_override"), "vfio-pci")?;
    if current.is_some() {
        write(device.sysfs_dir.join("driver/unbind"), &device.address)?;
    }
    write(bus.join("drivers_probe"), &device.address)?;
    match bound_driver(device) {
        Some(driver) if driver == "vfio-pci" => Ok(()),
        other => Err(vfio_err(
            device,
            format!("binding to vfio-pci left the device with driver {other:?}"),
        )),
    }
}

fn open_rw(path: &Path) -> Result<File, GuestError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| GuestError::from_io(path, "open", e))
}

fn errno(device: &IvshmemDevice, op: &str, e: nix::Error) -> GuestError {
    vfio_err(device, format!("{op}: {e}"))
}

impl VfioDevice {
    /// Binds the device to `vfio-pci`, opens it through its group, turns on
    /// memory decoding and bus mastering, and arms MSI-X vector 0 on a new
    /// eventfd.
    pub(crate) fn open(device: &IvshmemDevice) -> Result<Self, GuestError> {
        let group_id =
            iommu_group(device).ok_or_else(|| vfio_err(device, "the device has no IOMMU group"))?;
        bind_vfio(device)?;
        let container = open_rw(Path::new("/dev/vfio/vfio"))?;
        // SAFETY: VFIO_GET_API_VERSION takes no argument.
        let version = unsafe { get_api_version(container.as_raw_fd()) }
            .map_err(|e| errno(device, "VFIO_GET_API_VERSION", e))?;
        if version != VFIO_API_VERSION {
            return Err(vfio_err(device, format!("VFIO API version {version}")));
        }
        let group = open_rw(&Path::new("/dev/vfio").join(&group_id))?;
        let mut status = GroupStatus {
            argsz: size_of_u32::<GroupStatus>(),
            flags: 0,
        };
        // SAFETY: `status` is a live vfio_group_status with argsz set; the
        // kernel writes only inside it.
        unsafe { group_get_status(group.as_raw_fd(), &mut status) }
            .map_err(|e| errno(device, "VFIO_GROUP_GET_STATUS", e))?;
        if status.flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(vfio_err(
                device,
                format!("IOMMU group {group_id} is not viable: bind all its devices to vfio-pci"),
            ));
        }
        let container_fd = container.as_raw_fd();
        // SAFETY: the argument points at an int holding an open fd.
        unsafe { group_set_container(group.as_raw_fd(), &container_fd) }
            .map_err(|e| errno(device, "VFIO_GROUP_SET_CONTAINER", e))?;
        let mut iommu = None;
        for kind in [VFIO_TYPE1V2_IOMMU, VFIO_TYPE1_IOMMU] {
            // SAFETY: VFIO_CHECK_EXTENSION takes an int by value.
            if unsafe { check_extension(container_fd, kind) }.is_ok_and(|r| r > 0) {
                iommu = Some(kind);
                break;
            }
        }
        let iommu = iommu.ok_or_else(|| vfio_err(device, "no type 1 IOMMU"))?;
        // SAFETY: VFIO_SET_IOMMU takes an int by value.
        unsafe { set_iommu(container_fd, iommu) }
            .map_err(|e| errno(device, "VFIO_SET_IOMMU", e))?;
        let name = std::ffi::CString::new(device.address.as_str())
            .map_err(|_| vfio_err(device, "address holds a NUL"))?;
        // SAFETY: the argument is a NUL-terminated string that outlives
        // the call; on success the kernel returns a new fd that we own.
        let fd = unsafe { group_get_device_fd(group.as_raw_fd(), name.as_ptr().cast()) }
            .map_err(|e| errno(device, "VFIO_GROUP_GET_DEVICE_FD", e))?;
        // SAFETY: `fd` was just returned by the kernel and is owned by no
        // one else.
        let device_file = unsafe { File::from_raw_fd(fd) };
        let eventfd: OwnedFd =
            EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .map_err(|e| errno(device, "eventfd", e))?
                .into();
        let vfio = Self {
            device: device_file,
            eventfd,
            _group: group,
            _container: container,
        };
        vfio.enable_bus_master(device)?;
        vfio.arm_msix(device)?;
        Ok(vfio)
    }

    /// Where region `index` sits in the device file.
    pub(crate) fn region(
        &self,
        device: &IvshmemDevice,
        index: u32,
    ) -> Result<VfioRegion, GuestError> {
        let mut info = RegionInfo {
            argsz: size_of_u32::<RegionInfo>(),
            index,
            ..RegionInfo::default()
        };
        // SAFETY: `info` is a live vfio_region_info with argsz set; the
        // kernel writes only inside it.
        unsafe { device_get_region_info(self.device.as_raw_fd(), &mut info) }
            .map_err(|e| errno(device, "VFIO_DEVICE_GET_REGION_INFO", e))?;
        if index != CONFIG_REGION && info.flags & VFIO_REGION_INFO_FLAG_MMAP == 0 {
            return Err(vfio_err(device, format!("region {index} cannot be mapped")));
        }
        Ok(VfioRegion {
            offset: info.offset,
            size: info.size,
        })
    }

    /// The device file (its regions are mapped from it).
    pub(crate) fn file(&self) -> &File {
        &self.device
    }

    fn enable_bus_master(&self, device: &IvshmemDevice) -> Result<(), GuestError> {
        let config = self.region(device, CONFIG_REGION)?;
        let at = config.offset + PCI_COMMAND;
        let mut raw = [0u8; 2];
        let io = |e: io::Error| vfio_err(device, format!("PCI command register: {e}"));
        self.device.read_exact_at(&mut raw, at).map_err(io)?;
        let command = u16::from_le_bytes(raw) | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
        self.device
            .write_all_at(&command.to_le_bytes(), at)
            .map_err(io)
    }

    fn arm_msix(&self, device: &IvshmemDevice) -> Result<(), GuestError> {
        let set = IrqSetOne {
            argsz: size_of_u32::<IrqSetOne>(),
            flags: VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            index: MSIX_IRQ_INDEX,
            start: 0,
            count: 1,
            fd: self.eventfd.as_raw_fd(),
        };
        // SAFETY: `set` is a vfio_irq_set followed by one eventfd, argsz
        // covering both; the kernel only reads it.
        unsafe { device_set_irqs(self.device.as_raw_fd(), &set) }
            .map_err(|e| errno(device, "VFIO_DEVICE_SET_IRQS (MSI-X)", e))?;
        Ok(())
    }

    /// The eventfd the device's vector 0 writes.
    pub(crate) fn eventfd(&self) -> BorrowedFd<'_> {
        self.eventfd.as_fd()
    }
}

#[allow(clippy::cast_possible_truncation)]
const fn size_of_u32<T>() -> u32 {
    // The structures above are a few dozen bytes.
    std::mem::size_of::<T>() as u32
}
