//! What a side does while the ring is full or empty.
//!
//! A stand-in for the channel layer's configurable wait strategies: either
//! busy-poll, or the default strategy of spinning briefly, then yielding,
//! then sleeping with an exponential backoff.

use std::time::Duration;

/// How to wait for the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitStrategy {
    /// Re-check after every single pause hint: the lowest latency, but a
    /// consumer that has caught up keeps pulling the producer's cache lines
    /// away from it while it writes.
    BusyPoll,
    /// The default: spin [`SPINS`] times with an exponentially growing
    /// number of pause hints between checks (1, 2, 4 … up to
    /// [`MAX_PAUSES`]), then yield [`YIELDS`] times, then sleep from
    /// [`FIRST_SLEEP`] doubling up to [`MAX_SLEEP`].
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
}

/// Checks made spinning before the first yield.
pub const SPINS: u32 = 512;
/// Most pause hints between two checks while spinning.
pub const MAX_PAUSES: u32 = 32;
/// Yields before the first sleep.
pub const YIELDS: u32 = 16;
/// First sleep.
pub const FIRST_SLEEP: Duration = Duration::from_micros(10);
/// Longest sleep.
pub const MAX_SLEEP: Duration = Duration::from_millis(1);

/// The state of one wait: call [`wait`](Self::wait) each time the ring was
/// found full or empty, [`reset`](Self::reset) after progress.
#[derive(Debug, Clone)]
pub struct Waiter {
    strategy: WaitStrategy,
    step: u32,
    sleep: Duration,
}

impl Waiter {
    /// A fresh waiter.
    pub fn new(strategy: WaitStrategy) -> Self {
        Self {
            strategy,
            step: 0,
            sleep: FIRST_SLEEP,
        }
    }

    /// Progress was made: the next wait starts spinning again.
    #[inline]
    pub fn reset(&mut self) {
        self.step = 0;
        self.sleep = FIRST_SLEEP;
    }

    /// Waits a little, more each call.
    #[inline]
    pub fn wait(&mut self) {
        match self.strategy {
            WaitStrategy::BusyPoll => std::hint::spin_loop(),
            WaitStrategy::Backoff => {
                if self.step < SPINS {
                    let pauses = (1u32 << self.step.min(5)).min(MAX_PAUSES);
                    self.step += 1;
                    for _ in 0..pauses {
                        std::hint::spin_loop();
                    }
                } else if self.step < SPINS + YIELDS {
                    self.step += 1;
                    std::thread::yield_now();
                } else {
                    std::thread::sleep(self.sleep);
                    self.sleep = (self.sleep * 2).min(MAX_SLEEP);
                }
            }
        }
    }
}
