//! The example agents' shared code: the agents' conversation
//! ([`agent`]), test traffic ([`traffic`]) and a checksum.
//!
//! Binaries: `ivchan-host-agent` (serves one VM), `ivchan-guest-agent`
//! (runs in the guest, or against a region file to simulate one) and
//! `ivchan-demo` (both as two processes over one `/dev/shm` region).

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use ivchan_protocol::{
    poll_until, Channel, ChannelError, ChannelOptions, Header, LayoutError, Mapping, OwnedChannel,
    Side, WaitStrategy,
};

pub mod agent;
pub mod traffic;

/// The README's code blocks, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeExamples;

/// Maps a host region file shared, the way a guest maps BAR2, and attaches
/// as the guest once the host has written the header.
pub fn attach_region_file(
    path: &Path,
    options: ChannelOptions,
    wait: Duration,
) -> Result<OwnedChannel<Mapping>, String> {
    let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        // A symlink planted at the path is refused, not followed.
        .custom_flags(o_nofollow())
        .open(path)
        .map_err(|e| fail(&e))?;
    let len = file.metadata().map_err(|e| fail(&e))?.len();
    let len = usize::try_from(len).map_err(|e| fail(&e))?;
    let mapping = Mapping::shared(&file, len).map_err(|e| fail(&e))?;
    let strategy = WaitStrategy::backoff(Duration::from_millis(1), Duration::from_millis(50));
    OwnedChannel::new(mapping, |region| {
        let header = poll_until(strategy, Some(wait), || match Header::open(region) {
            Ok(header) => Ok(Some(header)),
            Err(LayoutError::NotInitialized) => Ok(None),
            Err(e) => Err(ChannelError::Layout(e)),
        })?
        .ok_or(ChannelError::Timeout { waited: wait })?;
        Channel::attach(header, Side::Guest, options)
    })
    .map_err(|e| fail(&e))
}

fn o_nofollow() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits()
}

/// FNV-1a over 8-byte little-endian words, then the tail bytes: fast
/// enough to check gigabytes. Same result as feeding [`Checksum`].
pub fn checksum(bytes: &[u8]) -> u64 {
    let mut c = Checksum::new();
    c.update(bytes);
    c.finish()
}

/// The streaming form of [`checksum`]: feed pieces of any size.
#[derive(Debug, Clone)]
pub struct Checksum {
    hash: u64,
    partial: [u8; 8],
    filled: usize,
}

impl Default for Checksum {
    fn default() -> Self {
        Self::new()
    }
}

impl Checksum {
    const PRIME: u64 = 0x0100_0000_01b3;

    /// An empty checksum.
    pub fn new() -> Self {
        Self {
            hash: 0xcbf2_9ce4_8422_2325,
            partial: [0; 8],
            filled: 0,
        }
    }

    fn word(&mut self, w: [u8; 8]) {
        self.hash = (self.hash ^ u64::from_le_bytes(w)).wrapping_mul(Self::PRIME);
    }

    /// Adds `bytes`.
    pub fn update(&mut self, mut bytes: &[u8]) {
        if self.filled > 0 {
            let take = (8 - self.filled).min(bytes.len());
            self.partial[self.filled..self.filled + take].copy_from_slice(&bytes[..take]);
            self.filled += take;
            bytes = &bytes[take..];
            if self.filled < 8 {
                return;
            }
            self.word(self.partial);
            self.filled = 0;
        }
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let mut a = [0u8; 8];
            a.copy_from_slice(w);
            self.word(a);
        }
        let rest = words.remainder();
        self.partial[..rest.len()].copy_from_slice(rest);
        self.filled = rest.len();
    }

    /// The checksum of everything added.
    pub fn finish(&self) -> u64 {
        let mut h = self.hash;
        for &b in &self.partial[..self.filled] {
            h = (h ^ u64::from(b)).wrapping_mul(Self::PRIME);
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_checksum_matches_one_shot_for_any_split() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + i / 9) as u8).collect();
        let whole = checksum(&data);
        for split in [1usize, 3, 7, 8, 9, 64, 999] {
            let mut c = Checksum::new();
            for piece in data.chunks(split) {
                c.update(piece);
            }
            assert_eq!(c.finish(), whole, "pieces of {split}");
        }
        assert_ne!(checksum(&data[1..]), whole);
    }
}
