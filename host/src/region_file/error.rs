//! What can go wrong with a region file, each case carrying its path.

use std::io;
use std::path::{Path, PathBuf};

use ivchan_protocol::{LayoutError, UuidError, VmUuid};

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

pub(super) fn io_err<'a>(
    path: &'a Path,
    op: &'static str,
) -> impl FnOnce(io::Error) -> RegionError + 'a {
    move |source| RegionError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}
