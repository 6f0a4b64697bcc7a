//! One connected client: its eventfds and the queue of 8-byte messages the
//! server owes it, sent without blocking (an fd rides with SCM_RIGHTS) and
//! paced so that only a couple are ever unread in its socket.
//!
//! Fds sent over a UNIX socket stay "in flight" until the receiver reads
//! them, and the kernel counts them against the sender's user: past its
//! `RLIMIT_NOFILE` (unless privileged) every further fd-carrying send fails
//! with `ETOOMANYREFS`, for every VM this server (and its user) serves. A
//! client that never reads would hold whatever the server sent it, even
//! after the server closes its end. So each client's socket gets the
//! kernel's smallest send buffer and a message is sent only while the
//! socket polls writable, which with that buffer means at most one
//! message is still unread: at most two messages (two fds) are ever in
//! flight per client, and a client that never reads gets the version and
//! its id (no fds) and nothing more. The rest waits in the queue, which is
//! bounded.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Instant;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use nix::sys::socket::{sendmsg, setsockopt, sockopt, ControlMessage, MsgFlags};

use super::{LeaveReason, PeerCredentials};

/// A peer that closed its end shows up as `EPIPE` or `ECONNRESET` when
/// the server writes before it sees the hang-up.
fn send_failed(e: Errno) -> LeaveReason {
    match e {
        Errno::EPIPE | Errno::ECONNRESET => LeaveReason::Closed,
        e => LeaveReason::SocketError(e),
    }
}

/// One 8-byte message owed to a client, maybe with one fd.
#[derive(Debug)]
pub(super) struct Outgoing {
    bytes: [u8; 8],
    sent: usize,
    /// Shared with the peer that owns it (and other queues); sent with the
    /// first byte, then dropped.
    fd: Option<Arc<OwnedFd>>,
}

impl Outgoing {
    pub(super) fn new(value: i64, fd: Option<Arc<OwnedFd>>) -> Self {
        Self {
            bytes: value.to_le_bytes(),
            sent: 0,
            fd,
        }
    }
}

/// A connected guest peer.
#[derive(Debug)]
pub(super) struct Client {
    pub(super) stream: UnixStream,
    /// Who connected.
    pub(super) creds: PeerCredentials,
    /// When it connected.
    pub(super) since: Instant,
    /// Messages of its handshake, and messages sent so far: it has taken
    /// its handshake (read all but at most one message of it) once
    /// `sent >= handshake`.
    pub(super) handshake: usize,
    pub(super) sent: usize,
    /// This peer's eventfds, one per vector (others ring it with these).
    pub(super) eventfds: Vec<Arc<OwnedFd>>,
    pub(super) out: VecDeque<Outgoing>,
    /// `EPOLLOUT` is in the interest set (the socket was full).
    pub(super) want_write: bool,
    /// To be disconnected, and why.
    pub(super) doomed: Option<LeaveReason>,
}

impl Client {
    /// A client with nothing queued yet, its socket given the kernel's
    /// smallest send buffer (see the module docs).
    pub(super) fn new(
        stream: UnixStream,
        creds: PeerCredentials,
        eventfds: Vec<Arc<OwnedFd>>,
    ) -> Result<Self, Errno> {
        // The kernel raises this to its minimum (4608 bytes on Linux 6:
        // six small messages; writable while at most one is queued).
        setsockopt(&stream, sockopt::SndBuf, &1)?;
        Ok(Self {
            stream,
            creds,
            since: Instant::now(),
            handshake: 0,
            sent: 0,
            eventfds,
            out: VecDeque::new(),
            want_write: false,
            doomed: None,
        })
    }

    /// Whether it has taken its whole handshake.
    pub(super) fn took_handshake(&self) -> bool {
        self.sent >= self.handshake
    }

    /// Whether its socket may take one more message now: with the smallest
    /// send buffer, at most one message is unread. An error or hang-up
    /// counts as writable, so that the send reports it.
    fn writable(&self) -> Result<bool, Errno> {
        let mut fds = [PollFd::new(self.stream.as_fd(), PollFlags::POLLOUT)];
        match poll(&mut fds, PollTimeout::ZERO) {
            Ok(_) => {}
            Err(Errno::EINTR) => return Ok(false),
            Err(e) => return Err(e),
        }
        let ready = PollFlags::POLLOUT | PollFlags::POLLERR | PollFlags::POLLHUP;
        Ok(fds[0].revents().is_some_and(|r| r.intersects(ready)))
    }

    pub(super) fn interest(want_write: bool) -> EpollFlags {
        let base = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
        if want_write {
            base | EpollFlags::EPOLLOUT
        } else {
            base
        }
    }

    /// Queues `msg` unless the client is already doomed; a client with
    /// `limit` messages unsent is doomed instead (it is not reading).
    pub(super) fn queue(&mut self, msg: Outgoing, limit: usize) {
        if self.doomed.is_some() {
            return;
        }
        if self.out.len() >= limit {
            self.out.clear();
            self.doomed = Some(LeaveReason::NotReading);
            return;
        }
        self.out.push_back(msg);
    }

    /// Forgets a departed peer whose eventfds are `fds` (one per vector):
    /// if none of them has been sent to this client yet (all still wait in
    /// its queue, in the handshake or a join notice), they are dropped and
    /// the client never hears of the peer. Otherwise the rest of the join
    /// is kept (the client never sees a peer half-joined) and `true` says
    /// the client must be told the peer left.
    pub(super) fn forget(&mut self, fds: &[Arc<OwnedFd>]) -> bool {
        let carries = |msg: &Outgoing| {
            msg.sent == 0
                && msg
                    .fd
                    .as_ref()
                    .is_some_and(|fd| fds.iter().any(|f| Arc::ptr_eq(f, fd)))
        };
        let waiting = self.out.iter().filter(|m| carries(m)).count();
        if waiting < fds.len() {
            return true;
        }
        let mut index = self.sent;
        let mut in_handshake = 0;
        self.out.retain(|msg| {
            let drop = carries(msg);
            if drop && index < self.handshake {
                in_handshake += 1;
            }
            index += 1;
            !drop
        });
        self.handshake -= in_handshake;
        false
    }

    fn set_want_write(&mut self, epoll: &Epoll, token: u64, on: bool) -> Result<(), Errno> {
        if self.want_write != on {
            let mut event = EpollEvent::new(Self::interest(on), token);
            epoll.modify(&self.stream, &mut event)?;
            self.want_write = on;
        }
        Ok(())
    }

    /// Sends what can be sent now, one message at a time while the socket
    /// is writable (at most one unread), without blocking; waits for
    /// `EPOLLOUT` for the rest.
    fn flush(&mut self, epoll: &Epoll, token: u64) -> Result<(), Errno> {
        let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
        while !self.out.is_empty() {
            if !self.writable()? {
                return self.set_want_write(epoll, token, true);
            }
            let Some(msg) = self.out.front_mut() else {
                break;
            };
            let iov = [IoSlice::new(&msg.bytes[msg.sent..])];
            let raw = msg.fd.as_ref().map(|fd| [fd.as_raw_fd()]);
            let cmsg;
            let cmsgs: &[ControlMessage<'_>] = match &raw {
                Some(fds) => {
                    cmsg = [ControlMessage::ScmRights(fds)];
                    &cmsg
                }
                None => &[],
            };
            match sendmsg::<()>(self.stream.as_raw_fd(), &iov, cmsgs, flags, None) {
                Ok(0) => return Err(Errno::EPIPE),
                Ok(n) => {
                    // The fd travelled with the first byte.
                    msg.fd = None;
                    msg.sent += n;
                    if msg.sent >= msg.bytes.len() {
                        self.out.pop_front();
                        self.sent += 1;
                    }
                }
                Err(Errno::EAGAIN) => return self.set_want_write(epoll, token, true),
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
        self.set_want_write(epoll, token, false)
    }

    /// [`flush`](Self::flush)es a client not yet doomed; a failed send
    /// dooms it.
    pub(super) fn flush_or_doom(&mut self, epoll: &Epoll, token: u64) {
        if self.doomed.is_some() {
            return;
        }
        if let Err(e) = self.flush(epoll, token) {
            self.doomed = Some(send_failed(e));
        }
    }
}
