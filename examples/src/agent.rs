//! The agents' conversation, over any [`OwnedChannel`]: the host sends one-line
//! commands, the guest carries them out and answers `ok …` or `err …`.
//!
//! | command | what happens |
//! |---------|--------------|
//! | `exchange N` | both sides send traffic messages 0..N (see [`crate::traffic`]) and check every one they receive |
//! | `echo N` | the host sends traffic 0..N, the guest returns each message as it came |
//! | `file NAME SIZE SUM` | a byte stream of SIZE bytes follows; the guest stores it as NAME and checks its checksum |
//! | `ping N` | N round trips of one 64-byte message (latency) |
//! | `quit` | the guest answers and exits |
//! | `hello NONCE` | the guest answers `ok hello NONCE` (once per nonce); see below |
//!
//! **Sessions.** A conversation is only as old as the two agents holding
//! it. When either side restarts (a crash, Ctrl-C, a kill), what the ring
//! still holds of the old conversation means nothing to the new one. So the
//! host opens every conversation with `hello NONCE`, repeated every half
//! second, and discards everything it receives until `ok hello NONCE`; the
//! guest drops whatever command it was carrying out when the host restarts
//! (its blocking calls end with `PeerRestarted`) and answers the hello. The
//! guest carries out commands only from the host session it said hello to,
//! so a new guest agent ignores what was sent to its predecessor. When
//! the guest restarts, closes or falls silent in the middle of a step, the
//! host waits for a live guest, says hello again and runs the step again
//! ([`step`]). Nothing is recreated: the region and its rings carry on.
//!
//! Stream messages (`STRM` + sequence number + traffic) need no command:
//! the guest acknowledges each one (`ACK!` + sequence number) before it
//! consumes it, so a stream survives either side restarting
//! ([`stream_host`]).

use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use ivchan_protocol::{ChannelError, OwnedChannel, PeerEvent, SharedMemory, Waiter};

use crate::{traffic, Checksum};

/// An agent-level failure, with a message for people.
pub type AgentError = String;

fn chan(e: ChannelError) -> AgentError {
    e.to_string()
}

/// Fails once the channel's cancel token is set (a signal arrived): loops
/// that make progress without blocking call this so they stop too.
fn check_cancel(ch: &OwnedChannel<impl SharedMemory>) -> Result<(), AgentError> {
    match ch.cancel_token() {
        Some(token) if token.is_cancelled() => Err(chan(ChannelError::Cancelled)),
        _ => Ok(()),
    }
}

/// Sends traffic 0..`n` and checks incoming traffic 0..`n` at the same
/// time (one thread: both rings may fill, so neither side may block on
/// one direction). `echo` returns each received message instead of
/// generating its own. Fails after `stall` without progress.
pub fn exchange(
    ch: &mut OwnedChannel<impl SharedMemory>,
    n: u64,
    echo: bool,
    stall: Duration,
) -> Result<(), AgentError> {
    let (mut sent, mut got) = (0u64, 0u64);
    let mut waiter = Waiter::new(ch.options().wait);
    let mut last_progress = Instant::now();
    let mut held: Vec<u8> = Vec::new();
    let mut holding = false;
    while sent < n || got < n {
        check_cancel(ch)?;
        let mut progress = false;
        if echo {
            if holding && ch.try_send(&held).map_err(chan)? {
                holding = false;
                sent += 1;
                progress = true;
            }
        } else if sent < n {
            let len = traffic::len(sent);
            if let Some(mut g) = ch.try_reserve(len).map_err(chan)? {
                g.write(0, &traffic::message(sent))
                    .map_err(|e| e.to_string())?;
                g.commit(len).map_err(|e| e.to_string())?;
                sent += 1;
                progress = true;
            }
        }
        if got < n && !holding {
            if let Some(msg) = ch.try_peek().map_err(chan)? {
                // Snapshot, then check the copy: the region is peer-writable.
                let copy = msg.to_vec();
                traffic::check(got, &copy)?;
                if echo {
                    held.clear();
                    held.extend_from_slice(&copy);
                    holding = true;
                }
                msg.release();
                got += 1;
                progress = true;
            }
        }
        if progress {
            waiter.reset();
            last_progress = Instant::now();
        } else {
            if last_progress.elapsed() > stall {
                return Err(format!(
                    "stalled for {stall:?} after sending {sent} and receiving {got} of {n}"
                ));
            }
            match ch.poll_peer().map_err(chan)? {
                Some(PeerEvent::Closed) => {
                    return Err(format!("peer closed after {sent} sent, {got} received"));
                }
                Some(PeerEvent::Restarted { .. }) => {
                    return Err(format!("peer restarted after {sent} sent, {got} received"));
                }
                _ => {}
            }
            waiter.wait(Some(Duration::from_millis(1)));
        }
    }
    Ok(())
}

/// Sends one line and waits for the guest's answer.
pub fn command(
    ch: &mut OwnedChannel<impl SharedMemory>,
    line: &str,
    timeout: Duration,
) -> Result<String, AgentError> {
    ch.send(line.as_bytes(), Some(timeout)).map_err(chan)?;
    reply(ch, timeout)
}

fn reply(
    ch: &mut OwnedChannel<impl SharedMemory>,
    timeout: Duration,
) -> Result<String, AgentError> {
    let mut buf = vec![0u8; 4096];
    let n = ch.recv(&mut buf, Some(timeout)).map_err(chan)?;
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    match text.strip_prefix("ok") {
        Some(rest) => Ok(rest.trim().to_owned()),
        None => Err(format!("guest answered: {text}")),
    }
}

/// Host side of `exchange`/`echo`: sends the command, streams, and waits
/// for the guest's verdict.
pub fn run_exchange(
    ch: &mut OwnedChannel<impl SharedMemory>,
    n: u64,
    echo: bool,
    stall: Duration,
) -> Result<(), AgentError> {
    let verb = if echo { "echo" } else { "exchange" };
    ch.send(format!("{verb} {n}").as_bytes(), Some(stall))
        .map_err(chan)?;
    // Either way the host sends traffic 0..n and checks 0..n coming back:
    // generated by the guest, or its own messages echoed.
    exchange(ch, n, false, stall)?;
    reply(ch, stall).map(drop)
}

/// How often the host repeats its `hello`.
const HELLO_EVERY: Duration = Duration::from_millis(500);

/// Host side of a session's start: says `hello NONCE` (repeated every half
/// second) and discards whatever arrives until the guest answers
/// `ok hello NONCE`. Returns the guest's epoch.
pub fn hello(
    ch: &mut OwnedChannel<impl SharedMemory>,
    timeout: Duration,
) -> Result<u64, AgentError> {
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ ch.epoch();
    let line = format!("hello {nonce:x}");
    let answer = format!("ok hello {nonce:x}");
    let start = Instant::now();
    let mut said: Option<Instant> = None;
    let mut waiter = Waiter::new(ch.options().wait);
    let mut discarded = 0u64;
    loop {
        check_cancel(ch)?;
        if said.is_none_or(|t| t.elapsed() >= HELLO_EVERY)
            && ch.try_send(line.as_bytes()).map_err(chan)?
        {
            said = Some(Instant::now());
        }
        let mut progress = false;
        while let Some(msg) = ch.try_peek().map_err(chan)? {
            let mut head = [0u8; 64];
            let n = msg.len().min(head.len());
            msg.read(0, &mut head[..n]).map_err(|e| e.to_string())?;
            let ours = msg.len() == answer.len() && head[..n] == *answer.as_bytes();
            msg.release();
            progress = true;
            if ours {
                // Take in every change of the guest up to its answer.
                while ch.poll_peer().map_err(chan)?.is_some() {}
                let epoch = ch.peer_status().map_or(0, |s| s.epoch);
                return Ok(epoch);
            }
            discarded += 1;
        }
        if start.elapsed() > timeout {
            return Err(format!(
                "the guest agent did not answer hello within {timeout:?} ({discarded} old messages discarded)"
            ));
        }
        if progress {
            waiter.reset();
        } else {
            ch.poll_peer().map_err(chan)?;
            waiter.wait(Some(Duration::from_millis(10)));
        }
    }
}

/// Retries of one conversation step after the guest restarted.
const STEP_RETRIES: u32 = 3;

/// Runs one step of the host's conversation. If it fails because the guest
/// restarted, closed or fell silent meanwhile (its epoch is no longer
/// `session`'s), waits up to `wait` for a live guest, says [`hello`] and
/// runs the step again, up to three times. `session` is the guest epoch the
/// last hello was answered in, updated here.
pub fn step<M: SharedMemory, T>(
    ch: &mut OwnedChannel<M>,
    session: &mut u64,
    wait: Duration,
    what: &str,
    mut run: impl FnMut(&mut OwnedChannel<M>) -> Result<T, AgentError>,
) -> Result<T, AgentError> {
    let mut retries = 0;
    loop {
        let error = match run(ch) {
            Ok(value) => return Ok(value),
            Err(e) => e,
        };
        check_cancel(ch)?;
        // Whatever the step saw, the guest's block says whether it is
        // still the guest the session began with.
        while ch.poll_peer().map_err(chan)?.is_some() {}
        let status = ch.peer_status();
        let same = status
            .is_some_and(|s| s.epoch == *session && s.state == ivchan_protocol::PeerState::Ready);
        if same || retries == STEP_RETRIES {
            return Err(error);
        }
        retries += 1;
        eprintln!("{what}: {error}; the guest agent changed, waiting for it to resynchronise");
        ch.wait_for_peer(Some(wait)).map_err(|e| match e {
            ChannelError::Timeout { .. } => format!("{what}: no live guest agent within {wait:?}"),
            e => chan(e),
        })?;
        *session = hello(ch, wait)?;
        eprintln!(
            "{what}: resynchronised with the guest agent (epoch {session}); running it again"
        );
    }
}

/// Host side of `file`: streams `path` (any size: read and sent in
/// pieces) and waits for the guest's check.
pub fn send_file(
    ch: &mut OwnedChannel<impl SharedMemory>,
    path: &Path,
    timeout: Duration,
) -> Result<u64, AgentError> {
    let io = |e: std::io::Error| format!("{}: {e}", path.display());
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.contains(char::is_whitespace))
        .ok_or_else(|| {
            format!(
                "{}: file name must be plain text without spaces",
                path.display()
            )
        })?;
    // First pass: size and checksum, so the guest can check as it stores.
    let mut file = fs::File::open(path).map_err(io)?;
    let mut sum = Checksum::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        sum.update(&buf[..n]);
        size += n as u64;
    }
    let line = format!("file {name} {size} {:016x}", sum.finish());
    ch.send(line.as_bytes(), Some(timeout)).map_err(chan)?;
    let file = fs::File::open(path).map_err(io)?;
    let progress = crate::transfer_progress(size, &format!("sending {name}"));
    let mut w = ch.writer(Some(timeout));
    std::io::copy(&mut progress.wrap_read(file), &mut w).map_err(io)?;
    w.finish().map_err(|e| e.to_string())?;
    progress.finish_and_clear();
    reply(ch, timeout)?;
    Ok(size)
}

/// Tag of a stream message: `STRM`, u64 LE sequence number, then traffic
/// message `seq` (see [`stream_host`]).
pub const STREAM_TAG: &[u8; 4] = b"STRM";
/// Tag of the guest's acknowledgement: `ACK!`, u64 LE sequence number.
pub const ACK_TAG: &[u8; 4] = b"ACK!";

fn tagged(tag: &[u8; 4], msg: &[u8]) -> Option<u64> {
    let rest = msg.strip_prefix(tag.as_slice())?;
    let seq: [u8; 8] = rest.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(seq))
}

/// Sends through a peer's absence (it may be restarting): retries on
/// timeouts, closed and silent peers; fails only on a fatal error.
fn send_patiently(ch: &mut OwnedChannel<impl SharedMemory>, msg: &[u8]) -> Result<(), AgentError> {
    loop {
        match ch.send(msg, Some(Duration::from_millis(200))) {
            Ok(()) => return Ok(()),
            Err(e) if e.is_fatal() || e == ChannelError::Cancelled => return Err(chan(e)),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// The guest agent: carries out commands until `quit`, and acknowledges
/// stream messages whenever they come (also right after a restart, when
/// the ring still holds the stream that was in flight). Received files go
/// to `dir`, written to a temporary name and renamed once checked.
pub fn serve(
    ch: &mut OwnedChannel<impl SharedMemory>,
    dir: &Path,
    stall: Duration,
) -> Result<(), AgentError> {
    let mut buf = vec![0u8; traffic::MAX_LEN + 64];
    // Next stream sequence number expected; unknown after a (re)start.
    let mut stream_next: Option<u64> = None;
    // The last hello answered: a repeated one is not answered twice.
    let mut last_hello = String::new();
    // The host session (its epoch) this guest said hello to. Commands from
    // any other session are void: they were meant for an earlier guest
    // agent, or come from a host agent that has since restarted.
    let mut session: Option<u64> = None;
    loop {
        // Look at the next message; consume it only once it is handled, so
        // a guest that dies meanwhile gets it again (at-least-once).
        let n = match ch.peek(None) {
            Ok(msg) if msg.len() <= buf.len() => {
                let n = msg.len();
                msg.read(0, &mut buf[..n]).map_err(|e| e.to_string())?;
                n
            }
            Ok(msg) => {
                let len = msg.len();
                msg.release();
                send_patiently(ch, format!("err unexpected {len}-byte message").as_bytes())?;
                continue;
            }
            // The host went away or is restarting: keep waiting for it.
            Err(ChannelError::PeerClosed | ChannelError::PeerSilent { .. }) => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(ChannelError::PeerRestarted { .. }) => continue,
            Err(e) => return Err(chan(e)),
        };
        if let Some(seq) = tagged(STREAM_TAG, &buf[..n]) {
            traffic::check(seq, &buf[12..n])?;
            match stream_next {
                // A restarted host may resend what it sent last.
                Some(next) if seq > next => {
                    return Err(format!("stream gap: expected {next}, got {seq}"));
                }
                Some(next) if seq < next => {}
                _ => stream_next = Some(seq + 1),
            }
            let mut ack = ACK_TAG.to_vec();
            ack.extend_from_slice(&seq.to_le_bytes());
            send_patiently(ch, &ack)?;
            release_next(ch)?;
            continue;
        }
        release_next(ch)?;
        let line = String::from_utf8_lossy(&buf[..n]).into_owned();
        let words: Vec<&str> = line.split_whitespace().collect();
        // The host's current session, as of this message (read after it,
        // so a host that restarted and then wrote it shows its new epoch).
        while ch.poll_peer().map_err(chan)?.is_some() {}
        let host = ch.peer_status().map(|s| s.epoch);
        if !matches!(words.as_slice(), ["hello", _]) && (session.is_none() || session != host) {
            session = None;
            continue;
        }
        let answer = match words.as_slice() {
            ["exchange", count] | ["echo", count] => match count.parse::<u64>() {
                Ok(count) => exchange(ch, count, words[0] == "echo", stall)
                    .map(|()| format!("ok {} {count}", words[0])),
                Err(_) => Err(format!("bad count {count:?}")),
            },
            ["file", name, size, sum] => receive_file(ch, dir, name, size, sum, stall),
            ["ping", count] => match count.parse::<u64>() {
                Ok(count) => pong(ch, count, stall).map(|()| format!("ok ping {count}")),
                Err(_) => Err(format!("bad count {count:?}")),
            },
            ["hello", nonce] => {
                if *nonce == last_hello {
                    continue;
                }
                last_hello = (*nonce).to_owned();
                // The host's change of epoch before its hello was taken in
                // above, so it does not end the first command of the new
                // session as a "restart".
                session = host;
                Ok(format!("ok hello {nonce}"))
            }
            ["quit"] => {
                ch.send(b"ok quit", Some(stall)).map_err(chan)?;
                return Ok(());
            }
            _ => Err(format!("unknown command {line:?}")),
        };
        check_cancel(ch)?;
        let text = answer.unwrap_or_else(|e| format!("err {e}"));
        // The host may be gone or restarting: the answer waits for it.
        send_patiently(ch, text.as_bytes())?;
    }
}

/// Guest side of `ping`: returns each message as it comes.
fn pong(
    ch: &mut OwnedChannel<impl SharedMemory>,
    count: u64,
    stall: Duration,
) -> Result<(), AgentError> {
    let mut buf = [0u8; 64];
    for _ in 0..count {
        let n = ch.recv(&mut buf, Some(stall)).map_err(chan)?;
        ch.send(&buf[..n], Some(stall)).map_err(chan)?;
    }
    Ok(())
}

/// Host side of `ping`: `count` round trips of a 64-byte message, one at a
/// time; returns each round trip's time.
pub fn ping(
    ch: &mut OwnedChannel<impl SharedMemory>,
    count: u64,
    stall: Duration,
) -> Result<Vec<Duration>, AgentError> {
    ch.send(format!("ping {count}").as_bytes(), Some(stall))
        .map_err(chan)?;
    let mut times = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    let mut buf = [0u8; 64];
    for seq in 0..count {
        let mut msg = [0u8; 64];
        msg[..8].copy_from_slice(&seq.to_le_bytes());
        let start = std::time::Instant::now();
        ch.send(&msg, Some(stall)).map_err(chan)?;
        let n = ch.recv(&mut buf, Some(stall)).map_err(chan)?;
        times.push(start.elapsed());
        if buf[..n] != msg {
            return Err(format!("ping {seq}: the reply differs"));
        }
    }
    reply(ch, stall).map(|_| times)
}

/// Consumes the message a `peek` just looked at.
fn release_next(ch: &mut OwnedChannel<impl SharedMemory>) -> Result<(), AgentError> {
    match ch.try_peek().map_err(chan)? {
        Some(msg) => {
            msg.release();
            Ok(())
        }
        None => Err("message vanished between peek and release".into()),
    }
}

/// Durable progress of a host's stream, so a restarted host agent resumes
/// where the killed one stopped: the next sequence number to send and the
/// next one whose acknowledgement is due. Saved (16 bytes, in place) after
/// every commit and before every acknowledgement is released.
#[derive(Debug)]
pub struct StreamState {
    file: fs::File,
    /// Next sequence number to send.
    pub sent: u64,
    /// Next sequence number whose acknowledgement is expected.
    pub acked: u64,
}

impl StreamState {
    /// Opens (or creates, at zero) the state file.
    pub fn open(path: &Path) -> Result<Self, AgentError> {
        let io = |e: std::io::Error| format!("{}: {e}", path.display());
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        let mut raw = Vec::new();
        file.read_to_end(&mut raw).map_err(io)?;
        let word = |i: usize| {
            raw.get(8 * i..8 * i + 8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_le_bytes)
        };
        Ok(Self {
            sent: word(0),
            acked: word(1),
            file,
        })
    }

    fn save(&mut self) -> Result<(), AgentError> {
        use std::os::unix::fs::FileExt;
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&self.sent.to_le_bytes());
        raw[8..].copy_from_slice(&self.acked.to_le_bytes());
        self.file.write_all_at(&raw, 0).map_err(|e| e.to_string())
    }
}

/// What a stream run saw.
#[derive(Debug, Default, Clone, Copy)]
pub struct StreamStats {
    /// Messages sent by this process.
    pub sent: u64,
    /// Acknowledgements that repeated an earlier one (redelivery after a
    /// restart on either side).
    pub duplicate_acks: u64,
    /// Guest restarts seen (new epochs).
    pub guest_restarts: u64,
}

/// Host side of a restart-tolerant stream: sends stream messages
/// `state.sent..count` and checks that every one of `0..count` is
/// acknowledged, in order (repeats allowed, gaps not). Waits through guest
/// reboots; resumes from `state` after a host restart.
pub fn stream_host(
    ch: &mut OwnedChannel<impl SharedMemory>,
    count: u64,
    state: &mut StreamState,
    deadline: Duration,
) -> Result<StreamStats, AgentError> {
    let start = std::time::Instant::now();
    let mut stats = StreamStats::default();
    let mut waiter = Waiter::new(ch.options().wait);
    while state.acked < count {
        check_cancel(ch)?;
        let mut progress = false;
        if state.sent < count {
            let seq = state.sent;
            let len = 12 + traffic::len(seq);
            if let Some(mut g) = ch.try_reserve(len).map_err(chan)? {
                let mut msg = vec![0u8; len];
                msg[..4].copy_from_slice(STREAM_TAG);
                msg[4..12].copy_from_slice(&seq.to_le_bytes());
                traffic::build(seq, &mut msg[12..]);
                g.write(0, &msg).map_err(|e| e.to_string())?;
                g.commit(len).map_err(|e| e.to_string())?;
                state.sent += 1;
                stats.sent += 1;
                state.save()?;
                progress = true;
            }
        }
        if let Some(msg) = ch.try_peek().map_err(chan)? {
            let mut head = [0u8; 12];
            let ack = if msg.len() == 12 {
                msg.read(0, &mut head).map_err(|e| e.to_string())?;
                tagged(ACK_TAG, &head)
            } else {
                None
            };
            let Some(seq) = ack else {
                return Err(format!(
                    "expected an acknowledgement, got {} bytes",
                    msg.len()
                ));
            };
            if seq > state.acked {
                return Err(format!(
                    "acknowledgement for {seq} before {}: a message was lost",
                    state.acked
                ));
            }
            if seq < state.acked {
                stats.duplicate_acks += 1;
            } else {
                state.acked += 1;
                // Saved before the release: a kill in between re-reads it.
                state.save()?;
            }
            msg.release();
            progress = true;
        }
        if progress {
            waiter.reset();
            continue;
        }
        if start.elapsed() > deadline {
            return Err(format!(
                "stream incomplete after {deadline:?}: sent {}, acknowledged {} of {count}",
                state.sent, state.acked
            ));
        }
        if let Some(ivchan_protocol::PeerEvent::Restarted { .. }) = ch.poll_peer().map_err(chan)? {
            stats.guest_restarts += 1;
        }
        waiter.wait(Some(Duration::from_millis(1)));
    }
    Ok(stats)
}

fn receive_file(
    ch: &mut OwnedChannel<impl SharedMemory>,
    dir: &Path,
    name: &str,
    size: &str,
    sum: &str,
    stall: Duration,
) -> Result<String, AgentError> {
    let size: u64 = size.parse().map_err(|_| format!("bad size {size:?}"))?;
    let sum = u64::from_str_radix(sum, 16).map_err(|_| format!("bad checksum {sum:?}"))?;
    if name.contains('/') || name.starts_with('.') {
        return Err(format!("refusing file name {name:?}"));
    }
    // Store as we receive, under a temporary name: a failed or corrupt
    // transfer never leaves a file called `name` behind.
    let tmp = dir.join(format!(".{name}.part"));
    let result = (|| -> Result<(u64, u64), AgentError> {
        let mut out = fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        let mut sum = Checksum::new();
        let mut received = 0u64;
        let mut reader = ch.reader(Some(stall));
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            sum.update(&buf[..n]);
            received += n as u64;
            out.write_all(&buf[..n])
                .map_err(|e| format!("{}: {e}", tmp.display()))?;
        }
        Ok((received, sum.finish()))
    })();
    let (received, got) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    if received != size || got != sum {
        let _ = fs::remove_file(&tmp);
        return Err(format!(
            "file {name}: {received} bytes with checksum {got:016x}, expected {size} with {sum:016x}"
        ));
    }
    fs::rename(&tmp, dir.join(name)).map_err(|e| format!("{name}: {e}"))?;
    Ok(format!("ok file {name} {size} {got:016x}"))
}
