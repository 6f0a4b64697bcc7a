//! What one side knows of the other: its side block as last read, and the
//! events (attach, restart, close, silence) that follow from a fresh read.

use std::time::{Duration, Instant};

use crate::layout::{PeerState, SideStatus};

use super::PeerEvent;

/// What this side knows of the peer.
#[derive(Debug)]
pub(super) struct PeerWatch {
    pub(super) last: Option<SideStatus>,
    /// When the heartbeat (or epoch) last moved.
    pub(super) moved_at: Instant,
    pub(super) silent: bool,
}

impl PeerWatch {
    /// Compares a fresh read of the peer's block with the last one.
    pub(super) fn observe(
        &mut self,
        now: Instant,
        status: SideStatus,
        timeout: Option<Duration>,
    ) -> Option<PeerEvent> {
        let previous = self.last.replace(status);
        let moved =
            previous.is_none_or(|p| p.heartbeat != status.heartbeat || p.epoch != status.epoch);
        if moved {
            self.moved_at = now;
        }
        let event = match previous {
            Some(p)
                if p.epoch != status.epoch && p.epoch != 0 && status.state == PeerState::Ready =>
            {
                Some(PeerEvent::Restarted {
                    old_epoch: p.epoch,
                    new_epoch: status.epoch,
                })
            }
            Some(p) if p.state != PeerState::Ready && status.state == PeerState::Ready => {
                Some(PeerEvent::Attached {
                    epoch: status.epoch,
                })
            }
            None if status.state == PeerState::Ready => Some(PeerEvent::Attached {
                epoch: status.epoch,
            }),
            Some(p) if p.state != PeerState::Closed && status.state == PeerState::Closed => {
                Some(PeerEvent::Closed)
            }
            _ => None,
        };
        if event.is_some() {
            self.silent = false;
            return event;
        }
        let since = now.duration_since(self.moved_at);
        let overdue = status.state == PeerState::Ready && timeout.is_some_and(|t| since > t);
        match (self.silent, overdue) {
            (false, true) => {
                self.silent = true;
                Some(PeerEvent::Silent { since })
            }
            (true, false) if moved => {
                self.silent = false;
                Some(PeerEvent::Resumed)
            }
            _ => None,
        }
    }
}
