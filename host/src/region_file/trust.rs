//! Who may own a region file, and who besides its owner may write it: one
//! policy for the libvirt hook, `ivchan`, the agents and the library.
//!
//! `/dev/shm` is writable by every local user, so a file found there is
//! only as trustworthy as its owner and whoever else may write it. The
//! default, [`TrustPolicy::system`], makes the documented setups work out of
//! the box and nothing more:
//!
//! | who made the file | owner | mode | accepted because |
//! |---|---|---|---|
//! | the host agent or `ivchan init` | this user | 0600 | the owner is this process's user |
//! | the libvirt hook (as root) | QEMU's user | 0660, group root | QEMU's user and group root are trusted |
//! | QEMU (`memory-backend-file`) | QEMU's user | 0644 or 0664, QEMU's group | QEMU's user and group are trusted |
//!
//! QEMU's user is `libvirt-qemu` (Debian, Ubuntu) or `qemu` (Fedora, RHEL),
//! whichever exists. Anything else needs an explicit `--allow-owner`,
//! `--allow-group` or `--allow-other-write` (the builder methods of the
//! same names); each refusal names the option that would accept it.

use std::fmt;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::unistd::{Gid, Group, Uid, User};

use super::RegionError;

/// The system users QEMU runs as under libvirt, by distribution.
pub const QEMU_USERS: &[&str] = &["libvirt-qemu", "qemu"];

/// Who may own a region file, and which groups may also write it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustPolicy {
    owners: Vec<u32>,
    groups: Vec<u32>,
    other_write: bool,
}

impl Default for TrustPolicy {
    fn default() -> Self {
        Self::system()
    }
}

impl TrustPolicy {
    /// The default: files owned by this process's user, root, or QEMU's
    /// user (see [`QEMU_USERS`]), writable besides by their owner only
    /// through the group of one of those users (or group root).
    pub fn system() -> Self {
        let mut policy = Self::owner_only();
        policy = policy.allow_owner(0).allow_group(0);
        policy = policy.allow_group(nix::unistd::getegid().as_raw());
        for user in QEMU_USERS
            .iter()
            .filter_map(|name| User::from_name(name).ok().flatten())
        {
            policy = policy.allow_owner(user.uid.as_raw());
            policy = policy.allow_group(user.gid.as_raw());
        }
        policy
    }

    /// The strictest policy: only files owned by this process's user, which
    /// nobody else may write.
    pub fn owner_only() -> Self {
        Self {
            owners: vec![nix::unistd::geteuid().as_raw()],
            groups: Vec::new(),
            other_write: false,
        }
    }

    /// Also trusts files owned by `uid`.
    pub fn allow_owner(mut self, uid: u32) -> Self {
        if !self.owners.contains(&uid) {
            self.owners.push(uid);
        }
        self
    }

    /// Also trusts files that group `gid` may write.
    pub fn allow_group(mut self, gid: u32) -> Self {
        if !self.groups.contains(&gid) {
            self.groups.push(gid);
        }
        self
    }

    /// Trusts files that every local user may write (not recommended: any
    /// of them could then pose as either side).
    pub fn allow_other_write(mut self, allow: bool) -> Self {
        self.other_write = allow;
        self
    }

    /// The trusted owners (uids).
    pub fn owners(&self) -> &[u32] {
        &self.owners
    }

    /// The groups (gids) trusted to write.
    pub fn groups(&self) -> &[u32] {
        &self.groups
    }

    /// Whether files writable by everyone are trusted.
    pub fn other_write(&self) -> bool {
        self.other_write
    }

    /// Checks an existing file's owner and mode (from `fstat` of the
    /// descriptor that will be mapped).
    pub fn check(&self, path: &Path, meta: &Metadata) -> Result<(), RegionError> {
        if !self.owners.contains(&meta.uid()) {
            return Err(RegionError::UntrustedOwner {
                path: path.to_path_buf(),
                uid: meta.uid(),
                owner: user_name(meta.uid()),
                trusted: self.owners.iter().map(|&u| user_name(u)).collect(),
            });
        }
        self.check_mode(path, meta.mode() & 0o7777, meta.gid())
    }

    /// Checks the mode and group a new file is about to get, so nothing is
    /// created that the same policy would refuse to open.
    pub fn check_mode(&self, path: &Path, mode: u32, gid: u32) -> Result<(), RegionError> {
        if mode & 0o002 != 0 && !self.other_write {
            return Err(RegionError::OtherWritable {
                path: path.to_path_buf(),
                mode,
            });
        }
        if mode & 0o020 != 0 && !self.groups.contains(&gid) {
            return Err(RegionError::UntrustedGroup {
                path: path.to_path_buf(),
                mode,
                gid,
                group: group_name(gid),
            });
        }
        Ok(())
    }
}

/// A user or group that could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// No user of that name.
    #[error("no user named {0:?} (give a user name or a numeric uid)")]
    NoSuchUser(String),
    /// No group of that name.
    #[error("no group named {0:?} (give a group name or a numeric gid)")]
    NoSuchGroup(String),
    /// Empty text.
    #[error("empty user or group name")]
    Empty,
    /// The user database could not be read.
    #[error("cannot look up {name:?}: {reason}")]
    Lookup {
        /// The name looked up.
        name: String,
        /// The system's answer.
        reason: String,
    },
}

fn lookup<T>(
    text: &str,
    find: impl FnOnce(&str) -> nix::Result<Option<T>>,
    missing: fn(String) -> IdError,
) -> Result<T, IdError> {
    find(text)
        .map_err(|e| IdError::Lookup {
            name: text.to_owned(),
            reason: e.to_string(),
        })?
        .ok_or_else(|| missing(text.to_owned()))
}

/// A user by name (`libvirt-qemu`) or number (`999`).
pub fn parse_user(text: &str) -> Result<u32, IdError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(IdError::Empty);
    }
    if let Ok(uid) = text.parse() {
        return Ok(uid);
    }
    lookup(text, User::from_name, IdError::NoSuchUser).map(|u| u.uid.as_raw())
}

/// A group by name (`kvm`) or number (`995`).
pub fn parse_group(text: &str) -> Result<u32, IdError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(IdError::Empty);
    }
    if let Ok(gid) = text.parse() {
        return Ok(gid);
    }
    lookup(text, Group::from_name, IdError::NoSuchGroup).map(|g| g.gid.as_raw())
}

/// `USER`, `USER:GROUP` or `:GROUP`, names or numbers.
pub fn parse_owner(text: &str) -> Result<(Option<u32>, Option<u32>), IdError> {
    let (user, group) = match text.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (text, None),
    };
    let uid = if user.is_empty() {
        None
    } else {
        Some(parse_user(user)?)
    };
    let gid = match group {
        None | Some("") => None,
        Some(g) => Some(parse_group(g)?),
    };
    if uid.is_none() && gid.is_none() {
        return Err(IdError::Empty);
    }
    Ok((uid, gid))
}

/// `name(uid)`, or the bare number when the user is unknown.
pub fn user_name(uid: u32) -> IdName {
    IdName {
        id: uid,
        name: User::from_uid(Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name),
    }
}

/// `name(gid)`, or the bare number when the group is unknown.
pub fn group_name(gid: u32) -> IdName {
    IdName {
        id: gid,
        name: Group::from_gid(Gid::from_raw(gid))
            .ok()
            .flatten()
            .map(|g| g.name),
    }
}

/// A uid or gid with its name, if it has one: shown as `name(id)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdName {
    /// The number.
    pub id: u32,
    /// The name in the user or group database.
    pub name: Option<String>,
}

impl IdName {
    /// The name if there is one, else the number: what to type after
    /// `--allow-owner` or `--allow-group`.
    pub fn argument(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.id.to_string())
    }
}

impl fmt::Display for IdName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{name}({})", self.id),
            None => write!(f, "{}", self.id),
        }
    }
}

/// Shows a list of ids as `root(0), libvirt-qemu(999)`.
pub(super) fn list(ids: &[IdName]) -> String {
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_groups_by_name_or_number() {
        assert_eq!(parse_user("root"), Ok(0));
        assert_eq!(parse_user(" 4242 "), Ok(4242));
        assert_eq!(parse_group("root"), Ok(0));
        assert_eq!(parse_group("77"), Ok(77));
        assert_eq!(
            parse_user("no-such-user-ivchan"),
            Err(IdError::NoSuchUser("no-such-user-ivchan".into()))
        );
        assert_eq!(
            parse_group("no-such-group-ivchan").unwrap_err().to_string(),
            "no group named \"no-such-group-ivchan\" (give a group name or a numeric gid)"
        );
        assert_eq!(parse_user(""), Err(IdError::Empty));
        assert_eq!(parse_owner("root:root"), Ok((Some(0), Some(0))));
        assert_eq!(parse_owner(":0"), Ok((None, Some(0))));
        assert_eq!(parse_owner("5"), Ok((Some(5), None)));
        assert_eq!(parse_owner(":"), Err(IdError::Empty));
    }

    #[test]
    fn names_show_as_name_and_number() {
        assert_eq!(user_name(0).to_string(), "root(0)");
        assert_eq!(user_name(0).argument(), "root");
        let unknown = user_name(4_000_000_000);
        assert_eq!(unknown.to_string(), "4000000000");
        assert_eq!(unknown.argument(), "4000000000");
    }

    #[test]
    fn modes_need_a_trusted_group_or_an_explicit_other_write() {
        let path = Path::new("/dev/shm/fg_x");
        let policy = TrustPolicy::owner_only();
        assert!(policy.check_mode(path, 0o600, 12345).is_ok());
        assert!(policy.check_mode(path, 0o644, 12345).is_ok());
        let err = policy.check_mode(path, 0o660, 0).unwrap_err();
        assert!(matches!(err, RegionError::UntrustedGroup { gid: 0, .. }));
        assert!(err.to_string().contains("--allow-group root"), "{err}");
        assert!(policy
            .clone()
            .allow_group(0)
            .check_mode(path, 0o660, 0)
            .is_ok());
        let err = policy.check_mode(path, 0o666, 0).unwrap_err();
        assert!(matches!(err, RegionError::OtherWritable { .. }));
        assert!(err.to_string().contains("--allow-other-write"), "{err}");
        assert!(policy
            .allow_other_write(true)
            .allow_group(0)
            .check_mode(path, 0o666, 0)
            .is_ok());
    }

    #[test]
    fn the_system_policy_trusts_root_this_user_and_qemu() {
        let policy = TrustPolicy::system();
        assert!(policy.owners().contains(&0));
        assert!(policy.owners().contains(&nix::unistd::geteuid().as_raw()));
        for user in QEMU_USERS
            .iter()
            .filter_map(|n| User::from_name(n).ok().flatten())
        {
            assert!(policy.owners().contains(&user.uid.as_raw()));
            assert!(policy.groups().contains(&user.gid.as_raw()));
        }
        assert!(!policy.other_write());
    }
}
