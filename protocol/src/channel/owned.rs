//! A channel that owns the memory it runs over: what host and guest hand
//! to applications (`VmChannel` over a region file, `GuestChannel` over a
//! BAR mapping), written once for any [`SharedMemory`].

use std::time::Duration;

use crate::channel::{
    CancelToken, Channel, ChannelError, ChannelOptions, ChannelReader, ChannelWriter,
    HeartbeatHandle, Notifier, PeerEvent, WaitStrategy,
};
use crate::layout::{DoorbellAddress, Header, RegionRing, Side, SideStatus};
use crate::mapping::SharedMemory;
use crate::ring::{ReadGrant, WriteGrant};
use crate::Region;

/// A [`Channel`] together with the memory it points into.
///
/// Everything a borrowed [`Channel`] offers is here directly: copy and
/// zero-copy calls, the `std::io` adapters, doorbells, wait strategies and
/// peer events. Dropping it detaches cleanly (the peer sees `closed`), then
/// releases the memory.
///
/// ```
/// use ivchan_protocol::{Header, InitParams, Mapping, OwnedChannel, Side};
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// // Two channels over one anonymous mapping: host and guest in one process.
/// let memory = Arc::new(Mapping::anonymous(1 << 20)?);
/// let params = InitParams { uuid: [7; 16], name: "demo", ring_size: None };
/// Header::create(memory.region(), &params)?;
/// let mut host = OwnedChannel::attach(memory.clone(), Side::Host, Default::default())?;
/// let mut guest = OwnedChannel::attach(memory, Side::Guest, Default::default())?;
///
/// host.send(b"hello", None)?;
/// let mut buf = [0u8; 16];
/// let n = guest.recv(&mut buf, Some(Duration::from_secs(1)))?;
/// assert_eq!(&buf[..n], b"hello");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct OwnedChannel<M: SharedMemory> {
    /// Points into `memory`'s region. Declared first so that it is dropped
    /// (and detaches, writing its state to the region) before `memory`.
    /// It is never handed out with its `'static` lifetime: every method
    /// below shortens it to a borrow of `self`.
    channel: Channel<'static>,
    memory: M,
}

impl<M: SharedMemory> OwnedChannel<M> {
    /// Builds the channel with `attach`, which gets `memory`'s region (and
    /// nothing else of `memory`, which moves into the result).
    pub fn new<E>(
        memory: M,
        attach: impl for<'r> FnOnce(Region<'r>) -> Result<Channel<'r>, E>,
    ) -> Result<Self, E> {
        // SAFETY: the region stays valid, at the same address, for as long
        // as `memory` lives, wherever it moves (`SharedMemory`'s contract).
        // `memory` moves into the result beside the channel, which is
        // dropped first; `attach` is generic over the region's lifetime, so
        // it cannot keep anything of it elsewhere, and no method gives the
        // `'static` lifetime out.
        let region: Region<'static> = unsafe { memory.region().with_lifetime() };
        let channel = attach(region)?;
        Ok(Self { channel, memory })
    }

    /// Attaches `side` to the header already written in `memory`.
    pub fn attach(memory: M, side: Side, options: ChannelOptions) -> Result<Self, ChannelError> {
        Self::new(memory, |region| {
            Channel::attach(Header::open(region)?, side, options)
        })
    }

    /// The memory.
    pub fn memory(&self) -> &M {
        &self.memory
    }

    /// Detaches cleanly (the peer sees `closed`) and hands the memory back.
    pub fn into_memory(self) -> M {
        let Self { channel, memory } = self;
        drop(channel);
        memory
    }

    /// Runs `f` on the borrowed channel (for code written against
    /// [`Channel`]).
    pub fn with<R>(&mut self, f: impl FnOnce(&mut Channel<'_>) -> R) -> R {
        f(&mut self.channel)
    }

    /// This side.
    pub fn side(&self) -> Side {
        self.channel.side()
    }

    /// This side's session epoch.
    pub fn epoch(&self) -> u64 {
        self.channel.epoch()
    }

    /// The largest message either direction carries.
    pub fn max_message(&self) -> usize {
        self.channel.max_message()
    }

    /// The options in force.
    pub fn options(&self) -> &ChannelOptions {
        self.channel.options()
    }

    /// A handle that advances this side's heartbeat from another thread.
    pub fn heartbeat_handle(&self) -> HeartbeatHandle<'_> {
        self.channel.heartbeat_handle()
    }

    /// Attaches (or detaches) the doorbell this channel rings and sleeps on.
    pub fn set_notifier(&mut self, notifier: Option<Box<dyn Notifier>>) {
        self.channel.set_notifier(notifier);
    }

    /// Whether a doorbell is attached.
    pub fn has_notifier(&self) -> bool {
        self.channel.has_notifier()
    }

    /// See [`Channel::set_cancel`].
    pub fn set_cancel(&mut self, token: Option<CancelToken>) {
        self.channel.set_cancel(token);
    }

    /// See [`Channel::cancel_token`].
    pub fn cancel_token(&self) -> Option<&CancelToken> {
        self.channel.cancel_token()
    }

    /// See [`Channel::spurious_wakes`].
    pub fn spurious_wakes(&self) -> u64 {
        self.channel.spurious_wakes()
    }

    /// Publishes how the peer can ring this side, or that it cannot.
    pub fn publish_doorbell(&self, address: Option<DoorbellAddress>) {
        self.channel.publish_doorbell(address);
    }

    /// Changes how blocking calls wait from now on.
    pub fn set_wait_strategy(&mut self, wait: WaitStrategy) {
        self.channel.set_wait_strategy(wait);
    }

    /// See [`Channel::prepare_to_sleep`].
    pub fn prepare_to_sleep(&mut self) -> Result<bool, ChannelError> {
        self.channel.prepare_to_sleep()
    }

    /// See [`Channel::finish_sleep`].
    pub fn finish_sleep(&mut self) {
        self.channel.finish_sleep();
    }

    /// The peer's side block, as last read.
    pub fn peer_status(&self) -> Option<SideStatus> {
        self.channel.peer_status()
    }

    /// Advances this side's heartbeat (every call does).
    pub fn tick(&mut self) {
        self.channel.tick();
    }

    /// Reports the next change in the peer's life.
    pub fn poll_peer(&mut self) -> Result<Option<PeerEvent>, ChannelError> {
        self.channel.poll_peer()
    }

    /// See [`Channel::wait_for_peer`].
    pub fn wait_for_peer(&mut self, timeout: Option<Duration>) -> Result<u64, ChannelError> {
        self.channel.wait_for_peer(timeout)
    }

    /// Sends without waiting; `Ok(false)` when the ring is full.
    pub fn try_send(&mut self, msg: &[u8]) -> Result<bool, ChannelError> {
        self.channel.try_send(msg)
    }

    /// Receives without waiting; `Ok(None)` when nothing is queued.
    pub fn try_recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, ChannelError> {
        self.channel.try_recv(buf)
    }

    /// Reserves room in place without waiting; `Ok(None)` when full.
    pub fn try_reserve(
        &mut self,
        len: usize,
    ) -> Result<Option<WriteGrant<'_, RegionRing<'static>>>, ChannelError> {
        self.channel.try_reserve(len)
    }

    /// Borrows the next message in place without waiting.
    pub fn try_peek(&mut self) -> Result<Option<ReadGrant<'_, RegionRing<'static>>>, ChannelError> {
        self.channel.try_peek()
    }

    /// Sends, waiting for room up to `timeout` (`None`: no limit).
    pub fn send(&mut self, msg: &[u8], timeout: Option<Duration>) -> Result<(), ChannelError> {
        self.channel.send(msg, timeout)
    }

    /// Receives into `buf`, waiting up to `timeout`; returns the length.
    pub fn recv(
        &mut self,
        buf: &mut [u8],
        timeout: Option<Duration>,
    ) -> Result<usize, ChannelError> {
        self.channel.recv(buf, timeout)
    }

    /// Reserves room for a `len`-byte message in place, waiting up to
    /// `timeout`.
    pub fn reserve(
        &mut self,
        len: usize,
        timeout: Option<Duration>,
    ) -> Result<WriteGrant<'_, RegionRing<'static>>, ChannelError> {
        self.channel.reserve(len, timeout)
    }

    /// Waits up to `timeout` for a message and borrows it in place.
    pub fn peek(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<ReadGrant<'_, RegionRing<'static>>, ChannelError> {
        self.channel.peek(timeout)
    }

    /// Sends every message with one publish (see [`Channel::send_batch`]).
    pub fn send_batch<'m>(
        &mut self,
        msgs: impl IntoIterator<Item = &'m [u8]>,
        timeout: Option<Duration>,
    ) -> Result<usize, ChannelError> {
        self.channel.send_batch(msgs, timeout)
    }

    /// Takes every queued message with one release (see
    /// [`Channel::recv_batch`]).
    pub fn recv_batch(
        &mut self,
        max: usize,
        timeout: Option<Duration>,
        f: impl FnMut(crate::VolatileSlice<'_>),
    ) -> Result<usize, ChannelError> {
        self.channel.recv_batch(max, timeout, f)
    }

    /// Publishes staged sends and releases, ringing the peer if it waits.
    pub fn publish(&mut self) {
        self.channel.publish();
    }

    /// A byte-stream writer (`std::io::Write`).
    pub fn writer(&mut self, timeout: Option<Duration>) -> ChannelWriter<'_, 'static> {
        self.channel.writer(timeout)
    }

    /// A byte-stream reader (`std::io::Read`).
    pub fn reader(&mut self, timeout: Option<Duration>) -> ChannelReader<'_, 'static> {
        self.channel.reader(timeout)
    }
}
