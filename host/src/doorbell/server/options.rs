//! [`VmOptions`]: how one VM is served (socket path, mode and group, vector
//! count, who may connect, client and backlog limits).

use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid};

use crate::doorbell::DoorbellError;

/// How one VM is served.
#[derive(Debug, Clone)]
pub struct VmOptions {
    pub(super) path: PathBuf,
    pub(super) vectors: u16,
    pub(super) mode: u32,
    pub(super) group: Option<Gid>,
    pub(super) max_clients: usize,
    pub(super) backlog: usize,
    pub(super) allowed_uids: Vec<Uid>,
    pub(super) allowed_gids: Vec<Gid>,
}

impl VmOptions {
    /// Listen on `path`; 1 vector, mode 0660, the process's group, peers
    /// running as root, as this process's effective uid or in the socket's
    /// [`group`](Self::group), at most 64 clients, at most 1024 notices
    /// queued for a client that does not read.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            vectors: 1,
            mode: 0o660,
            group: None,
            max_clients: 64,
            backlog: 1024,
            allowed_uids: Vec::new(),
            allowed_gids: Vec::new(),
        }
    }

    /// Interrupt vectors per peer (1 to
    /// [`MAX_VECTORS`](crate::doorbell::MAX_VECTORS)); QEMU's
    /// `ivshmem-doorbell,vectors=N` should match.
    pub fn vectors(mut self, vectors: u16) -> Self {
        self.vectors = vectors;
        self
    }

    /// Permission bits of the socket file (default 0660). Connecting needs
    /// write permission.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode & 0o777;
        self
    }

    /// Group of the socket file, e.g. libvirt-qemu's group so that QEMU
    /// started by libvirt may connect with mode 0660.
    pub fn group(mut self, gid: u32) -> Self {
        self.group = Some(Gid::from_raw(gid));
        self
    }

    /// Group of the socket file by name (e.g. `"libvirt-qemu"`).
    pub fn group_named(self, name: &str) -> Result<Self, DoorbellError> {
        match nix::unistd::Group::from_name(name) {
            Ok(Some(group)) => Ok(self.group(group.gid.as_raw())),
            Ok(None) => Err(DoorbellError::UnknownGroup {
                name: name.to_owned(),
            }),
            Err(source) => Err(DoorbellError::Sys {
                op: "look up group",
                source,
            }),
        }
    }

    /// Also admit peers whose effective uid is `uid` (e.g. the user QEMU
    /// runs as, when it is neither root nor in the socket's group).
    ///
    /// The server reads each connection's credentials (`SO_PEERCRED`, set
    /// by the kernel at `connect`) and admits only peers whose uid is 0,
    /// this process's effective uid or one allowed here, or whose primary
    /// gid is the socket's [`group`](Self::group) or one allowed with
    /// [`allow_gid`](Self::allow_gid). Anyone else is closed at once,
    /// before a byte or fd is sent, takes no client slot, and is reported
    /// as [`RefuseReason::Credentials`](super::RefuseReason::Credentials)
    /// with its uid, gid and pid. Socket permissions alone are not enough:
    /// a process can hold a socket connected by another.
    pub fn allow_uid(mut self, uid: u32) -> Self {
        self.allowed_uids.push(Uid::from_raw(uid));
        self
    }

    /// Also admit peers whose effective (primary) gid is `gid`; see
    /// [`allow_uid`](Self::allow_uid). Supplementary groups are not seen
    /// by `SO_PEERCRED`.
    pub fn allow_gid(mut self, gid: u32) -> Self {
        self.allowed_gids.push(Gid::from_raw(gid));
        self
    }

    /// Whether a peer with these credentials may connect.
    pub(super) fn admits(&self, uid: Uid, gid: Gid) -> bool {
        uid.is_root()
            || uid == nix::unistd::geteuid()
            || self.allowed_uids.contains(&uid)
            || self.group == Some(gid)
            || self.allowed_gids.contains(&gid)
    }

    /// Most clients connected at once. When the limit is reached, a newcomer
    /// takes the slot of a client that has not taken its handshake (the one
    /// that took least of it, the oldest first; it leaves with
    /// [`LeaveReason::Evicted`](super::LeaveReason::Evicted)); if every
    /// client has taken its handshake, the newcomer is closed right after
    /// it is accepted.
    pub fn max_clients(mut self, max: usize) -> Self {
        self.max_clients = max;
        self
    }

    /// Most join/leave notices queued for a client that does not read its
    /// socket, beyond its handshake; past it the client is disconnected.
    /// A safety net: a peer that leaves before a client was sent anything
    /// about it is dropped from that client's queue (with its eventfds),
    /// so a client that does not read only accumulates notices about live
    /// peers.
    pub fn backlog(mut self, max: usize) -> Self {
        self.backlog = max;
        self
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_this_euid_the_socket_group_and_allowed_ids_are_admitted() {
        let me = nix::unistd::geteuid();
        let stranger = Uid::from_raw(if me.as_raw() == 4242 { 4343 } else { 4242 });
        let other_gid = Gid::from_raw(4242);
        let opts = VmOptions::new("/x");
        assert!(opts.admits(Uid::from_raw(0), other_gid));
        assert!(opts.admits(me, other_gid));
        assert!(!opts.admits(stranger, other_gid));
        let grouped = VmOptions::new("/x").group(4242);
        assert!(grouped.admits(stranger, other_gid), "socket group");
        assert!(!grouped.admits(stranger, Gid::from_raw(4343)));
        let by_uid = VmOptions::new("/x").allow_uid(stranger.as_raw());
        assert!(by_uid.admits(stranger, Gid::from_raw(4343)));
        let by_gid = VmOptions::new("/x").allow_gid(4343);
        assert!(by_gid.admits(stranger, Gid::from_raw(4343)));
        assert!(!by_gid.admits(stranger, other_gid));
    }
}
