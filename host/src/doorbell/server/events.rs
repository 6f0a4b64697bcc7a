//! What [`DoorbellServer::process`](super::DoorbellServer::process) reports:
//! peers joining and leaving, refused connections, who they were, and why.

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
    /// A connection was refused (closed right after accept, before a byte
    /// or fd was sent), or accepting failed for lack of resources.
    Refused {
        /// The VM.
        vm: K,
        /// Why.
        reason: RefuseReason,
        /// Who connected (`SO_PEERCRED`), when a connection was accepted
        /// and its credentials could be read.
        peer: Option<PeerCredentials>,
    },
}

/// The process at the other end of a connection, as the kernel recorded it
/// when it connected (`SO_PEERCRED`): not forgeable by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    /// Its process id (in the server's pid namespace; 0 if it is in none).
    pub pid: i32,
    /// Its effective user id.
    pub uid: u32,
    /// Its effective (primary) group id; supplementary groups are not
    /// seen.
    pub gid: u32,
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
    /// The VM was full (its client limit, or its share of the process's
    /// fds) and a newcomer took the slot of this client, which had not yet
    /// taken its handshake.
    Evicted,
    /// Its socket failed.
    SocketError(Errno),
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefuseReason {
    /// The peer's uid and gid are not among those the VM allows
    /// ([`VmOptions::allow_uid`](super::VmOptions::allow_uid)); the
    /// event's `peer` says who it was.
    Credentials,
    /// The VM's client limit was reached, and every connected client has
    /// taken its handshake (none can be evicted).
    TooManyClients,
    /// Admitting it would leave this process, under its soft
    /// `RLIMIT_NOFILE`, too few fds for two clients of every other VM (and
    /// no client of this VM could be evicted for it): one VM's clients
    /// never take the fds another VM's QEMU needs.
    FdReserve,
    /// Every peer id is in use.
    NoFreeId,
    /// The system ran out of something (fds, memory); accepting pauses
    /// briefly.
    Resources(Errno),
}
