//! Ring memory on the heap, built from the `sync` shim so loom can check it.
//!
//! Every data word is its own cell: under loom each record access is
//! tracked, so a missing happens-before edge between a producer's write and
//! a consumer's read shows up as a causality violation. Records are 8-byte
//! aligned, so two records never share a cell.

use alloc::boxed::Box;
use alloc::vec::Vec;

use crate::ring::{RingMemory, Word, MAX_CAPACITY, MIN_CAPACITY};
use crate::sync::{AtomicU64, Ordering, UnsafeCell};

/// Keeps the two positions on separate cache-line pairs.
#[repr(align(128))]
#[derive(Debug)]
struct Padded(AtomicU64);

/// A ring whose positions and data live on the heap.
#[derive(Debug)]
pub struct HeapRing {
    tail: Padded,
    head: Padded,
    consumer_flags: Padded,
    words: Box<[UnsafeCell<u64>]>,
}

impl HeapRing {
    /// A zeroed ring with `capacity` data bytes (a power of two, 64 to 2^32).
    /// Returns `None` for any other capacity.
    pub fn new(capacity: usize) -> Option<Self> {
        if !capacity.is_power_of_two() || !(MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) {
            return None;
        }
        let words: Vec<UnsafeCell<u64>> = (0..capacity / 8).map(|_| UnsafeCell::new(0)).collect();
        Some(Self {
            tail: Padded(AtomicU64::new(0)),
            head: Padded(AtomicU64::new(0)),
            consumer_flags: Padded(AtomicU64::new(0)),
            words: words.into_boxed_slice(),
        })
    }

    fn position(&self, word: Word) -> &AtomicU64 {
        match word {
            Word::Head => &self.head.0,
            Word::Tail => &self.tail.0,
            Word::ConsumerFlags => &self.consumer_flags.0,
        }
    }

    /// Applies `f` to each (word, byte range in word, byte range in buffer)
    /// covering `offset..offset + len`.
    fn for_each_word(
        &self,
        offset: usize,
        len: usize,
        mut f: impl FnMut(&UnsafeCell<u64>, usize, usize, usize),
    ) {
        let mut done = 0;
        while done < len {
            let at = offset + done;
            let in_word = at % 8;
            let n = (8 - in_word).min(len - done);
            f(&self.words[at / 8], in_word, done, n);
            done += n;
        }
    }
}

impl RingMemory for HeapRing {
    fn capacity(&self) -> usize {
        self.words.len() * 8
    }

    fn load(&self, word: Word, order: Ordering) -> u64 {
        self.position(word).load(order)
    }

    fn store(&self, word: Word, value: u64, order: Ordering) {
        self.position(word).store(value, order)
    }

    fn load_header(&self, offset: usize) -> u64 {
        // SAFETY: loom (or the ring protocol, without loom) guarantees no
        // concurrent write to this record's header cell.
        self.words[offset / 8].with(|p| unsafe { *p })
    }

    fn store_header(&self, offset: usize, value: u64) {
        // SAFETY: the producer owns this unpublished record's header cell.
        self.words[offset / 8].with_mut(|p| unsafe { *p = value })
    }

    unsafe fn write_bytes(&self, offset: usize, src: &[u8]) {
        self.for_each_word(offset, src.len(), |cell, in_word, done, n| {
            cell.with_mut(|p| {
                // SAFETY: the caller owns the range, so nobody else touches
                // this cell while we rewrite part of it.
                let mut bytes = unsafe { *p }.to_le_bytes();
                bytes[in_word..in_word + n].copy_from_slice(&src[done..done + n]);
                // SAFETY: as above.
                unsafe { *p = u64::from_le_bytes(bytes) };
            })
        });
    }

    unsafe fn read_bytes(&self, offset: usize, dst: &mut [u8]) {
        self.for_each_word(offset, dst.len(), |cell, in_word, done, n| {
            // SAFETY: the caller owns the range: no concurrent writer.
            let bytes = cell.with(|p| unsafe { *p }).to_le_bytes();
            dst[done..done + n].copy_from_slice(&bytes[in_word..in_word + n]);
        });
    }
}
