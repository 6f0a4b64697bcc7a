//! The floor under ivchan's own ring: the same records (an 8-byte header,
//! the payload padded to 8 bytes, a padding record at the wrap) and the
//! same positions (one Release store of `tail` per message, of `head` per
//! message taken), in plain Rust: `copy_nonoverlapping`, no checks of the
//! peer, no volatile views, no API around it.
//!
//! It is what the ring would cost if it could trust its peer and use
//! `memcpy` on shared memory, which ivchan cannot (the guest is untrusted,
//! and a racing peer makes a plain copy undefined behaviour). Measured
//! beside ivchan in the same round, the gap is the price of the checks,
//! the race-safe copies and the API; the rest is the machine.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A position on its own pair of cache lines (the adjacent-line
/// prefetcher pulls lines in pairs).
#[repr(align(128))]
struct Position(AtomicU64);

struct Shared {
    /// Consumer position, stored by the consumer only.
    head: Position,
    /// Producer position, stored by the producer only.
    tail: Position,
    /// The data area: `capacity` bytes, 8-byte aligned.
    data: *mut u64,
    capacity: usize,
}

// SAFETY: `data` is a heap allocation owned by `Shared` (freed in its
// drop); the two ends touch its bytes only under the ring protocol below
// (the producer writes bytes the consumer has released, the consumer reads
// bytes the producer has published, each handed over by a Release store
// and an Acquire load of a position), so sharing it between the two
// threads is free of data races.
unsafe impl Send for Shared {}
// SAFETY: as for `Send`.
unsafe impl Sync for Shared {}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: `data` came from `Box::into_raw` of a boxed slice of
        // `capacity / 8` words in `channel`, and is freed once, here.
        drop(unsafe {
            Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                self.data,
                self.capacity / 8,
            ))
        });
    }
}

const HEADER: usize = 8;
const PADDING: u64 = 1 << 63;

fn record(len: usize) -> usize {
    HEADER + len.next_multiple_of(8)
}

/// A ring of `capacity` bytes (a power of two, at least 64): the sending
/// and the receiving end.
pub fn channel(capacity: usize) -> (PlainTx, PlainRx) {
    assert!(capacity.is_power_of_two() && capacity >= 64);
    let mut words = vec![0u64; capacity / 8].into_boxed_slice();
    // One store per page, so the pages are faulted in before the first
    // lap, as ivchan's regions are (`vec!` maps zeroes lazily).
    // (`black_box`: a zero the compiler cannot see, or it drops the store.)
    for word in words.iter_mut().step_by(512) {
        *word = std::hint::black_box(0);
    }
    let shared = Arc::new(Shared {
        head: Position(AtomicU64::new(0)),
        tail: Position(AtomicU64::new(0)),
        data: Box::into_raw(words).cast::<u64>(),
        capacity,
    });
    (
        PlainTx {
            shared: shared.clone(),
            tail: 0,
            head: 0,
        },
        PlainRx {
            shared,
            head: 0,
            tail: 0,
        },
    )
}

/// The sending end.
pub struct PlainTx {
    shared: Arc<Shared>,
    tail: u64,
    /// Last consumer position seen.
    head: u64,
}

impl PlainTx {
    /// Copies `msg` in and publishes it; false when it does not fit now.
    /// `msg` is at most half the ring, less a header.
    #[inline]
    pub fn send(&mut self, msg: &[u8]) -> bool {
        let s = &*self.shared;
        let cap = s.capacity as u64;
        let rec = record(msg.len()) as u64;
        let off = (self.tail & (cap - 1)) as usize;
        let pad = if off as u64 + rec <= cap {
            0
        } else {
            cap - off as u64
        };
        if cap - (self.tail - self.head) < pad + rec {
            self.head = s.head.0.load(Ordering::Acquire);
            if cap - (self.tail - self.head) < pad + rec {
                return false;
            }
        }
        let base = s.data.cast::<u8>();
        let at = if pad == 0 {
            off
        } else {
            // SAFETY: `off` is 8-aligned and below the capacity, and the
            // bytes up to the wrap are free (checked above).
            unsafe { base.add(off).cast::<u64>().write(PADDING) };
            0
        };
        // SAFETY: `at..at + rec` lies inside the data area and is free: the
        // consumer released it (Acquire load of `head` above) and does not
        // read it before our Release store of `tail` below.
        unsafe {
            base.add(at).cast::<u64>().write(msg.len() as u64);
            std::ptr::copy_nonoverlapping(msg.as_ptr(), base.add(at + HEADER), msg.len());
        }
        self.tail += pad + rec;
        s.tail.0.store(self.tail, Ordering::Release);
        true
    }
}

/// The receiving end.
pub struct PlainRx {
    shared: Arc<Shared>,
    head: u64,
    /// Last producer position seen.
    tail: u64,
}

impl PlainRx {
    /// Copies the next message into `buf` (which must hold it) and
    /// releases it; `None` when the ring is empty.
    #[inline]
    pub fn recv(&mut self, buf: &mut [u8]) -> Option<usize> {
        let s = &*self.shared;
        let cap = s.capacity as u64;
        let base = s.data.cast::<u8>();
        loop {
            if self.tail == self.head {
                self.tail = s.tail.0.load(Ordering::Acquire);
                if self.tail == self.head {
                    return None;
                }
            }
            let off = (self.head & (cap - 1)) as usize;
            // SAFETY: a published record header (Acquire load of `tail`
            // above), 8-aligned, inside the data area; the producer does not
            // reuse it before we release it.
            let word = unsafe { base.add(off).cast::<u64>().read() };
            if word & PADDING != 0 {
                self.head += cap - off as u64;
                continue;
            }
            let len = word as usize;
            // SAFETY: as above, for the published payload; `buf` holds it
            // (caller contract, checked by the slice index).
            unsafe {
                std::ptr::copy_nonoverlapping(base.add(off + HEADER), buf[..len].as_mut_ptr(), len);
            }
            self.head += record(len) as u64;
            s.head.0.store(self.head, Ordering::Release);
            return Some(len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_cross_in_order_through_many_wraps() {
        let (mut tx, mut rx) = channel(256);
        let mut buf = [0u8; 100];
        let mut next = 0u64;
        for seq in 0..2000u64 {
            let len = (seq % 97) as usize;
            let msg: Vec<u8> = (0..len).map(|i| (seq as usize + i) as u8).collect();
            while !tx.send(&msg) {
                let n = rx.recv(&mut buf).expect("a full ring holds a message");
                let want = next % 97;
                assert_eq!(n as u64, want);
                assert!(buf[..n]
                    .iter()
                    .enumerate()
                    .all(|(i, &b)| b == (next as usize + i) as u8));
                next += 1;
            }
        }
        while let Some(n) = rx.recv(&mut buf) {
            assert_eq!(n as u64, next % 97);
            assert!(buf[..n]
                .iter()
                .enumerate()
                .all(|(i, &b)| b == (next as usize + i) as u8));
            next += 1;
        }
        assert_eq!(next, 2000);
    }
}
