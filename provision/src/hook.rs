//! Route 6: the libvirt `qemu` hook.
//!
//! libvirt runs `/etc/libvirt/hooks/qemu` and, since libvirt 6.5, every
//! executable in `/etc/libvirt/hooks/qemu.d/`, as `HOOK NAME OP SUBOP EXTRA`
//! with the domain XML on stdin. A hook cannot change the XML, but it can
//! prepare resources: on `prepare begin` this one creates the region file
//! with the right owner and mode and writes the ivchan header into it, so
//! the guest sees a header even before a host agent runs; on `release end`
//! it removes the file or keeps it. libvirt runs `prepare begin` on the
//! destination of a live migration too, before the incoming QEMU starts,
//! so the destination's region is made the same way (the migration then
//! fills it). For an `ivshmem-doorbell` device, `prepare` also checks that
//! the ivshmem server's socket is at the domain's `<server path>`: QEMU
//! connects at start (an incoming one as well) and fails without it, so the
//! hook fails first, saying which server to start. The region file itself is the host
//! crate's [`RegionFile`](ivchan_host::RegionFile) (`O_NOFOLLOW`, `fstat` checks, `flock`), released
//! as soon as the hook is done. The hook fails closed: with `strict` (the
//! CLI's default; `--fail-open` turns it off) any error on `prepare` — a
//! region file with an unexpected owner, type, mode or size, among others —
//! makes it exit non-zero, so libvirt refuses to start the VM and shows the
//! hook's message.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ivchan_host::{InspectedRegion, RegionError, RegionOptions};
use ivchan_protocol::layout::NAME_LEN;
use ivchan_protocol::naming::RegionSize;
use ivchan_protocol::VmUuid;

use crate::error::{Error, Result};
use crate::spec::{default_region, Spec};

/// Marker line that identifies a hook script written by this tool.
pub const SCRIPT_MARKER: &str = "# ivchan-provision hook";

/// Channel name the hook writes into a new region's header by default.
pub const DEFAULT_CHANNEL_NAME: &str = "ivchan";

/// What to do with the region file when the VM is released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnRelease {
    /// Leave the file (host agents may still read it).
    #[default]
    Keep,
    /// Remove the file.
    Remove,
}

/// Who should own the region file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Owner {
    /// The owning user, if set.
    pub uid: Option<u32>,
    /// The owning group, if set.
    pub gid: Option<u32>,
}

impl Owner {
    /// Parse `USER`, `USER:GROUP`, `:GROUP`, names or numbers (the host
    /// crate's one parser, shared with `ivchan` and the agents).
    pub fn parse(s: &str) -> Result<Owner> {
        let (uid, gid) = ivchan_host::region_file::parse_owner(s)
            .map_err(|e| Error::Hook(format!("owner {s:?}: {e}")))?;
        Ok(Owner { uid, gid })
    }
}

/// Hook behaviour.
#[derive(Debug, Clone)]
pub struct HookConfig {
    /// Region path template ([`Spec::region`]) and size ([`Spec::size`]).
    pub spec: Spec,
    /// Permission bits of a created region file.
    pub mode: u32,
    /// Owner and group of a created region file; also accepted as the
    /// owner of an existing one.
    pub owner: Owner,
    /// Channel name written into a new region's header.
    pub name: String,
    /// What to do with the region when the domain is released.
    pub on_release: OnRelease,
    /// Fail the libvirt operation (non-zero exit) when the hook fails: the
    /// default (`ivchan-provision hook` sets it unless `--fail-open`).
    pub strict: bool,
    /// Leave a new region's memory unallocated until the rings touch it
    /// ([`RegionOptions::prefault`]`(false)`). By default the hook's mapping
    /// faults in, and so allocates on tmpfs, the whole region at `prepare`.
    pub lazy: bool,
}

impl HookConfig {
    /// The host crate's options for this configuration's region files:
    /// directory and file-name prefix from the region template, size, mode,
    /// owner and group. Errors if the template's file name does not end in
    /// `{uuid}`, the size is not a [`RegionSize`] (a power of two from
    /// 1 MiB to 16 GiB) or the channel name is too long.
    pub fn region_options(&self) -> Result<RegionOptions> {
        let (dir, prefix) = split_region_template(&self.spec.region)?;
        RegionSize::new(self.spec.size)?;
        if self.name.len() > NAME_LEN {
            return Err(Error::Hook(format!(
                "channel name {:?} is {} bytes long (the maximum is {NAME_LEN})",
                self.name,
                self.name.len()
            )));
        }
        let mut opts = RegionOptions::new()
            .dir(dir)
            .prefix(prefix)
            .size(self.spec.size)
            .mode(self.mode)
            .prefault(!self.lazy);
        if let Some(uid) = self.owner.uid {
            opts = opts.owner(uid);
        }
        if let Some(gid) = self.owner.gid {
            opts = opts.group(gid);
        }
        Ok(opts)
    }
}

/// Split a region path template (`/dev/shm/fg_{uuid}`) into the directory
/// and file-name prefix the host crate's [`RegionOptions`] take
/// (`/dev/shm`, `fg_`). The template's file name must end in `{uuid}`, and
/// `{uuid}` must appear nowhere else.
pub fn split_region_template(template: &str) -> Result<(PathBuf, String)> {
    let bad = |why: &str| Error::Hook(format!("region path {template:?}: {why}"));
    let path = Path::new(template);
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| bad("has no file name"))?;
    let prefix = name.strip_suffix("{uuid}").ok_or_else(|| {
        bad(&format!(
            "the hook needs a file name ending in {{uuid}} (e.g. {})",
            default_region()
        ))
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if prefix.contains("{uuid}") || dir.to_string_lossy().contains("{uuid}") {
        return Err(bad(
            "{uuid} may appear only once, at the end of the file name",
        ));
    }
    Ok((dir.to_path_buf(), prefix.to_string()))
}

/// Run the hook for `libvirt`'s arguments (`NAME OP SUBOP [EXTRA]`) and the
/// domain XML. Returns a line describing what was done, if anything.
pub fn run(args: &[String], xml: &str, cfg: &HookConfig) -> Result<Option<String>> {
    let op = args.get(1).map(String::as_str);
    let sub = args.get(2).map(String::as_str);
    match (op, sub) {
        (Some("prepare"), Some("begin")) => {
            let uuid = crate::inject::domain_uuid(xml)?;
            let made = prepare(&cfg.region_options()?, &uuid, cfg)?;
            let mut said = vec![made];
            for server in crate::inject::shmem_servers(xml)? {
                said.push(check_server(&server)?);
            }
            Ok(Some(said.join("; ")))
        }
        (Some("release"), Some("end")) if cfg.on_release == OnRelease::Remove => {
            let uuid = crate::inject::domain_uuid(xml)?;
            release(&cfg.region_options()?, &uuid)
        }
        _ => Ok(None),
    }
}

/// `prepare begin`: create the region file and write its header, or keep an
/// existing one of the right size (writing the header if it has none).
/// The [`RegionFile`](ivchan_host::RegionFile) is dropped on return, which
/// releases its lock.
fn prepare(opts: &RegionOptions, uuid: &VmUuid, cfg: &HookConfig) -> Result<String> {
    let path = opts.path_for(uuid);
    let file = match opts.create(uuid) {
        Ok(file) => {
            file.attach_or_init(&cfg.name)?;
            return Ok(format!("created {} with an ivchan header", path.display()));
        }
        Err(RegionError::Io { source, .. }) if source.kind() == ErrorKind::AlreadyExists => {
            opts.open(uuid)
        }
        Err(e) => return Err(e.into()),
    };
    match file {
        Ok(file) => {
            check_existing_size(&path, file.len(), cfg.spec.size)?;
            file.attach_or_init(&cfg.name)?;
            Ok(format!("kept existing {}", path.display()))
        }
        // A host agent holds it (and has attached to its header); check
        // only what needs no lock.
        Err(RegionError::Busy { .. }) => {
            let seen = InspectedRegion::open(&path)?;
            check_existing_size(&path, seen.len(), cfg.spec.size)?;
            Ok(format!(
                "kept existing {} (in use by a host agent)",
                path.display()
            ))
        }
        Err(e) => Err(e.into()),
    }
}

/// Checks that the socket of an ivshmem server (the doorbell model) is in
/// place at `server`. Without connecting: a connection would be a peer of
/// the server, and the VM's QEMU must be its first guest peer (peer 0, which
/// QEMU requires of a `master=on` device). Whether a server still listens
/// behind the file is not checked (ivchan's server binds elsewhere and
/// moves the socket into place, so the kernel's socket table does not name
/// this path); QEMU itself reports a dead one.
fn check_server(server: &Path) -> Result<String> {
    use std::os::unix::fs::FileTypeExt;
    let missing = |why: &str| {
        Error::Hook(format!(
        "no ivshmem server socket at {} ({why}): QEMU's ivshmem-doorbell device connects to it at start, also on a migration's destination; start the host agent first (ivchan-host-agent --uuid UUID --doorbell {} [--incoming])",
        server.display(),
        server.display()
    ))
    };
    let meta = fs::symlink_metadata(server).map_err(|e| missing(&e.to_string()))?;
    if !meta.file_type().is_socket() {
        return Err(missing("not a socket"));
    }
    Ok(format!(
        "ivshmem server socket {} in place",
        server.display()
    ))
}

fn check_existing_size(path: &Path, len: usize, size: u64) -> Result<()> {
    if len as u64 != size {
        return Err(Error::Region {
            path: path.to_path_buf(),
            msg: format!("exists with size {len} instead of {size}"),
        });
    }
    Ok(())
}

/// `release end` with [`OnRelease::Remove`]: remove the region file if it
/// is one (a regular file passing the host crate's checks; never through a
/// symlink). `None` when there was no file.
fn release(opts: &RegionOptions, uuid: &VmUuid) -> Result<Option<String>> {
    let path = opts.path_for(uuid);
    match opts.open(uuid) {
        Ok(file) => {
            file.remove()?;
            Ok(Some(format!("removed {}", path.display())))
        }
        Err(RegionError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => Ok(None),
        // A host agent still holds it: removing the file is what tells a
        // supervising agent the VM is gone, so remove it without the lock.
        Err(RegionError::Busy { .. }) => {
            remove_unlocked(&path)?;
            Ok(Some(format!(
                "removed {} (a host agent still had it open)",
                path.display()
            )))
        }
        Err(e) => Err(e.into()),
    }
}

/// Unlink `path` if it is a regular region file (opened `O_NOFOLLOW`,
/// checked through its descriptor) and the path still names that file.
fn remove_unlocked(path: &Path) -> Result<()> {
    let seen = InspectedRegion::open(path)?;
    let ours = seen.metadata();
    let there =
        fs::symlink_metadata(path).map_err(Error::io(format!("stat {}", path.display())))?;
    if (there.dev(), there.ino()) != (ours.dev(), ours.ino()) {
        return Err(RegionError::Replaced {
            path: path.to_path_buf(),
        }
        .into());
    }
    fs::remove_file(path).map_err(Error::io(format!("removing {}", path.display())))
}

/// Quote one word for `/bin/sh` (single quotes, `'` as `'\''`).
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The hook script: it execs `binary hook OPTIONS -- "$@"`.
pub fn script(binary: &Path, options: &[String]) -> String {
    let mut line = format!("exec {} hook", sh_quote(&binary.to_string_lossy()));
    for o in options {
        line.push(' ');
        line.push_str(&sh_quote(o));
    }
    line.push_str(" -- \"$@\"");
    format!("#!/bin/sh\n{SCRIPT_MARKER}: written by `ivchan-provision install-hook`; reinstall rather than edit.\n{line}\n")
}

/// Where the hook goes: `DIR/qemu.d/ivchan`, or `DIR/qemu` for libvirt < 6.5.
pub fn hook_path(hooks_dir: &Path, legacy: bool) -> PathBuf {
    if legacy {
        hooks_dir.join("qemu")
    } else {
        hooks_dir.join("qemu.d").join("ivchan")
    }
}

/// Install the script without clobbering a hook that is not ours (unless
/// `force`, which keeps a `.bak`). Returns the path written.
pub fn install(hooks_dir: &Path, legacy: bool, force: bool, script: &str) -> Result<PathBuf> {
    let path = hook_path(hooks_dir, legacy);
    let mut backup = false;
    if let Ok(old) = fs::read(&path) {
        let ours = String::from_utf8_lossy(&old).contains(SCRIPT_MARKER);
        if !ours && !force {
            return Err(Error::Hook(format!(
                "{} exists and was not written by ivchan-provision; not overwriting it{} (or pass --force to replace it, keeping a .bak)",
                path.display(),
                if legacy { "; install under qemu.d/ instead (drop --legacy)" } else { "" }
            )));
        }
        backup = !ours;
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    }
    crate::fsutil::write_atomic(&path, script.as_bytes(), backup)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
        .map_err(Error::io(format!("chmod {}", path.display())))?;
    Ok(path)
}

/// Remove our hook script; a hook that is not ours is left alone.
pub fn uninstall(hooks_dir: &Path, legacy: bool) -> Result<Option<PathBuf>> {
    let path = hook_path(hooks_dir, legacy);
    match fs::read(&path) {
        Ok(old) if String::from_utf8_lossy(&old).contains(SCRIPT_MARKER) => {
            fs::remove_file(&path).map_err(Error::io(format!("removing {}", path.display())))?;
            Ok(Some(path))
        }
        Ok(_) => Err(Error::Hook(format!(
            "{} was not written by ivchan-provision; leaving it",
            path.display()
        ))),
        Err(_) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ivchan_protocol::naming::{self, SizeError};
    use ivchan_protocol::Header;

    const UUID: &str = "6b9e1e0a-5c1f-4b7e-9a51-1d2c3e4f5a6b";

    fn domain() -> String {
        format!(
            "<domain type='qemu'><uuid>{}</uuid><devices/></domain>",
            UUID.to_uppercase()
        )
    }

    fn args(op: &str, sub: &str) -> Vec<String> {
        ["dom", op, sub, "-"].map(String::from).to_vec()
    }

    fn config(dir: &Path) -> HookConfig {
        HookConfig {
            spec: Spec {
                size: 1 << 20,
                region: format!("{}/{}{{uuid}}", dir.display(), naming::REGION_PREFIX),
                ..Spec::default()
            },
            mode: 0o640,
            owner: Owner::default(),
            name: "hooked".into(),
            on_release: OnRelease::Remove,
            strict: false,
            lazy: false,
        }
    }

    /// Where the hook puts the region of [`UUID`] under `dir`.
    fn region_file(dir: &Path) -> PathBuf {
        dir.join(naming::region_file_name(&UUID.parse().unwrap()))
    }

    fn header_name(path: &Path) -> Option<String> {
        let seen = InspectedRegion::open(path).unwrap();
        let header = Header::open(seen.region()).ok()?;
        header.layout().name_str().map(str::to_string)
    }

    #[test]
    fn templates_split_into_dir_and_prefix() {
        let (dir, prefix) = split_region_template(&default_region()).unwrap();
        assert_eq!(
            (dir.as_path(), prefix.as_str()),
            (Path::new(naming::REGION_DIR), naming::REGION_PREFIX)
        );
        let (dir, prefix) = split_region_template("{uuid}").unwrap();
        assert_eq!((dir.as_path(), prefix.as_str()), (Path::new("."), ""));
        for bad in [
            "/dev/shm/fg_{uuid}.mem",
            "/dev/shm/fixed",
            "/run/{uuid}/fg_{uuid}",
            "/dev/shm/{uuid}{uuid}",
            "/",
        ] {
            let e = split_region_template(bad).unwrap_err();
            assert!(
                matches!(e, Error::Hook(ref m) if m.contains(bad)),
                "{bad}: {e}"
            );
        }
        // The host crate's path is the template's.
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let uuid = crate::spec::parse_uuid(UUID).unwrap();
        assert_eq!(
            cfg.region_options().unwrap().path_for(&uuid),
            cfg.spec.region_path(&uuid)
        );
    }

    #[test]
    fn bad_configs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        // Region sizes: the protocol's limits, 1 MiB to 16 GiB, powers of two.
        for (size, ok) in crate::spec::SIZE_CASES {
            let mut cfg = config(dir.path());
            cfg.spec.size = size;
            match cfg.region_options() {
                Ok(_) => assert!(ok, "{size} accepted"),
                Err(e) => assert!(!ok && matches!(e, Error::Size(_)), "{size}: {e}"),
            }
        }
        let mut small = config(dir.path());
        small.spec.size = 512 << 10;
        let e = small.region_options().unwrap_err();
        assert!(
            matches!(e, Error::Size(SizeError::TooSmall { bytes }) if bytes == 512 << 10),
            "{e}"
        );
        let mut long = config(dir.path());
        long.name = "x".repeat(NAME_LEN + 1);
        assert!(long.region_options().is_err());
    }

    #[test]
    fn prepare_creates_with_header_keeps_and_release_removes() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let path = region_file(dir.path());
        let msg = run(&args("prepare", "begin"), &domain(), &cfg).unwrap();
        assert!(msg.unwrap().starts_with("created"));
        let m = fs::metadata(&path).unwrap();
        assert_eq!(m.len(), 1 << 20);
        assert_eq!(m.permissions().mode() & 0o777, 0o640);
        assert_eq!(header_name(&path).as_deref(), Some("hooked"));
        // Not locked any more: a host agent can take it.
        RegionOptions::new()
            .dir(dir.path())
            .open(&crate::spec::parse_uuid(UUID).unwrap())
            .unwrap();

        // Again: the existing file (and its header) is kept.
        let msg = run(&args("prepare", "begin"), &domain(), &cfg).unwrap();
        assert!(msg.unwrap().starts_with("kept existing"));
        assert_eq!(header_name(&path).as_deref(), Some("hooked"));
        let mut bigger = config(dir.path());
        bigger.spec.size = 2 << 20;
        let e = run(&args("prepare", "begin"), &domain(), &bigger).unwrap_err();
        assert!(e.to_string().contains("instead of"), "{e}");

        // Other operations do nothing; release with keep does nothing.
        assert_eq!(
            run(&args("started", "begin"), &domain(), &cfg).unwrap(),
            None
        );
        let keep = HookConfig {
            on_release: OnRelease::Keep,
            ..config(dir.path())
        };
        assert_eq!(
            run(&args("release", "end"), &domain(), &keep).unwrap(),
            None
        );
        assert!(path.exists());

        let msg = run(&args("release", "end"), &domain(), &cfg).unwrap();
        assert!(msg.unwrap().starts_with("removed"));
        assert!(!path.exists());
        assert_eq!(run(&args("release", "end"), &domain(), &cfg).unwrap(), None);
    }

    #[test]
    fn prepare_allocates_the_region_unless_lazy() {
        use std::os::unix::fs::MetadataExt;
        // tmpfs counts a file's allocated pages in its blocks (512 bytes).
        let dir = tempfile::Builder::new()
            .prefix("ivchan-hook-")
            .tempdir_in("/dev/shm")
            .unwrap();
        let allocated = || fs::metadata(region_file(dir.path())).unwrap().blocks() * 512;
        let eager = config(dir.path());
        run(&args("prepare", "begin"), &domain(), &eager).unwrap();
        assert_eq!(allocated(), 1 << 20, "every page at prepare");
        run(&args("release", "end"), &domain(), &eager).unwrap();

        let lazy = HookConfig {
            lazy: true,
            ..config(dir.path())
        };
        run(&args("prepare", "begin"), &domain(), &lazy).unwrap();
        assert_eq!(
            header_name(&region_file(dir.path())).as_deref(),
            Some("hooked")
        );
        let touched = allocated();
        assert!(
            touched > 0 && touched < 1 << 18,
            "lazy: only the header's pages, got {touched}"
        );
    }

    #[test]
    fn prepare_writes_a_header_into_an_existing_zero_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = region_file(dir.path());
        let f = fs::File::create(&path).unwrap();
        f.set_len(1 << 20).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        drop(f);
        let msg = run(&args("prepare", "begin"), &domain(), &config(dir.path())).unwrap();
        assert!(msg.unwrap().starts_with("kept existing"));
        assert_eq!(header_name(&path).as_deref(), Some("hooked"));
    }

    #[test]
    fn a_region_held_by_a_host_agent_is_kept_then_removed() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let uuid = crate::spec::parse_uuid(UUID).unwrap();
        let agent = cfg.region_options().unwrap().create(&uuid).unwrap();
        agent.attach_or_init("agent").unwrap();
        let msg = run(&args("prepare", "begin"), &domain(), &cfg).unwrap();
        assert!(msg.unwrap().contains("in use by a host agent"));
        assert_eq!(header_name(agent.path()).as_deref(), Some("agent"));
        let msg = run(&args("release", "end"), &domain(), &cfg).unwrap();
        assert!(msg.unwrap().contains("still had it open"));
        assert!(!agent.path().exists());
    }

    #[test]
    fn symlinks_and_other_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let path = region_file(dir.path());
        let target = dir.path().join("target");
        fs::write(&target, vec![0u8; 1 << 20]).unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        for op in [("prepare", "begin"), ("release", "end")] {
            let e = run(&args(op.0, op.1), &domain(), &cfg).unwrap_err();
            assert!(e.to_string().contains("symbolic link"), "{e}");
        }
        assert!(fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink());
        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();
        assert!(run(&args("prepare", "begin"), &domain(), &cfg).is_err());
        assert!(run(&args("release", "end"), &domain(), &cfg).is_err());
        assert!(path.is_dir());
    }

    /// A doorbell domain's server socket is checked at `prepare`: in place,
    /// it passes (without a connection); missing or not a socket, the hook
    /// fails closed naming the server to start.
    #[test]
    fn prepare_checks_the_doorbell_server() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("vm.sock");
        let xml = domain().replace(
            "<devices/>",
            &format!(
                "<devices><shmem name='fg_x'><model type='ivshmem-doorbell'/><server path='{}'/></shmem></devices>",
                sock.display()
            ),
        );
        assert_eq!(
            crate::inject::shmem_servers(&xml).unwrap(),
            vec![sock.clone()]
        );
        let cfg = config(dir.path());
        let e = run(&args("prepare", "begin"), &xml, &cfg).unwrap_err();
        assert!(e.to_string().contains("no ivshmem server socket at"), "{e}");
        fs::write(&sock, b"").unwrap();
        let e = run(&args("prepare", "begin"), &xml, &cfg).unwrap_err();
        assert!(e.to_string().contains("not a socket"), "{e}");
        fs::remove_file(&sock).unwrap();
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let msg = run(&args("prepare", "begin"), &xml, &cfg).unwrap().unwrap();
        assert!(msg.contains("ivshmem server socket"), "{msg}");
        assert!(
            msg.contains("with an ivchan header") || msg.contains("kept existing"),
            "{msg}"
        );
        // The check connected to nothing.
        listener.set_nonblocking(true).unwrap();
        assert!(listener.accept().is_err());
    }

    #[test]
    fn owners_parse() {
        assert_eq!(
            Owner::parse("0:0").unwrap(),
            Owner {
                uid: Some(0),
                gid: Some(0)
            }
        );
        assert_eq!(
            Owner::parse(":0").unwrap(),
            Owner {
                uid: None,
                gid: Some(0)
            }
        );
        assert_eq!(Owner::parse("root").unwrap().uid, Some(0));
        assert!(Owner::parse("no-such-user-ivchan").is_err());
        assert!(Owner::parse("0:no-such-group-ivchan").is_err());
    }

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("a'b"), r"'a'\''b'");
        let s = script(
            Path::new("/usr/bin/ivchan-provision"),
            &["--mode".into(), "0660".into()],
        );
        assert!(s.ends_with("exec '/usr/bin/ivchan-provision' hook '--mode' '0660' -- \"$@\"\n"));
    }

    #[test]
    fn install_does_not_clobber() {
        let dir = tempfile::tempdir().unwrap();
        let legacy = dir.path().join("qemu");
        fs::write(&legacy, "#!/bin/sh\necho theirs\n").unwrap();
        let s = script(Path::new("/bin/true"), &[]);
        assert!(install(dir.path(), true, false, &s).is_err());
        assert_eq!(
            fs::read_to_string(&legacy).unwrap(),
            "#!/bin/sh\necho theirs\n"
        );
        let p = install(dir.path(), false, false, &s).unwrap();
        assert_eq!(p, dir.path().join("qemu.d/ivchan"));
        // Reinstalling over our own script is fine.
        install(dir.path(), false, false, &s).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o755
        );
        install(dir.path(), true, true, &s).unwrap();
        assert!(dir.path().join("qemu.bak").exists());
        assert_eq!(uninstall(dir.path(), false).unwrap(), Some(p));
    }
}
