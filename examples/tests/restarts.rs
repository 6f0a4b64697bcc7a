//! The operator's path under fire: the real agents, as processes over one
//! real `/dev/shm` region, interrupted (SIGINT) and killed (SIGKILL) at
//! random points in every mode (exchange, echo, file transfer, stream).
//! After each, a new agent on the same region completes a checked
//! conversation (or resumes the stream with every acknowledgement in
//! order), and the region file is never recreated.
//!
//! The random points come from a seed printed at the start; set
//! `IVCHAN_RESTART_SEED` to replay a run.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ivchan_host::{RegionOptions, VmUuid};
use ivchan_testkit::process::Rng;

const VM: &str = "00000000-0000-4000-8000-00000000dead";
/// Points per agent and signal.
const POINTS: usize = 20;
/// The modes, each with the host agent's arguments for one long run.
const MODES: &[&str] = &["exchange", "echo", "file", "stream"];

struct Setup {
    dir: tempfile::TempDir,
    region: PathBuf,
    inode: u64,
    payload: PathBuf,
    received: PathBuf,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("ivchan-restarts-")
            .tempdir_in("/dev/shm")
            .expect("temp dir");
        let vm: VmUuid = VM.parse().expect("uuid");
        let file = RegionOptions::new()
            .dir(dir.path())
            .size(4 << 20)
            .create(&vm)
            .expect("create region");
        file.attach_or_init("restarts").expect("header");
        let region = file.path().to_path_buf();
        let inode = file.file().metadata().expect("stat").ino();
        drop(file);
        let payload = dir.path().join("payload.bin");
        let data: Vec<u8> = (0..64u64 << 20).map(|i| (i * 131 % 251) as u8).collect();
        fs::write(&payload, data).expect("payload");
        let received = dir.path().join("received");
        fs::create_dir(&received).expect("received dir");
        Self {
            dir,
            region,
            inode,
            payload,
            received,
        }
    }

    fn log(&self, name: &str) -> fs::File {
        fs::File::create(self.dir.path().join(name)).expect("log file")
    }

    fn read_log(&self, name: &str) -> String {
        fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    fn guest(&self, log: &str) -> Child {
        Command::new(env!("CARGO_BIN_EXE_ivchan-guest-agent"))
            .arg("--region-file")
            .arg(&self.region)
            .arg("--dir")
            .arg(&self.received)
            .args(["--stall", "10", "--wait", "20"])
            .stdout(Stdio::null())
            .stderr(self.log(log))
            .spawn()
            .expect("start guest agent")
    }

    /// The host agent in `mode`: a long run (`long`), or a short checked one.
    fn host(&self, mode: &str, long: bool, log: &str) -> Child {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ivchan-host-agent"));
        cmd.args(["--uuid", VM, "--dir"])
            .arg(self.dir.path())
            .args(["--wait", "20", "--keep-guest"]);
        let (exchange, echo) = if long { (60_000, 20_000) } else { (500, 50) };
        match mode {
            "exchange" => cmd.args(["--exchange", &exchange.to_string(), "--echo", "0"]),
            "echo" => cmd.args(["--exchange", "0", "--echo", &echo.to_string()]),
            "file" => cmd
                .args(["--exchange", "0", "--echo", "0", "--file"])
                .arg(&self.payload),
            "stream" => cmd
                .args(["--stream", "20000", "--state"])
                .arg(self.dir.path().join("stream.state")),
            _ => unreachable!("mode {mode}"),
        };
        cmd.stdout(self.log(&format!("{log}.out")))
            .stderr(self.log(&format!("{log}.err")))
            .spawn()
            .expect("start host agent")
    }

    fn check_region_kept(&self) {
        let inode = fs::metadata(&self.region).expect("region").ino();
        assert_eq!(inode, self.inode, "the region file was recreated");
    }
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    // The child may have finished already: that is a point too.
    let _ = nix::sys::signal::kill(pid, sig);
}

/// Waits for `child` with a deadline (a hang fails the test, not CI).
fn finish(child: &mut Child, within: Duration, what: &str) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if start.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The stream's host agent finished, or was stopped: its state file says
/// how far it got.
fn stream_done(setup: &Setup, log: &str) -> bool {
    setup
        .read_log(&format!("{log}.out"))
        .contains("stream complete")
}

#[test]
fn host_agent_interrupted_or_killed_anywhere_is_replaced_by_the_next() {
    let setup = Setup::new();
    let mut rng = Rng::new(Rng::seed_from_env("IVCHAN_RESTART_SEED"));
    let mut guest = setup.guest("guest.err");
    let mut stopped = [0usize; 2];
    for point in 0..2 * POINTS {
        let mode = MODES[point % MODES.len()];
        let sig = if point % 2 == 0 {
            nix::sys::signal::Signal::SIGINT
        } else {
            nix::sys::signal::Signal::SIGKILL
        };
        let log = format!("host-{point}");
        let mut host = setup.host(mode, true, &log);
        // From 30 ms: the signal handlers are in place by then.
        let delay = Duration::from_millis(30 + rng.below(250));
        std::thread::sleep(delay);
        signal(&host, sig);
        let status = finish(&mut host, Duration::from_secs(30), "interrupted host agent");
        if !status.success() {
            stopped[point % 2] += 1;
        }
        if sig == nix::sys::signal::Signal::SIGINT && !status.success() {
            // A clean stop: exit 130 and the side marked closed.
            assert_eq!(
                status.code(),
                Some(130),
                "point {point} ({mode}, {delay:?}): {}",
                setup.read_log(&format!("{log}.err"))
            );
        }
        // The next host agent on the same region: the stream resumes and
        // completes; the other modes hold a short checked conversation.
        let next = format!("{log}-next");
        let mut again = setup.host(mode, mode == "stream", &next);
        let status = finish(&mut again, Duration::from_secs(60), "next host agent");
        assert!(
            status.success(),
            "point {point}: {mode} stopped by {sig:?} after {delay:?}; the next host agent failed:\n{}\n{}\nguest:\n{}",
            setup.read_log(&format!("{next}.out")),
            setup.read_log(&format!("{next}.err")),
            setup.read_log("guest.err")
        );
        if mode == "stream" {
            assert!(stream_done(&setup, &next));
            fs::remove_file(setup.dir.path().join("stream.state")).expect("reset stream state");
        }
        assert!(
            guest.try_wait().expect("guest").is_none(),
            "the guest agent died at point {point}:\n{}",
            setup.read_log("guest.err")
        );
        setup.check_region_kept();
    }
    // Most points must have hit a running agent, or the test proves little.
    assert!(
        stopped[0] >= POINTS / 2 && stopped[1] >= POINTS / 2,
        "only {stopped:?} of {POINTS} host agents were still running when signalled"
    );
    signal(&guest, nix::sys::signal::Signal::SIGTERM);
    let status = finish(&mut guest, Duration::from_secs(10), "guest agent");
    assert_eq!(status.code(), Some(130), "{}", setup.read_log("guest.err"));
    assert!(
        setup
            .read_log("guest.err")
            .contains("interrupted; the guest side is closed"),
        "{}",
        setup.read_log("guest.err")
    );
    leftovers(&setup.received);
}

#[test]
fn guest_agent_interrupted_or_killed_anywhere_is_replaced_by_the_next() {
    let setup = Setup::new();
    let mut rng = Rng::new(Rng::seed_from_env("IVCHAN_RESTART_SEED") ^ 0x9e37_79b9_7f4a_7c15);
    let mut stopped = [0usize; 2];
    for point in 0..2 * POINTS {
        let mode = MODES[point % MODES.len()];
        let sig = if point % 2 == 0 {
            nix::sys::signal::Signal::SIGINT
        } else {
            nix::sys::signal::Signal::SIGKILL
        };
        let log = format!("host-{point}");
        let mut guest = setup.guest(&format!("guest-{point}.err"));
        let mut host = setup.host(mode, true, &log);
        // From 30 ms: the signal handlers are in place by then.
        let delay = Duration::from_millis(30 + rng.below(250));
        std::thread::sleep(delay);
        if host.try_wait().expect("host").is_none() {
            stopped[point % 2] += 1;
        }
        signal(&guest, sig);
        let status = finish(
            &mut guest,
            Duration::from_secs(30),
            "interrupted guest agent",
        );
        if sig == nix::sys::signal::Signal::SIGINT {
            assert_eq!(
                status.code(),
                Some(130),
                "point {point}: {}",
                setup.read_log(&format!("guest-{point}.err"))
            );
        }
        // A new guest agent: the running host agent resynchronises with it
        // and completes its whole run, every message checked.
        let mut next = setup.guest(&format!("guest-{point}-next.err"));
        let status = finish(&mut host, Duration::from_secs(120), "host agent");
        assert!(
            status.success(),
            "point {point}: guest stopped by {sig:?} after {delay:?} in {mode}; the host agent failed:\n{}\n{}\nnew guest:\n{}",
            setup.read_log(&format!("{log}.out")),
            setup.read_log(&format!("{log}.err")),
            setup.read_log(&format!("guest-{point}-next.err"))
        );
        if mode == "stream" {
            assert!(stream_done(&setup, &log));
            fs::remove_file(setup.dir.path().join("stream.state")).expect("reset stream state");
        }
        // Its handlers are in place once it says what it waits for.
        wait_for_log(
            &setup,
            &format!("guest-{point}-next.err"),
            "waiting for the host",
        );
        signal(&next, nix::sys::signal::Signal::SIGTERM);
        let status = finish(&mut next, Duration::from_secs(10), "new guest agent");
        assert_eq!(status.code(), Some(130));
        setup.check_region_kept();
    }
    assert!(
        stopped[0] >= POINTS / 2 && stopped[1] >= POINTS / 2,
        "only {stopped:?} of {POINTS} guest agents were stopped while their host agent ran"
    );
    leftovers(&setup.received);
}

/// Waits (up to 20 s) for `needle` in a log.
fn wait_for_log(setup: &Setup, log: &str, needle: &str) {
    let start = Instant::now();
    while !setup.read_log(log).contains(needle) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{log} never said {needle:?}:\n{}",
            setup.read_log(log)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Received files are complete or absent: a transfer cut short leaves no
/// partial file behind.
fn leftovers(received: &Path) {
    for entry in fs::read_dir(received).expect("received dir") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        assert!(
            !name.ends_with(".part"),
            "partial file left: {}",
            path.display()
        );
        assert_eq!(
            fs::metadata(&path).expect("stat").len(),
            64 << 20,
            "{} is not the whole payload",
            path.display()
        );
    }
}
