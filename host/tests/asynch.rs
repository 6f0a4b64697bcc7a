//! One tokio runtime serves 64 VMs: the async supervisor hands out each
//! VM's channel as its region appears, the built-in ivshmem server gives
//! every VM doorbells, and one task per VM echoes its guest's messages,
//! sleeping on the VM's eventfd. The guests are a child process that talks
//! to the server as QEMU would (the socket handshake, then eventfds) and to
//! the region as a guest agent would (blocking calls, ringing peer 0).
//!
//! Shown: the process's thread count is the same with 1 VM and with 64
//! (no thread per VM), every echo comes back intact, and idle CPU (all 64
//! channels asleep) is printed and held to a generous bound.
//!
//! The only test in this binary: the thread count is the whole process's.

#![cfg(feature = "tokio")]

use std::collections::BTreeMap;
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use ivchan_host::doorbell::{Doorbell, VmOptions, HOST_PEER_ID};
use ivchan_host::{
    AsyncVmChannel, Channel, ChannelOptions, PeerMapping, RegionOptions, Supervisor, VmEvent,
    VmUuid,
};
use ivchan_protocol::{Header, Notifier, Side};
use ivchan_testkit::child::ChildTest;
use ivchan_testkit::process::cpu_time;
use ivchan_testkit::traffic;
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

const VMS: u64 = 64;
const ROUNDS: u64 = 40;
const PATIENCE: Duration = Duration::from_secs(120);

fn uuid(n: u64) -> VmUuid {
    format!("00000000-0000-4000-8000-{n:012x}").parse().unwrap()
}

fn make_region(dir: &Path, n: u64) {
    drop(
        RegionOptions::new()
            .dir(dir)
            .size(1 << 20)
            .create(&uuid(n))
            .unwrap(),
    );
}

fn socket(dir: &Path, uuid: &VmUuid) -> PathBuf {
    dir.join(format!("{uuid}.sock"))
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// One VM's task: echo until told to stop, then say `bye`.
async fn serve(
    mut vm: AsyncVmChannel,
    done: tokio::sync::mpsc::UnboundedSender<VmUuid>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let uuid = *vm.get_ref().uuid();
    loop {
        tokio::select! {
            msg = vm.recv_vec() => {
                let msg = msg.unwrap_or_else(|e| panic!("{uuid}: {e}"));
                if msg == b"done" {
                    done.send(uuid).unwrap();
                } else {
                    vm.send(&msg).await.unwrap_or_else(|e| panic!("{uuid}: {e}"));
                }
            }
            _ = stop.changed() => {
                vm.send(b"bye").await.unwrap();
                return;
            }
        }
    }
}

#[test]
fn one_runtime_serves_64_vms_through_the_supervisor_and_doorbells() {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let dir = dir.path().to_path_buf();
    make_region(&dir, 0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    rt.block_on(async {
        let sockets = dir.clone();
        let mut vms = Supervisor::new(
            RegionOptions::new().dir(&dir),
            "async",
            ChannelOptions::default(),
        )
        .unwrap()
        .serve_doorbells(move |uuid| VmOptions::new(socket(&sockets, uuid)))
        .unwrap()
        .into_async()
        .unwrap();
        let counter = served.clone();
        tokio::spawn(async move {
            while let Some(event) = vms.next().await {
                match event.unwrap() {
                    VmEvent::Appeared(vm) => {
                        let vm = vm.into_async().unwrap();
                        assert!(vm.has_readiness(), "served with a doorbell");
                        tokio::spawn(serve(vm, done_tx.clone(), stop_rx.clone()));
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        });
        let until = |n: usize| {
            let served = served.clone();
            async move {
                let deadline = Instant::now() + PATIENCE;
                while served.load(Ordering::SeqCst) < n {
                    assert!(Instant::now() < deadline, "not served: {n}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        until(1).await;
        let with_one = threads();
        for n in 1..VMS {
            make_region(&dir, n);
        }
        until(VMS as usize).await;
        let with_all = threads();
        eprintln!("threads: {with_one} serving 1 VM, {with_all} serving {VMS}");
        assert_eq!(with_all, with_one, "a thread per VM?");

        // The guests: a child process, one thread per guest (its threads
        // are not this process's).
        let mut child = ChildTest::new("guests_entry")
            .env("IVCHAN_ASYNC_GUESTS", &dir)
            .command()
            .spawn()
            .unwrap();
        let start = Instant::now();
        let mut done = std::collections::BTreeSet::new();
        while done.len() < VMS as usize {
            let uuid = tokio::time::timeout(PATIENCE, done_rx.recv())
                .await
                .expect("every guest finishes its echoes")
                .unwrap();
            assert!(done.insert(uuid), "{uuid} twice");
        }
        eprintln!(
            "{VMS} VMs x {ROUNDS} echoes of traffic messages in {:?}",
            start.elapsed()
        );
        assert_eq!(threads(), with_one, "traffic added threads");

        // Idle: every host task asleep on its doorbell (with a heartbeat
        // timer), every guest asleep in a blocking receive.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let pid = child.id().to_string();
        let (host0, guest0) = (cpu_time("self"), cpu_time(&pid));
        let idle = Duration::from_secs(3);
        tokio::time::sleep(idle).await;
        let host_cpu = cpu_time("self") - host0;
        let guest_cpu = cpu_time(&pid) - guest0;
        eprintln!(
            "idle {idle:?} with {VMS} VMs: host process {host_cpu:?} CPU ({:.2}%), guest process {guest_cpu:?}",
            host_cpu.as_secs_f64() / idle.as_secs_f64() * 100.0
        );
        // Generous: 64 heartbeats of 100 ms cost well under a percent; a
        // task that spins costs a whole core.
        assert!(
            host_cpu < idle / 10,
            "idle host used {host_cpu:?} in {idle:?}"
        );

        stop_tx.send(true).unwrap();
        let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
        assert!(status.success(), "guests: {status}");
    });
}

// ---------------------------------------------------------------------------
// The guests' process: QEMU's side of the ivshmem server, and guest agents.

/// One server message: the value, and the fd that came with it.
fn recv_msg(sock: &UnixStream) -> (i64, Option<OwnedFd>) {
    let mut buf = [0u8; 8];
    let mut got = 0;
    let mut fd = None;
    while got < 8 {
        let mut cmsg = nix::cmsg_space!([RawFd; 4]);
        let mut iov = [IoSliceMut::new(&mut buf[got..])];
        let msg = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .unwrap();
        for c in msg.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for raw in fds {
                    // SAFETY: SCM_RIGHTS just installed `raw` in this
                    // process's fd table; nothing else refers to it.
                    fd = Some(unsafe { OwnedFd::from_raw_fd(raw) });
                }
            }
        }
        assert!(msg.bytes > 0, "server closed the connection");
        got += msg.bytes;
    }
    (i64::from_le_bytes(buf), fd)
}

/// The guest's doorbells: ring the host (peer 0's eventfd, as QEMU does
/// when the guest writes the Doorbell register), sleep on its own.
#[derive(Debug)]
struct GuestBell {
    host: Doorbell,
    own: Doorbell,
}

impl Notifier for GuestBell {
    fn ring(&self) {
        self.host.ring().unwrap();
    }
    fn can_wait(&self) -> bool {
        true
    }
    fn wait(&self, timeout: Duration) {
        let _ = self.own.wait(Some(timeout));
    }
}

fn guest(dir: &Path, n: u64) {
    let uuid = uuid(n);
    let sock = UnixStream::connect(socket(dir, &uuid)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // Version, own id, -1 with the memory, then each peer's eventfd (one
    // vector): the host's (`HOST_PEER_ID`), then our own.
    assert_eq!(recv_msg(&sock).0, 0);
    let id = recv_msg(&sock).0;
    let (minus_one, _shm) = recv_msg(&sock);
    assert_eq!(minus_one, -1);
    let mut fds: BTreeMap<i64, OwnedFd> = BTreeMap::new();
    while !fds.contains_key(&id) {
        let (peer, fd) = recv_msg(&sock);
        fds.insert(peer, fd.expect("an eventfd with each peer id"));
    }
    let bell = GuestBell {
        host: Doorbell::from_fd(
            fds.remove(&i64::from(HOST_PEER_ID))
                .expect("an eventfd for the host's peer id"),
        )
        .unwrap(),
        own: Doorbell::from_fd(fds.remove(&id).unwrap()).unwrap(),
    };

    let map = PeerMapping::open(dir.join(format!("fg_{uuid}"))).unwrap();
    let header = Header::open(map.region()).unwrap();
    let mut ch = Channel::attach(header, Side::Guest, ChannelOptions::default()).unwrap();
    ch.set_notifier(Some(Box::new(bell)));
    ch.wait_for_peer(Some(PATIENCE)).unwrap();
    let mut buf = vec![0u8; ch.max_message()];
    for seq in 0..ROUNDS {
        let msg = traffic::message(seq + n * 1000);
        ch.send(&msg, Some(PATIENCE)).unwrap();
        let len = ch.recv(&mut buf, Some(PATIENCE)).unwrap();
        assert_eq!(&buf[..len], &msg[..], "{uuid}: echo {seq}");
    }
    ch.send(b"done", Some(PATIENCE)).unwrap();
    let len = ch.recv(&mut buf, Some(PATIENCE)).unwrap();
    assert_eq!(&buf[..len], b"bye");
    drop(sock);
}

#[test]
#[ignore = "child process entry, run by the test in this file"]
fn guests_entry() {
    let Some(dir) = std::env::var_os("IVCHAN_ASYNC_GUESTS") else {
        return;
    };
    let dir = PathBuf::from(dir);
    std::thread::scope(|s| {
        for n in 0..VMS {
            let dir = &dir;
            s.spawn(move || guest(dir, n));
        }
    });
}
