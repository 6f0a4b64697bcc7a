//! Mapping BAR2 through sysfs (or VFIO). With the VFIO ioctls,
//! the crate's only `unsafe` code.
//!
//! `resource2` gives an uncached mapping: every load and store goes to the
//! device (on KVM, to host RAM with UC attributes — correct but slow).
//! `resource2_wc` (present for prefetchable BARs, which ivshmem's BAR2 is)
//! gives a write-combining mapping: stores are buffered and may reach memory
//! out of order with respect to later stores. On a WC mapping the producer
//! must issue a store fence (`sfence`;
//! `std::sync::atomic::fence(Ordering::SeqCst)` compiles to `mfence`, which
//! also works) after writing a message and before the index store that
//! publishes it. [`MappedBar::write_combining`] tells the channel layer which
//! kind it got.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;
use std::ptr::NonNull;
use std::time::Duration;

use ivchan_protocol::layout::MIN_REGION_SIZE;
use ivchan_protocol::{
    poll_until, Header, LayoutError, Mapping, Region, SharedMemory, WaitStrategy,
};
use memmap2::{MmapMut, MmapOptions};

use crate::discovery::{not_root_hint, IvshmemDevice};
use crate::vfio::VfioDevice;
use crate::wake::DriverFile;
use crate::{GuestError, VmUuid};

/// How to map a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapOptions {
    /// Map `resource2_wc` instead of `resource2` (see the module docs for
    /// the store fence this requires).
    pub write_combining: bool,
    /// Enable the device first if its memory decoding is off (writes `1`
    /// to its `enable` file). Without it a disabled device is mapped as is
    /// and reads return all ones.
    pub enable: bool,
}

impl Default for MapOptions {
    /// Uncached, enabling the device when needed.
    fn default() -> Self {
        Self {
            write_combining: false,
            enable: true,
        }
    }
}

/// BAR2 of an ivshmem device, mapped shared read/write.
#[derive(Debug)]
pub struct MappedBar {
    /// Owns the mapping (unmapped on drop); reached only through `Region`s,
    /// never as `&[u8]` the compiler could assume stable.
    mapping: Mapping,
    device: IvshmemDevice,
    write_combining: bool,
}

// SAFETY: the region is the owned `mapping`'s, in place wherever the value
// moves.
unsafe impl SharedMemory for MappedBar {
    fn region(&self) -> Region<'_> {
        self.mapping.region()
    }
}

impl MappedBar {
    /// Maps BAR2 of `device`. The mapped length is the resource file's
    /// length, which sysfs sets to the BAR size.
    ///
    /// Errors: [`GuestError::PermissionDenied`] (EACCES, usually not root),
    /// [`GuestError::Lockdown`] (EPERM from mmap),
    /// [`GuestError::BarTooSmall`], [`GuestError::NoWriteCombining`].
    pub fn map(mut device: IvshmemDevice, options: &MapOptions) -> Result<Self, GuestError> {
        if options.enable {
            device.enable()?;
        }
        let path = device.bar2_path(options.write_combining);
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound && options.write_combining => {
                return Err(GuestError::NoWriteCombining { path })
            }
            Err(e) => return Err(GuestError::from_io(&path, "open", e)),
        };
        let size = file
            .metadata()
            .map_err(|e| GuestError::from_io(&path, "stat", e))?
            .len();
        let too_small = || GuestError::BarTooSmall {
            address: device.address.clone(),
            size,
            min: MIN_REGION_SIZE,
        };
        if size < MIN_REGION_SIZE as u64 {
            return Err(too_small());
        }
        let len = usize::try_from(size).map_err(|_| GuestError::Io {
            path: path.clone(),
            op: "map",
            source: io::Error::other(format!("{size} bytes do not fit this address space")),
        })?;
        // Other processes and the host may change the BAR at any time: the
        // mapping is only ever reached through `Region`.
        let mapping = Mapping::shared(&file, len).map_err(|e| match e.raw_os_error() {
            Some(code) if code == nix::libc::EPERM => GuestError::Lockdown { path: path.clone() },
            Some(code) if code == nix::libc::EACCES => GuestError::PermissionDenied {
                path: path.clone(),
                op: "map",
                hint: not_root_hint(),
            },
            _ => GuestError::Io {
                path: path.clone(),
                op: "map",
                source: e,
            },
        })?;
        Ok(Self {
            mapping,
            device,
            write_combining: options.write_combining,
        })
    }

    /// Maps BAR2 of `device` through its open VFIO device file (the
    /// VFIO route: once `vfio-pci` claims the BAR, sysfs mappings of it
    /// may be revoked).
    pub(crate) fn map_vfio(device: IvshmemDevice, vfio: &VfioDevice) -> Result<Self, GuestError> {
        let bar = vfio.region(&device, crate::vfio::BAR2)?;
        let too_small = || GuestError::BarTooSmall {
            address: device.address.clone(),
            size: bar.size,
            min: MIN_REGION_SIZE,
        };
        let len = usize::try_from(bar.size).map_err(|_| too_small())?;
        if len < MIN_REGION_SIZE {
            return Err(too_small());
        }
        let mapping =
            Mapping::shared_at(vfio.file(), bar.offset, len).map_err(|e| GuestError::Wake {
                address: device.address.clone(),
                route: "VFIO",
                reason: format!("map BAR2: {e}"),
            })?;
        Ok(Self {
            mapping,
            device,
            write_combining: false,
        })
    }

    /// The mapping as an ivchan region.
    pub fn region(&self) -> Region<'_> {
        self.mapping.region()
    }

    /// Mapped length in bytes (the BAR size).
    pub fn len(&self) -> usize {
        self.mapping.len()
    }

    /// Never true: a mapping is at least `MIN_REGION_SIZE` bytes.
    pub fn is_empty(&self) -> bool {
        self.mapping.is_empty()
    }

    /// The device this BAR belongs to.
    pub fn device(&self) -> &IvshmemDevice {
        &self.device
    }

    /// True for a write-combining mapping: a producer must fence
    /// (`std::sync::atomic::fence(SeqCst)`) between writing a message and
    /// publishing the index that covers it.
    pub fn write_combining(&self) -> bool {
        self.write_combining
    }

    /// The header, if the host has written one.
    pub fn header(&self) -> Result<Header<'_>, GuestError> {
        Header::open(self.region()).map_err(|source| GuestError::Layout {
            address: self.device.address.clone(),
            source,
        })
    }

    /// Polls for the header until the host has written it (backing off from
    /// 1 ms to 100 ms between polls), or [`GuestError::Timeout`].
    pub fn wait_for_header(&self, timeout: Duration) -> Result<Header<'_>, GuestError> {
        let strategy = WaitStrategy::backoff(Duration::from_millis(1), Duration::from_millis(100));
        let header = poll_until(strategy, Some(timeout), || {
            match Header::open(self.region()) {
                Err(LayoutError::NotInitialized) => Ok(None),
                Ok(header) => Ok(Some(header)),
                Err(source) => Err(GuestError::Layout {
                    address: self.device.address.clone(),
                    source,
                }),
            }
        })?;
        header.ok_or_else(|| GuestError::Timeout {
            address: self.device.address.clone(),
            waited: timeout,
        })
    }

    /// Checks that `header` was written for VM `this_vm`.
    pub fn check_identity(&self, header: &Header<'_>, this_vm: &VmUuid) -> Result<(), GuestError> {
        let found = VmUuid::from_bytes(header.layout().uuid);
        if found == *this_vm {
            Ok(())
        } else {
            Err(GuestError::WrongVm {
                address: self.device.address.clone(),
                header: found,
                this_vm: *this_vm,
            })
        }
    }
}

/// Offsets of the ivshmem BAR0 registers (QEMU's ivshmem spec).
pub mod registers {
    /// Interrupt mask (INTx only).
    pub const INTR_MASK: usize = 0;
    /// Interrupt status (INTx only).
    pub const INTR_STATUS: usize = 4;
    /// This guest's peer id (doorbell devices; read-only).
    pub const IV_POSITION: usize = 8;
    /// Write `peer << 16 | vector` to interrupt that peer's vector.
    pub const DOORBELL: usize = 12;
}

/// BAR0 of an ivshmem device: its four 32-bit registers, mapped through
/// sysfs `resource0`. Meaningful on doorbell devices: on a plain device
/// the doorbell goes nowhere.
#[derive(Debug)]
pub struct Registers {
    /// Taken once from `map`; 4-byte aligned (page-aligned mapping) and at
    /// least 16 bytes long (checked in `map`).
    base: NonNull<u8>,
    _map: MmapMut,
    address: String,
}

// SAFETY: `base` points into the mapping this value owns; registers are only
// accessed with volatile 32-bit loads and stores, which are fine from any
// thread (the device serialises them).
unsafe impl Send for Registers {}
// SAFETY: as above.
unsafe impl Sync for Registers {}

impl Registers {
    /// Maps BAR0 of `device` (`resource0`, 256 bytes on QEMU).
    pub fn map(device: &IvshmemDevice) -> Result<Self, GuestError> {
        let path = device.sysfs_dir.join("resource0");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| GuestError::from_io(&path, "open", e))?;
        let size = file
            .metadata()
            .map_err(|e| GuestError::from_io(&path, "stat", e))?
            .len();
        if size < 16 {
            return Err(GuestError::BadSysfsValue {
                path,
                value: format!("{size}-byte BAR0, expected at least 16"),
            });
        }
        Self::map_file(&file, 0, &path, &device.address)
    }

    /// Maps BAR0 through the device's open VFIO file.
    pub(crate) fn map_vfio(device: &IvshmemDevice, vfio: &VfioDevice) -> Result<Self, GuestError> {
        let bar = vfio.region(device, crate::vfio::BAR0)?;
        if bar.size < 16 {
            return Err(GuestError::Wake {
                address: device.address.clone(),
                route: "VFIO",
                reason: format!("{}-byte BAR0, expected at least 16", bar.size),
            });
        }
        let path = Path::new("/dev/vfio").join(&device.address);
        Self::map_file(vfio.file(), bar.offset, &path, &device.address)
    }

    /// Maps BAR0 through ivchan's guest driver (`/dev/ivshmemN` at offset
    /// 0), which the driver tears down if the device goes away.
    pub(crate) fn map_driver(
        device: &IvshmemDevice,
        driver: &DriverFile,
    ) -> Result<Self, GuestError> {
        Self::map_file(driver.file(), 0, driver.path(), &device.address)
    }

    fn map_file(file: &File, offset: u64, path: &Path, address: &str) -> Result<Self, GuestError> {
        let path = path.to_path_buf();
        // SAFETY: a shared mapping of the device's register BAR (or, in
        // tests, a plain file); only accessed with volatile loads/stores of
        // aligned u32s below, inside the 16 bytes the callers checked.
        let mapped = unsafe { MmapOptions::new().offset(offset).len(16).map_mut(file) };
        let mut map = mapped.map_err(|e| GuestError::from_io(&path, "map", e))?;
        let base = NonNull::new(map.as_mut_ptr()).ok_or_else(|| GuestError::BadSysfsValue {
            path: path.clone(),
            value: "null mapping".into(),
        })?;
        Ok(Self {
            base,
            _map: map,
            address: address.to_owned(),
        })
    }

    /// The device's PCI address.
    pub fn address(&self) -> &str {
        &self.address
    }

    fn reg(&self, offset: usize) -> *mut u32 {
        assert!(
            offset % 4 == 0 && offset + 4 <= 16,
            "ivchan bug: register {offset}"
        );
        self.base.as_ptr().wrapping_add(offset).cast::<u32>()
    }

    /// Reads a register.
    pub fn read(&self, offset: usize) -> u32 {
        // SAFETY: `reg` keeps the access inside the mapped 16 bytes, 4-byte
        // aligned; volatile because it is device memory.
        u32::from_le(unsafe { self.reg(offset).read_volatile() })
    }

    /// This guest's peer id on the ivshmem server.
    pub fn iv_position(&self) -> u32 {
        self.read(registers::IV_POSITION)
    }

    /// Rings `vector` of peer `peer` (QEMU writes that peer's eventfd).
    pub fn ring(&self, peer: u16, vector: u16) {
        let value = (u32::from(peer) << 16) | u32::from(vector);
        // SAFETY: as in `read`.
        unsafe { self.reg(registers::DOORBELL).write_volatile(value.to_le()) }
    }
}
