//! Where region files live and what they may look like.

use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid};

use super::{RegionError, RegionFile, VmUuid, DEFAULT_DIR, DEFAULT_PREFIX, DEFAULT_SIZE};

/// Where region files live and what they may look like.
#[derive(Debug, Clone)]
pub struct RegionOptions {
    pub(super) dir: PathBuf,
    pub(super) prefix: String,
    pub(super) size: u64,
    pub(super) mode: u32,
    pub(super) group: Option<Gid>,
    pub(super) owner: Option<Uid>,
    pub(super) owners: Vec<Uid>,
    pub(super) allow_group_write: bool,
    pub(super) allow_other_write: bool,
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
