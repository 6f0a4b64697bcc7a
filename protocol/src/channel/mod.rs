//! A channel: one side's two rings plus the handshake, liveness, blocking
//! operations with timeouts, and `std::io` adapters. Host and guest agents
//! both use it; they differ only in how they obtain the region.
//!
//! Liveness comes from the side blocks of the header. Attaching bumps this
//! side's epoch and marks it ready; every channel call (and [`Channel::tick`])
//! advances this side's heartbeat, a call that waits does so at least once
//! per [`ChannelOptions::heartbeat_interval`], and it watches the peer's block:
//! a new epoch is a (re)attach, `closed` a clean exit, a heartbeat that has
//! not moved for [`ChannelOptions::peer_timeout`] a silent peer. Each change
//! is reported once by [`Channel::poll_peer`]; blocking calls that wait on a
//! closed, silent or restarted peer return that as an error instead of
//! waiting out their timeout (a restart ends whatever exchange the caller was
//! in the middle of: it is the caller's cue to resynchronise). None of these
//! poison the channel: when the peer comes back, the rings carry on from the
//! positions stored in the region. A [`CancelToken`] stops blocked calls from
//! outside (a signal handler).

use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use crate::error::{LayoutError, RingError};
use crate::layout::{Header, PeerState, RegionRing, Side, SideStatus};
use crate::ring::{Consumer, Producer, ReadGrant, WriteGrant};
use crate::volatile::VolatileSlice;

mod cancel;
mod owned;
mod peer;
mod stream;
mod wait;

pub use cancel::CancelToken;
pub use owned::OwnedChannel;
pub use stream::{ChannelReader, ChannelWriter};
pub use wait::{poll_until, Pace, WaitStrategy, Waiter};

use peer::PeerWatch;

/// Bytes a batched writer ([`Channel::send_batch`], the `std::io` writer)
/// stages before it publishes without being asked: large enough that small
/// messages share one publish (about 200 of 64 bytes), small enough that
/// the reader starts on a batch of large messages before it is all written.
pub const PUBLISH_EVERY: usize = 16 << 10;

/// Bytes a batched reader ([`Channel::recv_batch`], the `std::io` reader)
/// takes before it hands the space back without waiting to find the ring
/// empty (a quarter of the ring when that is less): a reader working
/// through a long run of messages never leaves the writer waiting for
/// room it has already read.
pub const RELEASE_EVERY: usize = 64 << 10;

/// The release chunk for a ring of `capacity` bytes: [`RELEASE_EVERY`], or
/// a quarter of the ring when that is less. For batched readers built on
/// a bare [`Consumer`], to hand space back as
/// [`Channel::recv_batch`] does.
pub const fn release_chunk(capacity: usize) -> usize {
    if capacity / 4 < RELEASE_EVERY {
        capacity / 4
    } else {
        RELEASE_EVERY
    }
}

/// Channel settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelOptions {
    /// How blocking calls wait.
    pub wait: WaitStrategy,
    /// How often a call that waits advances this side's heartbeat and looks
    /// at the peer's: a sleeping wait naps no longer than this. (Every
    /// call also beats once, whether it waits or not.)
    pub heartbeat_interval: Duration,
    /// How long the peer's heartbeat may stand still before it counts as
    /// silent; `None` never declares it silent.
    pub peer_timeout: Option<Duration>,
    /// The region is mapped write-combining: fence before each publish.
    pub write_combining: bool,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        Self {
            wait: WaitStrategy::default(),
            heartbeat_interval: Duration::from_millis(100),
            peer_timeout: Some(Duration::from_secs(5)),
            write_combining: false,
        }
    }
}

/// A change in the peer's life, reported once by [`Channel::poll_peer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerEvent {
    /// The peer attached (or was found attached) with this epoch.
    Attached {
        /// The peer's session epoch.
        epoch: u64,
    },
    /// The peer attached again: a restart. Messages in flight are kept.
    Restarted {
        /// Epoch of the session that ended.
        old_epoch: u64,
        /// Epoch of the new session.
        new_epoch: u64,
    },
    /// The peer detached cleanly.
    Closed,
    /// The peer's heartbeat has not moved for this long.
    Silent {
        /// Time since the heartbeat last moved.
        since: Duration,
    },
    /// A silent peer's heartbeat moved again.
    Resumed,
}

/// What a blocking channel call can fail with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelError {
    /// A ring error: a protocol violation (fatal) or a caller error.
    Ring(RingError),
    /// The peer's side block (or the header) is invalid: fatal, the
    /// channel is poisoned.
    Layout(LayoutError),
    /// Nothing happened within the timeout.
    Timeout {
        /// How long the call waited.
        waited: Duration,
    },
    /// The peer detached cleanly while we waited on it.
    PeerClosed,
    /// The peer's heartbeat stood still for longer than the peer timeout
    /// while we waited on it.
    PeerSilent {
        /// Time since the heartbeat last moved.
        since: Duration,
    },
    /// The peer attached again (a new epoch) while we waited on it: what
    /// the caller was in the middle of is over; resynchronise.
    PeerRestarted {
        /// Epoch of the session that ended.
        old_epoch: u64,
        /// Epoch of the new session.
        new_epoch: u64,
    },
    /// The channel's [`CancelToken`] was cancelled.
    Cancelled,
}

impl ChannelError {
    /// True when the channel cannot be used any more (the peer broke the
    /// protocol in a ring or in its side block). Timeouts and peer absences
    /// are not fatal.
    pub fn is_fatal(&self) -> bool {
        match self {
            Self::Ring(e) => e.is_fatal(),
            Self::Layout(_) => true,
            _ => false,
        }
    }
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ring(e) => write!(f, "{e}"),
            Self::Layout(e) => write!(f, "{e}"),
            Self::Timeout { waited } => write!(f, "timed out after {waited:?}"),
            Self::PeerClosed => write!(f, "the peer closed the channel"),
            Self::PeerSilent { since } => {
                write!(f, "the peer has been silent for {since:?}")
            }
            Self::PeerRestarted {
                old_epoch,
                new_epoch,
            } => write!(f, "the peer restarted (epoch {old_epoch} -> {new_epoch})"),
            Self::Cancelled => write!(f, "cancelled"),
        }
    }
}

impl std::error::Error for ChannelError {}

impl From<RingError> for ChannelError {
    fn from(e: RingError) -> Self {
        Self::Ring(e)
    }
}

impl From<LayoutError> for ChannelError {
    fn from(e: LayoutError) -> Self {
        Self::Layout(e)
    }
}

impl From<ChannelError> for io::Error {
    fn from(e: ChannelError) -> Self {
        let kind = match e {
            ChannelError::Timeout { .. } => io::ErrorKind::TimedOut,
            ChannelError::PeerClosed | ChannelError::PeerSilent { .. } => io::ErrorKind::BrokenPipe,
            ChannelError::PeerRestarted { .. } => io::ErrorKind::ConnectionReset,
            // Not `Interrupted`: `std::io` retries that.
            ChannelError::Cancelled => io::ErrorKind::Other,
            ChannelError::Ring(RingError::TooLarge { .. } | RingError::BufferTooSmall { .. }) => {
                io::ErrorKind::InvalidInput
            }
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
    }
}

/// A doorbell between the two sides: how a channel wakes its peer, and how
/// it sleeps until the peer wakes it. The host implements it with eventfds
/// (`ivchan_host::doorbell`), the guest with the device's Doorbell register.
///
/// With a notifier, a channel rings its peer after publishing only when the
/// peer asked to be woken (PROTOCOL.md, section 8), and blocking receives
/// sleep on the doorbell once the wait strategy stops spinning.
pub trait Notifier: Send + fmt::Debug {
    /// Wakes the peer.
    fn ring(&self);
    /// Whether [`wait`](Self::wait) can sleep until rung. A side that
    /// cannot receive interrupts (a guest without MSI-X in user space)
    /// still rings its peer, and polls.
    fn can_wait(&self) -> bool;
    /// Sleeps until rung or until `timeout` passes.
    fn wait(&self, timeout: Duration);
}

/// Advances one side's heartbeat from another thread (for agents that stay
/// away from their channel for long stretches). `Copy` and `Send`.
#[derive(Debug, Clone, Copy)]
pub struct HeartbeatHandle<'a> {
    header: Header<'a>,
    side: Side,
}

impl HeartbeatHandle<'_> {
    /// Advances the heartbeat once.
    pub fn beat(&self) {
        self.header.heartbeat(self.side);
    }
}

/// One side of a channel over a region.
#[derive(Debug)]
pub struct Channel<'a> {
    header: Header<'a>,
    side: Side,
    tx: Producer<RegionRing<'a>>,
    rx: Consumer<RegionRing<'a>>,
    options: ChannelOptions,
    epoch: u64,
    peer: PeerWatch,
    /// Peer events seen inside blocking calls, kept for `poll_peer`.
    events: std::collections::VecDeque<PeerEvent>,
    notifier: Option<Box<dyn Notifier + 'a>>,
    /// The peer's block as `wait_for_peer` last read it.
    waited_for: Option<SideStatus>,
    /// The peer's side block broke the protocol (a state outside the
    /// spec's values): the channel is poisoned, and every call fails with
    /// this at once.
    broken: Option<LayoutError>,
    /// Doorbell wakes that found nothing to read, since attach.
    spurious_wakes: u64,
    /// Set from outside to stop blocked calls.
    cancel: Option<CancelToken>,
    /// The pace learned by the last blocking send and receive
    /// ([`Waiter::pace`]), so a stream keeps its batching across calls.
    paces: [Pace; 2],
}

/// Index of the send and the receive [`Pace`] in `Channel::paces`.
const SEND: usize = 0;
const RECV: usize = 1;

/// Empty doorbell wakes in a row taken without pausing.
const STORM_GRACE: u32 = 4;
/// First pause after the grace, doubling per empty wake up to the maximum.
const STORM_PAUSE: Duration = Duration::from_micros(20);
const STORM_PAUSE_MAX: Duration = Duration::from_millis(1);

/// Peer events kept while the application is blocked elsewhere; older ones
/// are dropped beyond this (the latest state is what matters).
const KEPT_EVENTS: usize = 32;

impl<'a> Channel<'a> {
    /// Attaches `side` to a checked header: starts a new session (new epoch,
    /// state ready) and resumes both rings at the positions in the region.
    pub fn attach(
        header: Header<'a>,
        side: Side,
        options: ChannelOptions,
    ) -> Result<Self, ChannelError> {
        let (mut tx, rx) = header.split(side)?;
        tx.set_store_fence(options.write_combining);
        let epoch = header.begin_session(side);
        header.heartbeat(side);
        let now = Instant::now();
        Ok(Self {
            header,
            side,
            tx,
            rx,
            options,
            epoch,
            peer: PeerWatch {
                last: None,
                moved_at: now,
                silent: false,
            },
            events: std::collections::VecDeque::new(),
            notifier: None,
            waited_for: None,
            broken: None,
            spurious_wakes: 0,
            cancel: None,
            paces: [Pace::default(); 2],
        })
    }

    /// This side.
    pub fn side(&self) -> Side {
        self.side
    }

    /// This side's session epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The largest message either direction carries.
    pub fn max_message(&self) -> usize {
        self.tx.max_message().min(self.rx.max_message())
    }

    /// The options in force.
    pub fn options(&self) -> &ChannelOptions {
        &self.options
    }

    /// A handle that advances this side's heartbeat from another thread.
    pub fn heartbeat_handle(&self) -> HeartbeatHandle<'a> {
        HeartbeatHandle {
            header: self.header,
            side: self.side,
        }
    }

    /// Attaches (or detaches) the doorbell this channel rings and sleeps on.
    pub fn set_notifier(&mut self, notifier: Option<Box<dyn Notifier + 'a>>) {
        self.notifier = notifier;
    }

    /// Publishes how the peer can ring this side (its ivshmem peer id), or
    /// that it cannot.
    pub fn publish_doorbell(&self, address: Option<crate::layout::DoorbellAddress>) {
        self.header.set_doorbell(self.side, address);
    }

    /// Changes how blocking calls wait from now on.
    pub fn set_wait_strategy(&mut self, wait: WaitStrategy) {
        self.options.wait = wait;
    }

    /// How many times a doorbell wake (or a doorbell sleep's timeout) found
    /// nothing to read. A steady climb with no traffic means the peer rings
    /// without sending; blocking calls back off from such a storm.
    pub fn spurious_wakes(&self) -> u64 {
        self.spurious_wakes
    }

    /// Whether a doorbell is attached.
    pub fn has_notifier(&self) -> bool {
        self.notifier.is_some()
    }

    /// Rings the peer if it asked to be woken (after a publish).
    fn after_publish(&self) {
        if let Some(notifier) = &self.notifier {
            if self.tx.wants_wake() {
                notifier.ring();
            }
        }
    }

    /// For agents that wait on many channels at once (one epoll over their
    /// doorbells): asks the peer to ring after its next publish and checks
    /// the ring once more. `Ok(true)`: nothing to read, safe to sleep on the
    /// doorbell (call [`finish_sleep`](Self::finish_sleep) after).
    pub fn prepare_to_sleep(&mut self) -> Result<bool, ChannelError> {
        Ok(self.rx.prepare_to_sleep()?)
    }

    /// Withdraws the wake-up request made by `prepare_to_sleep`.
    pub fn finish_sleep(&mut self) {
        self.rx.finish_sleep();
    }

    /// Watches `token`: once it is cancelled, blocking calls, `wait_for_peer`
    /// and `poll_peer` return [`ChannelError::Cancelled`] (within one
    /// heartbeat interval when asleep).
    pub fn set_cancel(&mut self, token: Option<CancelToken>) {
        self.cancel = token;
    }

    /// The token this channel watches, if any.
    pub fn cancel_token(&self) -> Option<&CancelToken> {
        self.cancel.as_ref()
    }

    fn check_cancel(&self) -> Result<(), ChannelError> {
        match &self.cancel {
            Some(token) if token.is_cancelled() => Err(ChannelError::Cancelled),
            _ => Ok(()),
        }
    }

    /// The peer's side block, as last read.
    pub fn peer_status(&self) -> Option<SideStatus> {
        self.peer.last
    }

    /// Advances this side's heartbeat. Every channel call does this; agents
    /// that do not call the channel for a while call it (or use a
    /// [`HeartbeatHandle`]). A beat is one store to this side's block, a
    /// line the peer reads only when it checks on us: cheaper than asking
    /// any clock whether a beat is due (the kernel's coarse clock took a
    /// quarter of an 8 B stream's time per message; docs/bench/notes.md).
    #[inline]
    pub fn tick(&mut self) {
        self.header.heartbeat(self.side);
    }

    /// Reports the next change in the peer's life: one seen earlier inside
    /// a blocking call, or else what a fresh read of its block shows.
    pub fn poll_peer(&mut self) -> Result<Option<PeerEvent>, ChannelError> {
        self.check_cancel()?;
        if let Some(event) = self.events.pop_front() {
            return Ok(Some(event));
        }
        self.observe_peer()
    }

    /// Waits up to `timeout` (`None`: no limit) for a live peer: one whose
    /// side is `ready` and whose heartbeat or epoch moves while we watch,
    /// so a peer that crashed and left its state `ready` behind is not
    /// taken for attached. Returns the peer's epoch. Takes at least one of
    /// the peer's heartbeat intervals when the peer was already attached.
    pub fn wait_for_peer(&mut self, timeout: Option<Duration>) -> Result<u64, ChannelError> {
        let start = Instant::now();
        let first = match self.waited_for {
            Some(status) => status,
            None => self.peer_block()?,
        };
        let strategy = WaitStrategy::backoff(Duration::from_millis(1), Duration::from_millis(10));
        let epoch = poll_until(strategy, timeout, || -> Result<_, ChannelError> {
            self.check_cancel()?;
            self.tick();
            let now = self.peer_block()?;
            // Remembered for the next call: a peer that attaches between
            // two calls counts as moved.
            self.waited_for = Some(now);
            let alive = now.heartbeat != first.heartbeat || now.epoch != first.epoch;
            Ok((now.state == PeerState::Ready && alive).then_some(now.epoch))
        })?;
        epoch.ok_or(ChannelError::Timeout {
            waited: start.elapsed(),
        })
    }

    /// Reads the peer's side block; a value outside the spec poisons the
    /// channel (PROTOCOL.md, section 6).
    fn peer_block(&mut self) -> Result<SideStatus, ChannelError> {
        self.usable()?;
        let header = self.header;
        let side = self.side.peer();
        header
            .check_present()
            .and_then(|()| header.status(side))
            .map_err(|e| {
                self.broken = Some(e);
                ChannelError::Layout(e)
            })
    }

    /// Fails at once on a poisoned channel, so that no caller can spin on it.
    fn usable(&self) -> Result<(), ChannelError> {
        match self.broken {
            Some(e) => Err(ChannelError::Layout(e)),
            None => Ok(()),
        }
    }

    /// Reads the peer's block once and returns what changed.
    fn observe_peer(&mut self) -> Result<Option<PeerEvent>, ChannelError> {
        self.observe_peer_at(Instant::now())
    }

    /// [`observe_peer`](Self::observe_peer) with the time already read.
    fn observe_peer_at(&mut self, now: Instant) -> Result<Option<PeerEvent>, ChannelError> {
        self.check_cancel()?;
        self.tick();
        let status = self.peer_block()?;
        Ok(self.peer.observe(now, status, self.options.peer_timeout))
    }

    /// Inside a wait: reads the peer's block and ends the wait on what
    /// must end it. A restart or a silent peer is the error to return
    /// (whatever the caller was in the middle of is over); other changes
    /// are kept for `poll_peer`. `Ok(true)`: the peer has closed, and the
    /// caller looks once more for what it published before closing.
    fn peer_ends_wait(&mut self, now: Instant) -> Result<bool, ChannelError> {
        match self.observe_peer_at(now)? {
            Some(PeerEvent::Restarted {
                old_epoch,
                new_epoch,
            }) => {
                return Err(ChannelError::PeerRestarted {
                    old_epoch,
                    new_epoch,
                })
            }
            Some(event) => {
                if self.events.len() == KEPT_EVENTS {
                    self.events.pop_front();
                }
                self.events.push_back(event);
            }
            None => {}
        }
        if self.peer.last.is_some_and(|s| s.state == PeerState::Closed) {
            return Ok(true);
        }
        if self.peer.silent {
            let since = self.peer.moved_at.elapsed();
            return Err(ChannelError::PeerSilent { since });
        }
        Ok(false)
    }

    /// Sends without waiting; `Ok(false)` when the ring is full.
    pub fn try_send(&mut self, msg: &[u8]) -> Result<bool, ChannelError> {
        self.usable()?;
        let sent = self.tx.send(msg)?;
        if sent {
            self.after_publish();
        }
        self.tick();
        Ok(sent)
    }

    /// Receives without waiting; `Ok(None)` when nothing is queued.
    pub fn try_recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, ChannelError> {
        self.usable()?;
        let got = self.rx.recv_into(buf)?;
        self.tick();
        Ok(got)
    }

    /// Reserves room for a `len`-byte message in place without waiting;
    /// `Ok(None)` when the ring is full.
    pub fn try_reserve(
        &mut self,
        len: usize,
    ) -> Result<Option<WriteGrant<'_, RegionRing<'a>>>, ChannelError> {
        self.usable()?;
        self.tick();
        Ok(self.tx.reserve(len)?)
    }

    /// Borrows the next message in place without waiting; `Ok(None)` when
    /// nothing is queued.
    pub fn try_peek(&mut self) -> Result<Option<ReadGrant<'_, RegionRing<'a>>>, ChannelError> {
        self.usable()?;
        self.tick();
        Ok(self.rx.peek()?)
    }

    /// Sends, waiting for room up to `timeout` (`None`: no limit).
    pub fn send(&mut self, msg: &[u8], timeout: Option<Duration>) -> Result<(), ChannelError> {
        self.block(timeout, false, |ch| {
            ch.tx.send(msg).map(|sent| sent.then_some(()))
        })?;
        self.after_publish();
        Ok(())
    }

    /// Receives into `buf`, waiting up to `timeout` (`None`: no limit).
    /// Returns the message length.
    pub fn recv(
        &mut self,
        buf: &mut [u8],
        timeout: Option<Duration>,
    ) -> Result<usize, ChannelError> {
        self.block(timeout, true, |ch| ch.rx.recv_into(buf))
    }

    /// Reserves room for a `len`-byte message in place, waiting up to
    /// `timeout`.
    pub fn reserve(
        &mut self,
        len: usize,
        timeout: Option<Duration>,
    ) -> Result<WriteGrant<'_, RegionRing<'a>>, ChannelError> {
        // Wait for room first, then reserve once for real: returning a grant
        // from inside the retry loop would hold the borrow across iterations.
        self.block(timeout, false, |ch| ch.tx.reserve(len).map(|g| g.map(drop)))?;
        self.tx.reserve(len)?.ok_or(ChannelError::Timeout {
            waited: Duration::ZERO,
        })
    }

    /// Waits up to `timeout` for a message and borrows it in place.
    pub fn peek(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<ReadGrant<'_, RegionRing<'a>>, ChannelError> {
        self.block(timeout, true, |ch| ch.rx.peek().map(|g| g.map(drop)))?;
        self.rx.peek()?.ok_or(ChannelError::Timeout {
            waited: Duration::ZERO,
        })
    }

    /// Sends every message of `msgs`, publishing once at the end instead of
    /// once per message (and once before each wait for room, so a full
    /// ring drains, and every [`PUBLISH_EVERY`] bytes, so the reader works
    /// through a long batch while it is written): the reader takes many
    /// messages with one load of `tail`, and the cache line that holds it
    /// moves once for them. Waits for room up to
    /// `timeout` in all. Returns how many messages were sent; when a
    /// message fails (too large, timeout, poisoned ring), the ones before
    /// it are published and the error is returned.
    pub fn send_batch<'m>(
        &mut self,
        msgs: impl IntoIterator<Item = &'m [u8]>,
        timeout: Option<Duration>,
    ) -> Result<usize, ChannelError> {
        self.usable()?;
        self.tick();
        let start = Instant::now();
        let mut sent = 0;
        let mut staged = 0;
        let result = (|| {
            for msg in msgs {
                self.stage_batched(msg, &mut staged, || {
                    timeout.map(|t| t.saturating_sub(start.elapsed()))
                })?;
                sent += 1;
            }
            Ok(sent)
        })();
        self.publish_sent();
        result
    }

    /// Stages one message of a batch (for [`send_batch`](Self::send_batch)
    /// and the `std::io` writer). When the ring is full it publishes what
    /// is staged, since the reader can only make room for what it sees,
    /// then waits for room up to `timeout()`; once `staged` (bytes since
    /// the last publish, kept by the caller) reaches [`PUBLISH_EVERY`], it
    /// publishes.
    fn stage_batched(
        &mut self,
        msg: &[u8],
        staged: &mut usize,
        timeout: impl FnOnce() -> Option<Duration>,
    ) -> Result<(), ChannelError> {
        if stage_send(&mut self.tx, msg)? {
            self.paces[SEND].took(1);
        } else {
            self.publish_sent();
            *staged = 0;
            self.block(timeout(), false, |ch| {
                stage_send(&mut ch.tx, msg).map(|s| s.then_some(()))
            })?;
        }
        *staged += msg.len();
        if *staged >= PUBLISH_EVERY {
            self.publish_sent();
            *staged = 0;
        }
        Ok(())
    }

    /// After a batched reader stages a message: hands the staged space back
    /// once it reaches [`RELEASE_EVERY`] bytes or a quarter of the ring.
    fn release_batched(&mut self) {
        if self.rx.staged_bytes() >= release_chunk(self.rx.capacity()) {
            self.rx.publish();
        }
    }

    /// Publishes staged sends and rings the peer if it waits to be woken.
    fn publish_sent(&mut self) {
        self.tx.publish();
        self.after_publish();
    }

    /// Waits up to `timeout` for a message, then hands every queued message
    /// (at most `max`) to `f` in place, as a volatile view, and releases
    /// them with one store of `head` (one per [`RELEASE_EVERY`] bytes in a
    /// long batch). Returns how many `f` saw. On an
    /// error after the first message, the ones `f` saw are released and the
    /// error is returned.
    pub fn recv_batch(
        &mut self,
        max: usize,
        timeout: Option<Duration>,
        mut f: impl FnMut(VolatileSlice<'_>),
    ) -> Result<usize, ChannelError> {
        if max == 0 {
            return Ok(0);
        }
        self.block(timeout, true, |ch| ch.rx.peek().map(|g| g.map(drop)))?;
        let mut seen = 0;
        let result = loop {
            if seen == max {
                break Ok(seen);
            }
            match self.rx.peek() {
                Ok(Some(msg)) => {
                    f(msg.volatile());
                    msg.stage();
                    self.release_batched();
                    seen += 1;
                }
                Ok(None) => break Ok(seen),
                Err(e) => break Err(e.into()),
            }
        };
        self.rx.publish();
        // The wait (if any) ended on the first; the rest came in the same
        // look, a batch the receive pace learns from.
        self.paces[RECV].took(seen.saturating_sub(1));
        result
    }

    /// Publishes staged sends and releases, and rings the peer if it is
    /// waiting to be woken. Call it after committing zero-copy grants when
    /// the peer may be asleep.
    pub fn publish(&mut self) {
        self.tx.publish();
        self.rx.publish();
        self.after_publish();
    }

    /// Detaches cleanly: publishes what is staged and marks this side
    /// closed. Dropping the channel does the same; a crash does neither, and
    /// the peer notices through the heartbeat instead.
    pub fn close(self) {}

    /// Before a receive's first look: when the backlog seen at the last
    /// look is used up, the look reloads `tail`, and in a stream the writer
    /// gets its learned lead first ([`Waiter::before_look`], shorter when
    /// the last look found a quarter of the ring waiting). The blocking
    /// calls and the async channel both start here. (A sender looks at
    /// `head` only when the free space it saw runs out, a quarter ring or
    /// more apart, and needs no gap.)
    pub(crate) fn before_receive(&mut self) {
        if self.rx.pending_bytes() == 0 {
            let mut waiter = Waiter::with_pace(self.options.wait, self.paces[RECV]);
            waiter.before_look(self.rx.last_look_found(), self.rx.capacity());
            self.paces[RECV] = waiter.pace();
        }
    }

    /// A receive outside the blocking calls (the async channel) took
    /// `messages` messages: they count into the receive pace's batch.
    #[cfg(feature = "tokio")]
    pub(crate) fn received(&mut self, messages: usize) {
        self.paces[RECV].took(messages);
    }

    /// Retries `attempt` under the wait strategy until it yields a value,
    /// fails, the timeout passes, or the peer is found closed or silent.
    /// `on_receive`: the wait is for incoming data, so with a doorbell it
    /// sleeps on it once the strategy stops spinning.
    fn block<T>(
        &mut self,
        timeout: Option<Duration>,
        on_receive: bool,
        mut attempt: impl FnMut(&mut Self) -> Result<Option<T>, RingError>,
    ) -> Result<T, ChannelError> {
        self.usable()?;
        self.check_cancel()?;
        let side = if on_receive { RECV } else { SEND };
        if on_receive {
            self.before_receive();
        }
        let first = attempt(self);
        // A side that only ever calls in here and never waits (a steady
        // sender on a ring with room) must still beat, or its peer sees it
        // fall silent while messages arrive. The beat follows the attempt:
        // its store then queues behind the message's, not in front of it.
        self.tick();
        // Most calls succeed at once: they read no precise clock and build
        // no waiter, and count one more message into the batch.
        if let Some(value) = first? {
            self.paces[side].took(1);
            return Ok(value);
        }
        let start = Instant::now();
        let mut waiter = Waiter::with_pace(self.options.wait, self.paces[side]);
        let mut polls = 0u32;
        let mut checked = start;
        let mut waited = Duration::ZERO;
        // Wakes from the doorbell in a row that found nothing to read.
        let mut idle_wakes = 0u32;
        let mut woke = false;
        // Each turn follows a failed attempt: check, wait, try again.
        loop {
            if std::mem::take(&mut woke) {
                idle_wakes += 1;
                self.spurious_wakes += 1;
            }
            polls = polls.wrapping_add(1);
            // The precise clock costs 26-40 ns here, a few looks' worth: a
            // spinning wait reads it on its first turn and every 8th one (a
            // timeout may end up to 8 looks late), a wait that yields or
            // sleeps on every turn.
            if polls == 1 || polls % 8 == 0 || !waiter.will_spin() {
                let now = Instant::now();
                waited = now.duration_since(start);
                if timeout.is_some_and(|t| waited >= t) {
                    return Err(ChannelError::Timeout { waited });
                }
                // Reading the peer's block costs a few loads: do it every 64
                // polls (cheap while busy-polling) and at least once per
                // heartbeat interval (while sleeping).
                let due = now.duration_since(checked) >= self.options.heartbeat_interval;
                if polls % 64 == 0 || due {
                    checked = now;
                    if self.peer_ends_wait(now)? {
                        // What the peer published before closing is still
                        // delivered: it may have landed after our attempt.
                        if let Some(value) = attempt(self)? {
                            return Ok(value);
                        }
                        return Err(ChannelError::PeerClosed);
                    }
                }
            }
            let remaining = timeout.map(|t| t.saturating_sub(waited));
            let can_sleep_on_bell = self.notifier.as_ref().is_some_and(|n| n.can_wait());
            if on_receive && can_sleep_on_bell && waiter.will_sleep() {
                // Sleep no longer than a heartbeat interval, so this side
                // keeps beating and keeps watching the peer.
                let nap = remaining.map_or(self.options.heartbeat_interval, |r| {
                    r.min(self.options.heartbeat_interval)
                });
                // A peer that rings without sending (a storm, hostile or
                // broken) must not keep this side awake: after a few empty
                // wakes, pause before listening again, doubling to 1 ms.
                if idle_wakes > STORM_GRACE {
                    let pause = STORM_PAUSE * (1 << (idle_wakes - STORM_GRACE - 1).min(6));
                    std::thread::sleep(pause.min(STORM_PAUSE_MAX).min(nap));
                }
                if self.rx.prepare_to_sleep()? {
                    if let Some(notifier) = &self.notifier {
                        notifier.wait(nap);
                        woke = true;
                    }
                    self.rx.finish_sleep();
                }
            } else {
                waiter.wait(remaining);
            }
            if let Some(value) = attempt(self)? {
                waiter.reset();
                self.paces[side] = waiter.pace();
                return Ok(value);
            }
        }
    }
}

/// Copies `msg` into the ring and stages it (no publish); `Ok(false)` when
/// the ring is full.
fn stage_send(tx: &mut Producer<RegionRing<'_>>, msg: &[u8]) -> Result<bool, RingError> {
    match tx.reserve(msg.len())? {
        None => Ok(false),
        Some(mut grant) => {
            grant.write(0, msg)?;
            grant.stage(msg.len())?;
            Ok(true)
        }
    }
}

impl Drop for Channel<'_> {
    fn drop(&mut self) {
        self.publish();
        self.header.set_state(self.side, PeerState::Closed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::InitParams;
    use crate::region::Region;

    /// The lead a wait starting from `pace` learns.
    fn next_lead(pace: Pace) -> u32 {
        let mut w = Waiter::with_pace(WaitStrategy::adaptive(), pace);
        w.wait(None);
        w.lead()
    }

    /// A fresh region in `words` with 16 KiB rings, and the options of a
    /// channel that learns its pace (the adaptive strategy).
    fn paced_region<'a>(words: &'a mut [u64], name: &'a str) -> (Header<'a>, ChannelOptions) {
        let params = InitParams {
            uuid: [5; 16],
            name,
            ring_size: Some(16 * 1024),
        };
        let header = Header::create(Region::from_words(words), &params).unwrap();
        let opts = ChannelOptions {
            wait: WaitStrategy::adaptive(),
            ..ChannelOptions::default()
        };
        (header, opts)
    }

    #[test]
    fn the_release_chunk_is_a_quarter_ring_at_most() {
        assert_eq!(release_chunk(16 << 10), 4 << 10);
        assert_eq!(release_chunk(256 << 10), RELEASE_EVERY);
        assert_eq!(release_chunk(4 << 20), RELEASE_EVERY);
    }

    #[test]
    fn batch_calls_teach_the_pace_every_message_they_move() {
        let mut words = vec![0u64; (1 << 20) / 8];
        let (header, opts) = paced_region(&mut words, "pace");
        let mut host = Channel::attach(header, Side::Host, opts).unwrap();
        let mut guest = Channel::attach(header, Side::Guest, opts).unwrap();
        let msgs = [[7u8; 8]; 4];
        assert_eq!(
            host.send_batch(msgs.iter().map(|m| &m[..]), None).unwrap(),
            4
        );
        // Four messages staged without waiting: a stream, not a single.
        assert_eq!(next_lead(host.paces[SEND]), 1);
        let n = guest.recv_batch(usize::MAX, None, |_| {}).unwrap();
        assert_eq!(n, 4);
        // All four came in one look.
        assert_eq!(next_lead(guest.paces[RECV]), 1);

        // The byte-stream reader: three messages copied by one read.
        let mut guest = Channel::attach(header, Side::Guest, opts).unwrap();
        assert_eq!(
            host.send_batch(msgs[..3].iter().map(|m| &m[..]), None)
                .unwrap(),
            3
        );
        let mut out = [0u8; 24];
        let got = std::io::Read::read(&mut guest.reader(None), &mut out).unwrap();
        assert_eq!(got, 24);
        assert_eq!(next_lead(guest.paces[RECV]), 1);
    }

    #[test]
    fn a_reader_that_never_waits_learns_the_stream_from_its_looks() {
        let mut words = vec![0u64; (1 << 20) / 8];
        let (header, opts) = paced_region(&mut words, "looks");
        let mut host = Channel::attach(header, Side::Host, opts).unwrap();
        let mut guest = Channel::attach(header, Side::Guest, opts).unwrap();
        let mut buf = [0u8; 8];
        // Each round: three messages queued, then received one `recv` at a
        // time. The ring is never empty when the reader looks, so no wait
        // ever starts; the first `recv` of a round looks at `tail` again.
        for round in 1..=3 {
            for _ in 0..3 {
                host.send(&[round; 8], None).unwrap();
            }
            for _ in 0..3 {
                assert_eq!(guest.recv(&mut buf, None).unwrap(), 8);
                assert_eq!(buf, [round; 8]);
            }
            // Each look after the first found three: a stream.
            assert_eq!(guest.paces[RECV].lead(), u32::from(round) - 1);
        }
        // A ping-pong: one message per look. The first look judges the
        // last round's three (lead 3); each single then takes one off.
        for _ in 0..4 {
            host.send(&[9; 8], None).unwrap();
            assert_eq!(guest.recv(&mut buf, None).unwrap(), 8);
        }
        assert_eq!(guest.paces[RECV].lead(), 0);
    }

    #[test]
    #[cfg(feature = "tokio")]
    fn an_async_receiver_learns_the_stream_from_its_looks() {
        let mut words = vec![0u64; (1 << 20) / 8];
        let (header, opts) = paced_region(&mut words, "async-looks");
        let mut host = Channel::attach(header, Side::Host, opts).unwrap();
        let guest = Channel::attach(header, Side::Guest, opts).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut guest = crate::asynch::AsyncChannel::new(guest);
            let mut buf = [0u8; 8];
            // As in the blocking test above: only the first receive of a
            // round looks at `tail`, and it judges the last look's batch.
            for round in 1..=3u8 {
                for _ in 0..3 {
                    host.send(&[round; 8], None).unwrap();
                }
                for _ in 0..3 {
                    assert_eq!(guest.recv(&mut buf).await.unwrap(), 8);
                    assert_eq!(buf, [round; 8]);
                }
                let lead = guest.get_ref().paces[RECV].lead();
                assert_eq!(lead, u32::from(round) - 1);
            }
        });
    }
}
