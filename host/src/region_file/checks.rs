//! Checks on a region file, made through its descriptor so that what is
//! checked is what gets mapped: no symlinks, regular files only, allowed
//! owners and modes, sizes the layout accepts.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use ivchan_protocol::naming::RegionSize;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::sys::statfs::{fstatfs, HUGETLBFS_MAGIC};
use nix::sys::statvfs::statvfs;

use super::error::io_err;
use super::{RegionError, RegionOptions};

/// Checks a size: a [`RegionSize`] (power of two, 1 MiB to 16 GiB), and a
/// multiple of the huge page size on hugetlbfs.
pub(super) fn check_size(
    path: &Path,
    size: u64,
    huge_page: Option<u64>,
) -> Result<(), RegionError> {
    if size == 0 {
        return Err(RegionError::Unsized {
            path: path.to_path_buf(),
        });
    }
    RegionSize::new(size).map_err(|source| RegionError::BadSize {
        path: path.to_path_buf(),
        source,
    })?;
    if let Some(page_size) = huge_page {
        if page_size == 0 || size % page_size != 0 {
            return Err(RegionError::NotHugePageMultiple {
                path: path.to_path_buf(),
                size,
                page_size,
            });
        }
    }
    Ok(())
}

/// Checks that the directory's file system has room for a new region of
/// `size` bytes. tmpfs would create a sparse file of any size and fail
/// later, at the first write to a page it cannot back (SIGBUS).
pub(super) fn check_space(path: &Path, size: u64) -> Result<(), RegionError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let stat = statvfs(dir).map_err(|e| RegionError::Io {
        path: dir.to_path_buf(),
        op: "statvfs",
        source: e.into(),
    })?;
    #[allow(clippy::useless_conversion)]
    let available =
        u64::from(stat.blocks_available()).saturating_mul(u64::from(stat.fragment_size()));
    // hugetlbfs reports its pool; a file system that reports nothing
    // (0 blocks in total) is not checked.
    #[allow(clippy::useless_conversion)]
    if u64::from(stat.blocks()) != 0 && size > available {
        return Err(RegionError::NoSpace {
            path: path.to_path_buf(),
            dir: dir.to_path_buf(),
            size,
            available,
        });
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

/// Type, owner and mode checks on an open file (through its descriptor),
/// under the options' [`TrustPolicy`](super::TrustPolicy). Returns the size.
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
    opts.trust_policy().check(path, &meta)?;
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
