//! Creating and removing region files (`/dev/shm/fg_<uuid>`).
//!
//! Small on purpose: the host crate will offer the full version.

use std::fs::{self, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::{Error, Result};

/// Who should own the region file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Owner {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

impl Owner {
    /// Parse `USER`, `USER:GROUP`, `:GROUP`, names or numbers.
    pub fn parse(s: &str) -> Result<Owner> {
        let (u, g) = match s.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (s, None),
        };
        let bad = |m: String| Error::Hook(format!("owner {s:?}: {m}"));
        let uid = if u.is_empty() {
            None
        } else if let Ok(n) = u.parse() {
            Some(n)
        } else {
            let user = nix::unistd::User::from_name(u)
                .map_err(|e| bad(e.to_string()))?
                .ok_or_else(|| bad(format!("no user {u}")))?;
            Some(user.uid.as_raw())
        };
        let gid = match g {
            None | Some("") => None,
            Some(g) => Some(match g.parse() {
                Ok(n) => n,
                Err(_) => nix::unistd::Group::from_name(g)
                    .map_err(|e| bad(e.to_string()))?
                    .ok_or_else(|| bad(format!("no group {g}")))?
                    .gid
                    .as_raw(),
            }),
        };
        Ok(Owner { uid, gid })
    }
}

/// What [`create`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// A new file was made.
    New,
    /// A regular file of the right size was already there; it was left alone.
    Existing,
}

/// Create the region file: `O_CREAT|O_EXCL|O_NOFOLLOW`, sized with
/// `ftruncate`, `mode` set explicitly (not masked by the umask), owner
/// changed if asked. An existing regular file of the right size is accepted;
/// anything else there (a symlink, a directory, another size) is an error.
pub fn create(path: &Path, size: u64, mode: u32, owner: Owner) -> Result<Created> {
    let err = |msg: String| Error::Region {
        path: path.to_path_buf(),
        msg,
    };
    let opened = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path);
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            let f = OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
                .open(path)
                .map_err(|e| err(format!("exists but cannot be opened (a symlink?): {e}")))?;
            let m = f.metadata().map_err(|e| err(e.to_string()))?;
            if !m.is_file() {
                return Err(err("exists and is not a regular file".into()));
            }
            if m.size() != size {
                return Err(err(format!(
                    "exists with size {} instead of {size}",
                    m.size()
                )));
            }
            return Ok(Created::Existing);
        }
        Err(e) => return Err(err(format!("cannot create: {e}"))),
    };
    let setup = || -> std::io::Result<()> {
        file.set_len(size)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        if owner.uid.is_some() || owner.gid.is_some() {
            std::os::unix::fs::fchown(&file, owner.uid, owner.gid)?;
        }
        Ok(())
    };
    if let Err(e) = setup() {
        let _ = fs::remove_file(path);
        return Err(err(format!("cannot size or chown: {e}")));
    }
    Ok(Created::New)
}

/// Remove the region file if it is a regular file (never follows a symlink).
/// Returns whether something was removed.
pub fn remove(path: &Path) -> Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => fs::remove_file(path)
            .map(|()| true)
            .map_err(|e| Error::Region {
                path: path.to_path_buf(),
                msg: format!("cannot remove: {e}"),
            }),
        Ok(_) => Err(Error::Region {
            path: path.to_path_buf(),
            msg: "is not a regular file; not removing it".into(),
        }),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::Region {
            path: path.to_path_buf(),
            msg: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_existing_symlink_remove() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fg_x");
        assert_eq!(
            create(&p, 1 << 20, 0o660, Owner::default()).unwrap(),
            Created::New
        );
        let m = fs::metadata(&p).unwrap();
        assert_eq!(m.len(), 1 << 20);
        assert_eq!(m.permissions().mode() & 0o777, 0o660);
        assert_eq!(
            create(&p, 1 << 20, 0o660, Owner::default()).unwrap(),
            Created::Existing
        );
        assert!(create(&p, 2 << 20, 0o660, Owner::default()).is_err());
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(create(&link, 1 << 20, 0o660, Owner::default()).is_err());
        assert!(remove(&link).is_err());
        assert!(remove(&p).unwrap());
        assert!(!remove(&p).unwrap());
        assert_eq!(
            Owner::parse("0:0").unwrap(),
            Owner {
                uid: Some(0),
                gid: Some(0)
            }
        );
        assert_eq!(Owner::parse("root").unwrap().uid, Some(0));
        assert!(Owner::parse("no-such-user-ivchan").is_err());
    }
}
