//! Async guest channels on tokio (feature `tokio`).
//!
//! A guest without interrupts in user space polls: receives and sends that
//! find nothing to do yield to the runtime a few times, then wait on a timer
//! whose interval doubles while nothing moves ([`PollOptions`]). Where the
//! guest has an interrupt (an eventfd from VFIO, the guest driver's device
//! file), [`GuestChannel::into_async_with`] takes it as the channel's
//! [`Readiness`]: receives then ask the host to ring (WAKE_ME) and sleep on
//! it. [`ReadableFd`] registers such an fd with tokio without `unsafe`.
//!
//! ```no_run
//! use ivchan_guest::GuestChannel;
//!
//! # async fn agent() -> Result<(), Box<dyn std::error::Error>> {
//! let mut ch = GuestChannel::open()?.into_async();
//! ch.send(b"hello from the guest").await?;
//! let reply = ch.recv_vec().await?;
//! # let _ = reply;
//! # Ok(())
//! # }
//! ```

pub use ivchan_protocol::asynch::{AsChannel, AsyncChannel, PollOptions, ReadableFd, Readiness};
use ivchan_protocol::Channel;

use crate::GuestChannel;

/// A guest channel driven by tokio: `recv`/`send` (copying and in place),
/// `AsyncRead`/`AsyncWrite`, `Stream`/`Sink`. See [`AsyncChannel`].
pub type AsyncGuestChannel = AsyncChannel<GuestChannel>;

impl AsChannel for GuestChannel {
    fn with_channel<R>(&mut self, f: impl FnOnce(&mut Channel<'_>) -> R) -> R {
        (**self).with(f)
    }
}

impl GuestChannel {
    /// This channel, driven by tokio, polling on the adaptive timer.
    pub fn into_async(self) -> AsyncGuestChannel {
        AsyncChannel::new(self)
    }

    /// This channel, driven by tokio, with receives that sleep on `wake`
    /// (the guest's interrupt) once the ring is empty.
    pub fn into_async_with(self, wake: impl Readiness + 'static) -> AsyncGuestChannel {
        AsyncChannel::with_readiness(self, wake)
    }
}
