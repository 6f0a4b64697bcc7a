//! An ivshmem server (QEMU `docs/specs/ivshmem-spec.rst`) for one VM or
//! many, driven from one thread.
//!
//! Each VM has its own socket, shared-memory fd, vector count and peer
//! table. The host agent is peer [`HOST_PEER_ID`] of every VM, with its own
//! eventfds; guests (QEMU `ivshmem-doorbell` devices, or any client) get id
//! 0 whenever it is free (QEMU requires it of a `master=on` device), then
//! ids from 2. Every connection is non-blocking: the server queues what it owes
//! each client (bounded) and flushes when the socket is writable, so one
//! slow or hostile client never stalls the others.
//!
//! Clients must never send anything: as in QEMU's reference server, a
//! client that sends a byte (or closes, or resets) is disconnected, its
//! eventfds are closed, and the other clients are told it left.
//!
//! Hostile local clients (issue 13) get nowhere:
//! - Only peers with allowed credentials are served (`SO_PEERCRED`: root,
//!   this process's euid, the socket's group and what
//!   [`VmOptions::allow_uid`]/[`VmOptions::allow_gid`] add). Anyone else
//!   is closed before a byte is sent, takes no slot, and is reported with
//!   its uid, gid and pid ([`ServerEvent::Refused`]).
//! - Fds in flight are bounded per client: a client's socket holds at most
//!   two unread messages (the rest waits in a bounded queue), and one that
//!   never reads is sent no fd at all. So idle clients of one VM cannot
//!   push this user's in-flight fds past `RLIMIT_NOFILE` and make another
//!   VM's handshake fail with `ETOOMANYREFS`.
//! - Nor can they take the server's last fds: each client costs the
//!   server its socket and one eventfd per vector, and a VM admits a client
//!   only while this process's open fds stay below its soft
//!   `RLIMIT_NOFILE` less room for two clients of every other VM
//!   ([`RefuseReason::FdReserve`]).
//! - Idle clients cannot keep a VM's QEMU out: when the VM is full, a
//!   newcomer takes the slot of a client that has not taken its handshake
//!   ([`LeaveReason::Evicted`]). Clients that read their handshake keep
//!   their slots; only allowed peers (who can already reach the VM's QEMU)
//!   can be such clients.
//! - The socket file gets its mode and group before it appears at its
//!   path, with no chmod or chown through the path (see `socket.rs`).

mod client;
mod events;
mod options;
mod socket;
mod vm;

use std::collections::BTreeMap;
use std::fmt::Display;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};

pub use events::{LeaveReason, PeerCredentials, RefuseReason, ServerEvent};
pub use options::VmOptions;

use super::notify::{epoll_wait_until, ring_fd};
use super::{sys, DoorbellError, HOST_PEER_ID, MAX_VECTORS};
use crate::region_file::VmUuid;
use socket::bind_socket;
use vm::{new_eventfds, Vm};

/// Epoll token bits for the peer part (`peer + 1`; 0 is the listener).
const SLOT_SHIFT: u32 = 32;

/// The epoll token of a VM's listener (`peer` `None`) or of one of its
/// clients.
fn token(slot: usize, peer: Option<u16>) -> u64 {
    ((slot as u64) << SLOT_SHIFT) | peer.map_or(0, |p| u64::from(p) + 1)
}

/// The slot and peer of a [`token`]; `None` for one no VM could have.
fn parse_token(data: u64) -> Option<(usize, Option<u16>)> {
    let slot = usize::try_from(data >> SLOT_SHIFT).ok()?;
    match data & ((1 << SLOT_SHIFT) - 1) {
        0 => Some((slot, None)),
        sub => Some((slot, Some(u16::try_from(sub - 1).ok()?))),
    }
}

fn errno_of(e: &io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(Errno::EIO as i32))
}

/// An ivshmem server for one or many VMs, keyed by `K` (a VM's UUID by
/// default). Drive it with [`process`](Self::process) from one thread (or
/// poll its fd, [`AsFd`], in your own loop and call `process` with a zero
/// timeout when it is readable).
///
/// Dropping the server (or [`remove_vm`](Self::remove_vm)) closes every
/// connection and removes the socket files it created.
#[derive(Debug)]
pub struct DoorbellServer<K = VmUuid> {
    epoll: Epoll,
    vms: Vec<Option<Vm<K>>>,
    index: BTreeMap<K, usize>,
    events: Vec<EpollEvent>,
}

impl<K: Ord + Clone + Display> DoorbellServer<K> {
    /// A server with no VMs yet.
    pub fn new() -> Result<Self, DoorbellError> {
        Ok(Self {
            epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(sys("epoll_create"))?,
            vms: Vec::new(),
            index: BTreeMap::new(),
            events: vec![EpollEvent::empty(); 64],
        })
    }

    /// Serves VM `key`: listens on `opts.path()`, hands out `shm` (a
    /// duplicate is kept; e.g. [`RegionFile::file`](crate::RegionFile::file))
    /// as the shared memory, and creates the host's eventfds (peer
    /// [`HOST_PEER_ID`]).
    ///
    /// A stale socket at the path is replaced; a socket someone still
    /// accepts on, or any other kind of file, is an error.
    pub fn add_vm(&mut self, key: K, shm: impl AsFd, opts: VmOptions) -> Result<(), DoorbellError> {
        if self.index.contains_key(&key) {
            return Err(DoorbellError::DuplicateVm {
                vm: key.to_string(),
            });
        }
        if opts.vectors == 0 || opts.vectors > MAX_VECTORS {
            return Err(DoorbellError::BadVectorCount {
                vectors: opts.vectors,
            });
        }
        let shm = shm
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| DoorbellError::Sys {
                op: "dup shared-memory fd",
                source: errno_of(&e),
            })?;
        let host = new_eventfds(opts.vectors)?;
        let (listener, socket) = bind_socket(&opts)?;
        let slot = match self.vms.iter().position(Option::is_none) {
            Some(slot) => slot,
            None => {
                self.vms.push(None);
                self.vms.len() - 1
            }
        };
        let event = EpollEvent::new(EpollFlags::EPOLLIN, token(slot, None));
        self.epoll
            .add(&listener, event)
            .map_err(sys("epoll_ctl add"))?;
        self.vms[slot] = Some(Vm::new(key.clone(), listener, socket, shm, host, &opts));
        self.index.insert(key, slot);
        Ok(())
    }

    /// Serves a VM's region file under its UUID (see
    /// [`add_vm`](Self::add_vm)).
    pub fn add_region(
        &mut self,
        region: &crate::RegionFile,
        opts: VmOptions,
    ) -> Result<(), DoorbellError>
    where
        K: From<VmUuid>,
    {
        self.add_vm(K::from(*region.uuid()), region.file(), opts)
    }

    /// Stops serving `vm`: closes its connections (QEMU keeps the eventfds
    /// it has) and removes its socket file.
    pub fn remove_vm(&mut self, vm: &K) -> Result<(), DoorbellError> {
        let slot = self.slot(vm)?;
        self.index.remove(vm);
        if let Some(state) = self.vms[slot].take() {
            let _ = self.epoll.delete(&state.listener);
            for client in state.clients.values() {
                let _ = self.epoll.delete(&client.stream);
            }
        }
        Ok(())
    }

    /// The VMs served.
    pub fn vms(&self) -> impl Iterator<Item = &K> {
        self.index.keys()
    }

    fn slot(&self, vm: &K) -> Result<usize, DoorbellError> {
        self.index
            .get(vm)
            .copied()
            .ok_or_else(|| DoorbellError::UnknownVm { vm: vm.to_string() })
    }

    fn vm(&self, vm: &K) -> Result<&Vm<K>, DoorbellError> {
        let slot = self.slot(vm)?;
        self.vms[slot]
            .as_ref()
            .ok_or_else(|| DoorbellError::UnknownVm { vm: vm.to_string() })
    }

    /// The eventfd of `peer` ([`HOST_PEER_ID`] or a guest) for `vector` of
    /// `vm`: the one lookup behind the accessors below.
    fn eventfd(&self, vm: &K, peer: u16, vector: u16) -> Result<BorrowedFd<'_>, DoorbellError> {
        let state = self.vm(vm)?;
        let fds = if peer == HOST_PEER_ID {
            &state.host
        } else {
            &state
                .clients
                .get(&peer)
                .ok_or_else(|| DoorbellError::UnknownPeer {
                    vm: vm.to_string(),
                    peer,
                })?
                .eventfds
        };
        let fd = fds
            .get(usize::from(vector))
            .ok_or(DoorbellError::BadVector {
                vector,
                vectors: state.vectors,
            })?;
        Ok(fd.as_fd())
    }

    /// The host's eventfd for `vector` of `vm`: readable when a guest rang
    /// the host (Doorbell register `(HOST_PEER_ID << 16) | vector`). Add it
    /// to a [`DoorbellSet`](super::DoorbellSet) to wait on many VMs.
    pub fn host_eventfd(&self, vm: &K, vector: u16) -> Result<BorrowedFd<'_>, DoorbellError> {
        self.eventfd(vm, HOST_PEER_ID, vector)
    }

    /// Guest `peer`'s eventfd for `vector` of `vm`: writing it interrupts
    /// that guest (what [`ring_peer`](Self::ring_peer) does). Duplicate it
    /// (e.g. into a [`ChannelBell`](super::ChannelBell)) to ring from
    /// another thread.
    pub fn peer_eventfd(
        &self,
        vm: &K,
        peer: u16,
        vector: u16,
    ) -> Result<BorrowedFd<'_>, DoorbellError> {
        self.eventfd(vm, peer, vector)
    }

    /// Rings `peer` of `vm` on `vector`: writes 1 to that peer's eventfd,
    /// which QEMU turns into an MSI-X interrupt in the guest.
    /// [`HOST_PEER_ID`] rings the host's own eventfd.
    pub fn ring_peer(&self, vm: &K, peer: u16, vector: u16) -> Result<(), DoorbellError> {
        ring_fd(self.eventfd(vm, peer, vector)?)
    }

    /// The guest peers of `vm` connected now, ascending.
    pub fn peers(&self, vm: &K) -> Result<Vec<u16>, DoorbellError> {
        Ok(self.vm(vm)?.clients.keys().copied().collect())
    }

    /// Who guest `peer` of `vm` is (`SO_PEERCRED` at connect time).
    pub fn peer_credentials(&self, vm: &K, peer: u16) -> Result<PeerCredentials, DoorbellError> {
        self.vm(vm)?
            .clients
            .get(&peer)
            .map(|c| c.creds)
            .ok_or_else(|| DoorbellError::UnknownPeer {
                vm: vm.to_string(),
                peer,
            })
    }

    /// The number of vectors `vm` is served with.
    pub fn vectors(&self, vm: &K) -> Result<u16, DoorbellError> {
        Ok(self.vm(vm)?.vectors)
    }

    /// The socket path of `vm`.
    pub fn socket_path(&self, vm: &K) -> Result<&Path, DoorbellError> {
        Ok(self.vm(vm)?.socket.path())
    }

    /// Serves every VM for up to `timeout` (`None`: until something
    /// happens): accepts clients, sends what they are owed, drops the ones
    /// that close or misbehave. Returns what happened; empty if nothing did.
    pub fn process(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<Vec<ServerEvent<K>>, DoorbellError> {
        let mut out = Vec::new();
        let now = Instant::now();
        let mut deadline = timeout.map(|t| now + t);
        for (slot, vm) in self.vms.iter_mut().enumerate() {
            let Some(vm) = vm else { continue };
            match vm.paused_until {
                Some(until) if until <= now => vm.resume_accept(&self.epoll, slot),
                Some(until) => deadline = Some(deadline.map_or(until, |d| d.min(until))),
                None => {}
            }
        }
        let n = epoll_wait_until(&self.epoll, &mut self.events, deadline)?;
        for i in 0..n {
            let event = self.events[i];
            let Some((slot, peer)) = parse_token(event.data()) else {
                continue;
            };
            // For a listener: the fds the other VMs keep room for (see
            // `Vm::reserve`).
            let others: usize = match peer {
                None => self
                    .vms
                    .iter()
                    .enumerate()
                    .filter(|&(s, _)| s != slot)
                    .filter_map(|(_, vm)| vm.as_ref().map(Vm::reserve))
                    .sum(),
                Some(_) => 0,
            };
            let Some(Some(vm)) = self.vms.get_mut(slot) else {
                continue;
            };
            match peer {
                None => vm.accept(&self.epoll, slot, others, &mut out),
                Some(peer) => vm.client_event(&self.epoll, slot, peer, event.events()),
            }
            vm.settle(&self.epoll, slot, &mut out);
        }
        Ok(out)
    }
}

impl<K> AsFd for DoorbellServer<K> {
    /// The server's epoll fd: readable when [`process`](Self::process) has
    /// work.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.epoll.0.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_the_listener_or_a_peer_and_parse_back() {
        assert_eq!(parse_token(token(0, None)), Some((0, None)));
        assert_eq!(parse_token(token(3, Some(0))), Some((3, Some(0))));
        assert_eq!(
            parse_token(token(7, Some(u16::MAX))),
            Some((7, Some(u16::MAX)))
        );
        // A peer part beyond 65535 + 1 names no peer.
        assert_eq!(parse_token((1 << SLOT_SHIFT) - 1), None);
    }
}
