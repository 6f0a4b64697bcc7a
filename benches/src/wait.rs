//! What a side does while the ring is full or empty: the channel layer's own
//! wait strategies (`ivchan_protocol::WaitStrategy`), so the benchmarks
//! measure what users get. Peers (rtrb, ringbuf, crossbeam, iceoryx2) wait
//! the same way, for a fair comparison.

use ivchan_protocol::{Consumer, RingMemory};

use crate::process::Transport;

/// How to wait for the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitStrategy {
    /// `WaitStrategy::busy_poll()`: re-check after every single pause hint;
    /// the lowest latency, but a consumer that has caught up keeps pulling
    /// the producer's cache lines away from it while it writes.
    BusyPoll,
    /// `WaitStrategy::adaptive()`, the default: spin with 1, 2, 4 … 32
    /// pause hints between checks (after eight close checks while no
    /// stream is learned), then yield, then sleep with backoff.
    Backoff,
}

impl WaitStrategy {
    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::BusyPoll => "busy-poll",
            Self::Backoff => "backoff",
        }
    }

    /// The channel layer's strategy of that name.
    pub fn channel(self) -> ivchan_protocol::WaitStrategy {
        match self {
            Self::BusyPoll => ivchan_protocol::WaitStrategy::busy_poll(),
            Self::Backoff => ivchan_protocol::WaitStrategy::adaptive(),
        }
    }
}

impl WaitStrategy {
    /// The strategies worth measuring for `transport`'s latency: both for
    /// the transports that poll (ivchan, iceoryx2); none for the
    /// socket-like ones, which block in the kernel whatever we ask.
    pub fn for_transport(transport: Transport) -> &'static [Self] {
        match transport {
            Transport::IvchanCopy | Transport::IvchanZeroCopy | Transport::IvchanChannel => {
                &[Self::BusyPoll, Self::Backoff]
            }
            #[cfg(feature = "iceoryx2")]
            Transport::Iceoryx2 => &[Self::BusyPoll, Self::Backoff],
            _ => &[],
        }
    }
}

/// The state of one wait: call [`wait`](Self::wait) each time the ring was
/// found full or empty, [`reset`](Self::reset) after progress.
#[derive(Debug)]
pub struct Waiter(ivchan_protocol::Waiter);

impl Waiter {
    /// A fresh waiter.
    pub fn new(strategy: WaitStrategy) -> Self {
        Self(ivchan_protocol::Waiter::new(strategy.channel()))
    }

    /// Progress was made: the next wait starts spinning again.
    #[inline]
    pub fn reset(&mut self) {
        self.0.reset();
    }

    /// Progress of `messages` at once (a batch taken with one look).
    #[inline]
    pub fn progress(&mut self, messages: usize) {
        self.0.progress(messages);
    }

    /// The cached backlog is used up and the next look reloads the
    /// peer's position: in a stream, leave the peer a gap first, shorter
    /// when the last look found a quarter of the ring or more.
    #[inline]
    pub fn before_look<M: RingMemory>(&mut self, rx: &Consumer<M>) {
        self.0.before_look(rx.last_look_found(), rx.capacity());
    }

    /// Waits a little, more each call.
    #[inline]
    pub fn wait(&mut self) {
        self.0.wait(None);
    }
}
