//! Stopping a blocked call from outside: a signal handler, another thread,
//! a shutdown path.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A flag that, once set, makes every blocking and polling call of the
/// channels that carry it return [`ChannelError::Cancelled`](super::ChannelError::Cancelled)
/// within one heartbeat interval, so the caller can unwind: drop its channel
/// (which marks its side closed), remove what it created, stop its children.
///
/// Cloning shares the flag. [`flag`](Self::flag) is the `Arc<AtomicBool>`
/// that `signal_hook::flag::register` takes, so a SIGINT or SIGTERM can set
/// it from a signal handler.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token not yet cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels: every call watching this token returns `Cancelled`.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether [`cancel`](Self::cancel) was called (or the flag was set).
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// The shared flag itself, for signal handlers.
    pub fn flag(&self) -> &Arc<AtomicBool> {
        &self.0
    }
}
