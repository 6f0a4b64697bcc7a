//! Where region files live and what they may look like.

use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid};

use super::{
    RegionError, RegionFile, TrustPolicy, VmUuid, DEFAULT_DIR, DEFAULT_PREFIX, DEFAULT_SIZE,
};

/// Where region files live and what they may look like.
#[derive(Debug, Clone)]
pub struct RegionOptions {
    pub(super) dir: PathBuf,
    pub(super) prefix: String,
    pub(super) size: u64,
    pub(super) mode: u32,
    pub(super) group: Option<Gid>,
    pub(super) owner: Option<Uid>,
    pub(super) trust: TrustPolicy,
    pub(super) prefault: bool,
}

impl Default for RegionOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl RegionOptions {
    /// `/dev/shm`, `fg_`, 8 MiB, mode 0600, owned by the current euid;
    /// existing files checked under [`TrustPolicy::system`]; pages faulted
    /// in when mapped.
    pub fn new() -> Self {
        Self {
            dir: PathBuf::from(DEFAULT_DIR),
            prefix: DEFAULT_PREFIX.to_owned(),
            size: DEFAULT_SIZE,
            mode: 0o600,
            group: None,
            owner: None,
            trust: TrustPolicy::system(),
            prefault: true,
        }
    }

    /// Whether mapping a region faults in (and on tmpfs allocates) all of
    /// its pages at once (default `true`, [`Mapping::shared`]): the rings'
    /// first lap then pays no page faults, which otherwise put a fresh
    /// region's 64 B round trip p99.9 at about 9 µs instead of 0.5-1.7 µs.
    /// `false` ([`Mapping::shared_lazy`]) lets memory come in as the rings
    /// touch it: for a host that keeps many mostly idle regions.
    ///
    /// [`Mapping::shared`]: ivchan_protocol::Mapping::shared
    /// [`Mapping::shared_lazy`]: ivchan_protocol::Mapping::shared_lazy
    pub fn prefault(mut self, prefault: bool) -> Self {
        self.prefault = prefault;
        self
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

    /// Permission bits of newly created files (default 0600). A mode the
    /// [trust policy](Self::trust) would refuse to open is refused at
    /// creation too (e.g. 0666 without
    /// [`allow_other_write`](Self::allow_other_write)).
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode & 0o777;
        self
    }

    /// Group given to newly created files (e.g. QEMU's group with mode
    /// 0660); trusted to write the files it is given.
    pub fn group(mut self, gid: u32) -> Self {
        self.group = Some(Gid::from_raw(gid));
        self.trust = self.trust.allow_group(gid);
        self
    }

    /// Owner given to newly created files (e.g. libvirt-qemu, when root
    /// prepares a region for QEMU): `fchown` on the new file's descriptor
    /// right after it is created, before it is sized. Changing the owner to
    /// another uid needs `CAP_CHOWN` (root). `uid` is also trusted as the
    /// owner of existing files, so the file this creates can be opened
    /// again.
    pub fn owner(mut self, uid: u32) -> Self {
        self.owner = Some(Uid::from_raw(uid));
        self.trust = self.trust.allow_owner(uid);
        self
    }

    /// Replaces the trust policy for existing files (default
    /// [`TrustPolicy::system`]).
    pub fn trust(mut self, policy: TrustPolicy) -> Self {
        self.trust = policy;
        if let Some(owner) = self.owner {
            self.trust = self.trust.allow_owner(owner.as_raw());
        }
        if let Some(group) = self.group {
            self.trust = self.trust.allow_group(group.as_raw());
        }
        self
    }

    /// Also trusts files owned by `uid` ([`TrustPolicy::allow_owner`]).
    pub fn allow_owner(mut self, uid: u32) -> Self {
        self.trust = self.trust.allow_owner(uid);
        self
    }

    /// Also trusts files that group `gid` may write
    /// ([`TrustPolicy::allow_group`]).
    pub fn allow_group(mut self, gid: u32) -> Self {
        self.trust = self.trust.allow_group(gid);
        self
    }

    /// Trusts files anyone may write (not recommended).
    pub fn allow_other_write(mut self, allow: bool) -> Self {
        self.trust = self.trust.allow_other_write(allow);
        self
    }

    /// Whether mapping a region faults in all of its pages
    /// ([`prefault`](Self::prefault)).
    pub fn prefaults(&self) -> bool {
        self.prefault
    }

    /// The trust policy for existing files.
    pub fn trust_policy(&self) -> &TrustPolicy {
        &self.trust
    }

    /// The directory.
    pub fn directory(&self) -> &Path {
        &self.dir
    }

    /// The file-name prefix.
    pub fn name_prefix(&self) -> &str {
        &self.prefix
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
