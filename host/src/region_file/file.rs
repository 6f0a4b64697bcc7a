//! An open, checked, locked and mapped region file.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ivchan_protocol::{Header, InitParams, LayoutError, Mapping, Region, SharedMemory};
use nix::fcntl::Flock;
use nix::unistd::{Gid, Uid};

use super::checks::{check_inode, check_size, check_space, huge_page_size, lock, open_flags};
use super::error::io_err;
use super::{RegionError, RegionOptions, VmUuid};

/// An open, checked, locked and mapped region file.
#[derive(Debug)]
pub struct RegionFile {
    /// Dropped (unmapped) before the lock below.
    mapping: Mapping,
    file: Flock<File>,
    path: PathBuf,
    uuid: VmUuid,
}

// SAFETY: the region is `mapping`'s, which this value owns and which stays
// in place wherever the value moves.
unsafe impl SharedMemory for RegionFile {
    fn region(&self) -> Region<'_> {
        self.mapping.region()
    }
}

/// An unnamed file (`O_TMPFILE`) in the directory of `path`, or `None`
/// where the file system or the kernel has none, or `/proc` is missing
/// (linking one into place goes through `/proc/self/fd`).
fn open_unnamed(path: &Path, mode: u32) -> Result<Option<File>, RegionError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !Path::new("/proc/self/fd").is_dir() {
        return Ok(None);
    }
    let opened = OpenOptions::new()
        .read(true)
        .write(true)
        .mode(mode)
        .custom_flags(nix::fcntl::OFlag::O_TMPFILE.bits())
        .open(dir);
    match opened {
        Ok(file) => Ok(Some(file)),
        Err(e)
            if matches!(
                nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)),
                nix::errno::Errno::EOPNOTSUPP
                    | nix::errno::Errno::EISDIR
                    | nix::errno::Errno::EINVAL
            ) =>
        {
            Ok(None)
        }
        Err(source) => Err(RegionError::Io {
            path: path.to_path_buf(),
            op: "create",
            source,
        }),
    }
}

/// Gives the unnamed file behind `file` the name `path`; fails with
/// `AlreadyExists` (as a create does) when the name is taken.
fn link_into_place(file: &File, path: &Path) -> Result<(), RegionError> {
    use std::os::fd::AsRawFd;
    let fd_path = format!("/proc/self/fd/{}", file.as_raw_fd());
    nix::unistd::linkat(
        None,
        Path::new(&fd_path),
        None,
        path,
        nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
    )
    .map_err(|errno| RegionError::Io {
        path: path.to_path_buf(),
        op: "create",
        source: errno.into(),
    })
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
        let gid = opts.group.unwrap_or_else(nix::unistd::getegid).as_raw();
        opts.trust.check_mode(&path, opts.mode, gid)?;
        check_space(&path, opts.size)?;
        // Made in full (locked, owned, sized, mapped) before it has a name,
        // then linked into place: a supervisor watching the directory sees
        // the file ready or not at all, never empty and unlocked (it used
        // to lock such a file first, and the creator then failed as Busy).
        let made = match open_unnamed(&path, opts.mode)? {
            Some(file) => {
                let made = Self::finish_create(file, &path, uuid, opts)?;
                link_into_place(&made.file, &path)?;
                made
            }
            None => Self::create_named(&path, uuid, opts)?,
        };
        log::info!(
            "created {} ({} bytes, mode {:04o})",
            path.display(),
            opts.size,
            opts.mode
        );
        Ok(made)
    }

    /// [`create_at`](Self::create_at) on a file system without unnamed
    /// files: creates the file by name, and removes it again when making it
    /// fails.
    fn create_named(path: &Path, uuid: VmUuid, opts: &RegionOptions) -> Result<Self, RegionError> {
        let file = open_flags(
            path,
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(opts.mode),
        )?;
        Self::finish_create(file, path, uuid, opts).inspect_err(|e| {
            log::debug!("removing {} after a failed create: {e}", path.display());
            let _ = fs::remove_file(path);
        })
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
        Self::map(file, path.to_path_buf(), uuid, len, opts.prefault)
    }

    /// Opens the existing region file at `path` for VM `uuid`.
    pub fn open_at(path: PathBuf, uuid: VmUuid, opts: &RegionOptions) -> Result<Self, RegionError> {
        let file = open_flags(&path, OpenOptions::new().read(true).write(true))?;
        check_inode(&file, &path, opts)?;
        let file = lock(file, &path)?;
        // Size checked after locking: nobody of ours is resizing it now.
        let size = check_inode(&file, &path, opts)?;
        check_size(&path, size, huge_page_size(&file, &path)?)?;
        log::debug!("opened and locked {} ({size} bytes)", path.display());
        Self::map(file, path, uuid, size, opts.prefault)
    }

    fn map(
        file: Flock<File>,
        path: PathBuf,
        uuid: VmUuid,
        size: u64,
        prefault: bool,
    ) -> Result<Self, RegionError> {
        let mapping = map_checked(&path, size, |len| {
            if prefault {
                Mapping::shared(&file, len)
            } else {
                Mapping::shared_lazy(&file, len)
            }
        })?;
        Ok(Self {
            mapping,
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
        self.mapping.len()
    }

    /// Never true: regions are at least 1 MiB.
    pub fn is_empty(&self) -> bool {
        self.mapping.is_empty()
    }

    /// The VM this region is for.
    pub fn uuid(&self) -> &VmUuid {
        &self.uuid
    }

    /// True once an access found the file truncated under the mapping
    /// (its owner shrank it): the contents then read as zeros and the
    /// channel over it fails with a wiped header, instead of the process
    /// dying of `SIGBUS`.
    pub fn was_truncated(&self) -> bool {
        self.mapping.was_truncated()
    }

    /// The open file (locked).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The mapping as an ivchan region.
    pub fn region(&self) -> Region<'_> {
        self.mapping.region()
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
                let header = Header::create(self.region(), &params).map_err(layout_err)?;
                log::info!(
                    "{}: was all zeros, wrote a new header (channel {name:?})",
                    self.path.display()
                );
                header
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

    /// Writes a fresh header (empty rings, both sides absent) over the
    /// region, whatever it held: recovers a region whose agents died or
    /// whose header is damaged, without recreating the file, so a running
    /// QEMU keeps its mapping. The caller makes sure no agent is using it:
    /// this value holds the lock, so no host agent is.
    pub fn reset(&self, name: &str) -> Result<Header<'_>, RegionError> {
        let params = InitParams {
            uuid: *self.uuid.as_bytes(),
            name,
            ring_size: None,
        };
        let header =
            Header::create(self.region(), &params).map_err(|source| RegionError::Layout {
                path: self.path.clone(),
                source,
            })?;
        log::info!(
            "{}: wrote a fresh header (channel {name:?})",
            self.path.display()
        );
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

/// Maps a file of `size` bytes with `map`, reporting failures against `path`.
pub(super) fn map_checked(
    path: &Path,
    size: u64,
    map: impl FnOnce(usize) -> io::Result<Mapping>,
) -> Result<Mapping, RegionError> {
    let len = usize::try_from(size).map_err(|_| RegionError::Io {
        path: path.to_path_buf(),
        op: "map",
        source: io::Error::other(format!("{size} bytes do not fit this address space")),
    })?;
    map(len).map_err(io_err(path, "map"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VM: &str = "7a1c3e5f-2b4d-4f60-8a9b-0c1d2e3f4a5b";

    /// `/dev/shm` supports unnamed files, so `create_at` never falls back
    /// here; the fallback (the only path on file systems without them) is
    /// driven directly.
    #[test]
    fn the_named_fallback_makes_a_ready_file_and_removes_a_failed_one() {
        let dir = tempfile::tempdir_in("/dev/shm").expect("tempdir");
        let uuid: VmUuid = VM.parse().expect("uuid");
        let opts = RegionOptions::new()
            .dir(dir.path())
            .size(1 << 20)
            .mode(0o640);
        let path = opts.path_for(&uuid);

        let made = RegionFile::create_named(&path, uuid, &opts).expect("create");
        let meta = fs::metadata(&path).expect("stat");
        assert_eq!(meta.len(), 1 << 20);
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
        assert!(
            matches!(
                RegionFile::open_at(path.clone(), uuid, &opts),
                Err(RegionError::Busy { .. })
            ),
            "the new file is locked"
        );
        match RegionFile::create_named(&path, uuid, &opts) {
            Err(RegionError::Io { source, .. }) => {
                assert_eq!(source.kind(), io::ErrorKind::AlreadyExists);
            }
            other => panic!("a taken name: {other:?}"),
        }
        assert_eq!(
            fs::metadata(&path).expect("stat").len(),
            1 << 20,
            "untouched"
        );
        drop(made);

        // A size the checks refuse fails after the file was made: it goes.
        let bad = opts.clone().size(3 << 20);
        let other: VmUuid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
            .parse()
            .expect("uuid");
        let bad_path = bad.path_for(&other);
        assert!(matches!(
            RegionFile::create_named(&bad_path, other, &bad),
            Err(RegionError::BadSize { .. })
        ));
        assert!(!bad_path.exists(), "no half-made file is left");
    }
}
