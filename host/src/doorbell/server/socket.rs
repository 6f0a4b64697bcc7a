//! The socket file a VM's clients connect to: clearing a stale one, binding
//! with the configured mode and group, and removing it again.

use std::fs::{self, Permissions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::socket::{
    bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
};

use super::VmOptions;
use crate::doorbell::DoorbellError;

/// The socket file this server created; removed on drop if the path
/// still names it.
#[derive(Debug)]
pub(super) struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(meta) = fs::symlink_metadata(&self.path) {
            if meta.file_type().is_socket() && (meta.dev(), meta.ino()) == (self.dev, self.ino) {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

fn path_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> DoorbellError + 'a {
    move |source| DoorbellError::Socket {
        path: path.to_path_buf(),
        op,
        source,
    }
}

fn nix_path_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(Errno) -> DoorbellError + 'a {
    move |e| path_err(path, op)(e.into())
}

/// Clears the way for a socket at `path`: nothing there is fine; a stale
/// socket (nobody accepts on it) is removed; a live socket or any other
/// kind of file is refused.
fn clear_stale(path: &Path) -> Result<(), DoorbellError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(path_err(path, "stat")(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(DoorbellError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(DoorbellError::SocketInUse {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            fs::remove_file(path).map_err(path_err(path, "remove stale socket"))
        }
        Err(e) => Err(path_err(path, "probe existing socket")(e)),
    }
}

/// Binds a listening socket at `path` with the options' mode and group.
/// Permissions are set between `bind` and `listen`, so nobody can connect
/// while the file still has the umask's mode.
pub(super) fn bind_socket(opts: &VmOptions) -> Result<(UnixListener, SocketFile), DoorbellError> {
    let path = opts.path.as_path();
    clear_stale(path)?;
    let sock = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(nix_path_err(path, "create socket for"))?;
    let addr = UnixAddr::new(path).map_err(nix_path_err(path, "address"))?;
    bind(sock.as_raw_fd(), &addr).map_err(nix_path_err(path, "bind"))?;
    let meta = fs::symlink_metadata(path).map_err(path_err(path, "stat"))?;
    // From here on the file is ours: dropping `file` removes it on error.
    let file = SocketFile {
        path: path.to_path_buf(),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    if let Some(gid) = opts.group {
        std::os::unix::fs::lchown(path, None, Some(gid.as_raw()))
            .map_err(path_err(path, "chown"))?;
    }
    fs::set_permissions(path, Permissions::from_mode(opts.mode))
        .map_err(path_err(path, "chmod"))?;
    let backlog = Backlog::new(128).map_err(nix_path_err(path, "listen on"))?;
    listen(&sock, backlog).map_err(nix_path_err(path, "listen on"))?;
    Ok((UnixListener::from(sock), file))
}
