//! Async host agents on tokio (feature `tokio`): VM channels whose receives
//! sleep on the VM's doorbell, and the [`Supervisor`] as a `Stream` of VM
//! events. Every wait is a registration with tokio's reactor (the VM's
//! host eventfd, the region directory's inotify fd) or a timer: one runtime
//! thread serves any number of VMs.
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use ivchan_host::{RegionOptions, Supervisor, VmEvent, VmOptions};
//!
//! # async fn agent() -> Result<(), Box<dyn std::error::Error>> {
//! let mut vms = Supervisor::new(RegionOptions::new(), "agent", Default::default())?
//!     .serve_doorbells(|uuid| VmOptions::new(format!("/run/ivchan/{uuid}.sock")))?
//!     .into_async()?;
//! while let Some(event) = vms.next().await {
//!     if let VmEvent::Appeared(vm) = event? {
//!         let mut vm = vm.into_async()?; // sleeps on the VM's doorbell
//!         tokio::spawn(async move {
//!             let mut buf = vec![0; vm.max_message()];
//!             while let Ok(n) = vm.recv(&mut buf).await {
//!                 if vm.send(&buf[..n]).await.is_err() {
//!                     break;
//!                 }
//!             }
//!         });
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! A VM channel without a doorbell (plain `ivshmem-plain` devices) polls on
//! an adaptive timer instead ([`PollOptions`]); so does every send that
//! waits for room, since the protocol has no "room again" ring.

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
pub use ivchan_protocol::asynch::{AsChannel, AsyncChannel, PollOptions, ReadableFd, Readiness};
use ivchan_protocol::Channel;
use nix::errno::Errno;

use crate::channel::{HostError, VmChannel};
use crate::doorbell::{Doorbell, DoorbellError};
use crate::supervisor::{Supervisor, VmEvent};

/// A VM's channel driven by tokio: `recv`/`send` (copying and in place),
/// `AsyncRead`/`AsyncWrite`, `Stream`/`Sink`. See
/// [`AsyncChannel`] and [`VmChannel::into_async`].
pub type AsyncVmChannel = AsyncChannel<VmChannel>;

impl AsChannel for VmChannel {
    fn with_channel<R>(&mut self, f: impl FnOnce(&mut Channel<'_>) -> R) -> R {
        (**self).with(f)
    }
}

impl VmChannel {
    /// This channel, driven by tokio: with a doorbell, its receives sleep
    /// on the VM's host eventfd (registered with the runtime's reactor);
    /// without one, they poll on a timer. Call it inside a runtime.
    pub fn into_async(self) -> Result<AsyncVmChannel, HostError> {
        let Some(bell) = self.host_bell() else {
            return Ok(AsyncChannel::new(self));
        };
        let uuid = *self.uuid();
        let readiness = bell
            .host_doorbell()
            .try_clone()
            .and_then(|fd| {
                EventFdReadiness::new(fd).map_err(|e| DoorbellError::Sys {
                    op: "register the doorbell with tokio",
                    source: errno(&e),
                })
            })
            .map_err(|source| HostError::Doorbell { uuid, source })?;
        Ok(AsyncChannel::with_readiness(self, readiness))
    }
}

/// An eventfd doorbell as the [`Readiness`] of an async channel: ready
/// when rung, taking the count. Rings that land while nobody polls are
/// kept in the counter, never lost.
#[derive(Debug)]
pub struct EventFdReadiness {
    bell: Doorbell,
    /// A duplicate of `bell`'s fd, registered with the reactor.
    fd: ReadableFd,
}

impl EventFdReadiness {
    /// Registers `bell` with the current runtime's reactor. Call it inside
    /// a runtime.
    pub fn new(bell: Doorbell) -> io::Result<Self> {
        let fd = ReadableFd::new(bell.as_fd().try_clone_to_owned()?)?;
        Ok(Self { bell, fd })
    }
}

impl Readiness for EventFdReadiness {
    fn poll_rung(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let bell = &self.bell;
        self.fd.poll_read_with(cx, |_| match bell.take() {
            Ok(0) => Ok(None),
            Ok(_) => Ok(Some(())),
            Err(e) => Err(io::Error::other(e)),
        })
    }
}

fn errno(e: &io::Error) -> Errno {
    e.raw_os_error().map_or(Errno::EIO, Errno::from_raw)
}

/// A [`Supervisor`] as a `Stream` of [`VmEvent`]s, woken by the region
/// directory's inotify fd through tokio's reactor. Made by
/// [`Supervisor::into_async`]; the first events report every region already
/// there.
#[derive(Debug)]
pub struct AsyncSupervisor {
    supervisor: Supervisor,
    /// A duplicate of the supervisor's inotify fd, registered with the
    /// reactor.
    fd: ReadableFd,
    queue: VecDeque<VmEvent>,
}

impl Supervisor {
    /// This supervisor as a `Stream` of VM events for tokio. Call it
    /// inside a runtime.
    pub fn into_async(self) -> Result<AsyncSupervisor, HostError> {
        let fd = self
            .as_fd()
            .try_clone_to_owned()
            .and_then(ReadableFd::new)
            .map_err(|e| HostError::Watch {
                dir: self.directory().to_path_buf(),
                source: errno(&e),
            })?;
        Ok(AsyncSupervisor {
            supervisor: self,
            fd,
            queue: VecDeque::new(),
        })
    }
}

impl AsyncSupervisor {
    /// The supervisor (its doorbell server, the VMs it serves).
    pub fn get_ref(&self) -> &Supervisor {
        &self.supervisor
    }

    /// The next event (the stream never ends: the directory is watched
    /// until the supervisor is dropped).
    pub async fn next_event(&mut self) -> Result<VmEvent, HostError> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    /// The next event once there is one.
    pub fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Result<VmEvent, HostError>> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Poll::Ready(Ok(event));
            }
            if self.supervisor.rescan_due() {
                // The first call, or inotify overflowed: scan now.
                let events = self.supervisor.poll(Some(Duration::ZERO))?;
                self.queue.extend(events);
                if self.queue.is_empty() && self.supervisor.rescan_due() {
                    // Not expected (a scan marks itself done): look again
                    // on the runtime's next turn rather than spin here.
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                continue;
            }
            let supervisor = &mut self.supervisor;
            let mut failed = None;
            // `poll` reads inotify until it is drained: nothing read means
            // the directory has not changed since.
            let polled =
                self.fd
                    .poll_read_with(cx, |_| match supervisor.poll(Some(Duration::ZERO)) {
                        Ok(events) if events.is_empty() => Ok(None),
                        Ok(events) => Ok(Some(events)),
                        Err(e) => {
                            failed = Some(e);
                            Ok(Some(Vec::new()))
                        }
                    });
            match polled {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    return Poll::Ready(Err(HostError::Watch {
                        dir: self.supervisor.directory().to_path_buf(),
                        source: errno(&e),
                    }))
                }
                Poll::Ready(Ok(events)) => {
                    if let Some(e) = failed {
                        return Poll::Ready(Err(e));
                    }
                    self.queue.extend(events);
                }
            }
        }
    }
}

impl Stream for AsyncSupervisor {
    type Item = Result<VmEvent, HostError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_event(cx).map(Some)
    }
}
