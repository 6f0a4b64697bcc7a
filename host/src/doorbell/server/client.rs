//! One connected client: its eventfds and the queue of 8-byte messages the
//! server owes it, sent without blocking (an fd rides with SCM_RIGHTS).

use std::collections::VecDeque;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

use super::LeaveReason;

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
    /// This peer's eventfds, one per vector (others ring it with these).
    pub(super) eventfds: Vec<Arc<OwnedFd>>,
    pub(super) out: VecDeque<Outgoing>,
    /// `EPOLLOUT` is in the interest set (the socket was full).
    pub(super) want_write: bool,
    /// To be disconnected, and why.
    pub(super) doomed: Option<LeaveReason>,
}

impl Client {
    /// A client with nothing queued yet.
    pub(super) fn new(stream: UnixStream, eventfds: Vec<Arc<OwnedFd>>) -> Self {
        Self {
            stream,
            eventfds,
            out: VecDeque::new(),
            want_write: false,
            doomed: None,
        }
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

    fn set_want_write(&mut self, epoll: &Epoll, token: u64, on: bool) -> Result<(), Errno> {
        if self.want_write != on {
            let mut event = EpollEvent::new(Self::interest(on), token);
            epoll.modify(&self.stream, &mut event)?;
            self.want_write = on;
        }
        Ok(())
    }

    /// Sends what can be sent now, without blocking.
    fn flush(&mut self, epoll: &Epoll, token: u64) -> Result<(), Errno> {
        let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
        while let Some(msg) = self.out.front_mut() {
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
