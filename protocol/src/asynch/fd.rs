//! A file descriptor registered with tokio's reactor: the one place the
//! async code meets `AsyncFd`'s registration contract, so that the host
//! and guest crates (eventfds, inotify, an interrupt device) stay free of
//! `unsafe`.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// An owned, non-blocking file descriptor whose readability wakes a task:
/// an eventfd, an inotify fd, a device that reports interrupts.
#[derive(Debug)]
pub struct ReadableFd {
    fd: AsyncFd<OwnedFd>,
}

impl ReadableFd {
    /// Registers `fd` for readability with the current runtime's reactor
    /// (call it inside a runtime). The fd must be non-blocking: reads in
    /// [`poll_read_with`](Self::poll_read_with) must not block the thread.
    /// A duplicate (`dup`) of an fd used elsewhere works: readiness belongs
    /// to the open file, which both share.
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        // SAFETY: `AsyncFd` needs the raw fd to stay open and to be the same
        // file for as long as it is registered. `OwnedFd` owns it and closes
        // it only on drop, which comes after the deregistration in
        // `AsyncFd`'s own drop; the `OwnedFd` is never handed out mutably
        // (only `as_fd` borrows), so nothing can close or replace it.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(Self { fd })
    }

    /// Waits until `read` yields: `read` makes a non-blocking read of the
    /// fd and returns `Ok(None)` when there was nothing (the fd would
    /// block), which clears the readiness so the next wake is a new event.
    pub fn poll_read_with<T>(
        &self,
        cx: &mut Context<'_>,
        mut read: impl FnMut(BorrowedFd<'_>) -> io::Result<Option<T>>,
    ) -> Poll<io::Result<T>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            match read(self.fd.get_ref().as_fd()) {
                Ok(Some(value)) => return Poll::Ready(Ok(value)),
                Ok(None) => guard.clear_ready(),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsFd for ReadableFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.get_ref().as_fd()
    }
}
