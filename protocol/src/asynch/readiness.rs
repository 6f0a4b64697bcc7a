//! Where an async channel's readiness comes from: a doorbell the peer rings
//! ([`Readiness`], implemented by the host's eventfds and, later, the
//! guest's interrupt), or a timer that polls ([`PollTimer`]).

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// A doorbell an async channel waits on: ready once the peer may have
/// published since the last time it was ready.
///
/// The channel asks the peer to ring (WAKE_ME, PROTOCOL.md section 8)
/// before it waits, so a message published after that is always followed
/// by a ring. Implementations register `cx`'s waker when they return
/// `Pending` and must not lose a ring that lands between two polls (an
/// eventfd under `tokio::io::unix::AsyncFd` keeps its count).
pub trait Readiness: Send + fmt::Debug {
    /// `Ready(Ok(()))` when rung since the last `Ready` (and takes the
    /// ring); `Pending` otherwise, with the waker registered.
    fn poll_rung(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

/// How a wait goes: turns of the runtime first (the task wakes itself and
/// yields, so other tasks run between its looks; this is what keeps a
/// stream fast, since tokio's timer cannot sleep less than a millisecond),
/// then the doorbell, or else sleeps from `min_interval` doubling to
/// `max_interval` while nothing moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollOptions {
    /// How long a waiting task keeps yielding to the runtime before it
    /// sleeps (on the doorbell or the timer).
    pub yield_for: Duration,
    /// How far the yielding stretches on the timer path: when a wait's
    /// first timer sleep found progress (it overslept a busy peer), the
    /// next wait yields twice as long, up to this; waits that sleep
    /// several times (an idle peer) shrink it back towards `yield_for`.
    pub max_yield_for: Duration,
    /// First timer sleep (tokio's timer rounds up to a millisecond).
    pub min_interval: Duration,
    /// Longest timer sleep.
    pub max_interval: Duration,
}

impl Default for PollOptions {
    fn default() -> Self {
        Self {
            yield_for: Duration::from_micros(200),
            max_yield_for: Duration::from_millis(2),
            min_interval: Duration::from_millis(1),
            max_interval: Duration::from_millis(50),
        }
    }
}

/// Looks spaced by pause hints before a wait starts yielding the thread.
const SPIN_LOOKS: u32 = 64;

/// The timer fallback: an adaptive polling interval, reset by progress.
#[derive(Debug)]
pub(crate) struct PollTimer {
    options: PollOptions,
    /// When the current wait began yielding (`None`: not waiting).
    since: Option<std::time::Instant>,
    /// The yields are used up for this wait.
    yielded: bool,
    /// How long this wait yields (learned, see `PollOptions`).
    window: Duration,
    /// Timer sleeps in this wait.
    sleeps: u32,
    /// Looks (yields) in this wait.
    looks: u32,
    interval: Duration,
    /// Made on first use: a tokio timer needs the runtime.
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl PollTimer {
    pub(crate) fn new(options: PollOptions) -> Self {
        Self {
            options,
            since: None,
            yielded: false,
            window: options.yield_for,
            sleeps: 0,
            looks: 0,
            interval: options.min_interval,
            sleep: None,
            armed: false,
        }
    }

    /// Whether the yields are used up (the next wait sleeps).
    fn yielded_enough(&mut self) -> bool {
        if !self.yielded {
            let now = std::time::Instant::now();
            let since = *self.since.get_or_insert(now);
            self.yielded = now.duration_since(since) >= self.window;
        }
        self.yielded
    }

    /// Progress: the next wait starts with yields and the shortest sleep.
    pub(crate) fn reset(&mut self) {
        let o = &self.options;
        match self.sleeps {
            0 | 2 => {}
            1 => self.window = (self.window * 2).min(o.max_yield_for),
            _ => self.window = (self.window / 2).max(o.yield_for),
        }
        self.sleeps = 0;
        self.looks = 0;
        self.since = None;
        self.yielded = false;
        self.interval = self.options.min_interval;
        self.armed = false;
    }

    /// While the wait is young: wakes the task and returns `Pending` (a
    /// turn of the runtime). `Ready` once the yields are used up.
    pub(crate) fn poll_yield(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded_enough() {
            return Poll::Ready(());
        }
        // The first looks are spaced with pause hints (1, 2, 4 … 32, as
        // the blocking waiter spins: re-reading the peer's position at
        // once pulls its cache line away from it); later ones also offer
        // the core to other threads: on a busy machine the peer may be
        // waiting for this very core to make the progress we wait for.
        self.looks = self.looks.saturating_add(1);
        if self.looks <= SPIN_LOOKS {
            for _ in 0..1u32 << self.looks.min(6).saturating_sub(1) {
                std::hint::spin_loop();
            }
        } else {
            std::thread::yield_now();
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Sleeps on the timer (the interval doubles per sleep); `Ready` when
    /// it is time to look again.
    pub(crate) fn poll_sleep(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.armed {
            let at = Instant::now() + self.interval;
            match &mut self.sleep {
                Some(sleep) => sleep.as_mut().reset(at),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(at))),
            }
            self.interval = (self.interval * 2).min(self.options.max_interval);
            self.armed = true;
            self.sleeps = self.sleeps.saturating_add(1);
        }
        let Some(sleep) = &mut self.sleep else {
            return Poll::Ready(());
        };
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.armed = false;
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A deadline timer that can be re-armed (the heartbeat). Due at first.
#[derive(Debug, Default)]
pub(crate) struct Deadline {
    /// Made on first arming: a tokio timer needs the runtime.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Deadline {
    pub(crate) fn is_due(&self) -> bool {
        self.sleep
            .as_ref()
            .is_none_or(|s| s.deadline() <= Instant::now())
    }

    pub(crate) fn rearm(&mut self, after: Duration) {
        let at = Instant::now() + after;
        match &mut self.sleep {
            Some(sleep) => sleep.as_mut().reset(at),
            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(at))),
        }
    }

    /// Registers the waker; `Ready` once due.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.sleep {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Ready(()),
        }
    }
}
