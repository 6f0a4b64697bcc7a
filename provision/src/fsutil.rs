//! Writing files without ever leaving them half-written.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::error::{Error, Result};

/// Replace `path` with `data` atomically: write a temp file in the same
/// directory, fsync it, rename it over `path`, fsync the directory. The
/// file's permission bits are kept. With `backup`, the old content is first
/// saved (the same way) as `PATH.bak`.
pub fn write_atomic(path: &Path, data: &[u8], backup: bool) -> Result<()> {
    let old = fs::metadata(path).ok();
    if backup {
        if let Some(ref m) = old {
            if m.is_file() {
                let orig =
                    fs::read(path).map_err(Error::io(format!("reading {}", path.display())))?;
                let mut bak = path.as_os_str().to_owned();
                bak.push(".bak");
                write_atomic(Path::new(&bak), &orig, false)?;
            }
        }
    }
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
    if let Some(m) = old {
        let mode = m.permissions().mode() & 0o7777;
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(mode))
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
}
