//! What [`DoorbellServer::process`](super::DoorbellServer::process) reports:
//! peers joining and leaving, refused connections, and why.

use nix::errno::Errno;

/// Something that happened on a VM's server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent<K> {
    /// A guest peer connected; its handshake is queued and its eventfds
    /// exist, so
    /// [`DoorbellServer::ring_peer`](super::DoorbellServer::ring_peer)
    /// works at once (a ring before the peer has read its eventfds stays
    /// pending, not lost).
    PeerConnected {
        /// The VM.
        vm: K,
        /// The peer's id (1 to 65535).
        peer: u16,
    },
    /// A guest peer left or was disconnected; its eventfds are closed (once
    /// the notices that carry them are sent) and the other clients are told.
    PeerLeft {
        /// The VM.
        vm: K,
        /// The peer's id.
        peer: u16,
        /// Why.
        reason: LeaveReason,
    },
    /// A connection was refused (closed right after accept), or accepting
    /// failed for lack of resources.
    Refused {
        /// The VM.
        vm: K,
        /// Why.
        reason: RefuseReason,
    },
}

/// Why a peer left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaveReason {
    /// It closed its end (or hung up, or reset the connection).
    Closed,
    /// It sent data; clients must not send anything.
    SentData,
    /// It let more than the configured backlog of notices pile up.
    NotReading,
    /// Its socket failed.
    SocketError(Errno),
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefuseReason {
    /// The VM's client limit was reached.
    TooManyClients,
    /// Every peer id is in use.
    NoFreeId,
    /// The system ran out of something (fds, memory); accepting pauses
    /// briefly.
    Resources(Errno),
}
