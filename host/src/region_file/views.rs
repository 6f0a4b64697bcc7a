//! Views of a region file that do not own it: [`InspectedRegion`] (read
//! only, for `ivchan list`/`inspect` and the hook) and [`PeerMapping`] (the
//! guest's view, for a peer on the same host).

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use ivchan_protocol::{Mapping, Region, SharedMemory};

use super::checks::open_unlocked;
use super::file::map_checked;
use super::RegionError;

/// A region file mapped for inspection: no lock taken, opened read-only and
/// mapped private copy-on-write, so nothing done through it can change the
/// file. Ownership and mode are reported, not enforced.
#[derive(Debug)]
pub struct InspectedRegion {
    mapping: Mapping,
    path: PathBuf,
    meta: fs::Metadata,
}

impl InspectedRegion {
    /// Opens `path` (refusing symlinks and non-regular files) and maps it.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, RegionError> {
        let path = path.into();
        let (file, meta) = open_unlocked(&path, OpenOptions::new().read(true))?;
        let mapping = map_checked(&path, meta.len(), |len| Mapping::private(&file, len))?;
        Ok(Self {
            mapping,
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
        self.mapping.len()
    }

    /// Never true: regions are at least 1 MiB.
    pub fn is_empty(&self) -> bool {
        self.mapping.is_empty()
    }

    /// The file's metadata (owner, mode) as opened.
    pub fn metadata(&self) -> &fs::Metadata {
        &self.meta
    }

    /// The mapping as an ivchan region (private: stores stay local).
    pub fn region(&self) -> Region<'_> {
        self.mapping.region()
    }
}

/// A region file mapped shared and *without* the lock, the way a guest's
/// BAR2 sees it: for a peer on the same host (tests, demos, a guest
/// simulator). The host agent holds the lock; this side must be the other
/// party of the channel.
#[derive(Debug)]
pub struct PeerMapping {
    mapping: Mapping,
    path: PathBuf,
}

impl PeerMapping {
    /// Opens `path` read-write (refusing symlinks, non-regular files and bad
    /// sizes) and maps it shared.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, RegionError> {
        let path = path.into();
        let (file, meta) = open_unlocked(&path, OpenOptions::new().read(true).write(true))?;
        let mapping = map_checked(&path, meta.len(), |len| Mapping::shared(&file, len))?;
        Ok(Self { mapping, path })
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The mapping as an ivchan region.
    pub fn region(&self) -> Region<'_> {
        self.mapping.region()
    }
}

// SAFETY: the region is the owned `mapping`'s, in place wherever the value
// moves. A peer mapping is the guest's side of a channel on the same host.
unsafe impl SharedMemory for PeerMapping {
    fn region(&self) -> Region<'_> {
        self.mapping.region()
    }
}
