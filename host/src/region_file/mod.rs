//! The region file of one VM: `/dev/shm/fg_<uuid>` (8 MiB) by default, or a
//! file on hugetlbfs, opened or created safely and mapped shared.
//!
//! `/dev/shm` is world-writable, so nothing found there is trusted: the file
//! is opened with `O_NOFOLLOW` (a symlink is refused), then its inode is
//! checked through the descriptor (`fstat`): a regular file whose owner and
//! writers the [`TrustPolicy`] trusts, and a power-of-two size from 1 MiB to
//! 16 GiB. An exclusive `flock` keeps a second host agent
//! off the same region. The one `unsafe` operation, the mapping, is in this
//! module (`map_shared`, `map_private` and `region_of`).
//!
//! Both start orders work: if QEMU created the file first it is all zeros
//! and [`RegionFile::attach_or_init`] writes the header; if a host agent
//! created it earlier, `attach_or_init` attaches without wiping.

mod checks;
mod error;
mod file;
mod list;
mod options;
mod trust;
mod views;

pub use error::RegionError;
pub use file::RegionFile;
pub use ivchan_protocol::naming::{
    DEFAULT_REGION_SIZE as DEFAULT_SIZE, REGION_DIR as DEFAULT_DIR, REGION_PREFIX as DEFAULT_PREFIX,
};
pub use ivchan_protocol::{UuidError, VmUuid};
pub use list::list_regions;
pub use options::RegionOptions;
pub use trust::{
    group_name, parse_group, parse_owner, parse_user, user_name, IdError, IdName, TrustPolicy,
    QEMU_USERS,
};
pub use views::{InspectedRegion, PeerMapping};
