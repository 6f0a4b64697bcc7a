//! Mapping BAR2 through sysfs. The only module of this crate with `unsafe`.
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

use std::fs::OpenOptions;
use std::io;
use std::ptr::NonNull;
use std::thread;
use std::time::{Duration, Instant};

use ivchan_protocol::layout::MIN_REGION_SIZE;
use ivchan_protocol::{Header, LayoutError, Region};
use memmap2::{MmapMut, MmapOptions};

use crate::discovery::{not_root_hint, IvshmemDevice};
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
    /// Pointer taken once from `map` with write provenance; `map` is not
    /// touched again until it is dropped (which unmaps).
    base: NonNull<u8>,
    len: usize,
    /// Owns the mapping (unmapped on drop); never accessed directly.
    _map: MmapMut,
    device: IvshmemDevice,
    write_combining: bool,
}

// SAFETY: `base` points into `map`, which this value owns and which stays
// mapped until drop; all access goes through `Region`, which is itself
// Send + Sync (atomic word access, `unsafe` byte access). The fields are
// otherwise plain data and an `MmapMut` (Send + Sync).
unsafe impl Send for MappedBar {}
// SAFETY: see `Send` above; `&MappedBar` only hands out `Region` copies.
unsafe impl Sync for MappedBar {}

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
        let len = usize::try_from(size).map_err(|_| too_small())?;
        if len < MIN_REGION_SIZE {
            return Err(too_small());
        }
        // SAFETY: a shared mapping of the BAR (or, in tests, of a plain
        // file). Other processes and the host may change it at any time;
        // that is why it is only ever accessed through `Region` (atomic
        // words, byte copies under the ring protocol), never as `&[u8]`
        // that the compiler could assume stable.
        let mapped = unsafe { MmapOptions::new().len(len).map_mut(&file) };
        let mut map = mapped.map_err(|e| match e.raw_os_error() {
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
        let base = NonNull::new(map.as_mut_ptr()).ok_or_else(|| GuestError::Layout {
            address: device.address.clone(),
            source: LayoutError::BadPointer { addr: 0 },
        })?;
        if base.as_ptr() as usize % 8 != 0 {
            return Err(GuestError::Layout {
                address: device.address.clone(),
                source: LayoutError::BadPointer {
                    addr: base.as_ptr() as usize,
                },
            });
        }
        Ok(Self {
            base,
            len,
            _map: map,
            device,
            write_combining: options.write_combining,
        })
    }

    /// The mapping as an ivchan region.
    pub fn region(&self) -> Region<'_> {
        // SAFETY: `base..base+len` is our live shared mapping, readable and
        // writable, and it outlives the returned `Region` (borrow of self).
        // This process touches it only through `Region`s.
        let region = unsafe { Region::from_raw_parts(self.base.as_ptr(), self.len) };
        // `map` checked non-null and 8-byte alignment (mmap is page-aligned).
        region.expect("mapping checked to be non-null and aligned")
    }

    /// Mapped length in bytes (the BAR size).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: a mapping is at least `MIN_REGION_SIZE` bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
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
        let start = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            match Header::open(self.region()) {
                Err(LayoutError::NotInitialized) => {}
                Ok(header) => return Ok(header),
                Err(source) => {
                    return Err(GuestError::Layout {
                        address: self.device.address.clone(),
                        source,
                    })
                }
            }
            let waited = start.elapsed();
            if waited >= timeout {
                return Err(GuestError::Timeout {
                    address: self.device.address.clone(),
                    waited,
                });
            }
            thread::sleep(pause.min(timeout - waited));
            pause = (pause * 2).min(Duration::from_millis(100));
        }
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
