//! What can go wrong with a region file, each case carrying its path.

use std::io;
use std::path::{Path, PathBuf};

use ivchan_protocol::naming::SizeError;
use ivchan_protocol::report::human_size;
use ivchan_protocol::{LayoutError, UuidError, VmUuid};

use super::trust::IdName;

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
    /// The file's owner is not trusted ([`TrustPolicy`](super::TrustPolicy)).
    #[error(
        "{path} is owned by {owner}, who is not trusted (trusted owners: {}); \
         if that user should be trusted, pass --allow-owner {}",
        super::trust::list(trusted),
        owner.argument()
    )]
    UntrustedOwner {
        /// The path.
        path: PathBuf,
        /// The owner found.
        uid: u32,
        /// The owner, with its name.
        owner: IdName,
        /// The trusted owners.
        trusted: Vec<IdName>,
    },
    /// The file's group may write it, and that group is not trusted.
    #[error(
        "{path} has mode {mode:04o}: group {group} may write it and is not trusted; \
         pass --allow-group {} to trust it, or remove the group's write bit (chmod g-w)",
        group.argument()
    )]
    UntrustedGroup {
        /// The path.
        path: PathBuf,
        /// Permission bits found (or about to be set).
        mode: u32,
        /// The file's group.
        gid: u32,
        /// The group, with its name.
        group: IdName,
    },
    /// Every local user may write the file.
    #[error(
        "{path} has mode {mode:04o}: every local user may write it; remove that \
         (chmod o-w), or pass --allow-other-write to accept it (not recommended)"
    )]
    OtherWritable {
        /// The path.
        path: PathBuf,
        /// Permission bits found (or about to be set).
        mode: u32,
    },
    /// A zero-length file: its creator (e.g. QEMU) has not sized it yet.
    #[error("{path} is empty: its creator has not sized it yet")]
    Unsized {
        /// The path.
        path: PathBuf,
    },
    /// A size the layout cannot use: not a power of two, below 1 MiB or
    /// above 16 GiB.
    #[error("{path}: {source}")]
    BadSize {
        /// The path.
        path: PathBuf,
        /// What is wrong with it.
        source: SizeError,
    },
    /// Not enough free space in the file system for a new region.
    #[error(
        "{path}: a {} region does not fit: {} has {} free; \
         choose a smaller --size or free some space",
        human_size(*size), dir.display(), human_size(*available)
    )]
    NoSpace {
        /// The path.
        path: PathBuf,
        /// The directory.
        dir: PathBuf,
        /// The size asked for.
        size: u64,
        /// Bytes available to this user.
        available: u64,
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
    #[error("{path} is in use by another host agent (it holds the region's lock); stop that agent first")]
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
