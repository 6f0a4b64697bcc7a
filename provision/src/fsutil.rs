//! Writing files without ever leaving them half-written.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::error::{Error, Result};

/// Replace the file at `path` with `data` atomically: write a temp file in
/// the same directory, give it the old file's owner, group and permission
/// bits, fsync it, rename it over the file, fsync the directory. A reader
/// sees the old bytes or the new ones, never a mix; a failure leaves the
/// file as it was (and no temp file behind).
///
/// A symlink is followed: its target is rewritten and the link stays a
/// link. A file without any write permission (e.g. 0444) is refused with
/// [`Error::ReadOnly`] unless `force`. An owner the process cannot give the
/// new file (not root, someone else's file) is an error rather than a
/// silent change of owner. With `backup`, the old content is first saved
/// the same way as `PATH.bak`, next to the target, with the same owner and
/// mode.
pub fn write_atomic(path: &Path, data: &[u8], backup: bool) -> Result<()> {
    write_atomic_opts(path, data, backup, false)
}

/// [`write_atomic`], with `force` to rewrite a read-only file.
pub fn write_atomic_opts(path: &Path, data: &[u8], backup: bool, force: bool) -> Result<()> {
    let target = match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => fs::canonicalize(path).map_err(Error::io(
            format!("following the symlink {}", path.display()),
        ))?,
        _ => path.to_path_buf(),
    };
    let old = match fs::metadata(&target) {
        Ok(m) if !m.is_file() => {
            return Err(Error::Io {
                context: format!("{} is not a regular file", target.display()),
                source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
            })
        }
        Ok(m) => Some(m),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io(format!("stat {}", target.display()))(e)),
    };
    if let Some(m) = &old {
        let mode = m.permissions().mode() & 0o7777;
        if mode & 0o222 == 0 && !force {
            return Err(Error::ReadOnly {
                path: target.clone(),
                mode,
            });
        }
    }
    if backup {
        if let Some(m) = &old {
            let orig =
                fs::read(&target).map_err(Error::io(format!("reading {}", target.display())))?;
            let mut bak = target.as_os_str().to_owned();
            bak.push(".bak");
            replace(Path::new(&bak), &orig, Some(m))?;
        }
    }
    replace(&target, data, old.as_ref())
}

/// Write `data` to a temp file next to `path` with `like`'s owner, group
/// and mode, and rename it over `path`.
fn replace(path: &Path, data: &[u8], like: Option<&fs::Metadata>) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let ctx = |what: &str| format!("{what} {}", path.display());
    let mut tmp = tempfile::Builder::new()
        .prefix(".ivchan-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(Error::io(ctx("creating a temp file next to")))?;
    tmp.write_all(data)
        .map_err(Error::io(ctx("writing a temp file for")))?;
    if let Some(m) = like {
        let f = tmp.as_file();
        let fd_meta = f
            .metadata()
            .map_err(Error::io(ctx("stat of the temp file for")))?;
        if (fd_meta.uid(), fd_meta.gid()) != (m.uid(), m.gid()) {
            std::os::unix::fs::fchown(f, Some(m.uid()), Some(m.gid())).map_err(|source| {
                Error::Io {
                    context: format!(
                        "keeping owner {}:{} of {} (rewriting it would change its owner; run as that user or as root)",
                        m.uid(),
                        m.gid(),
                        path.display()
                    ),
                    source,
                }
            })?;
        }
        // After chown, which may clear set-id bits.
        let mode = m.permissions().mode() & 0o7777;
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(Error::io(ctx("setting permissions for")))?;
    }
    tmp.as_file()
        .sync_all()
        .map_err(Error::io(ctx("syncing a temp file for")))?;
    tmp.persist(path).map_err(|e| Error::Io {
        context: ctx("renaming a temp file over"),
        source: e.error,
    })?;
    if let Ok(d) = fs::File::open(dir) {
        // Best effort: some file systems do not support fsync on directories.
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_with_backup_keeps_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.xml");
        fs::write(&p, "old").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&p, b"new", true).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "new");
        assert_eq!(
            fs::read_to_string(dir.path().join("d.xml.bak")).unwrap(),
            "old"
        );
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
        // No temp files left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn a_symlink_is_followed_and_stays_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.xml");
        let link = dir.path().join("link.xml");
        fs::write(&real, "old").unwrap();
        fs::set_permissions(&real, fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink("real.xml", &link).unwrap();
        write_atomic(&link, b"new", true).unwrap();
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read_link(&link).unwrap(), Path::new("real.xml"));
        assert_eq!(fs::read_to_string(&real).unwrap(), "new");
        // The backup sits next to the target, like it.
        let bak = dir.path().join("real.xml.bak");
        assert_eq!(fs::read_to_string(&bak).unwrap(), "old");
        assert_eq!(
            fs::metadata(&bak).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(&real).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn a_read_only_file_is_refused_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ro.xml");
        fs::write(&p, "old").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o444)).unwrap();
        let e = write_atomic(&p, b"new", false).unwrap_err();
        assert!(matches!(e, Error::ReadOnly { mode: 0o444, .. }), "{e}");
        assert!(e.to_string().contains("--force"), "{e}");
        assert_eq!(fs::read_to_string(&p).unwrap(), "old");
        write_atomic_opts(&p, b"new", false, true).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "new");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o444
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// As root, a file owned by another user keeps its owner and group (and
    /// so does its backup). Skipped when not root: only root can give a
    /// file away.
    #[test]
    fn owner_and_group_are_kept() {
        if !nix::unistd::Uid::effective().is_root() {
            println!("skipped: needs root to own files as another user");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("theirs.xml");
        fs::write(&p, "old").unwrap();
        std::os::unix::fs::chown(&p, Some(4321), Some(8765)).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&p, b"new", true).unwrap();
        for f in [p.clone(), dir.path().join("theirs.xml.bak")] {
            let m = fs::metadata(&f).unwrap();
            assert_eq!((m.uid(), m.gid()), (4321, 8765), "{f:?}");
            assert_eq!(m.permissions().mode() & 0o777, 0o640, "{f:?}");
        }
        assert_eq!(fs::read_to_string(&p).unwrap(), "new");
    }
}
