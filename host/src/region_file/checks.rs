//! Checks on a region file, made through its descriptor so that what is
//! checked is what gets mapped: no symlinks, regular files only, allowed
//! owners and modes, sizes the layout accepts.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use ivchan_protocol::layout::MIN_REGION_SIZE;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::sys::statfs::{fstatfs, HUGETLBFS_MAGIC};

use super::error::io_err;
use super::{RegionError, RegionOptions};

/// Checks a size: power of two, at least 1 MiB, hugetlbfs page multiple.
pub(super) fn check_size(
    path: &Path,
    size: u64,
    huge_page: Option<u64>,
) -> Result<(), RegionError> {
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
pub(super) fn huge_page_size(file: &File, path: &Path) -> Result<Option<u64>, RegionError> {
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

pub(super) fn open_flags(path: &Path, opts: &mut OpenOptions) -> Result<File, RegionError> {
    // O_CLOEXEC is always set by std.
    // O_NONBLOCK: a FIFO or device planted at the path must not block the
    // open (a FIFO waits for a writer forever); it is refused as not a
    // regular file right after. Regular files ignore the flag.
    opts.custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits());
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

pub(super) fn lock(file: File, path: &Path) -> Result<Flock<File>, RegionError> {
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
pub(super) fn check_inode(
    file: &File,
    path: &Path,
    opts: &RegionOptions,
) -> Result<u64, RegionError> {
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

/// Opens a region file without the lock, for the views below: refuses
/// symlinks, non-regular files and bad sizes; returns the file and its
/// metadata.
pub(super) fn open_unlocked(
    path: &Path,
    opts: &mut OpenOptions,
) -> Result<(File, fs::Metadata), RegionError> {
    let file = open_flags(path, opts)?;
    let meta = file.metadata().map_err(io_err(path, "stat"))?;
    if !meta.file_type().is_file() {
        return Err(RegionError::NotRegular {
            path: path.to_path_buf(),
        });
    }
    check_size(path, meta.len(), huge_page_size(&file, path)?)?;
    Ok((file, meta))
}
