//! Async channels for tokio (feature `tokio`): an [`AsyncChannel`] over any
//! channel, with `async` send and receive (copying and in place),
//! `tokio::io::AsyncRead`/`AsyncWrite` for byte streams, and
//! `futures_core::Stream`/`futures_sink::Sink` of messages.
//!
//! **Readiness.** A receive that finds its ring empty asks the peer to ring
//! (`prepare_to_sleep`, the WAKE_ME handshake of PROTOCOL.md section 8) and
//! waits on a [`Readiness`]: the host's eventfd of the VM (ivchan-host), or
//! the guest's interrupt once it exists. Without one, and for a send that
//! waits for room (the protocol has no "room again" ring), the channel
//! polls: a few turns of the runtime, then a timer whose interval doubles
//! while nothing moves ([`PollOptions`]). No task blocks a thread, so one
//! runtime thread serves any number of channels.
//!
//! **Liveness.** While it waits, the channel keeps its heartbeat beating
//! and watches the peer once per heartbeat interval, like the blocking
//! calls: a peer that closed, fell silent or restarted ends the wait with
//! that error; other peer events are kept for
//! [`AsyncChannel::poll_peer`].
//!
//! **Cancellation.** Every `async` call and `poll_*` method takes a message
//! only when it returns it: dropping a pending call (a `select!` that chose
//! another branch) loses nothing.
//!
//! ```
//! use ivchan_protocol::asynch::AsyncChannel;
//! use ivchan_protocol::{Header, InitParams, Mapping, OwnedChannel, Side};
//! use std::sync::Arc;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().build()?.block_on(async {
//! let memory = Arc::new(Mapping::anonymous(1 << 20)?);
//! let params = InitParams { uuid: [7; 16], name: "demo", ring_size: None };
//! Header::create(memory.region(), &params)?;
//! let host = OwnedChannel::attach(memory.clone(), Side::Host, Default::default())?;
//! let guest = OwnedChannel::attach(memory, Side::Guest, Default::default())?;
//! // No doorbell in one process: both ends poll on the timer.
//! let mut host = AsyncChannel::new(host);
//! let mut guest = AsyncChannel::new(guest);
//!
//! host.send(b"hello").await?;
//! let mut buf = [0u8; 16];
//! let n = guest.recv(&mut buf).await?;
//! assert_eq!(&buf[..n], b"hello");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::channel::{Channel, ChannelError, OwnedChannel, PeerEvent};
use crate::layout::PeerState;
use crate::mapping::SharedMemory;
use crate::volatile::{VolatileSlice, VolatileSliceMut};

mod fd;
mod io;
mod readiness;
mod stream;

pub use fd::ReadableFd;
pub use readiness::{PollOptions, Readiness};

use readiness::{Deadline, PollTimer};

/// A channel an [`AsyncChannel`] can drive: gives a borrowed [`Channel`]
/// to a closure (an owned channel cannot hand out its inner lifetime).
pub trait AsChannel {
    /// Runs `f` on the channel.
    fn with_channel<R>(&mut self, f: impl FnOnce(&mut Channel<'_>) -> R) -> R;
}

impl AsChannel for Channel<'_> {
    fn with_channel<R>(&mut self, f: impl FnOnce(&mut Channel<'_>) -> R) -> R {
        f(self)
    }
}

impl<M: SharedMemory> AsChannel for OwnedChannel<M> {
    fn with_channel<R>(&mut self, f: impl FnOnce(&mut Channel<'_>) -> R) -> R {
        self.with(f)
    }
}

/// Peer events kept while nobody asks for them; older ones are dropped.
const KEPT_EVENTS: usize = 32;

/// Doorbell wakes in a row that found nothing, taken without pausing. A
/// peer that rings without sending then costs at most one look per pause
/// (1 ms doubling to 64 ms), never a spinning task.
const STORM_GRACE: u32 = 4;
const STORM_PAUSE: Duration = Duration::from_millis(1);
const STORM_SHIFT_MAX: u32 = 6;

/// What a wait ended with.
enum Woke {
    /// Something may have changed: look again.
    Retry,
    /// The peer is closed: look once more, then report it.
    PeerClosed,
}

/// One direction's waiting state.
#[derive(Debug)]
struct Direction {
    timer: PollTimer,
}

/// An async channel over `C` (an [`OwnedChannel`], a host `VmChannel`, a
/// guest `GuestChannel`, a borrowed [`Channel`]). See the [module
/// docs](self).
#[derive(Debug)]
pub struct AsyncChannel<C> {
    inner: C,
    bell: Option<Box<dyn Readiness>>,
    rx: Direction,
    tx: Direction,
    /// The next liveness check (heartbeat and the peer's block).
    beat: Deadline,
    /// How long the peer has been silent, when it is.
    silent_since: Option<std::time::Instant>,
    events: VecDeque<PeerEvent>,
    /// WAKE_ME is set in the receive ring: withdraw it once awake.
    asleep: bool,
    /// Doorbell wakes in a row that found nothing to read.
    idle_wakes: u32,
    /// The pause after a storm of empty wakes.
    storm: Deadline,
    /// Bytes of the message at the head of the ring already read by
    /// `AsyncRead` (the message stays in the ring until read whole).
    read_offset: usize,
    /// `AsyncRead` saw the end-of-stream message.
    eof: bool,
    /// A `Sink` item that did not fit yet.
    pending: Option<Vec<u8>>,
}

impl<C: AsChannel> AsyncChannel<C> {
    /// An async channel that polls on a timer (no doorbell): for a guest
    /// without interrupts, or two ends in one process.
    pub fn new(inner: C) -> Self {
        Self::with_options(inner, PollOptions::default())
    }

    /// As [`new`](Self::new), with how the timer fallback polls.
    pub fn with_options(inner: C, options: PollOptions) -> Self {
        Self {
            inner,
            bell: None,
            rx: Direction {
                timer: PollTimer::new(options),
            },
            tx: Direction {
                timer: PollTimer::new(options),
            },
            beat: Deadline::default(),
            silent_since: None,
            events: VecDeque::new(),
            asleep: false,
            idle_wakes: 0,
            storm: Deadline::default(),
            read_offset: 0,
            eof: false,
            pending: None,
        }
    }

    /// An async channel whose receives sleep on `bell` (the peer's
    /// doorbell) once the ring is empty.
    pub fn with_readiness(inner: C, bell: impl Readiness + 'static) -> Self {
        let mut channel = Self::new(inner);
        channel.set_readiness(Some(Box::new(bell)));
        channel
    }

    /// Sets (or removes) the doorbell receives sleep on.
    pub fn set_readiness(&mut self, bell: Option<Box<dyn Readiness>>) {
        self.bell = bell;
    }

    /// Whether receives sleep on a doorbell (rather than a timer).
    pub fn has_readiness(&self) -> bool {
        self.bell.is_some()
    }

    /// The channel.
    pub fn get_ref(&self) -> &C {
        &self.inner
    }

    /// The channel, for calls this type does not wrap. Do not leave the
    /// receive ring with a half-read `AsyncRead` message behind.
    pub fn get_mut(&mut self) -> &mut C {
        &mut self.inner
    }

    /// Gives the channel back (withdrawing a pending wake-up request).
    pub fn into_inner(mut self) -> C {
        self.wake_up();
        self.inner
    }

    /// The largest message either direction carries.
    pub fn max_message(&mut self) -> usize {
        self.inner.with_channel(|ch| ch.max_message())
    }

    /// Reports the next change in the peer's life: one seen while waiting,
    /// or else what a fresh read of its block shows.
    pub fn poll_peer(&mut self) -> Result<Option<PeerEvent>, ChannelError> {
        if let Some(event) = self.events.pop_front() {
            return Ok(Some(event));
        }
        self.inner.with_channel(|ch| ch.poll_peer())
    }

    /// Waits for a live peer (see [`Channel::wait_for_peer`]); returns its
    /// epoch. Wrap it in `tokio::time::timeout` to bound it.
    pub async fn wait_for_peer(&mut self) -> Result<u64, ChannelError> {
        loop {
            match self
                .inner
                .with_channel(|ch| ch.wait_for_peer(Some(Duration::ZERO)))
            {
                Err(ChannelError::Timeout { .. }) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                other => return other,
            }
        }
    }

    /// Receives into `buf`; returns the message length.
    pub async fn recv(&mut self, buf: &mut [u8]) -> Result<usize, ChannelError> {
        poll_fn(|cx| self.poll_recv(cx, buf)).await
    }

    /// Receives the next message into a new buffer.
    pub async fn recv_vec(&mut self) -> Result<Vec<u8>, ChannelError> {
        poll_fn(|cx| self.poll_recv_vec(cx)).await
    }

    /// Waits for a message and hands it to `f` in place (zero-copy, as a
    /// volatile view: see [`VolatileSlice`]), then releases it.
    pub async fn recv_with<R>(
        &mut self,
        f: impl FnOnce(VolatileSlice<'_>) -> R,
    ) -> Result<R, ChannelError> {
        let mut f = Some(f);
        poll_fn(|cx| {
            self.poll_rx_op(cx, |ch| {
                let Some(grant) = ch.try_peek()? else {
                    return Ok(None);
                };
                let result = f.take().map(|f| f(grant.volatile()));
                grant.release();
                Ok(result)
            })
        })
        .await
    }

    /// Sends `msg`, waiting for room.
    pub async fn send(&mut self, msg: &[u8]) -> Result<(), ChannelError> {
        poll_fn(|cx| self.poll_send(cx, msg)).await
    }

    /// Waits for room for a `len`-byte message, lets `f` fill it in place
    /// (zero-copy), then publishes it (ringing the peer if it asked).
    pub async fn send_with<R>(
        &mut self,
        len: usize,
        f: impl FnOnce(&mut VolatileSliceMut<'_>) -> R,
    ) -> Result<R, ChannelError> {
        let mut f = Some(f);
        poll_fn(|cx| {
            self.poll_tx_op(cx, |ch| {
                let Some(mut grant) = ch.try_reserve(len)? else {
                    return Ok(None);
                };
                let result = f.take().map(|f| f(&mut grant.volatile_mut()));
                grant.commit(len)?;
                ch.publish();
                Ok(result)
            })
        })
        .await
    }

    /// Receives into `buf` once a message is there.
    pub fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<Result<usize, ChannelError>> {
        self.poll_rx_op(cx, |ch| ch.try_recv(buf))
    }

    /// Receives the next message into a new buffer once it is there.
    pub fn poll_recv_vec(&mut self, cx: &mut Context<'_>) -> Poll<Result<Vec<u8>, ChannelError>> {
        self.poll_rx_op(cx, |ch| {
            Ok(ch.try_peek()?.map(|grant| {
                let msg = grant.volatile().snapshot();
                grant.release();
                msg
            }))
        })
    }

    /// Sends `msg` once there is room.
    pub fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        msg: &[u8],
    ) -> Poll<Result<(), ChannelError>> {
        self.poll_tx_op(cx, |ch| Ok(ch.try_send(msg)?.then_some(())))
    }

    /// Retries `attempt` (a non-blocking receive) until it yields, waiting
    /// on the doorbell or the timer in between.
    fn poll_rx_op<T>(
        &mut self,
        cx: &mut Context<'_>,
        attempt: impl FnMut(&mut Channel<'_>) -> Result<Option<T>, ChannelError>,
    ) -> Poll<Result<T, ChannelError>> {
        self.poll_op(cx, true, attempt)
    }

    /// Retries `attempt` (a non-blocking send) until it yields, polling on
    /// the timer in between.
    fn poll_tx_op<T>(
        &mut self,
        cx: &mut Context<'_>,
        attempt: impl FnMut(&mut Channel<'_>) -> Result<Option<T>, ChannelError>,
    ) -> Poll<Result<T, ChannelError>> {
        self.poll_op(cx, false, attempt)
    }

    /// The loop of [`poll_rx_op`](Self::poll_rx_op) (`on_receive`) and
    /// [`poll_tx_op`](Self::poll_tx_op): a success resets that direction's
    /// timer (and, receiving, withdraws the wake-up request); a closed peer
    /// gets one more attempt, for what it published before closing.
    fn poll_op<T>(
        &mut self,
        cx: &mut Context<'_>,
        on_receive: bool,
        mut attempt: impl FnMut(&mut Channel<'_>) -> Result<Option<T>, ChannelError>,
    ) -> Poll<Result<T, ChannelError>> {
        let mut closed = false;
        if on_receive {
            // As the blocking receive does: a streaming writer gets its
            // lead before the look that reloads `tail`.
            self.inner.with_channel(|ch| ch.before_receive());
        }
        loop {
            let got = self.inner.with_channel(|ch| {
                let got = attempt(ch);
                if on_receive && matches!(got, Ok(Some(_))) {
                    ch.received(1);
                }
                got
            });
            match got {
                Ok(Some(value)) => {
                    if on_receive {
                        self.wake_up();
                        self.rx.timer.reset();
                        self.idle_wakes = 0;
                    } else {
                        self.tx.timer.reset();
                    }
                    return Poll::Ready(Ok(value));
                }
                Ok(None) => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            if closed {
                return Poll::Ready(Err(ChannelError::PeerClosed));
            }
            match self.poll_wait(cx, on_receive) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(Woke::PeerClosed)) => closed = true,
                Poll::Ready(Ok(Woke::Retry)) => {}
            }
        }
    }

    /// Withdraws the wake-up request, if one is standing.
    fn wake_up(&mut self) {
        if std::mem::take(&mut self.asleep) {
            self.inner.with_channel(|ch| ch.finish_sleep());
        }
    }

    /// One wait: the liveness check when due, then the doorbell (receives
    /// with one, after their yields) or the timer.
    fn poll_wait(
        &mut self,
        cx: &mut Context<'_>,
        receive: bool,
    ) -> Poll<Result<Woke, ChannelError>> {
        let peer_closed = self.inner.with_channel(|ch| {
            ch.peer_status()
                .is_some_and(|s| s.state == PeerState::Closed)
        });
        if peer_closed || self.beat.is_due() {
            return Poll::Ready(self.check_peer());
        }
        let timer = if receive {
            &mut self.rx.timer
        } else {
            &mut self.tx.timer
        };
        if timer.poll_yield(cx).is_pending() {
            return Poll::Pending;
        }
        let bell = match &mut self.bell {
            Some(bell) if receive => bell,
            _ => {
                // Registers the heartbeat's waker, then the timer's.
                if self.beat.poll(cx).is_ready() {
                    return Poll::Ready(self.check_peer());
                }
                return timer.poll_sleep(cx).map(|()| Ok(Woke::Retry));
            }
        };
        // A storm of empty wakes: pause before listening again.
        if self.idle_wakes > STORM_GRACE && self.storm.poll(cx).is_pending() {
            return Poll::Pending;
        }
        if !self.asleep {
            match self.inner.with_channel(|ch| ch.prepare_to_sleep()) {
                Ok(true) => self.asleep = true,
                Ok(false) => {
                    // Something arrived meanwhile.
                    self.inner.with_channel(|ch| ch.finish_sleep());
                    return Poll::Ready(Ok(Woke::Retry));
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        if self.beat.poll(cx).is_ready() {
            return Poll::Ready(self.check_peer());
        }
        match bell.poll_rung(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(rung) => {
                if rung.is_err() {
                    // A doorbell that fails cannot be waited on: poll on
                    // the timer from now on (`has_readiness` tells).
                    self.bell = None;
                }
                self.wake_up();
                self.idle_wakes = self.idle_wakes.saturating_add(1);
                if self.idle_wakes > STORM_GRACE {
                    let shift = (self.idle_wakes - STORM_GRACE - 1).min(STORM_SHIFT_MAX);
                    self.storm.rearm(STORM_PAUSE * (1 << shift));
                }
                Poll::Ready(Ok(Woke::Retry))
            }
        }
    }

    /// Advances the heartbeat, reads the peer's block and turns what
    /// changed into the error a waiting call ends with (or keeps it for
    /// `poll_peer`).
    fn check_peer(&mut self) -> Result<Woke, ChannelError> {
        let heartbeat = self
            .inner
            .with_channel(|ch| ch.options().heartbeat_interval);
        self.beat.rearm(heartbeat);
        let (seen, closed, cancelled) = self.inner.with_channel(|ch| {
            ch.tick();
            let mut seen = Vec::new();
            while let Some(event) = ch.poll_peer()? {
                seen.push(event);
                if seen.len() > KEPT_EVENTS {
                    break;
                }
            }
            let closed = ch
                .peer_status()
                .is_some_and(|s| s.state == PeerState::Closed);
            let cancelled = ch.cancel_token().is_some_and(|t| t.is_cancelled());
            Ok::<_, ChannelError>((seen, closed, cancelled))
        })?;
        if cancelled {
            return Err(ChannelError::Cancelled);
        }
        for event in seen {
            match event {
                PeerEvent::Restarted {
                    old_epoch,
                    new_epoch,
                } => {
                    self.silent_since = None;
                    return Err(ChannelError::PeerRestarted {
                        old_epoch,
                        new_epoch,
                    });
                }
                PeerEvent::Silent { since } => {
                    self.silent_since = std::time::Instant::now().checked_sub(since);
                }
                PeerEvent::Resumed | PeerEvent::Attached { .. } => self.silent_since = None,
                PeerEvent::Closed => {}
            }
            if self.events.len() == KEPT_EVENTS {
                self.events.pop_front();
            }
            self.events.push_back(event);
        }
        if let Some(since) = self.silent_since {
            return Err(ChannelError::PeerSilent {
                since: since.elapsed(),
            });
        }
        Ok(if closed {
            Woke::PeerClosed
        } else {
            Woke::Retry
        })
    }
}
