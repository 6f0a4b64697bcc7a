//! The one module that holds a raw pointer to the shared region.
//!
//! Everything above it works with byte offsets. Word accesses are atomics,
//! so a peer that writes at the same time can only make us read a stale or
//! garbage value, never cause undefined behaviour. Byte-range copies and
//! slices are `unsafe`: the caller must own the range under the ring
//! protocol (see [`crate::ring`]).

use core::marker::PhantomData;
use core::ptr::NonNull;
// The region is foreign memory reinterpreted as atomics: these must be the
// real `core` atomics even under loom (see `crate::sync`).
use core::sync::atomic::{AtomicU64, Ordering};

use crate::error::LayoutError;

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
// word access is atomic and every byte-range access is `unsafe` with the
// ring protocol's exclusivity as its contract, so moving or sharing the view
// between threads adds no hazard beyond the ones the callers already handle.
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

    /// Copies `src` into the region at `offset`.
    ///
    /// # Safety
    ///
    /// No other access by this process may overlap `offset..offset+src.len()`
    /// while this runs (the ring protocol gives the producer that range).
    #[inline]
    pub unsafe fn copy_in(&self, offset: usize, src: &[u8]) {
        self.check(offset, src.len());
        // SAFETY: in bounds (checked), `src` is ordinary memory that cannot
        // overlap the shared region we exclusively own here (caller contract).
        unsafe {
            core::ptr::copy_nonoverlapping(src.as_ptr(), self.base.as_ptr().add(offset), src.len())
        }
    }

    /// Copies bytes at `offset` out into `dst`: one snapshot, whatever the
    /// peer does to those bytes afterwards.
    ///
    /// # Safety
    ///
    /// No write by this process may overlap the range while this runs.
    #[inline]
    pub unsafe fn copy_out(&self, offset: usize, dst: &mut [u8]) {
        self.check(offset, dst.len());
        // SAFETY: in bounds (checked); `dst` is a unique borrow of private
        // memory, so it cannot overlap the region.
        unsafe {
            core::ptr::copy_nonoverlapping(
                self.base.as_ptr().add(offset),
                dst.as_mut_ptr(),
                dst.len(),
            )
        }
    }

    /// Borrows `len` bytes at `offset` for reading in place.
    ///
    /// # Safety
    ///
    /// No write by this process may overlap the range while the slice lives.
    /// A hostile peer can still change the bytes; read them as untrusted.
    #[inline]
    pub unsafe fn slice(&self, offset: usize, len: usize) -> &[u8] {
        self.check(offset, len);
        // SAFETY: in bounds (checked), valid for 'a, no local writer (caller).
        unsafe { core::slice::from_raw_parts(self.base.as_ptr().add(offset), len) }
    }

    /// Borrows `len` bytes at `offset` for writing in place.
    ///
    /// # Safety
    ///
    /// No other access by this process may overlap the range while the slice
    /// lives.
    #[allow(clippy::mut_from_ref)]
    #[inline]
    pub unsafe fn slice_mut(&self, offset: usize, len: usize) -> &mut [u8] {
        self.check(offset, len);
        // SAFETY: in bounds (checked), valid for 'a, exclusive (caller).
        unsafe { core::slice::from_raw_parts_mut(self.base.as_ptr().add(offset), len) }
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
        // SAFETY: single-threaded test, no other access.
        unsafe { r.copy_out(8, &mut bytes) };
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
