//! The region file of one VM: `/dev/shm/fg_<uuid>` (8 MiB) by default, or a
//! file on hugetlbfs, opened or created safely and mapped shared.
//!
//! `/dev/shm` is world-writable, so nothing found there is trusted: the file
//! is opened with `O_NOFOLLOW` (a symlink is refused), then its inode is
//! checked through the descriptor (`fstat`): a regular file, owned by an
//! allowed uid, not group/other-writable unless allowed, and a power-of-two
//! size of at least 1 MiB. An exclusive `flock` keeps a second host agent
//! off the same region. The one `unsafe` operation, the mapping, is in this
//! module (`map_shared`, `map_private` and `region_of`).
//!
//! Both start orders work: if QEMU created the file first it is all zeros
//! and [`RegionFile::attach_or_init`] writes the header; if a host agent
//! created it earlier, `attach_or_init` attaches without wiping.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use ivchan_protocol::layout::MIN_REGION_SIZE;
use ivchan_protocol::{Header, InitParams, LayoutError, Region};
use memmap2::{MmapMut, MmapOptions};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::sys::statfs::{fstatfs, HUGETLBFS_MAGIC};
use nix::unistd::{Gid, Uid};

pub use ivchan_protocol::{UuidError, VmUuid};

/// Default directory of region files.
pub const DEFAULT_DIR: &str = "/dev/shm";
/// Default file-name prefix (`fg_<uuid>`).
pub const DEFAULT_PREFIX: &str = "fg_";
/// Default region size: 8 MiB.
pub const DEFAULT_SIZE: u64 = 8 << 20;

/// Errors opening, creating, checking or mapping a region file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegionError {
    /// The VM UUID is not canonical.
    #[error(transparent)]
    Uuid(#[from] UuidError),
    /// The path is a symbolic link (refused, `O_NOFOLLOW`).
    #[error("{path} is a symbolic link; refusing to follow it")]
    Symlink {
        /// The path.
        path: PathBuf,
    },
    /// Not a regular file.
    #[error("{path} is not a regular file")]
    NotRegular {
        /// The path.
        path: PathBuf,
    },
    /// The file is owned by a uid that is not allowed.
    #[error("{path} is owned by uid {uid}, expected one of {allowed:?}")]
    UnexpectedOwner {
        /// The path.
        path: PathBuf,
        /// The owner found.
        uid: u32,
        /// The owners allowed.
        allowed: Vec<u32>,
    },
    /// Group or others may write the file and the options do not allow it.
    #[error("{path} has mode {mode:04o}: writable by group or others")]
    WritableByOthers {
        /// The path.
        path: PathBuf,
        /// Permission bits found.
        mode: u32,
    },
    /// A zero-length file: its creator (e.g. QEMU) has not sized it yet.
    #[error("{path} is empty: its creator has not sized it yet")]
    Unsized {
        /// The path.
        path: PathBuf,
    },
    /// A size that is not a power of two.
    #[error("{path}: size {size} is not a power of two")]
    SizeNotPowerOfTwo {
        /// The path.
        path: PathBuf,
        /// The size in bytes.
        size: u64,
    },
    /// A size below ivchan's minimum region.
    #[error("{path}: size {size} is smaller than the {min}-byte minimum")]
    SizeTooSmall {
        /// The path.
        path: PathBuf,
        /// The size in bytes.
        size: u64,
        /// The minimum.
        min: u64,
    },
    /// On hugetlbfs, a size that is not a multiple of the huge page size.
    #[error("{path}: size {size} is not a multiple of the {page_size}-byte huge page size")]
    NotHugePageMultiple {
        /// The path.
        path: PathBuf,
        /// The size in bytes.
        size: u64,
        /// The file system's huge page size.
        page_size: u64,
    },
    /// The path no longer names the file we opened (not removed).
    #[error("{path} was replaced by another file; not removing it")]
    Replaced {
        /// The path.
        path: PathBuf,
    },
    /// Another process holds the region's lock.
    #[error("{path} is in use by another host agent (flock held)")]
    Busy {
        /// The path.
        path: PathBuf,
    },
    /// The region speaks another major version; it is left untouched.
    #[error("{path} speaks protocol {found}, this build speaks {supported}; not touching it")]
    IncompatibleVersion {
        /// The path.
        path: PathBuf,
        /// `major.minor` found in the header.
        found: String,
        /// `major.minor` of this build.
        supported: String,
    },
    /// The header is for another VM than the file name says.
    #[error("{path} carries a header for VM {header}, but its name says VM {file}")]
    UuidMismatch {
        /// The path.
        path: PathBuf,
        /// UUID from the file name.
        file: VmUuid,
        /// UUID in the header.
        header: VmUuid,
    },
    /// Any other header problem; the region is left untouched.
    #[error("{path}: {source}")]
    Layout {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        source: LayoutError,
    },
    /// An OS error.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What we were doing.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> RegionError + 'a {
    move |source| RegionError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// Where region files live and what they may look like.
#[derive(Debug, Clone)]
pub struct RegionOptions {
    dir: PathBuf,
    prefix: String,
    size: u64,
    mode: u32,
    group: Option<Gid>,
    owner: Option<Uid>,
    owners: Vec<Uid>,
    allow_group_write: bool,
    allow_other_write: bool,
}

impl Default for RegionOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl RegionOptions {
    /// `/dev/shm`, `fg_`, 8 MiB, mode 0600, owned by the current euid.
    pub fn new() -> Self {
        Self {
            dir: PathBuf::from(DEFAULT_DIR),
            prefix: DEFAULT_PREFIX.to_owned(),
            size: DEFAULT_SIZE,
            mode: 0o600,
            group: None,
            owner: None,
            owners: vec![nix::unistd::geteuid()],
            allow_group_write: false,
            allow_other_write: false,
        }
    }

    /// Directory of region files (a hugetlbfs mount works too).
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = dir.into();
        self
    }

    /// File-name prefix before the UUID.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Size of newly created files (a power of two, at least 1 MiB; on
    /// hugetlbfs a multiple of the huge page size).
    pub fn size(mut self, size: u64) -> Self {
        self.size = size;
        self
    }

    /// Permission bits of newly created files (default 0600). Group write
    /// here (e.g. 0660) also allows group write when opening.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode & 0o777;
        if self.mode & 0o020 != 0 {
            self.allow_group_write = true;
        }
        if self.mode & 0o002 != 0 {
            self.allow_other_write = true;
        }
        self
    }

    /// Group given to newly created files (e.g. QEMU's group with mode 0660).
    pub fn group(mut self, gid: u32) -> Self {
        self.group = Some(Gid::from_raw(gid));
        self
    }

    /// Owner given to newly created files (e.g. libvirt-qemu, when root
    /// prepares a region for QEMU): `fchown` on the new file's descriptor
    /// right after it is created, before it is sized. Changing the owner to
    /// another uid needs `CAP_CHOWN` (root). `uid` is also accepted as an
    /// owner when opening an existing file, whatever [`owners`](Self::owners)
    /// says, so the file this creates can be opened again.
    pub fn owner(mut self, uid: u32) -> Self {
        self.owner = Some(Uid::from_raw(uid));
        self
    }

    /// Owners accepted when opening an existing file, replacing the default
    /// (the current euid). E.g. root and libvirt-qemu, since QEMU may
    /// create the file.
    pub fn owners(mut self, uids: impl IntoIterator<Item = u32>) -> Self {
        self.owners = uids.into_iter().map(Uid::from_raw).collect();
        self
    }

    /// Adds an accepted owner.
    pub fn allow_owner(mut self, uid: u32) -> Self {
        self.owners.push(Uid::from_raw(uid));
        self
    }

    /// Accept existing files that their group may write.
    pub fn allow_group_write(mut self, allow: bool) -> Self {
        self.allow_group_write = allow;
        self
    }

    /// Accept existing files that anyone may write (not recommended).
    pub fn allow_other_write(mut self, allow: bool) -> Self {
        self.allow_other_write = allow;
        self
    }

    /// The directory.
    pub fn directory(&self) -> &Path {
        &self.dir
    }

    /// The file-name prefix.
    pub fn name_prefix(&self) -> &str {
        &self.prefix
    }

    /// The uids accepted as the owner of an existing file: the
    /// [`owners`](Self::owners) list plus the [`owner`](Self::owner) of
    /// created files, if set.
    pub fn allowed_owners(&self) -> Vec<u32> {
        let mut uids: Vec<u32> = self.owners.iter().map(|u| u.as_raw()).collect();
        if let Some(owner) = self.owner {
            if !uids.contains(&owner.as_raw()) {
                uids.push(owner.as_raw());
            }
        }
        uids
    }

    /// `<dir>/<prefix><uuid>`.
    pub fn path_for(&self, uuid: &VmUuid) -> PathBuf {
        self.dir.join(format!("{}{uuid}", self.prefix))
    }

    /// Creates the region file; fails if it exists.
    pub fn create(&self, uuid: &VmUuid) -> Result<RegionFile, RegionError> {
        RegionFile::create_at(self.path_for(uuid), *uuid, self)
    }

    /// Opens an existing region file, adopting its size.
    pub fn open(&self, uuid: &VmUuid) -> Result<RegionFile, RegionError> {
        RegionFile::open_at(self.path_for(uuid), *uuid, self)
    }

    /// Opens the file if it exists (QEMU or an earlier agent made it),
    /// creates it otherwise.
    pub fn open_or_create(&self, uuid: &VmUuid) -> Result<RegionFile, RegionError> {
        RegionFile::open_or_create(uuid, self)
    }
}

/// An open, checked, locked and mapped region file.
#[derive(Debug)]
pub struct RegionFile {
    /// Taken once from `map` with write provenance; `map` is not touched
    /// again until drop.
    base: NonNull<u8>,
    len: usize,
    /// Owns the mapping; dropped (unmapped) before the lock below.
    _map: MmapMut,
    file: Flock<File>,
    path: PathBuf,
    uuid: VmUuid,
}

// SAFETY: `base` points into the mapping this value owns for its whole life;
// it is only used to build `Region`s, which are Send + Sync themselves
// (atomic word access; byte access is `unsafe` under the ring protocol).
// The other fields (MmapMut, Flock<File>, PathBuf) are Send + Sync.
unsafe impl Send for RegionFile {}
// SAFETY: see `Send`; `&RegionFile` only hands out `Region` copies.
unsafe impl Sync for RegionFile {}

/// Shared read/write mapping of `len` bytes of `file`.
fn map_shared(file: &File, len: usize, path: &Path) -> Result<(MmapMut, NonNull<u8>), RegionError> {
    // SAFETY: a MAP_SHARED mapping of a file the guest (through QEMU) writes
    // concurrently. That is sound only because nothing reads it as ordinary
    // Rust memory: it is accessed solely through `Region` (atomic words and
    // byte copies under the ring protocol). Truncation by another process
    // could SIGBUS; the file is ours (owner checked, flock held).
    let mut map =
        unsafe { MmapOptions::new().len(len).map_mut(file) }.map_err(io_err(path, "map"))?;
    let base = checked_base(map.as_mut_ptr(), path)?;
    Ok((map, base))
}

/// Private copy-on-write mapping for read-only inspection: the file may be
/// opened read-only, and no store through it can ever reach the file.
fn map_private(
    file: &File,
    len: usize,
    path: &Path,
) -> Result<(MmapMut, NonNull<u8>), RegionError> {
    // SAFETY: MAP_PRIVATE of a file others write: pages this process never
    // writes keep showing the file's contents (Linux), written pages become
    // private copies. Accessed only through `Region`, as above.
    let mut map =
        unsafe { MmapOptions::new().len(len).map_copy(file) }.map_err(io_err(path, "map"))?;
    let base = checked_base(map.as_mut_ptr(), path)?;
    Ok((map, base))
}

fn checked_base(ptr: *mut u8, path: &Path) -> Result<NonNull<u8>, RegionError> {
    let bad = || RegionError::Layout {
        path: path.to_path_buf(),
        source: LayoutError::BadPointer { addr: ptr as usize },
    };
    let base = NonNull::new(ptr).ok_or_else(bad)?;
    if ptr as usize % 8 != 0 {
        return Err(bad());
    }
    Ok(base)
}

/// The region of a mapping owned by `_owner`, borrowed for as long as it.
fn region_of<T>(_owner: &T, base: NonNull<u8>, len: usize) -> Region<'_> {
    // SAFETY: callers pass the base and length of a live mapping that
    // `_owner` owns, and the region borrows `_owner`; the mapping is
    // readable and writable (shared, or private copy-on-write) and touched
    // only through `Region`s.
    let region = unsafe { Region::from_raw_parts(base.as_ptr(), len) };
    region.expect("mapping checked non-null and 8-byte aligned when made")
}

/// Checks a size: power of two, at least 1 MiB, hugetlbfs page multiple.
fn check_size(path: &Path, size: u64, huge_page: Option<u64>) -> Result<(), RegionError> {
    let path = path.to_path_buf();
    if size == 0 {
        return Err(RegionError::Unsized { path });
    }
    if size < MIN_REGION_SIZE as u64 {
        return Err(RegionError::SizeTooSmall {
            path,
            size,
            min: MIN_REGION_SIZE as u64,
        });
    }
    if !size.is_power_of_two() {
        return Err(RegionError::SizeNotPowerOfTwo { path, size });
    }
    if let Some(page_size) = huge_page {
        if page_size == 0 || size % page_size != 0 {
            return Err(RegionError::NotHugePageMultiple {
                path,
                size,
                page_size,
            });
        }
    }
    Ok(())
}

/// The huge page size if `file` is on hugetlbfs.
fn huge_page_size(file: &File, path: &Path) -> Result<Option<u64>, RegionError> {
    let stat = fstatfs(file).map_err(|e| RegionError::Io {
        path: path.to_path_buf(),
        op: "statfs",
        source: e.into(),
    })?;
    if stat.filesystem_type() != HUGETLBFS_MAGIC {
        return Ok(None);
    }
    #[allow(clippy::useless_conversion)]
    let block = u64::try_from(stat.block_size()).unwrap_or(0);
    Ok(Some(block))
}

fn open_flags(path: &Path, opts: &mut OpenOptions) -> Result<File, RegionError> {
    // O_CLOEXEC is always set by std.
    opts.custom_flags(OFlag::O_NOFOLLOW.bits());
    opts.open(path).map_err(|e| {
        if e.raw_os_error() == Some(Errno::ELOOP as i32) {
            RegionError::Symlink {
                path: path.to_path_buf(),
            }
        } else {
            RegionError::Io {
                path: path.to_path_buf(),
                op: "open",
                source: e,
            }
        }
    })
}

fn lock(file: File, path: &Path) -> Result<Flock<File>, RegionError> {
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        if errno == Errno::EWOULDBLOCK {
            RegionError::Busy {
                path: path.to_path_buf(),
            }
        } else {
            RegionError::Io {
                path: path.to_path_buf(),
                op: "lock",
                source: errno.into(),
            }
        }
    })
}

/// Owner and mode checks on an open file (through its descriptor).
fn check_inode(file: &File, path: &Path, opts: &RegionOptions) -> Result<u64, RegionError> {
    let meta = file.metadata().map_err(io_err(path, "stat"))?;
    if !meta.file_type().is_file() {
        return Err(RegionError::NotRegular {
            path: path.to_path_buf(),
        });
    }
    let allowed = opts.allowed_owners();
    if !allowed.contains(&meta.uid()) {
        return Err(RegionError::UnexpectedOwner {
            path: path.to_path_buf(),
            uid: meta.uid(),
            allowed,
        });
    }
    let mode = meta.mode() & 0o7777;
    if (mode & 0o020 != 0 && !opts.allow_group_write)
        || (mode & 0o002 != 0 && !opts.allow_other_write)
    {
        return Err(RegionError::WritableByOthers {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(meta.len())
}

impl RegionFile {
    /// Opens `<dir>/<prefix><uuid>` if it exists, or creates it.
    pub fn open_or_create(uuid: &VmUuid, opts: &RegionOptions) -> Result<Self, RegionError> {
        let path = opts.path_for(uuid);
        match Self::create_at(path.clone(), *uuid, opts) {
            Err(RegionError::Io { source, .. })
                if source.kind() == io::ErrorKind::AlreadyExists =>
            {
                Self::open_at(path, *uuid, opts)
            }
            other => other,
        }
    }

    /// Creates a new region file at `path` (never an existing one).
    pub fn create_at(
        path: PathBuf,
        uuid: VmUuid,
        opts: &RegionOptions,
    ) -> Result<Self, RegionError> {
        check_size(&path, opts.size, None)?;
        let file = open_flags(
            &path,
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(opts.mode),
        )?;
        // From here on, failure removes the half-made file.
        let made = Self::finish_create(file, &path, uuid, opts);
        if made.is_err() {
            let _ = fs::remove_file(&path);
        }
        made
    }

    fn finish_create(
        file: File,
        path: &Path,
        uuid: VmUuid,
        opts: &RegionOptions,
    ) -> Result<Self, RegionError> {
        let file = lock(file, path)?;
        if opts.owner.is_some() || opts.group.is_some() {
            std::os::unix::fs::fchown(
                &*file,
                opts.owner.map(Uid::as_raw),
                opts.group.map(Gid::as_raw),
            )
            .map_err(io_err(path, "chown"))?;
        }
        // The umask may have cleared bits of the requested mode.
        file.set_permissions(Permissions::from_mode(opts.mode))
            .map_err(io_err(path, "chmod"))?;
        check_size(path, opts.size, huge_page_size(&file, path)?)?;
        // ftruncate works on tmpfs and hugetlbfs alike (no writes needed).
        file.set_len(opts.size).map_err(io_err(path, "size"))?;
        let len = file.metadata().map_err(io_err(path, "stat"))?.len();
        if len != opts.size {
            return Err(RegionError::Io {
                path: path.to_path_buf(),
                op: "size",
                source: io::Error::other(format!("size is {len}, wanted {}", opts.size)),
            });
        }
        Self::map(file, path.to_path_buf(), uuid, len)
    }

    /// Opens the existing region file at `path` for VM `uuid`.
    pub fn open_at(path: PathBuf, uuid: VmUuid, opts: &RegionOptions) -> Result<Self, RegionError> {
        let file = open_flags(&path, OpenOptions::new().read(true).write(true))?;
        check_inode(&file, &path, opts)?;
        let file = lock(file, &path)?;
        // Size checked after locking: nobody of ours is resizing it now.
        let size = check_inode(&file, &path, opts)?;
        check_size(&path, size, huge_page_size(&file, &path)?)?;
        Self::map(file, path, uuid, size)
    }

    fn map(file: Flock<File>, path: PathBuf, uuid: VmUuid, size: u64) -> Result<Self, RegionError> {
        let len = usize::try_from(size).map_err(|_| RegionError::SizeTooSmall {
            path: path.clone(),
            size,
            min: MIN_REGION_SIZE as u64,
        })?;
        let (map, base) = map_shared(&file, len, &path)?;
        Ok(Self {
            base,
            len,
            _map: map,
            file,
            path,
            uuid,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Mapped length (the file's size) in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: regions are at least 1 MiB.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The VM this region is for.
    pub fn uuid(&self) -> &VmUuid {
        &self.uuid
    }

    /// The open file (locked).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The mapping as an ivchan region.
    pub fn region(&self) -> Region<'_> {
        region_of(self, self.base, self.len)
    }

    /// Attaches to the header, writing a fresh one first if the region is
    /// all zeros (QEMU created it, or we just did). Never wipes a region
    /// that has a header: a foreign, corrupt or newer-version header is an
    /// error and the region stays as it is.
    pub fn attach_or_init(&self, name: &str) -> Result<Header<'_>, RegionError> {
        let layout_err = |source| RegionError::Layout {
            path: self.path.clone(),
            source,
        };
        let header = match Header::open(self.region()) {
            Ok(header) => header,
            Err(LayoutError::NotInitialized) => {
                let params = InitParams {
                    uuid: *self.uuid.as_bytes(),
                    name,
                    ring_size: None,
                };
                Header::create(self.region(), &params).map_err(layout_err)?
            }
            Err(LayoutError::IncompatibleVersion {
                found_major,
                found_minor,
                supported_major,
                supported_minor,
            }) => {
                return Err(RegionError::IncompatibleVersion {
                    path: self.path.clone(),
                    found: format!("{found_major}.{found_minor}"),
                    supported: format!("{supported_major}.{supported_minor}"),
                })
            }
            Err(e) => return Err(layout_err(e)),
        };
        let found = VmUuid::from_bytes(header.layout().uuid);
        if found != self.uuid {
            return Err(RegionError::UuidMismatch {
                path: self.path.clone(),
                file: self.uuid,
                header: found,
            });
        }
        Ok(header)
    }

    /// Unlinks the file, if the path still names this file (and not
    /// something put there since). The mapping stays valid until drop.
    pub fn remove(self) -> Result<(), RegionError> {
        let ours = self.file.metadata().map_err(io_err(&self.path, "stat"))?;
        let there = fs::symlink_metadata(&self.path).map_err(io_err(&self.path, "stat"))?;
        if (there.dev(), there.ino()) != (ours.dev(), ours.ino()) {
            return Err(RegionError::Replaced {
                path: self.path.clone(),
            });
        }
        fs::remove_file(&self.path).map_err(io_err(&self.path, "remove"))
    }
}

/// Opens a region file without the lock, for the views below: refuses
/// symlinks, non-regular files and bad sizes; returns the file, its metadata
/// and its length.
fn open_unlocked(
    path: &Path,
    opts: &mut OpenOptions,
) -> Result<(File, fs::Metadata, usize), RegionError> {
    let file = open_flags(path, opts)?;
    let meta = file.metadata().map_err(io_err(path, "stat"))?;
    if !meta.file_type().is_file() {
        return Err(RegionError::NotRegular {
            path: path.to_path_buf(),
        });
    }
    check_size(path, meta.len(), huge_page_size(&file, path)?)?;
    let len = usize::try_from(meta.len()).map_err(|_| RegionError::SizeTooSmall {
        path: path.to_path_buf(),
        size: meta.len(),
        min: MIN_REGION_SIZE as u64,
    })?;
    Ok((file, meta, len))
}

/// A region file mapped for inspection: no lock taken, opened read-only and
/// mapped private copy-on-write, so nothing done through it can change the
/// file. Ownership and mode are reported, not enforced.
#[derive(Debug)]
pub struct InspectedRegion {
    base: NonNull<u8>,
    len: usize,
    _map: MmapMut,
    path: PathBuf,
    meta: fs::Metadata,
}

// SAFETY: as for `RegionFile`: `base` points into the owned mapping and is
// only used to build `Region`s.
unsafe impl Send for InspectedRegion {}
// SAFETY: as above.
unsafe impl Sync for InspectedRegion {}

impl InspectedRegion {
    /// Opens `path` (refusing symlinks and non-regular files) and maps it.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, RegionError> {
        let path = path.into();
        let (file, meta, len) = open_unlocked(&path, OpenOptions::new().read(true))?;
        let (map, base) = map_private(&file, len, &path)?;
        Ok(Self {
            base,
            len,
            _map: map,
            path,
            meta,
        })
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: regions are at least 1 MiB.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The file's metadata (owner, mode) as opened.
    pub fn metadata(&self) -> &fs::Metadata {
        &self.meta
    }

    /// The mapping as an ivchan region (private: stores stay local).
    pub fn region(&self) -> Region<'_> {
        region_of(self, self.base, self.len)
    }
}

/// A region file mapped shared and *without* the lock, the way a guest's
/// BAR2 sees it: for a peer on the same host (tests, demos, a guest
/// simulator). The host agent holds the lock; this side must be the other
/// party of the channel.
#[derive(Debug)]
pub struct PeerMapping {
    base: NonNull<u8>,
    len: usize,
    _map: MmapMut,
    path: PathBuf,
}

// SAFETY: as for `RegionFile`: `base` points into the owned mapping and is
// only used to build `Region`s.
unsafe impl Send for PeerMapping {}
// SAFETY: as above.
unsafe impl Sync for PeerMapping {}

impl PeerMapping {
    /// Opens `path` read-write (refusing symlinks, non-regular files and bad
    /// sizes) and maps it shared.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, RegionError> {
        let path = path.into();
        let (file, _, len) = open_unlocked(&path, OpenOptions::new().read(true).write(true))?;
        let (map, base) = map_shared(&file, len, &path)?;
        Ok(Self {
            base,
            len,
            _map: map,
            path,
        })
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The mapping as an ivchan region.
    pub fn region(&self) -> Region<'_> {
        region_of(self, self.base, self.len)
    }
}

/// Region files in `dir`: entries named `<prefix><uuid>` with a canonical
/// UUID, sorted by UUID. Other entries (and directories) are ignored.
pub fn list_regions(dir: &Path, prefix: &str) -> Result<Vec<(VmUuid, PathBuf)>, RegionError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir, "list"))? {
        let entry = entry.map_err(io_err(dir, "list"))?;
        let name = entry.file_name();
        let Some(uuid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|rest| rest.parse::<VmUuid>().ok())
        else {
            continue;
        };
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        found.push((uuid, entry.path()));
    }
    found.sort();
    Ok(found)
}
