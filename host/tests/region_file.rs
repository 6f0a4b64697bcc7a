//! Region files on real files in a private temp directory under /dev/shm.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use ivchan_host::{list_regions, InspectedRegion, RegionError, RegionOptions, TrustPolicy, VmUuid};
use ivchan_protocol::layout::offsets;
use ivchan_protocol::naming::SizeError;
use ivchan_protocol::{Header, Ordering, Side};

const VM: &str = "5b7e6a0c-1d2e-4f3a-9b8c-7d6e5f4a3b2c";
const OTHER_VM: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
const MIB: u64 = 1 << 20;

fn shm_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ivchan-host-test-")
        .tempdir_in("/dev/shm")
        .expect("temp dir in /dev/shm")
}

fn uuid(text: &str) -> VmUuid {
    text.parse().expect("uuid")
}

fn opts(dir: &Path) -> RegionOptions {
    RegionOptions::new().dir(dir).size(MIB)
}

#[test]
fn create_then_reopen_keeps_header_and_messages() {
    let dir = shm_dir();
    let vm = uuid(VM);
    let file = opts(dir.path()).create(&vm).expect("create");
    assert_eq!(file.path(), dir.path().join(format!("fg_{VM}")));
    assert_eq!(file.len() as u64, MIB);
    assert_eq!(file.uuid(), &vm);
    let meta = fs::metadata(file.path()).expect("stat");
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert_eq!(meta.len(), MIB);
    {
        let header = file.attach_or_init("chan").expect("init");
        let (mut tx, _) = header.split(Side::Host).expect("split");
        assert!(tx.send(b"kept across reopen").expect("send"));
    }
    drop(file);

    let file = opts(dir.path())
        .size(8 * MIB) // ignored when opening: the file's size is adopted
        .open(&vm)
        .expect("reopen");
    assert_eq!(file.len() as u64, MIB);
    let header = file.attach_or_init("ignored").expect("attach");
    assert_eq!(header.layout().name_str(), Some("chan"));
    let (_, mut rx) = header.split(Side::Guest).expect("split");
    let mut buf = [0u8; 64];
    let n = rx.recv_into(&mut buf).expect("recv").expect("a message");
    assert_eq!(&buf[..n], b"kept across reopen");
}

#[test]
fn regions_are_allocated_when_mapped_unless_asked_to_wait() {
    // tmpfs counts a file's allocated pages in its blocks (512 bytes each).
    let allocated = |path: &Path| fs::metadata(path).expect("stat").blocks() * 512;
    let dir = shm_dir();
    let eager = opts(dir.path()).create(&uuid(VM)).expect("create");
    assert_eq!(allocated(eager.path()), MIB, "every page faulted in");
    let lazy_opts = opts(dir.path()).prefault(false);
    let lazy = lazy_opts.create(&uuid(OTHER_VM)).expect("create lazy");
    {
        let header = lazy.attach_or_init("lazy").expect("init");
        let (mut tx, _) = header.split(Side::Host).expect("split");
        assert!(tx.send(b"one page more").expect("send"));
    }
    let touched = allocated(lazy.path());
    assert!(
        touched > 0 && touched < MIB / 4,
        "only touched pages: {touched}"
    );
    // Opening an existing file faults it in too.
    drop(lazy);
    let reopened = opts(dir.path()).open(&uuid(OTHER_VM)).expect("reopen");
    assert_eq!(allocated(reopened.path()), MIB);
}

#[test]
fn attach_or_init_initialises_a_zero_file_and_never_wipes() {
    let dir = shm_dir();
    let vm = uuid(VM);
    // As QEMU would leave it: sized, all zeros, made by someone else first.
    let path = dir.path().join(format!("fg_{VM}"));
    let f = fs::File::create(&path).expect("create");
    f.set_len(2 * MIB).expect("size");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
    drop(f);

    let file = opts(dir.path()).open_or_create(&vm).expect("open");
    assert_eq!(file.len() as u64, 2 * MIB);
    let header = file.attach_or_init("fresh").expect("init");
    assert_eq!(header.layout().uuid, *vm.as_bytes());
    let (mut tx, _) = header.split(Side::Guest).expect("split");
    assert!(tx.send(b"before").expect("send"));

    // A second attach (e.g. after an agent restart) keeps the message.
    let again = file.attach_or_init("other-name").expect("attach");
    assert_eq!(again.layout().name_str(), Some("fresh"));
    let (_, mut rx) = again.split(Side::Host).expect("split");
    let mut buf = [0u8; 16];
    let n = rx.recv_into(&mut buf).expect("recv").expect("message kept");
    assert_eq!(&buf[..n], b"before");
}

#[test]
fn newer_version_and_foreign_headers_are_left_alone() {
    let dir = shm_dir();
    let vm = uuid(VM);
    let file = opts(dir.path()).create(&vm).expect("create");
    file.attach_or_init("x").expect("init");
    let region = file.region();
    let version = region.load(offsets::VERSION, Ordering::Relaxed);
    region.store(offsets::VERSION, (version & !0xffff) | 2, Ordering::Relaxed);
    let err = file.attach_or_init("x").unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, RegionError::IncompatibleVersion { .. }),
        "{text}"
    );
    assert!(text.contains("2.1") && text.contains("1.1"), "{text}");
    // Not wiped: the bumped version and the magic are still there.
    assert_eq!(region.load(offsets::VERSION, Ordering::Relaxed) & 0xffff, 2);
    assert_ne!(region.load(offsets::MAGIC, Ordering::Relaxed), 0);

    // Garbage magic: a layout error, not a re-initialisation.
    region.store(offsets::MAGIC, 0x1234, Ordering::Relaxed);
    let err = file.attach_or_init("x").unwrap_err();
    assert!(matches!(err, RegionError::Layout { .. }), "{err}");
    assert_eq!(region.load(offsets::MAGIC, Ordering::Relaxed), 0x1234);
}

#[test]
fn header_for_another_vm_is_refused() {
    let dir = shm_dir();
    let file = opts(dir.path()).create(&uuid(VM)).expect("create");
    let params = ivchan_protocol::InitParams {
        uuid: *uuid(OTHER_VM).as_bytes(),
        name: "theirs",
        ring_size: None,
    };
    Header::create(file.region(), &params).expect("header");
    let err = file.attach_or_init("mine").unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, RegionError::UuidMismatch { .. }), "{text}");
    assert!(text.contains(VM) && text.contains(OTHER_VM), "{text}");
}

#[test]
fn symlink_is_refused() {
    let dir = shm_dir();
    let target = dir.path().join("target");
    fs::write(&target, vec![0u8; MIB as usize]).expect("write");
    let link = dir.path().join(format!("fg_{VM}"));
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    for result in [
        opts(dir.path()).open(&uuid(VM)),
        opts(dir.path()).open_or_create(&uuid(VM)),
    ] {
        let err = result.unwrap_err();
        assert!(matches!(err, RegionError::Symlink { .. }), "{err}");
        assert!(err.to_string().contains(&format!("fg_{VM}")), "{err}");
    }
    let err = InspectedRegion::open(&link).unwrap_err();
    assert!(matches!(err, RegionError::Symlink { .. }), "{err}");
}

#[test]
fn file_of_another_owner_is_refused_unless_allowed() {
    let dir = shm_dir();
    let vm = uuid(VM);
    let file = opts(dir.path()).create(&vm).expect("create");
    let path = file.path().to_path_buf();
    drop(file);
    std::os::unix::fs::chown(&path, Some(65534), None).expect("chown (tests run as root)");
    let err = opts(dir.path()).open(&vm).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, RegionError::UntrustedOwner { uid: 65534, .. }),
        "{text}"
    );
    // The refusal names the user and the option that trusts it.
    assert_eq!(
        text,
        format!(
            "{} is owned by nobody(65534), who is not trusted (trusted owners: {}); \
             if that user should be trusted, pass --allow-owner nobody",
            path.display(),
            opts(dir.path())
                .trust_policy()
                .owners()
                .iter()
                .map(|&u| ivchan_host::region_file::user_name(u).to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    );
    opts(dir.path())
        .allow_owner(65534)
        .open(&vm)
        .expect("allowed owner");
}

#[test]
fn group_or_other_writable_file_is_refused_by_default() {
    let dir = shm_dir();
    let vm = uuid(VM);
    let path = opts(dir.path())
        .create(&vm)
        .expect("create")
        .path()
        .to_path_buf();
    // Group root is trusted (the libvirt hook's files are 0660 root-group);
    // nogroup is not.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o660)).expect("chmod");
    opts(dir.path()).open(&vm).expect("group root may write");
    std::os::unix::fs::chown(&path, None, Some(65534)).expect("chgrp (tests run as root)");
    for mode in [0o620, 0o660] {
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
        let err = opts(dir.path()).open(&vm).unwrap_err();
        assert!(
            matches!(err, RegionError::UntrustedGroup { gid: 65534, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("--allow-group nogroup"), "{err}");
    }
    for mode in [0o602, 0o666] {
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
        let err = opts(dir.path()).open(&vm).unwrap_err();
        assert!(matches!(err, RegionError::OtherWritable { .. }), "{err}");
        assert!(err.to_string().contains("--allow-other-write"), "{err}");
    }
    fs::set_permissions(&path, fs::Permissions::from_mode(0o660)).expect("chmod");
    opts(dir.path())
        .allow_group(65534)
        .open(&vm)
        .expect("group write allowed");
}

#[test]
fn created_mode_and_group_are_exact_despite_umask() {
    let dir = shm_dir();
    let file = opts(dir.path())
        .mode(0o660)
        .group(65534)
        .create(&uuid(VM))
        .expect("create");
    let meta = fs::metadata(file.path()).expect("stat");
    assert_eq!(meta.mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), 65534);
}

#[test]
fn created_owner_is_set_before_sizing_and_accepted_when_reopening() {
    let dir = shm_dir();
    let vm = uuid(VM);
    // Only the owner option makes uid 65534 acceptable: the default
    // accepted owner is the current euid (root here).
    let with_owner = || opts(dir.path()).mode(0o640).owner(65534).group(65534);
    {
        let file = with_owner()
            .create(&vm)
            .expect("create (tests run as root)");
        let meta = fs::metadata(file.path()).expect("stat");
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
        assert_eq!(meta.mode() & 0o777, 0o640);
        assert_eq!(meta.len(), MIB);
        file.attach_or_init("owned").expect("init");
    }
    let err = opts(dir.path()).open(&vm).unwrap_err();
    assert!(
        matches!(err, RegionError::UntrustedOwner { uid: 65534, .. }),
        "{err}"
    );
    // Accepted even when the policy is replaced after `owner`.
    let file = with_owner()
        .trust(TrustPolicy::owner_only())
        .open(&vm)
        .expect("reopen");
    assert_eq!(
        file.attach_or_init("ignored")
            .expect("attach")
            .layout()
            .name_str(),
        Some("owned")
    );
    assert_eq!(
        with_owner()
            .trust(TrustPolicy::owner_only())
            .trust_policy()
            .owners(),
        [0, 65534]
    );
}

#[test]
fn bad_sizes_are_refused_and_leave_nothing_behind() {
    let dir = shm_dir();
    let vm = uuid(VM);
    let err = opts(dir.path()).size(3 * MIB).create(&vm).unwrap_err();
    assert!(
        matches!(err, RegionError::BadSize { source: SizeError::NotPowerOfTwo { bytes }, .. } if bytes == 3 * MIB),
        "{err}"
    );
    let err = opts(dir.path()).size(MIB / 2).create(&vm).unwrap_err();
    assert!(
        matches!(
            err,
            RegionError::BadSize {
                source: SizeError::TooSmall { .. },
                ..
            }
        ),
        "{err}"
    );
    // Above the layout's limit: refused before anything is written.
    let err = opts(dir.path()).size(64 << 30).create(&vm).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: region size 68719476736 is above the 16 GiB maximum",
            dir.path().join(format!("fg_{VM}")).display()
        )
    );
    // Within the limits but beyond the file system's free space.
    let free = nix::sys::statvfs::statvfs(dir.path()).expect("statvfs");
    let available = free.blocks_available() * free.fragment_size();
    let too_big = (available + 1).next_power_of_two();
    if too_big <= 16 << 30 {
        let err = opts(dir.path()).size(too_big).create(&vm).unwrap_err();
        assert!(matches!(err, RegionError::NoSpace { .. }), "{err}");
        assert!(err.to_string().contains("choose a smaller --size"), "{err}");
    }
    // Modes the trust policy would refuse to open are not created.
    let err = opts(dir.path()).mode(0o666).create(&vm).unwrap_err();
    assert!(matches!(err, RegionError::OtherWritable { .. }), "{err}");
    assert!(!dir.path().join(format!("fg_{VM}")).exists());

    // Existing files with a bad or no size.
    let path = dir.path().join(format!("fg_{VM}"));
    for (size, check) in [
        (0, "empty"),
        (3 * MIB, "power of two"),
        (MIB / 2, "minimum"),
    ] {
        let f = fs::File::create(&path).expect("create");
        f.set_len(size).expect("size");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        let err = opts(dir.path()).open_or_create(&vm).unwrap_err();
        assert!(err.to_string().contains(check), "{size}: {err}");
        if size == 0 {
            assert!(matches!(err, RegionError::Unsized { .. }), "{err}");
        }
    }
}

#[test]
fn second_opener_gets_busy() {
    let dir = shm_dir();
    let vm = uuid(VM);
    let first = opts(dir.path()).create(&vm).expect("create");
    let err = opts(dir.path()).open(&vm).unwrap_err();
    assert!(matches!(err, RegionError::Busy { .. }), "{err}");
    assert!(err.to_string().contains(&format!("fg_{VM}")), "{err}");
    // Inspection takes no lock.
    let view = InspectedRegion::open(first.path()).expect("inspect");
    assert_eq!(view.len(), first.len());
    drop(first);
    opts(dir.path()).open(&vm).expect("lock released on drop");
}

/// A supervisor watching the directory opens a region file the moment it
/// appears. A creator racing with it must neither fail nor be seen
/// half-made: the file appears sized and locked, or not at all.
#[test]
fn a_watcher_opening_new_files_never_sees_them_half_made() {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    let dir = shm_dir();
    let rounds = if cfg!(miri) { 10 } else { 2000 };
    // The uuid being created now; `rounds` ends the watcher.
    let current = AtomicU64::new(0);
    let uuid_of = |n: u64| uuid(&format!("00000000-0000-4000-8000-{n:012x}"));
    std::thread::scope(|s| {
        // The watcher: opens the file being created in a tight loop, as the
        // supervisor does on each inotify event, and lets go at once.
        let watcher = s.spawn(|| {
            let mut unsized_seen = 0u64;
            loop {
                let n = current.load(Relaxed);
                if n >= rounds {
                    return unsized_seen;
                }
                if let Err(RegionError::Unsized { .. } | RegionError::BadSize { .. }) =
                    opts(dir.path()).open(&uuid_of(n))
                {
                    unsized_seen += 1;
                }
            }
        });
        let mut failed = Vec::new();
        for n in 0..rounds {
            current.store(n, Relaxed);
            if let Err(e) = opts(dir.path()).create(&uuid_of(n)) {
                failed.push(format!("create {n}: {e}"));
            }
        }
        current.store(rounds, Relaxed);
        let unsized_seen = watcher.join().unwrap();
        assert_eq!(failed, Vec::<String>::new(), "creates failed");
        assert_eq!(
            unsized_seen, 0,
            "the watcher saw files before they were sized"
        );
    });
    assert_eq!(
        list_regions(dir.path(), "fg_").unwrap().len() as u64,
        rounds
    );
}

#[test]
fn inspection_never_writes_the_file() {
    let dir = shm_dir();
    let file = opts(dir.path()).create(&uuid(VM)).expect("create");
    file.attach_or_init("seen").expect("init");
    let view = InspectedRegion::open(file.path()).expect("inspect");
    let header = Header::open(view.region()).expect("header via private map");
    assert_eq!(header.layout().name_str(), Some("seen"));
    // A store through the private mapping stays private...
    view.region().store(offsets::MAGIC, 0, Ordering::Relaxed);
    // ...the file (and the shared mapping) still has the magic.
    assert_ne!(file.region().load(offsets::MAGIC, Ordering::Relaxed), 0);
    // Later writes to the file stay visible through pages the view never
    // wrote (the ring control block is on another page than the magic).
    let control = header.layout().host_to_guest.control;
    file.region().store(control, 42, Ordering::Relaxed);
    assert_eq!(view.region().load(control, Ordering::Relaxed), 42);
}

#[test]
fn list_finds_only_region_files() {
    let dir = shm_dir();
    let a = opts(dir.path()).create(&uuid(VM)).expect("create");
    let b = opts(dir.path()).create(&uuid(OTHER_VM)).expect("create");
    fs::write(dir.path().join("fg_not-a-uuid"), b"x").expect("write");
    fs::write(
        dir.path()
            .join("other_5b7e6a0c-1d2e-4f3a-9b8c-7d6e5f4a3b2c"),
        b"x",
    )
    .expect("w");
    fs::create_dir(dir.path().join("fg_00000000-0000-0000-0000-000000000000")).expect("mkdir");
    let found = list_regions(dir.path(), "fg_").expect("list");
    assert_eq!(
        found,
        vec![
            (uuid(OTHER_VM), b.path().to_path_buf()),
            (uuid(VM), a.path().to_path_buf()),
        ]
    );
}

#[test]
fn remove_unlinks_the_file() {
    let dir = shm_dir();
    let file = opts(dir.path()).create(&uuid(VM)).expect("create");
    let path = file.path().to_path_buf();
    file.remove().expect("remove");
    assert!(!path.exists());
}

#[test]
fn bad_uuids_never_become_paths() {
    for bad in [
        "../x",
        "",
        "5b7e6a0c-1d2e-4f3a-9b8c",
        "5b7e6a0c-1d2e-4f3a-9b8c-7d6e5f4a3bzz",
    ] {
        let err = bad.parse::<VmUuid>().unwrap_err();
        assert!(err.to_string().contains("not a UUID"), "{err}");
    }
    let vm = uuid(VM);
    assert_eq!(
        RegionOptions::new().path_for(&vm),
        Path::new("/dev/shm/fg_5b7e6a0c-1d2e-4f3a-9b8c-7d6e5f4a3b2c")
    );
}

/// A FIFO planted at a VM's region path (anyone can create files in
/// /dev/shm) must be refused, not block the open waiting for a writer.
/// The opens run on a thread so that a regression fails instead of hanging.
#[test]
fn a_planted_fifo_is_refused_without_blocking() {
    let dir = shm_dir();
    let vm = uuid(VM);
    let path = dir.path().join(format!("fg_{VM}"));
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let (done, outcome) = std::sync::mpsc::channel();
    let regions = opts(dir.path());
    let fifo = path.clone();
    std::thread::spawn(move || {
        let opened = regions.open(&vm).map(drop);
        let inspected = InspectedRegion::open(&fifo).map(drop);
        let _ = done.send((opened, inspected));
    });
    let (opened, inspected) = outcome
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("opening a FIFO blocked");
    assert!(
        matches!(opened, Err(RegionError::NotRegular { .. })),
        "{opened:?}"
    );
    assert!(
        matches!(inspected, Err(RegionError::NotRegular { .. })),
        "{inspected:?}"
    );
}

#[test]
fn a_region_truncated_under_a_live_channel_is_an_error_not_a_crash() {
    use ivchan_host::{ChannelError, VmChannel};
    use ivchan_protocol::LayoutError;
    let dir = shm_dir();
    let vm = uuid(VM);
    let mut ch = VmChannel::builder(&vm)
        .regions(opts(dir.path()))
        .name("truncated")
        .create()
        .expect("create");
    let path = ch.path().to_path_buf();
    // The file's owner shrinks it from another process while we wait.
    let truncate = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let status = std::process::Command::new("truncate")
            .args(["-s", "0"])
            .arg(&path)
            .status()
            .expect("run truncate");
        assert!(status.success());
    });
    let mut buf = [0u8; 64];
    let err = ch
        .recv(&mut buf, Some(std::time::Duration::from_secs(20)))
        .unwrap_err();
    truncate.join().expect("truncate thread");
    assert!(
        matches!(
            err,
            ChannelError::Layout(LayoutError::HeaderWiped { found: 0 })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("file truncated"), "{err}");
    assert!(ch.memory().was_truncated());
    // Poisoned: every later call fails at once, nothing crashes.
    assert!(matches!(
        ch.recv(&mut buf, None),
        Err(ChannelError::Layout(LayoutError::HeaderWiped { .. }))
    ));
}
