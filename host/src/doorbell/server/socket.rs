//! The socket file a VM's clients connect to: clearing a stale one, binding
//! with the configured mode and group (never through a path someone else
//! could swap), and removing it again.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{renameat2, AtFlags, OFlag, RenameFlags};
use nix::sys::socket::{
    bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
};
use nix::sys::stat::{fchmodat, fstatat, FchmodatFlags, Mode};
use nix::unistd::{fchownat, unlinkat, UnlinkatFlags};

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

/// A private directory (0700, this process's) beside the socket path, in
/// which the socket is bound and given its mode and group before it is
/// moved into place; removed on drop.
struct Private {
    parent: File,
    name: String,
    dir: File,
}

impl Private {
    /// Creates `.<name>.<random>` in `parent`.
    fn create(parent: File, name: &str, path: &Path) -> Result<Self, DoorbellError> {
        let mut random = [0u8; 8];
        File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut random))
            .map_err(path_err(path, "read /dev/urandom for"))?;
        let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let name = format!(".{name}.{suffix}");
        let at = format!("/proc/self/fd/{}/{name}", parent.as_raw_fd());
        DirBuilder::new()
            .mode(0o700)
            .create(&at)
            .map_err(path_err(path, "create a private directory beside"))?;
        let dir = match OpenOptions::new()
            .read(true)
            .custom_flags(libc_flags())
            .open(&at)
        {
            Ok(dir) => dir,
            Err(e) => {
                let _ = unlinkat(
                    Some(parent.as_raw_fd()),
                    name.as_str(),
                    UnlinkatFlags::RemoveDir,
                );
                return Err(path_err(path, "open the private directory beside")(e));
            }
        };
        let me = Self { parent, name, dir };
        // Ours, and nobody else's to write in: what is bound there stays
        // ours until it is moved.
        let meta = me.dir.metadata().map_err(path_err(path, "stat"))?;
        if !meta.is_dir()
            || meta.uid() != nix::unistd::geteuid().as_raw()
            || meta.mode() & 0o077 != 0
        {
            return Err(path_err(path, "create a private directory beside")(
                io::Error::from(io::ErrorKind::PermissionDenied),
            ));
        }
        Ok(me)
    }

    /// `/proc/self/fd/<dir>/<entry>`: a path that reaches this directory
    /// through its fd, whatever is done to its name meanwhile.
    fn entry(&self, entry: &str) -> String {
        format!("/proc/self/fd/{}/{entry}", self.dir.as_raw_fd())
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        let _ = unlinkat(Some(self.dir.as_raw_fd()), SOCK, UnlinkatFlags::NoRemoveDir);
        let _ = unlinkat(
            Some(self.parent.as_raw_fd()),
            self.name.as_str(),
            UnlinkatFlags::RemoveDir,
        );
    }
}

/// The socket's name inside the private directory.
const SOCK: &str = "s";

fn libc_flags() -> i32 {
    (OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits()
}

/// Binds a listening socket at `path` with the options' mode and group,
/// without ever changing anything through the path (a swap of the path
/// for a symlink must not redirect a chmod or chown, and Linux applies
/// neither `fchmod` nor `fchown` on a socket's fd to the file `bind`
/// creates, only the umask): the socket is bound in a fresh private
/// directory beside it (0700, reached through its fd), given its mode and
/// group there with `fchmodat`/`fchownat`, set listening, then moved to
/// `path` with `renameat2(RENAME_NOREPLACE)` (so nothing that appeared at
/// the path meanwhile is replaced). It is connectable with its final mode
/// from the moment it appears.
pub(super) fn bind_socket(opts: &VmOptions) -> Result<(UnixListener, SocketFile), DoorbellError> {
    let path = opts.path.as_path();
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| path_err(path, "bind")(io::Error::from(io::ErrorKind::InvalidInput)))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    clear_stale(path)?;
    let parent = OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_DIRECTORY | OFlag::O_CLOEXEC).bits())
        .open(parent)
        .map_err(path_err(path, "open the directory of"))?;
    let parent_fd = parent.as_raw_fd();
    let private = Private::create(parent, name, path)?;
    let dir_fd = private.dir.as_raw_fd();
    let sock = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(nix_path_err(path, "create socket for"))?;
    let addr =
        UnixAddr::new(private.entry(SOCK).as_str()).map_err(nix_path_err(path, "address"))?;
    bind(sock.as_raw_fd(), &addr).map_err(nix_path_err(path, "bind"))?;
    let stat = fstatat(Some(dir_fd), SOCK, AtFlags::AT_SYMLINK_NOFOLLOW)
        .map_err(nix_path_err(path, "stat"))?;
    if let Some(gid) = opts.group {
        fchownat(
            Some(dir_fd),
            SOCK,
            None,
            Some(gid),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(nix_path_err(path, "chown"))?;
    }
    fchmodat(
        Some(dir_fd),
        SOCK,
        Mode::from_bits_truncate(opts.mode),
        FchmodatFlags::FollowSymlink,
    )
    .map_err(nix_path_err(path, "chmod"))?;
    let backlog = Backlog::new(128).map_err(nix_path_err(path, "listen on"))?;
    listen(&sock, backlog).map_err(nix_path_err(path, "listen on"))?;
    renameat2(
        Some(dir_fd),
        SOCK,
        Some(parent_fd),
        name,
        RenameFlags::RENAME_NOREPLACE,
    )
    .map_err(nix_path_err(path, "move the socket into place at"))?;
    // From here on the file at `path` is ours (until someone replaces it):
    // dropping `file` removes it if it is still this socket.
    let file = SocketFile {
        path: path.to_path_buf(),
        dev: stat.st_dev,
        ino: stat.st_ino,
    };
    drop(private);
    Ok((UnixListener::from(sock), file))
}
