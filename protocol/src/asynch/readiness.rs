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

/// How the timer fallback polls: a few turns of the runtime first (cheap,
/// and what keeps a stream fast), then sleeps from `min_interval` doubling
/// to `max_interval` while nothing moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollOptions {
    /// Times a waiting task yields to the runtime (waking itself) before
    /// it sleeps on the timer.
    pub yields: u32,
    /// First timer sleep (tokio's timer rounds up to a millisecond).
    pub min_interval: Duration,
    /// Longest timer sleep.
    pub max_interval: Duration,
}

impl Default for PollOptions {
    fn default() -> Self {
        Self {
            yields: 64,
            min_interval: Duration::from_millis(1),
            max_interval: Duration::from_millis(50),
        }
    }
}

/// The timer fallback: an adaptive polling interval, reset by progress.
#[derive(Debug)]
pub(crate) struct PollTimer {
    options: PollOptions,
    step: u32,
    interval: Duration,
    /// Made on first use: a tokio timer needs the runtime.
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl PollTimer {
    pub(crate) fn new(options: PollOptions) -> Self {
        Self {
            options,
            step: 0,
            interval: options.min_interval,
            sleep: None,
            armed: false,
        }
    }

    /// Whether the yields are used up (the next wait sleeps).
    pub(crate) fn yielded_enough(&self) -> bool {
        self.step >= self.options.yields
    }

    /// Progress: the next wait starts with yields and the shortest sleep.
    pub(crate) fn reset(&mut self) {
        self.step = 0;
        self.interval = self.options.min_interval;
        self.armed = false;
    }

    /// `Ready` when it is time to look again.
    pub(crate) fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.armed {
            if self.step < self.options.yields {
                self.step += 1;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let at = Instant::now() + self.interval;
            match &mut self.sleep {
                Some(sleep) => sleep.as_mut().reset(at),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(at))),
            }
            self.interval = (self.interval * 2).min(self.options.max_interval);
            self.armed = true;
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
