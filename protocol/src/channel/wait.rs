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
    /// a wait that has learned no stream takes a few close looks first
    /// (a ping-pong's answer), and a reader that has learned one leaves
    /// the writer up to 128 pauses between looks ([`Waiter::before_look`]).
    /// Off, each look follows one pause (latency).
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

/// What a [`Waiter`] learned about the peer's pace, carried from one
/// blocking call to the next ([`Waiter::pace`], [`Waiter::with_pace`]) so
/// that a stream keeps it across calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pace {
    /// Doublings of the look gap and the first spin gap (0 to [`MAX_LEAD`]).
    lead: u32,
    /// Messages taken since the last wait ended, that one included.
    batch: u32,
    /// Waits in a row whose look found a single message, counted from 1
    /// to [`PROBE_EVERY`] and round again.
    singles: u32,
}

impl Pace {
    /// The learned lead (0 to 7); see [`Waiter::lead`].
    pub fn lead(&self) -> u32 {
        self.lead
    }

    /// `messages` more taken without waiting (a batch read or written
    /// past the call that waited).
    pub(crate) fn took(&mut self, messages: usize) {
        let n = u32::try_from(messages).unwrap_or(u32::MAX);
        self.batch = self.batch.saturating_add(n);
    }
}

/// One wait in progress under a [`WaitStrategy`].
///
/// A waiter that lives across messages (or hands its [`Pace`] from call
/// to call), calling [`reset`](Self::reset) after every message, also
/// learns how long to leave the peer alone, with `spin_backoff`. It judges
/// the batch taken since the last look each time a new one starts: a
/// wait, or a look after the backlog seen before is used up
/// ([`before_look`](Self::before_look)). Every look at the peer's position
/// pulls its cache line away from it, and a peer that is writing stalls on
/// it, so:
///
/// - a look that found a batch (the messages after it came without
///   looking again) means a streaming peer: the first gap doubles, and the
///   peer writes the next batch undisturbed;
/// - a look that found a single message means a ping-pong (nothing more
///   comes until this side answers) or a peer held back by our looks: the
///   first gap halves, for latency. To tell the two apart, after every
///   256th single in a row one look starts with the longest spin gap (32
///   pauses): a stream then yields a batch and keeps the long gap, a
///   ping-pong pays one slow answer and falls straight back;
/// - a look that found a quarter of the ring or more halves the gap: the
///   writer got too far ahead during it;
/// - a wait that runs into yielding (the peer went quiet) starts the next
///   one from the shortest gap.
#[derive(Debug)]
pub struct Waiter {
    strategy: WaitStrategy,
    step: u64,
    sleep: Duration,
    pace: Pace,
}

/// The largest learned lead: a stream's reader leaves the writer 128
/// pause hints (about 4 µs here) before each look at its position. A
/// reader closer behind reads lines the writer is still filling: 8-byte
/// messages, two threads, a light reader (`peek`, one byte in place)
/// that looked every 32 pauses ran at 70-75 M msg/s, finding about 100
/// messages (1.6 KiB) per look; every 128 pauses, 121-123 M, about 1,400
/// per look, level with a copying reader (docs/bench/notes.md).
const MAX_LEAD: u32 = 7;

/// The longest gap between a wait's spin looks (32 pause hints), and the
/// lead a probe jumps to: a ping-pong partner's probe costs no more than
/// that, and a stream climbs on from it to [`MAX_LEAD`].
const MAX_SPIN_DOUBLINGS: u32 = 5;

/// Spin looks a wait with no learned lead takes one pause apart before it
/// starts doubling the gap ([`Waiter::gap`]).
const FLAT_LOOKS: u64 = 8;

/// Singles in a row after which one wait probes with the longest spin gap.
/// A ping-pong pays for each probe with one answer seen late (up to 32
/// pauses, about 1 µs here): every 64th put the default's 64 B round-trip
/// p99 at 850-920 ns; every 256th, with a failed probe falling straight
/// back, at 360-470 ns, level with busy-polling (docs/bench/notes.md). A
/// stream that our looks held to singles still learns within microseconds.
const PROBE_EVERY: u32 = 256;

/// A look that found `capacity / CROWDED_SHARE` bytes or more waiting
/// lowers the lead ([`Waiter::before_look`]).
const CROWDED_SHARE: usize = 4;

impl Waiter {
    /// Starts waiting.
    pub fn new(strategy: WaitStrategy) -> Self {
        Self::with_pace(strategy, Pace::default())
    }

    /// Starts waiting with the pace learned by an earlier waiter
    /// ([`pace`](Self::pace)), for callers that make a waiter per call.
    pub fn with_pace(strategy: WaitStrategy, pace: Pace) -> Self {
        Self {
            strategy,
            step: 0,
            sleep: strategy.min_sleep,
            pace: Pace {
                lead: pace.lead.min(MAX_LEAD),
                ..pace
            },
        }
    }

    /// What this waiter has learned, to hand to the next one.
    pub fn pace(&self) -> Pace {
        self.pace
    }

    /// The learned lead (0 to 7): a stream's look gap is `2^lead` pause
    /// hints, and a wait's first spin gap starts `lead` doublings in (at
    /// most 32 pauses).
    pub fn lead(&self) -> u32 {
        self.pace.lead
    }

    /// Waits once, a little longer than last time; never longer than
    /// `limit` when a sleep is due.
    pub fn wait(&mut self, limit: Option<Duration>) {
        if self.step == 0 {
            self.learn(false);
        }
        let s = &self.strategy;
        self.step += 1;
        if self.step <= u64::from(s.spins) {
            for _ in 0..self.gap() {
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

    /// Pause hints before the current spin look. With `spin_backoff`, 1, 2,
    /// 4 … 32, starting `lead` doublings in: re-reading the other side's
    /// position at once pulls its cache line away from the writer on every
    /// miss (measured: 6 M msg/s with single pauses, 47-58 M msg/s spaced
    /// out, 64 B across two cores). With no lead learned (a ping-pong,
    /// whose answer comes within a few hundred ns), the first
    /// [`FLAT_LOOKS`] looks follow one pause each before the doubling
    /// starts: spaced out from the first look, a ping-pong saw its answer
    /// up to a gap late (64 B round trip p50 410-480 ns against 260-280
    /// busy-polling; docs/bench/notes.md).
    fn gap(&self) -> u32 {
        let doublings = match (self.strategy.spin_backoff, self.pace.lead) {
            (false, _) => 0,
            (true, 0) => self.step.saturating_sub(FLAT_LOOKS),
            (true, lead) => self.step - 1 + u64::from(lead),
        };
        1 << doublings.min(u64::from(MAX_SPIN_DOUBLINGS))
    }

    /// Pause hints [`before_look`](Self::before_look) leaves the peer
    /// before a look: `2^lead` once a stream is learned, else none.
    fn look_gap(&self) -> u32 {
        if self.pace.lead == 0 {
            0
        } else {
            1 << self.pace.lead
        }
    }

    /// Whether the next [`wait`](Self::wait) would spin (rather than
    /// yield or sleep).
    pub fn will_spin(&self) -> bool {
        self.step < u64::from(self.strategy.spins)
    }

    /// Whether the next [`wait`](Self::wait) would sleep (rather than spin
    /// or yield): the moment to sleep on a doorbell instead.
    pub fn will_sleep(&self) -> bool {
        let s = &self.strategy;
        self.step + 1 > u64::from(s.spins) + u64::from(s.yields)
    }

    /// Progress was made (one message): the next wait spins again.
    pub fn reset(&mut self) {
        let p = &mut self.pace;
        if self.step == 0 {
            // Progress without waiting: one more message in this batch.
            p.batch = p.batch.saturating_add(1);
            return;
        }
        if self.step > u64::from(self.strategy.spins) {
            // The peer went quiet: look quickly again.
            p.lead = 0;
            p.singles = 0;
        }
        p.batch = 1;
        self.step = 0;
        self.sleep = self.strategy.min_sleep;
    }

    /// Call when this side has used up what it knew the peer had done
    /// (the backlog it cached) and is about to look at the peer's
    /// position again, whether or not a wait follows. The batch since the
    /// last look is judged as at the start of a wait; then, in a stream (a
    /// learned lead, `spin_backoff` only), the peer is left alone for the
    /// look gap, 2 to 128 pause hints, before the look. A reader that
    /// keeps up with a stream otherwise looks every few messages, finds a
    /// few more, and each look pulls the line the writer stores its
    /// position in away from it (256 B messages, cross-process: 16-22 M
    /// msg/s at 0.08-0.18 looks per message, 43-57 M with a 32-pause gap at
    /// 0.01-0.02); and with tiny messages a reader only a few lines behind
    /// reads the lines the writer is filling (8 B messages: 70-75 M msg/s
    /// with a 32-pause gap, 121-123 M with 128;
    /// docs/bench/notes.md). A ping-pong learns no lead and pays nothing
    /// (but for the probe after every 256th single), and neither does a
    /// look with nothing taken since the last one (a retry).
    ///
    /// `found` is what the last look found, in bytes
    /// ([`Consumer::last_look_found`](crate::Consumer::last_look_found)),
    /// and `capacity` the ring's: a look that found a quarter of the ring
    /// or more lowers the lead instead, so the gap settles where the
    /// writer stays under a quarter ring (without this, a 4 KiB ring of 1
    /// KiB messages moved 0.7-0.8 M msg/s at a 128-pause gap, one ring's
    /// worth per gap).
    #[inline]
    pub fn before_look(&mut self, found: usize, capacity: usize) {
        if self.step != 0 || !self.strategy.spin_backoff || self.pace.batch == 0 {
            return;
        }
        self.learn(found >= capacity / CROWDED_SHARE);
        for _ in 0..self.look_gap() {
            std::hint::spin_loop();
        }
    }

    /// Progress of `messages` at once (a batch taken with one look): as
    /// many [`reset`](Self::reset)s. Zero does nothing.
    pub fn progress(&mut self, messages: usize) {
        if messages > 0 {
            self.reset();
            self.pace.took(messages - 1);
        }
    }

    /// At the start of a wait or look: the batch since the last one is complete;
    /// sets the first gap from it (see the type's docs). `crowded`: the
    /// look found a quarter of the ring or more, so the gap was too long.
    fn learn(&mut self, crowded: bool) {
        let p = &mut self.pace;
        let batch = std::mem::take(&mut p.batch);
        if !self.strategy.spin_backoff || batch == 0 {
            return;
        }
        if crowded {
            p.lead = p.lead.saturating_sub(1);
            p.singles = 0;
        } else if batch >= 2 {
            p.lead = (p.lead + 1).min(MAX_LEAD);
            p.singles = 0;
        } else {
            // Counted 1 to PROBE_EVERY and round again, so that a
            // ping-pong of any length cannot overflow it.
            let after_probe = p.singles == PROBE_EVERY;
            p.singles = p.singles % PROBE_EVERY + 1;
            p.lead = if p.singles == PROBE_EVERY {
                // Probe: the next look starts far out.
                MAX_SPIN_DOUBLINGS
            } else if after_probe {
                // The probe found a single too: a ping-pong. Straight back
                // to the shortest gap; halving down from the probe's would
                // answer the next four round trips late as well.
                0
            } else {
                p.lead.saturating_sub(1)
            };
        }
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

    /// A ring size for looks that found nothing much.
    const RING: usize = 4 << 20;

    /// One wait (its first gap learned from the batch before it) that ends
    /// on its first look, then `more` messages taken without waiting.
    fn batch_of(w: &mut Waiter, more: u32) {
        w.wait(None);
        w.reset();
        for _ in 0..more {
            w.reset();
        }
    }

    #[test]
    fn the_lead_follows_the_batches_the_waits_yield() {
        let mut w = Waiter::new(WaitStrategy::adaptive());
        // The first wait has no batch before it to judge.
        batch_of(&mut w, 3);
        assert_eq!(w.lead(), 0);
        // Each wait after a batch of four: a stream; the gap grows to the
        // longest and stays there.
        for lead in 1..=MAX_LEAD + 2 {
            batch_of(&mut w, 3);
            assert_eq!(w.lead(), lead.min(MAX_LEAD));
        }
        // Single messages (a ping-pong): the gap shrinks back to the
        // shortest.
        batch_of(&mut w, 0);
        assert_eq!(w.lead(), MAX_LEAD);
        for lead in (0..MAX_LEAD).rev() {
            batch_of(&mut w, 0);
            assert_eq!(w.lead(), lead);
        }
        batch_of(&mut w, 0);
        assert_eq!(w.lead(), 0);
        // A wait that ran into yielding: the peer is idle.
        batch_of(&mut w, 3);
        batch_of(&mut w, 3);
        assert_eq!(w.lead(), 1);
        for _ in 0..=WaitStrategy::adaptive().spins {
            w.wait(None);
        }
        assert_eq!(w.lead(), 2);
        w.reset();
        assert_eq!(w.lead(), 0);
        // Busy-polling never learns a lead (latency first).
        let mut b = Waiter::new(WaitStrategy::busy_poll());
        for _ in 0..4 {
            batch_of(&mut b, 3);
        }
        assert_eq!(b.lead(), 0);
    }

    #[test]
    fn singles_in_a_row_probe_with_the_longest_spin_gap_now_and_then() {
        // A peer held back by our quick looks sends one message per look,
        // like a ping-pong partner: only a longer gap tells them apart.
        let mut w = Waiter::new(WaitStrategy::adaptive());
        batch_of(&mut w, 0);
        for n in 1..PROBE_EVERY {
            batch_of(&mut w, 0);
            assert_eq!(w.lead(), 0, "single {n}");
        }
        // The probe: the longest spin gap (not the longest lead, so that a
        // ping-pong's probe costs no more), and it yields a batch of eight.
        batch_of(&mut w, 7);
        assert_eq!(w.lead(), MAX_SPIN_DOUBLINGS);
        // A stream: the gap grows on from there.
        batch_of(&mut w, 0);
        assert_eq!(w.lead(), MAX_SPIN_DOUBLINGS + 1);
        // Singles again: back down, and the count starts over.
        batch_of(&mut w, 0);
        assert_eq!(w.lead(), MAX_SPIN_DOUBLINGS);
        for _ in 0..PROBE_EVERY - 2 {
            batch_of(&mut w, 0);
        }
        assert_eq!(w.lead(), 0);
        batch_of(&mut w, 0);
        assert_eq!(w.lead(), MAX_SPIN_DOUBLINGS);
        // That probe found a single too (a ping-pong): it costs one late
        // answer, and the next look is at once again.
        batch_of(&mut w, 0);
        assert_eq!(
            w.lead(),
            0,
            "straight back after a probe that found a single"
        );
        for n in 2..PROBE_EVERY {
            batch_of(&mut w, 0);
            assert_eq!(w.lead(), 0, "single {n} after the probe");
        }
        batch_of(&mut w, 0);
        assert_eq!(w.lead(), MAX_SPIN_DOUBLINGS, "the next probe");
    }

    #[test]
    fn a_ping_pong_of_any_length_keeps_its_single_count_bounded() {
        // A ping-pong's waits all find singles, for as long as it runs: the
        // count must not grow with it (a `u32` would overflow after 2^32
        // round trips, about 18 minutes at 250 ns each, and panic where
        // overflow checks are on). Probes stay PROBE_EVERY apart throughout.
        let mut w = Waiter::new(WaitStrategy::adaptive());
        batch_of(&mut w, 0);
        let mut probes = Vec::new();
        for n in 1..=4 * PROBE_EVERY {
            batch_of(&mut w, 0);
            assert!(w.pace.singles <= PROBE_EVERY, "single {n}: {:?}", w.pace);
            if w.lead() == MAX_SPIN_DOUBLINGS {
                probes.push(n);
            }
        }
        assert_eq!(
            probes,
            [1, 2, 3, 4].map(|k| k * PROBE_EVERY),
            "one probe every PROBE_EVERY singles"
        );
    }

    #[test]
    fn a_stream_learns_a_look_gap_longer_than_any_spin_gap() {
        let mut w = Waiter::new(WaitStrategy::adaptive());
        assert_eq!(w.look_gap(), 0, "nothing learned: look at once");
        // Looks that each find a batch, as a reader behind a fast writer.
        assert_eq!(
            stream_looks(&mut w, 9, 1024, RING),
            [0, 2, 4, 8, 16, 32, 64, 128, 128]
        );
        // The stream stops: the wait's spin gaps stay at most 32 pauses.
        w.before_look(0, RING);
        assert_eq!(gaps(&mut w, 3), [32, 32, 32]);
        // A ping-pong's singles bring the look gap back down to none.
        w.progress(1);
        for _ in 0..MAX_LEAD {
            w.before_look(0, RING);
            w.progress(1);
        }
        w.before_look(0, RING);
        assert_eq!(w.look_gap(), 0);
    }

    #[test]
    fn a_look_that_found_a_quarter_ring_shortens_the_gap() {
        let mut w = Waiter::new(WaitStrategy::adaptive());
        stream_looks(&mut w, 9, 1024, RING);
        assert_eq!(w.look_gap(), 128);
        // The writer got a quarter of the ring ahead during the gap: each
        // such look halves the next gap, batches or not.
        assert_eq!(stream_looks(&mut w, 3, RING / 4, RING), [64, 32, 16]);
        // Just under a quarter: the gap grows again.
        assert_eq!(stream_looks(&mut w, 1, RING / 4 - 8, RING), [32]);
        // A small ring keeps the gap short for the same stream.
        let mut small = Waiter::new(WaitStrategy::adaptive());
        assert_eq!(stream_looks(&mut small, 9, 2048, 4096), [0; 9]);
    }

    /// `looks` looks at a stream, each after the last one found `found`
    /// bytes of a `ring`-byte ring and took 100 messages; the look gap
    /// before each.
    fn stream_looks(w: &mut Waiter, looks: usize, found: usize, ring: usize) -> Vec<u32> {
        (0..looks)
            .map(|_| {
                w.before_look(found, ring);
                let gap = w.look_gap();
                w.progress(100);
                gap
            })
            .collect()
    }

    #[test]
    fn a_look_judges_the_batch_once_whether_or_not_a_wait_follows() {
        let mut w = Waiter::new(WaitStrategy::adaptive());
        // Three looks that each found four messages, no wait between.
        for lead in 0..3 {
            w.before_look(0, RING);
            assert_eq!(w.lead(), lead);
            w.progress(4);
        }
        // A look that finds nothing, then a wait: judged once, at the look.
        w.before_look(0, RING);
        assert_eq!(w.lead(), 3);
        w.wait(None);
        assert_eq!(w.lead(), 3);
        // A look inside a wait (its later polls) changes nothing.
        w.before_look(0, RING);
        assert_eq!(w.lead(), 3);
        w.progress(1);
        w.before_look(0, RING);
        assert_eq!(w.lead(), 2, "one message per look is a single");
        // Busy-polling learns nothing from looks either.
        let mut b = Waiter::new(WaitStrategy::busy_poll());
        for _ in 0..3 {
            b.before_look(0, RING);
            b.progress(4);
        }
        assert_eq!(b.lead(), 0);
    }

    #[test]
    fn a_batch_taken_in_one_look_counts_every_message() {
        let mut w = Waiter::new(WaitStrategy::adaptive());
        w.wait(None);
        w.progress(5);
        w.wait(None);
        assert_eq!(w.lead(), 1, "a batch of five is a stream");
        w.progress(1);
        w.wait(None);
        assert_eq!(w.lead(), 0, "one message is a single");
        w.progress(0);
        w.wait(None);
        assert_eq!(w.lead(), 0, "no progress leaves the wait going");
    }

    /// The pause hints before each of a wait's first `looks` looks.
    fn gaps(w: &mut Waiter, looks: usize) -> Vec<u32> {
        (0..looks)
            .map(|_| {
                w.wait(None);
                w.gap()
            })
            .collect()
    }

    #[test]
    fn a_wait_with_no_lead_looks_closely_before_it_spaces_its_looks() {
        let mut ping_pong = Waiter::new(WaitStrategy::adaptive());
        assert_eq!(
            gaps(&mut ping_pong, 13),
            [1, 1, 1, 1, 1, 1, 1, 1, 2, 4, 8, 16, 32]
        );
        // A learned lead spaces a stream's looks from the first one.
        let stream = Pace {
            lead: 2,
            ..Pace::default()
        };
        let mut stream = Waiter::with_pace(WaitStrategy::adaptive(), stream);
        assert_eq!(gaps(&mut stream, 5), [4, 8, 16, 32, 32]);
        let mut busy = Waiter::new(WaitStrategy::busy_poll());
        assert_eq!(gaps(&mut busy, 12), [1; 12]);
    }

    #[test]
    fn a_waiter_says_whether_its_next_wait_spins() {
        let adaptive = WaitStrategy::adaptive();
        let mut w = Waiter::new(adaptive);
        for _ in 1..adaptive.spins {
            w.wait(None);
        }
        assert!(w.will_spin(), "the last spin is still to come");
        w.wait(None);
        assert!(!w.will_spin(), "yields come next");
        assert!(!Waiter::new(WaitStrategy::sleep_only(Duration::from_millis(1))).will_spin());
    }

    #[test]
    fn the_pace_carries_from_one_waiter_to_the_next() {
        let mut w = Waiter::new(WaitStrategy::adaptive());
        for _ in 0..3 {
            batch_of(&mut w, 3);
        }
        let pace = w.pace();
        assert_eq!(pace.lead(), 2);
        // A blocking call per message: the next call's waiter takes a
        // message without waiting; the one after waits.
        let mut next = Waiter::with_pace(WaitStrategy::adaptive(), pace);
        next.reset();
        let mut after = Waiter::with_pace(WaitStrategy::adaptive(), next.pace());
        after.wait(None);
        assert_eq!(after.lead(), 3, "the batch spanned two waiters");
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
