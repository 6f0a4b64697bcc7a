//! The one module that holds a raw pointer to the shared region.
//!
//! Everything above it works with byte offsets. Word accesses are atomics,
//! and byte ranges are reached only through [`VolatileSlice`] views and
//! their copy routines (atomic words, or byte-atomic bulk copies), so a peer
//! that writes at the same time can only make us read a stale or garbage
//! value, never cause undefined behaviour. No `&[u8]` or `&mut [u8]` is ever
//! formed over the region.

use core::marker::PhantomData;
use core::ptr::NonNull;
// The region is foreign memory reinterpreted as atomics: these must be the
// real `core` atomics even under loom (see `crate::sync`).
use core::sync::atomic::{AtomicU64, Ordering};

use crate::error::LayoutError;
use crate::volatile::{VolatileSlice, VolatileSliceMut};

/// A shared-memory region handed to ivchan: a base pointer and a length.
///
/// `Region` is `Copy`: it is a view, and the memory's owner (a mapping, a
/// buffer) must outlive every copy, which the lifetime `'a` enforces.
#[derive(Clone, Copy, Debug)]
pub struct Region<'a> {
    base: NonNull<u8>,
    len: usize,
    _memory: PhantomData<&'a [core::cell::UnsafeCell<u8>]>,
}

// SAFETY: a Region is a pointer into memory that is shared by design; every
// word access is atomic and every byte range goes through volatile views
// (atomic or byte-atomic copies), so moving or sharing the view between
// threads creates no data race.
unsafe impl Send for Region<'_> {}
// SAFETY: see `Send` above.
unsafe impl Sync for Region<'_> {}

impl<'a> Region<'a> {
    /// Wraps memory that someone else mapped (an mmap of a `/dev/shm` file
    /// or of a PCI BAR).
    ///
    /// # Safety
    ///
    /// `base..base + len` must be valid for reads and writes for `'a`, and
    /// must not be accessed by this process other than through `Region`s
    /// (another process — the peer — may write it at any time).
    pub unsafe fn from_raw_parts(base: *mut u8, len: usize) -> Result<Self, LayoutError> {
        let addr = base as usize;
        let base = NonNull::new(base).ok_or(LayoutError::BadPointer { addr })?;
        if addr % 8 != 0 {
            return Err(LayoutError::BadPointer { addr });
        }
        Ok(Self {
            base,
            len,
            _memory: PhantomData,
        })
    }

    /// Wraps a buffer this process owns (tests, in-process channels).
    pub fn from_words(words: &'a mut [u64]) -> Self {
        let len = core::mem::size_of_val(words);
        Self {
            base: NonNull::from(words).cast(),
            len,
            _memory: PhantomData,
        }
    }

    /// The same view with another lifetime, for an owner that keeps the
    /// memory alive itself ([`OwnedChannel`](crate::OwnedChannel)).
    ///
    /// # Safety
    ///
    /// The memory must stay valid, as [`from_raw_parts`](Self::from_raw_parts)
    /// requires, for as long as the returned view or anything built from it
    /// is used.
    #[cfg(feature = "std")]
    pub(crate) unsafe fn with_lifetime<'b>(self) -> Region<'b> {
        Region {
            base: self.base,
            len: self.len,
            _memory: PhantomData,
        }
    }

    /// Length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a zero-length region.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Base address, for diagnostics only.
    pub fn addr(&self) -> usize {
        self.base.as_ptr() as usize
    }

    #[inline]
    fn check(&self, offset: usize, len: usize) {
        // Callers pass offsets from a validated geometry, so this never fires
        // on peer input; it is the last line of defence against our own bugs.
        let end = offset.checked_add(len);
        assert!(
            matches!(end, Some(end) if end <= self.len),
            "ivchan bug: access {offset}+{len} outside a {}-byte region",
            self.len
        );
    }

    #[inline]
    fn word(&self, offset: usize) -> &AtomicU64 {
        self.check(offset, 8);
        assert!(offset % 8 == 0, "ivchan bug: unaligned word at {offset}");
        // SAFETY: in bounds (checked above), 8-byte aligned (base is aligned
        // and offset is a multiple of 8), valid for 'a per the constructor's
        // contract, and AtomicU64 has the size and alignment of u64.
        unsafe { &*self.base.as_ptr().add(offset).cast::<AtomicU64>() }
    }

    /// Loads the little-endian u64 at `offset` (a multiple of 8).
    ///
    /// # Panics
    ///
    /// If the word lies outside the region or is unaligned (an ivchan bug).
    #[inline]
    pub fn load(&self, offset: usize, order: Ordering) -> u64 {
        u64::from_le(self.word(offset).load(order))
    }

    /// Stores `value` little-endian at `offset` (a multiple of 8).
    ///
    /// # Panics
    ///
    /// As for [`load`](Self::load).
    #[inline]
    pub fn store(&self, offset: usize, value: u64, order: Ordering) {
        self.word(offset).store(value.to_le(), order);
    }

    /// Checks that the aligned words covering `offset..offset + len` lie
    /// inside the region.
    #[inline]
    fn check_words(&self, offset: usize, len: usize) {
        // The ring's geometry comes from a validated layout, so this never
        // fires on peer input; it is the last line of defence against our
        // own bugs.
        let end = offset
            .checked_add(len)
            .and_then(|end| end.checked_next_multiple_of(8));
        assert!(
            matches!(end, Some(end) if end <= self.len),
            "ivchan bug: access {offset}+{len} outside a {}-byte region",
            self.len
        );
    }

    /// A read-only view of `len` bytes at `offset`: bytes the peer may
    /// change at any time, read only by copying (see [`VolatileSlice`]).
    ///
    /// # Panics
    ///
    /// If the range lies outside the region (an ivchan bug).
    #[inline]
    pub fn volatile(&self, offset: usize, len: usize) -> VolatileSlice<'a> {
        self.check_words(offset, len);
        // SAFETY: the base is 8-aligned (constructor) and the covering words
        // are inside the region (checked), valid for 'a and accessed only
        // atomically or through views (constructor contract).
        unsafe { VolatileSlice::new(self.base, offset, len) }
    }

    /// A writable view of `len` bytes at `offset`.
    ///
    /// # Panics
    ///
    /// As for [`volatile`](Self::volatile).
    ///
    /// # Safety
    ///
    /// No other writable view may cover the words of this range while the
    /// view lives (the ring protocol gives the producer its records); the
    /// view's partial-word writes rewrite the rest of those words.
    #[inline]
    pub unsafe fn volatile_mut(&self, offset: usize, len: usize) -> VolatileSliceMut<'a> {
        self.check_words(offset, len);
        // SAFETY: as in `volatile`; exclusivity is the caller's contract.
        unsafe { VolatileSliceMut::new(self.base, offset, len) }
    }

    /// Copies `src` into the region at `offset`, race-safely: a peer that
    /// touches the range at the same time sees or leaves garbage, but the
    /// copy stays defined behaviour (see [`crate::volatile`]).
    ///
    /// # Safety
    ///
    /// As for [`volatile_mut`](Self::volatile_mut).
    #[inline(always)]
    pub unsafe fn copy_in(&self, offset: usize, src: &[u8]) {
        // SAFETY: forwarded contract.
        let mut view = unsafe { self.volatile_mut(offset, src.len()) };
        // Same length by construction.
        let _ = view.copy_from(src);
    }

    /// Copies bytes at `offset` out into `dst`: one snapshot, whatever the
    /// peer does to those bytes afterwards.
    #[inline(always)]
    pub fn copy_out(&self, offset: usize, dst: &mut [u8]) {
        // Same length by construction.
        let _ = self.volatile(offset, dst.len()).copy_to(dst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_little_endian() {
        let mut buf = [0u64; 4];
        let r = Region::from_words(&mut buf);
        r.store(8, 0x0102_0304_0506_0708, Ordering::Relaxed);
        assert_eq!(r.load(8, Ordering::Relaxed), 0x0102_0304_0506_0708);
        let mut bytes = [0u8; 8];
        r.copy_out(8, &mut bytes);
        assert_eq!(bytes, [8, 7, 6, 5, 4, 3, 2, 1]);
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn out_of_bounds_word_is_refused() {
        let mut buf = [0u64; 2];
        Region::from_words(&mut buf).load(16, Ordering::Relaxed);
    }

    #[test]
    fn misaligned_pointer_is_refused() {
        let mut buf = [0u64; 2];
        let p = buf.as_mut_ptr().cast::<u8>().wrapping_add(1);
        // SAFETY: the constructor rejects the pointer before any access.
        let r = unsafe { Region::from_raw_parts(p, 8) };
        assert!(matches!(r, Err(LayoutError::BadPointer { .. })));
    }
}
