//! Shared helpers for the ivchan example agents.

use std::time::Duration;

/// Spins briefly, then yields, then sleeps: the polling back-off the
/// examples use while a ring is empty or full.
#[derive(Debug, Default)]
pub struct Backoff {
    step: u32,
}

impl Backoff {
    /// Waits a little longer than last time.
    pub fn wait(&mut self) {
        self.step = self.step.saturating_add(1);
        if self.step < 100 {
            std::hint::spin_loop();
        } else if self.step < 200 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(20));
        }
    }

    /// Call after progress: the next wait spins again.
    pub fn reset(&mut self) {
        self.step = 0;
    }
}

/// FNV-1a over 8-byte words, then the tail bytes: a fast checksum for
/// checking transfers.
pub fn checksum(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        h = (h ^ u64::from_le_bytes(a)).wrapping_mul(0x0100_0000_01b3);
    }
    for &b in words.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}
