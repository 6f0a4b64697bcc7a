//! [`VmOptions`]: how one VM is served (socket path, mode and group, vector
//! count, client and backlog limits).

use std::path::{Path, PathBuf};

use nix::unistd::Gid;

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
}

impl VmOptions {
    /// Listen on `path`; 1 vector, mode 0660, the process's group, at most
    /// 64 clients, at most 1024 notices queued for a client that does not
    /// read.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            vectors: 1,
            mode: 0o660,
            group: None,
            max_clients: 64,
            backlog: 1024,
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

    /// Most clients connected at once; further connections are closed
    /// right after they are accepted.
    pub fn max_clients(mut self, max: usize) -> Self {
        self.max_clients = max;
        self
    }

    /// Most join/leave notices queued for a client that does not read its
    /// socket, beyond its handshake; past it the client is disconnected.
    pub fn backlog(mut self, max: usize) -> Self {
        self.backlog = max;
        self
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
