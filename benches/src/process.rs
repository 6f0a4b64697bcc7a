//! Cross-process measurements: the running binary re-executes itself as a
//! child pinned to core 1, connected to the parent (pinned to core 0) by one
//! transport. The parent drives it with one-line commands on the child's
//! stdin (`stream SIZE COUNT WAIT` or `echo SIZE COUNT WAIT`); the child
//! answers `done` on its stdout when it has received (or echoed) `COUNT`
//! messages. A batch is timed from the parent's first send to that answer,
//! so every transport pays the same fixed cost of one pipe wake-up per
//! batch (tens of microseconds against batches of 100 ms and more).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ivchan_host::{RegionFile, RegionOptions, VmUuid};
use ivchan_protocol::{Channel, ChannelOptions, Header, Mapping, OwnedChannel, Side};

use crate::ivchan::{self, Api, Counters};
use crate::limits::record;
use crate::measure::new_histogram;
use crate::pin::{pin_current, CONSUMER_CORE, PRODUCER_CORE};
use crate::wait::{WaitStrategy, Waiter};
use crate::REGION_SIZE;

/// Environment variable that turns this binary into a bench child; its
/// value is the transport's name.
pub const CHILD_ENV: &str = "IVCHAN_BENCH_CHILD";
/// The child's transport argument: region path, file descriptors or port.
pub const ARG_ENV: &str = "IVCHAN_BENCH_ARG";

/// A cross-process transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// ivchan's copy API over a `/dev/shm/fg_<uuid>` region file.
    IvchanCopy,
    /// ivchan's zero-copy API over a `/dev/shm/fg_<uuid>` region file.
    IvchanZeroCopy,
    /// ivchan's copy API in batches: `PUBLISH_EVERY` bytes staged per
    /// publish, and every message found at a look released with one store
    /// (what `Channel::send_batch` / `recv_batch` do). Streaming only: a
    /// round trip is a batch of one.
    IvchanBatched,
    /// ivchan's `Channel` as an agent uses it, over the same region file:
    /// `send` and `recv` with the default options (heartbeats, peer
    /// checks), waiting as asked. What the channel layer adds to the copy
    /// API.
    IvchanChannel,
    /// A `socketpair(AF_UNIX, SOCK_STREAM)`: one `write` / `read_exact` per
    /// message.
    Unix,
    /// Two pipes (one each way).
    Pipe,
    /// TCP over 127.0.0.1 with `TCP_NODELAY`.
    Tcp,
    /// iceoryx2 publish-subscribe over `[u8]` slices (zero-copy loans).
    #[cfg(feature = "iceoryx2")]
    Iceoryx2,
}

impl Transport {
    /// Every cross-process transport built in, ivchan first.
    pub const ALL: &'static [Transport] = &[
        Transport::IvchanCopy,
        Transport::IvchanZeroCopy,
        Transport::IvchanBatched,
        Transport::IvchanChannel,
        #[cfg(feature = "iceoryx2")]
        Transport::Iceoryx2,
        Transport::Unix,
        Transport::Pipe,
        Transport::Tcp,
    ];

    /// Name in reports (and in the child's environment).
    pub fn name(self) -> &'static str {
        match self {
            Self::IvchanCopy => "ivchan-copy",
            Self::IvchanZeroCopy => "ivchan-zero-copy",
            Self::IvchanBatched => "ivchan-batched",
            Self::IvchanChannel => "ivchan-channel",
            Self::Unix => "unix-socket",
            Self::Pipe => "pipe",
            Self::Tcp => "tcp-loopback",
            #[cfg(feature = "iceoryx2")]
            Self::Iceoryx2 => "iceoryx2",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| t.name() == name)
    }

    fn api(self) -> Option<Api> {
        match self {
            Self::IvchanCopy => Some(Api::Copy),
            Self::IvchanZeroCopy => Some(Api::ZeroCopy),
            // Batches and the channel copy in and out, like the copy API.
            Self::IvchanBatched | Self::IvchanChannel => Some(Api::Copy),
            _ => None,
        }
    }

    /// Whether messages move in batches (one publish and one release for
    /// many), not one commit per message.
    pub fn batched(self) -> bool {
        self == Self::IvchanBatched
    }
}

/// What a command asks the child to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Stream,
    Echo,
}

fn wait_name(w: WaitStrategy) -> &'static str {
    w.name()
}

fn wait_from(name: &str) -> WaitStrategy {
    if name == WaitStrategy::Backoff.name() {
        WaitStrategy::Backoff
    } else {
        WaitStrategy::BusyPoll
    }
}

/// Clears `FD_CLOEXEC` so the child inherits the descriptor.
fn inheritable(fd: &impl AsRawFd) {
    // SAFETY: F_SETFD on a descriptor we own changes only its flags.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) };
    assert_eq!(rc, 0, "fcntl(F_SETFD): {}", std::io::Error::last_os_error());
}

/// A pipe, both ends close-on-exec: (read end, write end).
fn pipe() -> (File, File) {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: pipe2 succeeded, so both are fresh descriptors that nothing
    // else owns.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    (File::from(r), File::from(w))
}

enum Link {
    Ivchan(Option<RegionFile>),
    /// The parent's channel end stays attached for the whole session: a
    /// new attach is a new epoch, which the child's channel would take
    /// for a restart.
    Channel(Box<OwnedChannel<Arc<Mapping>>>, Option<RegionFile>),
    Stream {
        tx: Box<dyn Write + Send>,
        rx: Box<dyn Read + Send>,
    },
    #[cfg(feature = "iceoryx2")]
    Iox(crate::iox::Parent),
}

/// A child process and the transport to it.
pub struct Session {
    transport: Transport,
    child: Child,
    ctl_in: ChildStdin,
    ctl_out: BufReader<ChildStdout>,
    link: Link,
    msg: Vec<u8>,
    buf: Vec<u8>,
    /// What the child's ivchan side counted (received, empty, tail
    /// reloads) since the last [`Session::take_child_counters`], when
    /// counting is on.
    child_counts: Counters,
}

impl Session {
    /// Pins the calling thread to core 0, sets up the transport and starts
    /// the child (the current executable, which must call [`child_main`]).
    pub fn new(transport: Transport) -> std::io::Result<Self> {
        pin_current(PRODUCER_CORE);
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.env(CHILD_ENV, transport.name())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let (mut child, link) = match transport {
            Transport::IvchanCopy
            | Transport::IvchanZeroCopy
            | Transport::IvchanBatched
            | Transport::IvchanChannel => {
                let uuid: VmUuid = format!(
                    "00000000-0000-4000-8000-{:012x}",
                    u64::from(std::process::id()) << 16 | u64::from(next_serial())
                )
                .parse()
                .map_err(std::io::Error::other)?;
                let file = RegionOptions::new()
                    .size(REGION_SIZE as u64)
                    .create(&uuid)
                    .map_err(std::io::Error::other)?;
                file.attach_or_init("bench")
                    .map_err(std::io::Error::other)?;
                cmd.env(ARG_ENV, file.path());
                let link = if transport == Transport::IvchanChannel {
                    let memory = Arc::new(map_shared(file.path())?);
                    let channel = OwnedChannel::attach(memory, Side::Host, channel_options())
                        .map_err(std::io::Error::other)?;
                    Link::Channel(Box::new(channel), Some(file))
                } else {
                    Link::Ivchan(Some(file))
                };
                (cmd.spawn()?, link)
            }
            Transport::Unix => {
                let (ours, theirs) = UnixStream::pair()?;
                inheritable(&theirs);
                cmd.env(ARG_ENV, theirs.as_raw_fd().to_string());
                let child = cmd.spawn()?;
                drop(theirs);
                let tx = Box::new(ours.try_clone()?);
                (
                    child,
                    Link::Stream {
                        tx,
                        rx: Box::new(ours),
                    },
                )
            }
            Transport::Pipe => {
                let (child_r, our_w) = pipe();
                let (our_r, child_w) = pipe();
                inheritable(&child_r);
                inheritable(&child_w);
                cmd.env(
                    ARG_ENV,
                    format!("{},{}", child_r.as_raw_fd(), child_w.as_raw_fd()),
                );
                let child = cmd.spawn()?;
                drop((child_r, child_w));
                (
                    child,
                    Link::Stream {
                        tx: Box::new(our_w),
                        rx: Box::new(our_r),
                    },
                )
            }
            Transport::Tcp => {
                let listener = TcpListener::bind("127.0.0.1:0")?;
                cmd.env(ARG_ENV, listener.local_addr()?.port().to_string());
                let child = cmd.spawn()?;
                let (stream, _) = listener.accept()?;
                stream.set_nodelay(true)?;
                let tx = Box::new(stream.try_clone()?);
                (
                    child,
                    Link::Stream {
                        tx,
                        rx: Box::new(stream),
                    },
                )
            }
            #[cfg(feature = "iceoryx2")]
            Transport::Iceoryx2 => {
                let (parent, name) = crate::iox::Parent::new()?;
                cmd.env(ARG_ENV, name);
                (cmd.spawn()?, Link::Iox(parent))
            }
        };
        let mut session = Self {
            transport,
            ctl_in: child.stdin.take_or_fail()?,
            ctl_out: BufReader::new(child.stdout.take_or_fail()?),
            child,
            link,
            msg: Vec::new(),
            buf: Vec::new(),
            child_counts: Counters::default(),
        };
        session.expect_line("ready")?;
        #[cfg(feature = "iceoryx2")]
        if let Link::Iox(parent) = &mut session.link {
            parent.connect()?;
        }
        Ok(session)
    }

    /// The transport measured.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// What the child's side counted over the batches since the last call
    /// (zeros unless `IVCHAN_BENCH_COUNTERS` is set): its `received`,
    /// `empty` and `tail_reloads`.
    pub fn take_child_counters(&mut self) -> Counters {
        std::mem::take(&mut self.child_counts)
    }

    /// Reads the child's next line: `want`, or for `done`, `done` followed
    /// by the child's counts (`done RECEIVED EMPTY TAIL_RELOADS`).
    fn expect_line(&mut self, want: &str) -> std::io::Result<()> {
        let mut line = String::new();
        self.ctl_out.read_line(&mut line)?;
        let mut words = line.split_whitespace();
        if words.next() == Some(want) {
            let counts: Vec<u64> = words.filter_map(|w| w.parse().ok()).collect();
            if let [received, empty, tail_reloads] = counts[..] {
                self.child_counts.received += received;
                self.child_counts.empty += empty;
                self.child_counts.tail_reloads += tail_reloads;
            }
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "bench child said {line:?}, expected {want:?}"
            )))
        }
    }

    fn command(&mut self, op: Op, size: usize, count: u64, wait: WaitStrategy) {
        let op = match op {
            Op::Stream => "stream",
            Op::Echo => "echo",
        };
        writeln!(self.ctl_in, "{op} {size} {count} {}", wait_name(wait))
            .and_then(|()| self.ctl_in.flush())
            .expect("bench child is alive");
        self.msg.resize(size, 0xa5);
        self.buf.resize(size.max(8), 0);
    }

    /// Streams `count` messages of `size` bytes to the child (both sides
    /// wait with the default [`WaitStrategy::Backoff`] where the transport
    /// lets them choose); returns the time until the child has received the
    /// last one.
    pub fn stream(&mut self, size: usize, count: u64) -> Duration {
        self.command(Op::Stream, size, count, WaitStrategy::Backoff);
        let start = Instant::now();
        let msg = &self.msg[..size];
        match &mut self.link {
            Link::Ivchan(file) => {
                let api = self.transport.api().expect("an ivchan transport");
                let file = file.as_ref().expect("region kept until drop");
                let header = Header::open(file.region()).expect("region stays valid");
                let (mut tx, _) = header.split(Side::Host).expect("ring stays valid");
                let mut w = Waiter::new(WaitStrategy::Backoff);
                if self.transport.batched() {
                    ivchan::send_batched(&mut tx, msg, count, &mut w);
                } else {
                    for _ in 0..count {
                        ivchan::send(&mut tx, api, msg, &mut w);
                    }
                }
            }
            Link::Channel(channel, _) => {
                channel.set_wait_strategy(WaitStrategy::Backoff.channel());
                for _ in 0..count {
                    channel.send(msg, PATIENCE).expect("child receives");
                }
            }
            Link::Stream { tx, .. } => {
                for _ in 0..count {
                    tx.write_all(msg).expect("child reads");
                }
            }
            #[cfg(feature = "iceoryx2")]
            Link::Iox(parent) => {
                for _ in 0..count {
                    parent.send(msg);
                }
            }
        }
        self.expect_line("done").expect("child finishes the batch");
        start.elapsed()
    }

    /// `count` round trips of a `size`-byte message that the child echoes;
    /// both sides wait with `wait` (socket-like transports block in the
    /// kernel). Returns the total time and a histogram of each round trip
    /// in nanoseconds.
    pub fn ping_pong(
        &mut self,
        size: usize,
        count: u64,
        wait: WaitStrategy,
    ) -> (Duration, Histogram<u64>) {
        self.command(Op::Echo, size, count, wait);
        let mut hist = new_histogram();
        let start = Instant::now();
        let (msg, buf) = (&self.msg[..size], &mut self.buf[..size]);
        match &mut self.link {
            Link::Ivchan(file) => {
                let api = self.transport.api().expect("an ivchan transport");
                let file = file.as_ref().expect("region kept until drop");
                let header = Header::open(file.region()).expect("region stays valid");
                let (mut tx, mut rx) = header.split(Side::Host).expect("ring stays valid");
                // A waiter per direction: each learns its own ring's pace.
                let (mut send_wait, mut recv_wait) = (Waiter::new(wait), Waiter::new(wait));
                for _ in 0..count {
                    let t = Instant::now();
                    ivchan::send(&mut tx, api, msg, &mut send_wait);
                    ivchan::recv(&mut rx, api, buf, &mut recv_wait);
                    record(&mut hist, t.elapsed());
                }
            }
            Link::Channel(channel, _) => {
                channel.set_wait_strategy(wait.channel());
                for _ in 0..count {
                    let t = Instant::now();
                    channel.send(msg, PATIENCE).expect("child receives");
                    channel.recv(buf, PATIENCE).expect("child echoes");
                    record(&mut hist, t.elapsed());
                }
            }
            Link::Stream { tx, rx } => {
                for _ in 0..count {
                    let t = Instant::now();
                    tx.write_all(msg).expect("child reads");
                    rx.read_exact(buf).expect("child echoes");
                    record(&mut hist, t.elapsed());
                }
            }
            #[cfg(feature = "iceoryx2")]
            Link::Iox(parent) => {
                let mut w = Waiter::new(wait);
                for _ in 0..count {
                    let t = Instant::now();
                    parent.send(msg);
                    parent.recv(&mut w);
                    record(&mut hist, t.elapsed());
                }
            }
        }
        let elapsed = start.elapsed();
        self.expect_line("done").expect("child finishes the batch");
        (elapsed, hist)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = writeln!(self.ctl_in, "quit").and_then(|()| self.ctl_in.flush());
        let _ = self.child.wait();
        if let Link::Ivchan(file) | Link::Channel(_, file) = &mut self.link {
            if let Some(file) = file.take() {
                let _ = file.remove();
            }
        }
    }
}

trait TakeOrFail<T> {
    fn take_or_fail(&mut self) -> std::io::Result<T>;
}

impl<T> TakeOrFail<T> for Option<T> {
    fn take_or_fail(&mut self) -> std::io::Result<T> {
        self.take()
            .ok_or_else(|| std::io::Error::other("child pipe missing"))
    }
}

/// Longest a channel call in a batch may wait: a stuck peer fails the run
/// instead of hanging it.
const PATIENCE: Option<Duration> = Some(Duration::from_secs(30));

/// The channel transport's options: the defaults, but no verdict of
/// silence. Each end sits out other transports' measurements between its
/// own batches, longer than the default 5 s peer timeout and without
/// calling in, so by the protocol's rules it is silent when the next
/// batch starts.
fn channel_options() -> ChannelOptions {
    ChannelOptions {
        peer_timeout: None,
        ..ChannelOptions::default()
    }
}

/// Maps a region file shared, as a guest maps BAR2.
fn map_shared(path: impl AsRef<std::path::Path>) -> std::io::Result<Mapping> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let len = usize::try_from(file.metadata()?.len()).map_err(std::io::Error::other)?;
    Mapping::shared(&file, len)
}

fn next_serial() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static SERIAL: AtomicU16 = AtomicU16::new(0);
    SERIAL.fetch_add(1, Ordering::Relaxed)
}

/// If this process is a bench child (see [`CHILD_ENV`]), serves the parent
/// until it says `quit` and exits; otherwise returns at once. Call it first
/// thing in `main` of every binary that starts a [`Session`].
pub fn child_main() {
    let Ok(name) = std::env::var(CHILD_ENV) else {
        return;
    };
    let code = match child(&name) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bench child ({name}): {e}");
            1
        }
    };
    std::process::exit(code);
}

type AnyError = Box<dyn std::error::Error>;

fn arg() -> Result<String, AnyError> {
    Ok(std::env::var(ARG_ENV)?)
}

/// Takes ownership of an inherited descriptor named in the environment.
fn inherited(fd: &str) -> Result<OwnedFd, AnyError> {
    let fd: RawFd = fd.parse()?;
    // SAFETY: the parent cleared close-on-exec on exactly this descriptor
    // for us and passed its number; nothing else in this process owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn child(name: &str) -> Result<(), AnyError> {
    let transport = Transport::from_name(name).ok_or("unknown transport")?;
    pin_current(CONSUMER_CORE);
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut next = move || -> Result<Option<(Op, usize, u64, WaitStrategy)>, AnyError> {
        let Some(line) = lines.next().transpose()? else {
            return Ok(None);
        };
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["stream", size, count, wait] => Ok(Some((
                Op::Stream,
                size.parse()?,
                count.parse()?,
                wait_from(wait),
            ))),
            ["echo", size, count, wait] => Ok(Some((
                Op::Echo,
                size.parse()?,
                count.parse()?,
                wait_from(wait),
            ))),
            _ => Ok(None),
        }
    };
    let counting = std::env::var_os("IVCHAN_BENCH_COUNTERS").is_some();
    if counting {
        Counters::enable();
    }
    let done = || -> Result<(), AnyError> {
        let mut out = std::io::stdout().lock();
        if counting {
            // This side's counts for the batch, for the parent's report.
            let c = Counters::take();
            writeln!(out, "done {} {} {}", c.received, c.empty, c.tail_reloads)?;
        } else {
            writeln!(out, "done")?;
        }
        out.flush()?;
        Ok(())
    };
    let ready = || -> Result<(), AnyError> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready")?;
        out.flush()?;
        Ok(())
    };
    let mut buf = Vec::new();
    if transport == Transport::IvchanChannel {
        let map = map_shared(&arg()?)?;
        let header = Header::open(map.region())?;
        let mut channel = Channel::attach(header, Side::Guest, channel_options())?;
        ready()?;
        while let Some((op, size, count, wait)) = next()? {
            buf.resize(size, 0);
            channel.set_wait_strategy(wait.channel());
            for _ in 0..count {
                let n = channel.recv(&mut buf, PATIENCE)?;
                if op == Op::Echo {
                    channel.send(&buf[..n], PATIENCE)?;
                }
            }
            done()?;
        }
        return Ok(());
    }
    match transport.api() {
        Some(api) => {
            // Shared with the parent, which holds the region file.
            let map = map_shared(&arg()?)?;
            let header = Header::open(map.region())?;
            let (mut tx, mut rx) = header.split(Side::Guest)?;
            ready()?;
            while let Some((op, size, count, wait)) = next()? {
                buf.resize(size.max(8), 0);
                let (mut w, mut reply_wait) = (Waiter::new(wait), Waiter::new(wait));
                if op == Op::Stream && transport.batched() {
                    ivchan::recv_batched(&mut rx, &mut buf, count, &mut w);
                } else {
                    for _ in 0..count {
                        match op {
                            Op::Stream => {
                                ivchan::recv(&mut rx, api, &mut buf, &mut w);
                            }
                            Op::Echo => {
                                ivchan::echo(
                                    &mut rx,
                                    &mut tx,
                                    api,
                                    &mut buf,
                                    &mut w,
                                    &mut reply_wait,
                                );
                            }
                        }
                    }
                }
                done()?;
            }
        }
        None => {
            #[cfg(feature = "iceoryx2")]
            if transport == Transport::Iceoryx2 {
                let mut child = crate::iox::Child::new(&arg()?)?;
                ready()?;
                while let Some((op, size, count, wait)) = next()? {
                    let mut w = Waiter::new(wait);
                    for _ in 0..count {
                        match op {
                            Op::Stream => child.recv(&mut w),
                            Op::Echo => child.echo(&mut w),
                        }
                    }
                    let _ = size;
                    done()?;
                }
                return Ok(());
            }
            let (mut tx, mut rx): (Box<dyn Write>, Box<dyn Read>) = match transport {
                Transport::Unix => {
                    let s = UnixStream::from(inherited(&arg()?)?);
                    (Box::new(s.try_clone()?), Box::new(s))
                }
                Transport::Pipe => {
                    let a = arg()?;
                    let (r, w) = a.split_once(',').ok_or("pipe fds")?;
                    (
                        Box::new(File::from(inherited(w)?)),
                        Box::new(File::from(inherited(r)?)),
                    )
                }
                Transport::Tcp => {
                    let port: u16 = arg()?.parse()?;
                    let s = TcpStream::connect(("127.0.0.1", port))?;
                    s.set_nodelay(true)?;
                    (Box::new(s.try_clone()?), Box::new(s))
                }
                _ => return Err("not a stream transport".into()),
            };
            ready()?;
            while let Some((op, size, count, _)) = next()? {
                buf.resize(size, 0);
                for _ in 0..count {
                    rx.read_exact(&mut buf)?;
                    if op == Op::Echo {
                        tx.write_all(&buf)?;
                    }
                }
                done()?;
            }
        }
    }
    Ok(())
}
