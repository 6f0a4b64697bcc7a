//! The `ivchan` binary against real region files.

use std::process::Command;

use ivchan_host::{RegionOptions, VmUuid};

mod support;
use ivchan_protocol::Side;
use support::golden;

const VM: &str = "5b7e6a0c-1d2e-4f3a-9b8c-7d6e5f4a3b2c";

fn ivchan(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ivchan"))
        .args(args)
        // Log output is what -v/-q choose, not the caller's environment.
        .env_remove("RUST_LOG")
        .output()
        .expect("run ivchan");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn list_and_inspect_a_live_region_without_disturbing_it() {
    let dir = tempfile::Builder::new()
        .prefix("ivchan-cli-test-")
        .tempdir_in("/dev/shm")
        .expect("temp dir");
    let d = dir.path().to_str().expect("utf-8 path");
    let vm: VmUuid = VM.parse().expect("uuid");
    // The agent holds the flock the whole time: the tool must not need it.
    let file = RegionOptions::new()
        .dir(dir.path())
        .size(1 << 20)
        .create(&vm)
        .expect("create");
    let header = file.attach_or_init("telemetry").expect("init");
    header.begin_session(Side::Host);
    let (mut tx, _rx) = header.split(Side::Host).expect("split");
    assert!(tx.send(&[7u8; 100]).expect("send"));
    std::fs::write(dir.path().join("fg_junk"), b"x").expect("write");

    let (ok, out, err) = ivchan(&["list", "--dir", d]);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("fg_{VM}")), "{out}");
    assert!(out.contains("1 MiB  owner root(0)  mode 0600"), "{out}");
    assert!(out.contains("\"telemetry\" vm 5b7e6a0c"), "{out}");
    assert!(!out.contains("fg_junk"), "{out}");

    for arg in [
        format!("fg_{VM}"),
        VM.to_owned(),
        file.path().display().to_string(),
    ] {
        let (ok, out, err) = ivchan(&["inspect", "--dir", d, &arg]);
        assert!(ok, "{arg}: {err}");
        assert!(out.contains("name      \"telemetry\""), "{out}");
        assert!(out.contains("host->guest  head 0  tail 112"), "{out}");
        assert!(out.contains("host   state ready   epoch 1"), "{out}");
        assert!(out.contains("guest  state absent"), "{out}");
    }
    // Still ours, unchanged.
    let again = file.attach_or_init("x").expect("attach");
    assert_eq!(
        again.ring_positions(ivchan_protocol::Direction::HostToGuest),
        (0, 112)
    );

    let (ok, _, err) = ivchan(&["inspect", "--dir", d, "fg_..%2fetc"]);
    assert!(!ok);
    assert!(
        err.contains("ivchan: ") && err.contains("not a UUID"),
        "{err}"
    );
    let (ok, _, err) = ivchan(&[
        "inspect",
        "--dir",
        d,
        "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
    ]);
    assert!(!ok);
    assert!(err.contains("No such file"), "{err}");
}

#[test]
fn init_creates_a_region_with_a_header_and_keeps_an_existing_one() {
    let dir = tempfile::Builder::new()
        .prefix("ivchan-cli-init-")
        .tempdir_in("/dev/shm")
        .expect("temp dir");
    let d = dir.path().to_str().expect("utf-8 path");
    let (ok, out, err) = ivchan(&[
        "init", VM, "--dir", d, "--name", "decoy", "--size", "2097152", "--mode", "640",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("\"decoy\""), "{out}");
    let path = dir.path().join(format!("fg_{VM}"));
    let meta = std::fs::metadata(&path).expect("created");
    assert_eq!(meta.len(), 2 << 20);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);

    // tmpfs counts the allocated pages in the blocks: all of them, mapped
    // at once by default.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(meta.blocks() * 512, 2 << 20, "faulted in when mapped");
    let lazy_vm = "0f1e2d3c-4b5a-4978-8796-a5b4c3d2e1f0";
    let (ok, _, err) = ivchan(&["init", lazy_vm, "--dir", d, "--size", "2M", "--lazy"]);
    assert!(ok, "{err}");
    let lazy = std::fs::metadata(dir.path().join(format!("fg_{lazy_vm}"))).expect("created");
    assert!(
        lazy.blocks() * 512 < 1 << 20,
        "--lazy: only the header's pages"
    );

    // Again, with another name: the header (and its name) stays.
    let (ok, out, err) = ivchan(&["init", VM, "--dir", d, "--name", "other"]);
    assert!(ok, "{err}");
    assert!(out.contains("\"decoy\""), "{out}");

    for (args, needle) in [
        (vec!["init", "../etc/passwd", "--dir", d], "not a UUID"),
        (vec!["init", VM, "--dir", d, "--mode", "9"], "octal mode"),
        (
            vec![
                "init",
                "00000000-0000-4000-8000-000000000001",
                "--dir",
                d,
                "--size",
                "3000000",
            ],
            "power of two",
        ),
    ] {
        let (ok, _, err) = ivchan(&args);
        assert!(!ok && err.contains(needle), "{args:?}: {err}");
    }
}

fn shm_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("ivchan-cli-{tag}-"))
        .tempdir_in("/dev/shm")
        .expect("temp dir")
}

#[test]
fn impossible_sizes_and_untrusted_modes_are_refused_before_anything_is_written() {
    let dir = shm_dir("limits");
    let d = dir.path().to_str().expect("utf-8 path");
    let path = dir.path().join(format!("fg_{VM}"));
    let (ok, _, err) = ivchan(&["init", VM, "--dir", d, "--size", "68719476736"]);
    assert!(!ok);
    assert_eq!(
        err,
        "error: invalid value '68719476736' for '--size <SIZE>': region size 68719476736 \
         is above the 16 GiB maximum\n\nFor more information, try '--help'.\n"
    );
    let (ok, _, err) = ivchan(&["init", VM, "--dir", d, "--mode", "666"]);
    assert!(!ok);
    assert_eq!(
        err,
        format!(
            "ivchan: {} has mode 0666: every local user may write it; remove that (chmod o-w), \
             or pass --allow-other-write to accept it (not recommended)\n",
            path.display()
        )
    );
    assert!(!path.exists(), "nothing is left behind");
    // With the option that the refusal names, the same command works, and
    // the agents' options accept the file it made.
    let (ok, _, err) = ivchan(&[
        "init",
        VM,
        "--dir",
        d,
        "--mode",
        "666",
        "--allow-other-write",
    ]);
    assert!(ok, "{err}");
    assert!(path.exists());
}

#[test]
fn users_and_groups_are_taken_by_name() {
    let dir = shm_dir("names");
    let d = dir.path().to_str().expect("utf-8 path");
    let (ok, _, err) = ivchan(&[
        "init", VM, "--dir", d, "--owner", "nobody", "--group", "nogroup", "--mode", "0660",
    ]);
    assert!(ok, "{err}");
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir.path().join(format!("fg_{VM}"))).expect("stat");
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o777),
        (65534, 65534, 0o660)
    );
    let (ok, _, err) = ivchan(&[
        "init",
        VM,
        "--dir",
        d,
        "--allow-owner",
        "no-such-user-ivchan",
    ]);
    assert!(!ok);
    assert!(
        err.contains(
            "invalid value 'no-such-user-ivchan' for '--allow-owner <USER>': no user named \
             \"no-such-user-ivchan\" (give a user name or a numeric uid)"
        ),
        "{err}"
    );
}

#[test]
fn list_fails_when_a_region_cannot_be_read() {
    let dir = shm_dir("list");
    let d = dir.path().to_str().expect("utf-8 path");
    let (ok, _, err) = ivchan(&["init", VM, "--dir", d, "--size", "1M"]);
    assert!(ok, "{err}");
    let (ok, out, err) = ivchan(&["list", "--dir", d]);
    assert!(ok, "{err}");
    assert!(out.contains("host   absent"), "{out}");
    // A second region of an impossible size: still listed, but the exit
    // status says something could not be read.
    let bad = dir.path().join("fg_00000000-0000-4000-8000-000000000001");
    std::fs::write(&bad, b"short").expect("write");
    let (ok, out, err) = ivchan(&["list", "--dir", d]);
    assert!(!ok);
    assert!(out.contains(&format!("fg_{VM}")), "{out}");
    assert!(out.contains("cannot open"), "{out}");
    assert_eq!(err, "ivchan: 1 of 2 region files could not be read\n");
}

#[test]
fn stale_sides_are_shown_and_reset_recovers_the_region_in_place() {
    let dir = shm_dir("reset");
    let d = dir.path().to_str().expect("utf-8 path");
    let vm: VmUuid = VM.parse().expect("uuid");
    let options = RegionOptions::new().dir(dir.path()).size(1 << 20);
    let inode = {
        let file = options.create(&vm).expect("create");
        let header = file.attach_or_init("wedged").expect("init");
        // A host agent that died: ready, heartbeat still.
        header.begin_session(Side::Host);
        let (mut tx, _rx) = header.split(Side::Host).expect("split");
        assert!(tx.send(b"left over").expect("send"));
        use std::os::unix::fs::MetadataExt;
        file.file().metadata().expect("stat").ino()
    };
    let (ok, out, err) = ivchan(&["inspect", "--dir", d, VM]);
    assert!(ok, "{err}");
    assert!(
        out.contains("host   stale: ready, but no heartbeat"),
        "{out}"
    );
    assert!(out.contains("guest  absent"), "{out}");

    // A live guest (its heartbeat moves) stops a reset unless forced.
    let file = options.open(&vm).expect("open");
    let header = file.attach_or_init("x").expect("attach");
    header.begin_session(Side::Guest);
    drop(file); // releases the lock: the beater below maps it as a guest would
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let beater = {
        let stop = stop.clone();
        let options = options.clone();
        std::thread::spawn(move || {
            let view = ivchan_host::PeerMapping::open(options.path_for(&vm)).expect("map");
            let header = ivchan_protocol::Header::open(view.region()).expect("header");
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                header.heartbeat(Side::Guest);
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        })
    };
    let (ok, _, err) = ivchan(&["reset", VM, "--dir", d]);
    assert!(!ok);
    assert_eq!(
        err,
        format!(
            "ivchan: {}: the guest agent is alive (its heartbeat moves); stop it first, \
             or pass --force to reset under it\n",
            dir.path().join(format!("fg_{VM}")).display()
        )
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    beater.join().expect("beater");

    let (ok, out, err) = ivchan(&["reset", VM, "--dir", d]);
    assert!(ok, "{err}");
    assert!(out.contains("reset: \"wedged\""), "{out}");
    let (ok, out, err) = ivchan(&["inspect", "--dir", d, VM]);
    assert!(ok, "{err}");
    assert!(out.contains("host->guest  head 0  tail 0"), "{out}");
    assert!(
        out.contains("host   absent") && out.contains("guest  absent"),
        "{out}"
    );
    use std::os::unix::fs::MetadataExt;
    let after = std::fs::metadata(dir.path().join(format!("fg_{VM}"))).expect("stat");
    assert_eq!(after.ino(), inode, "the file is kept, not recreated");

    // A host agent holding the region stops a reset.
    let held = options.open(&vm).expect("hold");
    let (ok, _, err) = ivchan(&["reset", VM, "--dir", d, "--force"]);
    assert!(!ok);
    assert!(err.contains("in use by another host agent"), "{err}");
    drop(held);
}

#[test]
fn json_output_has_stable_fields() {
    let dir = shm_dir("json");
    let d = dir.path().to_str().expect("utf-8 path");
    let vm: VmUuid = VM.parse().expect("uuid");
    let file = RegionOptions::new()
        .dir(dir.path())
        .size(1 << 20)
        .create(&vm)
        .expect("create");
    let header = file.attach_or_init("telemetry").expect("init");
    // A host agent that sent 100 bytes, has a doorbell and then died
    // (ready, heartbeat still: stale); no guest yet.
    header.begin_session(Side::Host);
    header.heartbeat(Side::Host);
    header.set_doorbell(
        Side::Host,
        Some(ivchan_protocol::DoorbellAddress {
            peer: 0,
            vectors: 1,
        }),
    );
    let (mut tx, _rx) = header.split(Side::Host).expect("split");
    assert!(tx.send(&[7u8; 100]).expect("send"));
    drop(file);
    // A file too short to be a region.
    std::fs::write(
        dir.path().join("fg_00000000-0000-4000-8000-000000000001"),
        b"x",
    )
    .expect("write");

    let (ok, out, err) = ivchan(&["inspect", "--json", "--dir", d, VM]);
    assert!(ok, "{err}");
    golden("inspect.json", &out.replace(d, "DIR"));
    let (ok, out, err) = ivchan(&["list", "--json", "--dir", d]);
    assert!(!ok, "one region cannot be read");
    assert_eq!(err, "ivchan: 1 of 2 region files could not be read\n");
    golden("list.json", &out.replace(d, "DIR"));
    // Valid JSON, whatever the formatting.
    let parsed: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(parsed["regions"][1]["liveness"]["host"], "stale");
}

#[test]
fn version_names_the_tool() {
    let (ok, out, err) = ivchan(&["--version"]);
    assert!(ok, "{err}");
    assert_eq!(out, format!("ivchan {}\n", env!("CARGO_PKG_VERSION")));
}

#[test]
fn completions_and_man_pages_come_from_the_clap_definitions() {
    // bash: a script bash accepts, completing every subcommand and option.
    let (ok, script, err) = ivchan(&["completions", "bash"]);
    assert!(ok, "{err}");
    for word in [
        "list",
        "inspect",
        "init",
        "reset",
        "--json",
        "--allow-owner",
    ] {
        assert!(script.contains(word), "bash completion lacks {word}");
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("ivchan.bash");
    std::fs::write(&path, &script).expect("write");
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&path)
        .output()
        .expect("run bash");
    assert!(
        syntax.status.success(),
        "{}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let (ok, script, err) = ivchan(&["completions", shell]);
        assert!(ok && script.contains("inspect"), "{shell}: {err}");
    }
    let (ok, _, err) = ivchan(&["completions", "tcsh"]);
    assert!(!ok && err.contains("invalid value 'tcsh'"), "{err}");

    // man: one page per command, roff that names the options.
    let (ok, page, err) = ivchan(&["man"]);
    assert!(ok, "{err}");
    assert!(page.starts_with(".ie \\n(.g .ds Aq"), "{page}");
    assert!(page.contains(".TH ivchan 1"), "{page}");
    let d = dir.path().to_str().expect("utf-8 path");
    let (ok, _, err) = ivchan(&["man", "--dir", d]);
    assert!(ok, "{err}");
    let inspect = std::fs::read_to_string(dir.path().join("ivchan-inspect.1")).expect("page");
    assert!(inspect.contains("\\-\\-json"), "{inspect}");
    for page in [
        "ivchan.1",
        "ivchan-list.1",
        "ivchan-init.1",
        "ivchan-reset.1",
    ] {
        assert!(dir.path().join(page).is_file(), "{page} missing");
    }
}

#[test]
fn verbose_logs_what_is_done_and_quiet_prints_nothing() {
    let dir = shm_dir("verbosity");
    let d = dir.path().to_str().expect("utf-8 path");
    // Default: the confirmation line, no log records.
    let (ok, out, err) = ivchan(&["init", VM, "--dir", d, "--size", "1M"]);
    assert!(ok, "{err}");
    assert!(out.contains("\"ivchan\" vm 5b7e6a0c"), "{out}");
    assert_eq!(err, "");
    // -v: the library's records of what it did (a reset writes a header).
    let (ok, _, err) = ivchan(&["-v", "reset", VM, "--dir", d]);
    assert!(ok, "{err}");
    assert!(
        err.contains(" INFO  ivchan_host::region_file::file] ")
            && err.contains("wrote a fresh header (channel \"ivchan\")"),
        "{err}"
    );
    assert!(!err.contains("DEBUG"), "{err}");
    // -vv: decisions too (the file opened and locked).
    let (ok, _, err) = ivchan(&["reset", VM, "--dir", d, "-vv"]);
    assert!(ok, "{err}");
    assert!(
        err.contains("DEBUG") && err.contains("opened and locked"),
        "{err}"
    );
    // -q: nothing on stdout, nothing on stderr, the work done.
    let other = "00000000-0000-4000-8000-000000000002";
    let (ok, out, err) = ivchan(&["-q", "init", other, "--dir", d, "--size", "1M"]);
    assert!(ok, "{err}");
    assert_eq!((out.as_str(), err.as_str()), ("", ""));
    assert!(dir.path().join(format!("fg_{other}")).exists());
    // Errors still show under -q.
    let (ok, _, err) = ivchan(&["-q", "init", VM, "--dir", d, "--mode", "9"]);
    assert!(!ok && err.contains("octal mode"), "{err}");
}
