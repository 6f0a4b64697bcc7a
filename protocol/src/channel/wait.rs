//! How a blocked call waits: [`WaitStrategy`] says how, a [`Waiter`] is one
//! wait in progress, and [`poll_until`] is the one loop every "retry until
//! ready or timed out" in ivchan goes through.

use std::time::{Duration, Instant};

/// How a blocked call waits: spin, then yield, then sleep with exponential
/// backoff up to a ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitStrategy {
    /// Busy-poll iterations before yielding.
    pub spins: u32,
    /// Space the looks while spinning with 1, 2, 4 … 32 pause hints, which
    /// keeps a streaming producer's cache lines where they are (throughput);
    /// off, each look follows one pause (latency).
    pub spin_backoff: bool,
    /// `yield_now` iterations before sleeping.
    pub yields: u32,
    /// First sleep.
    pub min_sleep: Duration,
    /// Longest sleep; sleeps double up to this.
    pub max_sleep: Duration,
}

impl WaitStrategy {
    /// Never sleeps or yields: lowest latency, one core per waiting side.
    pub const fn busy_poll() -> Self {
        Self {
            spins: u32::MAX,
            spin_backoff: false,
            yields: 0,
            min_sleep: Duration::ZERO,
            max_sleep: Duration::ZERO,
        }
    }

    /// Spin briefly (with spaced looks), yield, then sleep from 10 µs up to
    /// 1 ms, or on the doorbell when there is one (the default).
    pub const fn adaptive() -> Self {
        Self {
            spins: 200,
            spin_backoff: true,
            yields: 50,
            min_sleep: Duration::from_micros(10),
            max_sleep: Duration::from_millis(1),
        }
    }

    /// Sleep `period` between polls from the start: least CPU.
    pub const fn sleep_only(period: Duration) -> Self {
        Self {
            spins: 0,
            spin_backoff: false,
            yields: 0,
            min_sleep: period,
            max_sleep: period,
        }
    }
}

impl Default for WaitStrategy {
    fn default() -> Self {
        Self::adaptive()
    }
}

/// One wait in progress under a [`WaitStrategy`].
///
/// A waiter that lives across messages (one per side of a stream, calling
/// [`reset`](Self::reset) after every message) also learns, with
/// `spin_backoff`: when each wait yields only a message or two (the peer
/// produces about as fast as this side consumes, so this side takes one
/// message per look, and each look pulls the peer's cache lines away from
/// it), later waits start with a longer first gap, so the peer writes a
/// batch undisturbed and this side takes it from its cached position. When
/// a longer gap still yields one message (a ping-pong, not a stream), the
/// gap shrinks again; a wait that runs into yielding (the peer went quiet)
/// starts the next one from the shortest gap.
#[derive(Debug)]
pub struct Waiter {
    strategy: WaitStrategy,
    step: u64,
    sleep: Duration,
    /// Extra doublings of the first spin gap, learned by `reset`.
    lead: u32,
    /// Progress made since the last wait ended (messages in its batch).
    batch: u32,
}

/// The largest learned lead: the first gap is then the longest one, 32
/// pause hints.
const MAX_LEAD: u32 = 5;

/// A wait that yields at least this many messages is batching well.
const GOOD_BATCH: u32 = 8;

impl Waiter {
    /// Starts waiting.
    pub fn new(strategy: WaitStrategy) -> Self {
        Self::with_lead(strategy, 0)
    }

    /// Starts waiting with a lead learned by an earlier waiter
    /// ([`lead`](Self::lead)), for callers that make a waiter per call.
    pub fn with_lead(strategy: WaitStrategy, lead: u32) -> Self {
        Self {
            strategy,
            step: 0,
            sleep: strategy.min_sleep,
            lead: lead.min(MAX_LEAD),
            batch: 0,
        }
    }

    /// The learned lead (0 to 5): how many doublings the first spin gap
    /// starts with.
    pub fn lead(&self) -> u32 {
        self.lead
    }

    /// Waits once, a little longer than last time; never longer than
    /// `limit` when a sleep is due.
    pub fn wait(&mut self, limit: Option<Duration>) {
        let s = &self.strategy;
        self.step += 1;
        if self.step <= u64::from(s.spins) {
            // 1, 2, 4 … 32 pause hints between looks: re-reading the other
            // side's position at once pulls its cache line away from the
            // writer on every miss (measured: 6 M msg/s with single pauses,
            // 47-58 M msg/s spaced out, 64 B across two cores).
            let pauses = if s.spin_backoff {
                1u32 << (self.step - 1 + u64::from(self.lead)).min(5)
            } else {
                1
            };
            for _ in 0..pauses {
                std::hint::spin_loop();
            }
        } else if self.step <= u64::from(s.spins) + u64::from(s.yields) {
            std::thread::yield_now();
        } else {
            let mut nap = self.sleep;
            if let Some(limit) = limit {
                nap = nap.min(limit);
            }
            std::thread::sleep(nap);
            self.sleep = (self.sleep * 2).min(s.max_sleep).max(s.min_sleep);
        }
    }

    /// Whether the next [`wait`](Self::wait) would sleep (rather than spin
    /// or yield): the moment to sleep on a doorbell instead.
    pub fn will_sleep(&self) -> bool {
        let s = &self.strategy;
        self.step + 1 > u64::from(s.spins) + u64::from(s.yields)
    }

    /// Progress was made: the next wait spins again (and the lead is
    /// learned from how long this wait took; see the type's docs).
    pub fn reset(&mut self) {
        if self.step == 0 {
            // Progress without waiting: one more message in this batch.
            self.batch = self.batch.saturating_add(1);
            return;
        }
        if self.strategy.spin_backoff {
            let spins = u64::from(self.strategy.spins);
            self.lead = if self.step > spins {
                // The peer went quiet: look quickly again.
                0
            } else if self.batch >= GOOD_BATCH {
                self.lead
            } else if self.batch >= 2 || (self.lead == 0 && self.step <= 2) {
                // Small batches, or data at the first quick looks: in step
                // with the peer; look later next time.
                (self.lead + 1).min(MAX_LEAD)
            } else {
                // A late look still found a single message: not a stream.
                self.lead.saturating_sub(1)
            };
        }
        self.batch = 1;
        self.step = 0;
        self.sleep = self.strategy.min_sleep;
    }
}

impl WaitStrategy {
    /// Sleeps only, from `min` doubling up to `max`: for waits measured in
    /// milliseconds (a device to appear, a header to be written).
    pub const fn backoff(min: Duration, max: Duration) -> Self {
        Self {
            spins: 0,
            spin_backoff: false,
            yields: 0,
            min_sleep: min,
            max_sleep: max,
        }
    }
}

/// Calls `attempt` until it yields a value or fails, waiting between calls
/// under `strategy`, for at most `timeout` (`None`: no limit). `Ok(None)`
/// when the time ran out; `attempt` is always called at least once, and
/// once more at the deadline.
pub fn poll_until<T, E>(
    strategy: WaitStrategy,
    timeout: Option<Duration>,
    mut attempt: impl FnMut() -> Result<Option<T>, E>,
) -> Result<Option<T>, E> {
    let start = Instant::now();
    let mut waiter = Waiter::new(strategy);
    loop {
        if let Some(value) = attempt()? {
            return Ok(Some(value));
        }
        let waited = start.elapsed();
        match timeout {
            Some(t) if waited >= t => return Ok(None),
            Some(t) => waiter.wait(Some(t - waited)),
            None => waiter.wait(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lead_follows_the_batches_a_wait_yields() {
        let mut w = Waiter::new(WaitStrategy::adaptive());
        // One quick look found a message, then another came at once: in
        // step with a streaming peer.
        w.wait(None);
        w.reset();
        assert_eq!(w.lead(), 1);
        w.reset();
        w.wait(None);
        w.reset();
        assert_eq!(w.lead(), 2);
        // A good batch keeps the lead.
        for _ in 0..GOOD_BATCH {
            w.reset();
        }
        w.wait(None);
        w.reset();
        assert_eq!(w.lead(), 2);
        // A late look that found a single message: a ping-pong; shrink.
        w.wait(None);
        w.reset();
        assert_eq!(w.lead(), 1);
        // A wait that ran into yielding: the peer is idle.
        for _ in 0..=WaitStrategy::adaptive().spins {
            w.wait(None);
        }
        w.reset();
        assert_eq!(w.lead(), 0);
        // Busy-polling never learns a lead (latency first).
        let mut b = Waiter::new(WaitStrategy::busy_poll());
        b.wait(None);
        b.reset();
        b.reset();
        b.wait(None);
        b.reset();
        assert_eq!(b.lead(), 0);
    }

    #[test]
    fn poll_until_returns_the_first_value() {
        let mut calls = 0;
        let r: Result<_, ()> = poll_until(WaitStrategy::busy_poll(), None, || {
            calls += 1;
            Ok((calls == 3).then_some(calls))
        });
        assert_eq!(r, Ok(Some(3)));
    }

    #[test]
    fn poll_until_stops_at_the_deadline_and_on_errors() {
        let strategy = WaitStrategy::backoff(Duration::from_millis(1), Duration::from_millis(2));
        let mut calls = 0u32;
        let r: Result<Option<()>, ()> =
            poll_until(strategy, Some(Duration::from_millis(20)), || {
                calls += 1;
                Ok(None)
            });
        assert_eq!(r, Ok(None));
        assert!(
            calls >= 2,
            "called at the start and at the deadline: {calls}"
        );
        let r: Result<Option<()>, &str> = poll_until(strategy, None, || Err("broken"));
        assert_eq!(r, Err("broken"));
    }
}
