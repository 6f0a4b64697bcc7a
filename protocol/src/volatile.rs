//! Views of memory the peer may write at any time: never a Rust reference.
//!
//! A `&[u8]` promises that the bytes do not change while it lives; a
//! `&mut [u8]` promises that nobody else sees them. Neither holds for the
//! shared region, where a hostile peer can write any byte at any moment, so
//! forming either over shared bytes is undefined behaviour in Rust's model,
//! whatever the code then does with it. [`VolatileSlice`] (read) and
//! [`VolatileSliceMut`] (read and write) are the in-place views ivchan hands
//! out instead, in the manner of rust-vmm's `VolatileSlice`: a pointer and a
//! length, every access a copy through the routines below, every range
//! checked and refused with a typed [`VolatileError`].
//!
//! # How shared bytes are touched
//!
//! All of it is in this module (the `raw` functions) and is defined
//! behaviour when the peer writes concurrently:
//!
//! - Copies under 16 bytes, typed reads and writes, and everything under
//!   Miri or off x86-64: aligned 8-byte **relaxed atomic** loads and stores
//!   of the words that cover the range (`AtomicU64`, the same width as
//!   every other shared word). A byte range that covers only part of a word
//!   is written by a read-modify-write of that word: the other bytes of the
//!   word belong to the same record (records are 8-byte aligned), so the
//!   owner of the view owns them too.
//! - Copies of 16 to 32 bytes, and up to 128 where the CPU has AVX, on
//!   x86-64 (outside Miri): two or four vector loads from the start and the
//!   end of the range, which overlap in the middle, then the matching
//!   stores (`memcpy`'s way with short copies). Bytes in the overlap are
//!   read twice, or written twice with the same value from private memory;
//!   every destination byte still ends up with a value one byte-atomic read
//!   took from the source, so the effect is that of relaxed atomic byte
//!   copies. Measured across two cores, a 64-byte round trip through the
//!   ring (p50 of 50,000, three interleaved runs): 231-260 ns with it
//!   against 261-270 ns with the loop below, and 190 ns for the same ring
//!   written with `memcpy` and no checks (docs/bench/notes.md).
//! - Longer copies on x86-64 (outside Miri): a loop of 32-byte
//!   AVX (where the CPU has it) or 16-byte SSE2 loads and stores in inline
//!   assembly, 128 or 64 bytes per step, then words for the rest. Each byte
//!   is read and written once by an instruction that is byte-atomic on x86,
//!   so the loop's effect is that of relaxed atomic byte copies, which are
//!   defined behaviour when they race; an `asm!` block may do whatever Rust
//!   code could do. Measured on one core (hot, min of 60 bursts) against
//!   the `memcpy` it replaces: 64 B 3.7-4.3 ns against 2.4 ns, 1 KiB
//!   15.7 ns against 11.1 ns, 64 KiB and 1 MiB equal or faster (57 against
//!   52 GB/s, 49 against 48 GB/s), where the word loop reaches about 60%.
//!   From 4 KiB, copies into shared memory use `rep movsb` instead
//!   (whole-line stores without a read for ownership, which matters across
//!   cores), except when the destination sits less than 64 bytes past the
//!   source modulo the page, where this EPYC's `rep movsb` drops to 2 GB/s;
//!   copies out of it keep the vector loop, which reads lines another core
//!   wrote faster and more steadily, and run it from the end of the range
//!   down: ascending loads right behind the producer set the stream
//!   prefetcher fetching the lines past the message, which the producer is
//!   writing, and stall it. Measured across two cores with 1 KiB messages
//!   (the copy API, five interleaved passes in fast minutes): 7.7-32.5 M
//!   msg/s ascending, 29.0-33.8 M descending; equal at 4 KiB and 64 KiB.
//!   From [`READ_FORWARD_FROM`] bytes (512 KiB) they run front to back
//!   instead. A reader that starts at the end of so large a message slows
//!   the producer's copy of the next one (1 MiB: 29-41 µs per copy in,
//!   against 25-27 µs beside a reader that starts at the front); the
//!   likely cause, which this machine has no hardware counters to show, is
//!   that the newest lines are still in the producer's cache while its
//!   first lines have already left it for the shared one. 1 MiB across
//!   processes, medians of ten interleaved passes: copies out 33.2 GB/s
//!   from the end, 34.2 GB/s from the front; one byte per line read in
//!   place 29.5 and 32.0 GB/s (docs/bench/notes.md).
//!
//! What a reader may assume about bytes read in place: each read returns
//! bytes that were in the region at some moment during the read; nothing
//! more. Two reads of the same byte may disagree, a multi-byte value that
//! lies within one aligned 8-byte word is read with one atomic load (a
//! consistent value), one that straddles two words is read with two. To
//! check and then use a value, copy it out once ([`VolatileSlice::snapshot`],
//! [`VolatileSlice::read_at`], the typed reads) and work on the copy.

use core::fmt;
use core::marker::PhantomData;
use core::ptr::NonNull;

/// Reads of a ring message at least this long run front to back; shorter
/// ones run from the end back to the start (see the module docs, *How
/// shared bytes are touched*). Copies out of shared memory follow this
/// rule; a consumer that reads a message in place should too.
pub const READ_FORWARD_FROM: usize = 512 * 1024;

/// The step of the bulk copy (SSE2 on x86-64): copies take whole steps of
/// this many bytes through it, and the rest through atomic words.
const BULK_COPY: usize = 64;

/// A range refused by a volatile view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolatileError {
    /// `offset..offset + len` does not lie inside the view.
    OutOfBounds {
        /// Start of the requested range.
        offset: usize,
        /// Length of the requested range.
        len: usize,
        /// Length of the view.
        size: usize,
    },
    /// A copy between a view and a buffer of different lengths.
    LengthMismatch {
        /// Length of the view.
        view: usize,
        /// Length of the caller's buffer.
        buffer: usize,
    },
}

impl fmt::Display for VolatileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::OutOfBounds { offset, len, size } => write!(
                f,
                "range {offset}+{len} lies outside a {size}-byte shared view"
            ),
            Self::LengthMismatch { view, buffer } => write!(
                f,
                "a {view}-byte shared view cannot be copied to or from a {buffer}-byte buffer"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for VolatileError {}

#[cfg(feature = "std")]
impl From<VolatileError> for std::io::Error {
    fn from(e: VolatileError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, e)
    }
}

/// The only code that dereferences a pointer into shared memory.
///
/// Every function takes `base` (8-byte aligned) and a byte offset `at`; the
/// caller guarantees that the aligned words covering the byte range are
/// valid for the access for the duration of the call, and are accessed by
/// this process only through this module and aligned `AtomicU64`s.
mod raw {
    // Foreign memory reinterpreted as atomics: these must be the real `core`
    // atomics even under loom, as in `crate::region`.
    use core::sync::atomic::{AtomicU64, Ordering};

    use super::BULK_COPY;

    /// Relaxed atomic load of the aligned word at `base + at` (`at % 8 == 0`).
    ///
    /// # Safety
    ///
    /// The word is valid, 8-aligned and only accessed atomically.
    #[inline(always)]
    pub(super) unsafe fn load_word(base: *mut u8, at: usize) -> u64 {
        // SAFETY: caller contract; `AtomicU64` has the layout of `u64`.
        unsafe { AtomicU64::from_ptr(base.add(at).cast::<u64>()) }.load(Ordering::Relaxed)
    }

    /// Relaxed atomic store of the aligned word at `base + at`.
    ///
    /// # Safety
    ///
    /// As for [`load_word`], and the word is valid for writes.
    #[inline(always)]
    pub(super) unsafe fn store_word(base: *mut u8, at: usize, value: u64) {
        // SAFETY: caller contract; `AtomicU64` has the layout of `u64`.
        unsafe { AtomicU64::from_ptr(base.add(at).cast::<u64>()) }.store(value, Ordering::Relaxed)
    }

    /// Copies `n` bytes (a nonzero multiple of 64) from `src` to `dst` with
    /// 16-byte SSE2 loads and stores, four of each per step. Each byte is
    /// read and written once by an instruction that is byte-atomic on x86.
    ///
    /// # Safety
    ///
    /// Both ranges are valid for `n` bytes and do not overlap; private
    /// memory among them is not otherwise borrowed.
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    #[inline(always)]
    unsafe fn sse_copy(dst: *mut u8, src: *const u8, n: usize) {
        debug_assert!(n != 0 && n % BULK_COPY == 0);
        // SAFETY: caller contract; SSE2 is part of the x86-64 baseline, and
        // the clobbered vector registers are declared.
        unsafe {
            core::arch::asm!(
                "2:",
                "movdqu xmm0, [{s}]",
                "movdqu xmm1, [{s} + 16]",
                "movdqu xmm2, [{s} + 32]",
                "movdqu xmm3, [{s} + 48]",
                "movdqu [{d}], xmm0",
                "movdqu [{d} + 16], xmm1",
                "movdqu [{d} + 32], xmm2",
                "movdqu [{d} + 48], xmm3",
                "add {s}, 64",
                "add {d}, 64",
                "sub {n}, 64",
                "jnz 2b",
                s = inout(reg) src => _,
                d = inout(reg) dst => _,
                n = inout(reg) n => _,
                out("xmm0") _,
                out("xmm1") _,
                out("xmm2") _,
                out("xmm3") _,
                options(nostack)
            );
        }
    }

    /// The same with 32-byte AVX loads and stores, 128 bytes per step
    /// (`n` a nonzero multiple of 128), for CPUs that have AVX. With `down`
    /// the steps run from the end of the range to its start: copies out of
    /// the ring shorter than [`READ_FORWARD_FROM`] do that, so that their
    /// loads keep the CPU's stream prefetchers running back into lines
    /// already read, not on past the message into the lines the producer
    /// is writing next.
    ///
    /// # Safety
    ///
    /// As for [`sse_copy`], and the CPU supports AVX.
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    #[inline(always)]
    unsafe fn avx_copy(dst: *mut u8, src: *const u8, n: usize, down: bool) {
        debug_assert!(n != 0 && n % 128 == 0);
        // The first step's offset and the signed stride between steps
        // (two's complement in the register for a step down).
        let (first, stride) = if down {
            (n - 128, 128usize.wrapping_neg())
        } else {
            (0, 128)
        };
        // SAFETY: caller contract (ranges, AVX present): `n / 128` steps
        // from `first` by `stride` cover `0..n` exactly; the clobbered
        // vector registers are declared, and `vzeroupper` leaves the upper
        // halves clean for SSE code that follows.
        unsafe {
            core::arch::asm!(
                "2:",
                "vmovdqu ymm0, [{s} + {i}]",
                "vmovdqu ymm1, [{s} + {i} + 32]",
                "vmovdqu ymm2, [{s} + {i} + 64]",
                "vmovdqu ymm3, [{s} + {i} + 96]",
                "vmovdqu [{d} + {i}], ymm0",
                "vmovdqu [{d} + {i} + 32], ymm1",
                "vmovdqu [{d} + {i} + 64], ymm2",
                "vmovdqu [{d} + {i} + 96], ymm3",
                "add {i}, {stride}",
                "sub {k}, 1",
                "jnz 2b",
                "vzeroupper",
                s = in(reg) src,
                d = in(reg) dst,
                stride = in(reg) stride,
                i = inout(reg) first => _,
                k = inout(reg) n / 128 => _,
                out("ymm0") _,
                out("ymm1") _,
                out("ymm2") _,
                out("ymm3") _,
                options(nostack)
            );
        }
    }

    /// Whether [`short_copy`] takes an `n`-byte copy: 16 to 32 bytes
    /// always, up to 128 where the CPU has AVX.
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    #[inline(always)]
    fn is_short(n: usize) -> bool {
        (16..=32).contains(&n) || ((33..=128).contains(&n) && has_avx())
    }

    /// Copies `n` bytes ([`is_short`]) with two or four vector loads taken
    /// from both ends of the range, overlapping in the middle, then the
    /// matching stores: a fixed handful of instructions whatever the
    /// length, where the loop pays for its setup and its tail.
    ///
    /// # Safety
    ///
    /// As for [`sse_copy`], for `n` bytes, and `is_short(n)`.
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    #[inline(always)]
    unsafe fn short_copy(dst: *mut u8, src: *const u8, n: usize) {
        debug_assert!(is_short(n));
        // Every access below lies inside `src..src + n` or `dst..dst + n`:
        // each branch's bounds on `n` keep `n - 16`, `n - 32` and `n - 64`
        // inside.
        if n <= 32 {
            // SAFETY: the caller's valid, disjoint ranges (above); SSE2 is
            // baseline; the clobbered registers are declared.
            unsafe {
                core::arch::asm!(
                    "movdqu xmm0, [{s}]",
                    "movdqu xmm1, [{s} + {n} - 16]",
                    "movdqu [{d}], xmm0",
                    "movdqu [{d} + {n} - 16], xmm1",
                    s = in(reg) src,
                    d = in(reg) dst,
                    n = in(reg) n,
                    out("xmm0") _,
                    out("xmm1") _,
                    options(nostack, preserves_flags)
                );
            }
        } else if n <= 64 {
            // SAFETY: the caller's ranges; `is_short` checked AVX for copies
            // over 32 bytes.
            unsafe { avx_pair(dst, src, n) };
        } else {
            // Two 64-byte pairs, overlapping in the middle.
            // SAFETY: the first and the last 64 bytes of the caller's ranges
            // (`n` is 65 to 128); AVX checked as above.
            unsafe {
                avx_pair(dst, src, 64);
                avx_pair(dst.add(n - 64), src.add(n - 64), 64);
            }
        }
    }

    /// Copies `n` bytes, 32 to 64, with two 32-byte AVX loads from both ends
    /// of the range, then the matching stores.
    ///
    /// # Safety
    ///
    /// As for [`sse_copy`], for `n` bytes, and the CPU supports AVX.
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    #[inline(always)]
    unsafe fn avx_pair(dst: *mut u8, src: *const u8, n: usize) {
        debug_assert!((32..=64).contains(&n));
        // SAFETY: both accesses lie inside the caller's valid, disjoint
        // ranges (`n >= 32`); AVX is present (caller); the clobbered
        // registers are declared and `vzeroupper` cleans up after them.
        unsafe {
            core::arch::asm!(
                "vmovdqu ymm0, [{s}]",
                "vmovdqu ymm1, [{s} + {n} - 32]",
                "vmovdqu [{d}], ymm0",
                "vmovdqu [{d} + {n} - 32], ymm1",
                "vzeroupper",
                s = in(reg) src,
                d = in(reg) dst,
                n = in(reg) n,
                out("ymm0") _,
                out("ymm1") _,
                options(nostack, preserves_flags)
            );
        }
    }

    /// Whether this CPU has AVX (detected once by `std`; without `std`,
    /// what the build targets).
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    #[inline(always)]
    fn has_avx() -> bool {
        #[cfg(feature = "std")]
        {
            std::arch::is_x86_feature_detected!("avx")
        }
        #[cfg(not(feature = "std"))]
        {
            cfg!(target_feature = "avx")
        }
    }

    /// `rep movsb`: `n` bytes from `src` to `dst`, byte-atomic on x86.
    ///
    /// # Safety
    ///
    /// As for [`sse_copy`] (any `n`).
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    #[inline(always)]
    unsafe fn movsb(dst: *mut u8, src: *const u8, n: usize) {
        // SAFETY: caller contract. The direction flag is clear in Rust code
        // (ABI), so the copy runs forwards.
        unsafe {
            core::arch::asm!(
                "rep movsb",
                inout("rcx") n => _,
                inout("rdi") dst => _,
                inout("rsi") src => _,
                options(nostack, preserves_flags)
            );
        }
    }

    /// Copies at least this long go through `rep movsb` (when the offsets
    /// allow, see [`bulk_copy`]).
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    const MOVSB_FROM: usize = 4096;

    /// Copies `n` bytes (a nonzero multiple of 64). Long copies *into*
    /// shared memory (`into_shared`) use `rep movsb`, whose whole-line
    /// stores need no read-for-ownership: across cores that is what keeps
    /// a large message from pulling every destination line back from the
    /// reader's cache (measured on two cores, 1 MiB zero-copy: 3.1-4.0 GB/s
    /// median with `memcpy`, which does the same, against 0.8-1.0 GB/s with
    /// the vector loop). Not when the destination lies less than 64 bytes
    /// past the source modulo the page, where this EPYC's `rep movsb` falls
    /// to 2 GB/s (glibc avoids the same case). Copies *out of* shared
    /// memory always take the vector loop: reading lines another core just
    /// wrote, `rep movsb` was slow and erratic (64 KiB copy-out across
    /// processes 5-34 GB/s against 36-39 GB/s, four interleaved A/B pairs;
    /// docs/bench/notes.md), in the direction [`READ_FORWARD_FROM`] gives.
    /// Otherwise the widest loop the CPU has: AVX for whole 128-byte steps,
    /// SSE2 for the rest.
    ///
    /// # Safety
    ///
    /// As for [`sse_copy`].
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    #[inline(always)]
    unsafe fn bulk_copy(dst: *mut u8, src: *const u8, n: usize, into_shared: bool) {
        if into_shared && n >= MOVSB_FROM && (dst as usize).wrapping_sub(src as usize) % 4096 >= 64
        {
            // SAFETY: the caller's ranges.
            unsafe { movsb(dst, src, n) };
            return;
        }
        let wide = if has_avx() { n & !127 } else { 0 };
        // The SSE steps lie at the end of the range (one at most with AVX).
        let sse_end = || {
            if n > wide {
                // SAFETY: the end of the caller's ranges, a multiple of 64.
                unsafe { sse_copy(dst.add(wide), src.add(wide), n - wide) };
            }
        };
        // Out of shared memory a copy shorter than `READ_FORWARD_FROM` runs
        // from the end down (see `avx_copy`): the end first, then the AVX
        // steps descending.
        let down = !into_shared && !reads_forward(n);
        if down {
            sse_end();
        }
        if wide != 0 {
            // SAFETY: a prefix of the caller's ranges; AVX is present.
            unsafe { avx_copy(dst, src, wide, down) };
        }
        if !down {
            sse_end();
        }
    }

    /// Whether a copy of `n` bytes out of shared memory runs front to back.
    #[inline(always)]
    fn reads_forward(n: usize) -> bool {
        n >= super::READ_FORWARD_FROM
    }

    /// How many leading bytes of an `n`-byte copy the bulk routine takes:
    /// whole 64-byte steps on x86-64 (not under Miri, which cannot run
    /// assembly), none elsewhere.
    #[inline(always)]
    fn bulk_len(n: usize) -> usize {
        if cfg!(all(target_arch = "x86_64", not(miri))) {
            n - n % BULK_COPY
        } else {
            0
        }
    }

    /// How many bytes to copy word by word before the bulk loop so that it
    /// stores to 32-byte aligned addresses (stores that cross cache lines
    /// cost most), and how many the loop then takes.
    #[inline(always)]
    fn split(dst: *const u8, n: usize) -> (usize, usize) {
        let head = (32 - dst as usize % 32) % 32;
        if n < head + BULK_COPY {
            return (0, bulk_len(n));
        }
        (head, bulk_len(n - head))
    }

    /// Copies `dst.len()` bytes from `base + at` into private memory.
    ///
    /// # Safety
    ///
    /// See the module: the covering words are valid for reads.
    #[inline(always)]
    pub(super) unsafe fn copy_out(base: *mut u8, at: usize, dst: &mut [u8]) {
        let n = dst.len();
        #[cfg(all(target_arch = "x86_64", not(miri)))]
        if is_short(n) {
            // SAFETY: the source bytes lie inside the covering words (valid,
            // caller); `dst` is a unique borrow of private memory.
            unsafe { short_copy(dst.as_mut_ptr(), base.add(at), n) };
            return;
        }
        let (head, bulk) = split(dst.as_ptr(), n);
        // In the direction `bulk_copy` reads (see `READ_FORWARD_FROM`).
        let forward = reads_forward(n);
        if forward {
            // SAFETY: a prefix of the caller's range.
            unsafe { copy_out_words(base, at, &mut dst[..head]) };
        } else {
            // SAFETY: the end of the caller's range.
            unsafe { copy_out_words(base, at + head + bulk, &mut dst[head + bulk..]) };
        }
        if bulk != 0 {
            #[cfg(all(target_arch = "x86_64", not(miri)))]
            // SAFETY: the source bytes lie inside the covering words (valid,
            // caller); `dst` is a unique borrow of private memory.
            unsafe {
                bulk_copy(dst.as_mut_ptr().add(head), base.add(at + head), bulk, false)
            };
        }
        if forward {
            // SAFETY: the end of the caller's range.
            unsafe { copy_out_words(base, at + head + bulk, &mut dst[head + bulk..]) };
        } else {
            // SAFETY: a prefix of the caller's range.
            unsafe { copy_out_words(base, at, &mut dst[..head]) };
        }
    }

    /// The `N` bytes at `base + at` (`N` at most 8): one atomic load when
    /// they lie inside one aligned word, two when they straddle a boundary.
    ///
    /// # Safety
    ///
    /// As for [`copy_out`].
    #[inline(always)]
    pub(super) unsafe fn load_small<const N: usize>(base: *mut u8, at: usize) -> [u8; N] {
        const { assert!(N <= 8) };
        let word_at = at & !7;
        let in_word = at - word_at;
        // SAFETY: the covering word of byte `at` (caller contract).
        let lo = unsafe { load_word(base, word_at) }.to_ne_bytes();
        let mut out = [0u8; N];
        if in_word + N <= 8 {
            out.copy_from_slice(&lo[in_word..in_word + N]);
        } else {
            let first = 8 - in_word;
            out[..first].copy_from_slice(&lo[in_word..]);
            // SAFETY: the next covering word, inside the range (the value
            // runs into it).
            let hi = unsafe { load_word(base, word_at + 8) }.to_ne_bytes();
            out[first..].copy_from_slice(&hi[..N - first]);
        }
        out
    }

    /// [`copy_out`] one aligned word at a time.
    ///
    /// # Safety
    ///
    /// As for [`copy_out`].
    #[inline]
    unsafe fn copy_out_words(base: *mut u8, at: usize, dst: &mut [u8]) {
        let n = dst.len();
        let mut pos = at;
        let mut done = 0;
        // Whole words in the middle are one load and one 8-byte store each;
        // a partial word at either end copies only its bytes.
        while done < n {
            let word_at = pos & !7;
            let in_word = pos - word_at;
            // SAFETY: `word_at` is 8-aligned and covers byte `pos`, inside
            // the range (caller contract).
            let bytes = unsafe { load_word(base, word_at) }.to_ne_bytes();
            if in_word == 0 && n - done >= 8 {
                dst[done..done + 8].copy_from_slice(&bytes);
                pos += 8;
                done += 8;
            } else {
                let take = (8 - in_word).min(n - done);
                dst[done..done + take].copy_from_slice(&bytes[in_word..in_word + take]);
                pos += take;
                done += take;
            }
        }
    }

    /// Copies `src` into shared memory at `base + at`.
    ///
    /// # Safety
    ///
    /// See the module: the covering words are valid for writes, and the
    /// bytes sharing a word with the range belong to the caller too.
    #[inline(always)]
    pub(super) unsafe fn copy_in(base: *mut u8, at: usize, src: &[u8]) {
        let n = src.len();
        #[cfg(all(target_arch = "x86_64", not(miri)))]
        if is_short(n) {
            // SAFETY: the destination lies inside the covering words (valid
            // for writes, caller); `src` is private memory.
            unsafe { short_copy(base.add(at), src.as_ptr(), n) };
            return;
        }
        // The address only decides the alignment split.
        let (head, bulk) = split(base.wrapping_add(at), n);
        // SAFETY: a prefix of the caller's range.
        unsafe { copy_in_words(base, at, &src[..head]) };
        if bulk != 0 {
            #[cfg(all(target_arch = "x86_64", not(miri)))]
            // SAFETY: the destination lies inside the covering words (valid
            // for writes, caller); `src` is private memory.
            unsafe {
                bulk_copy(base.add(at + head), src.as_ptr().add(head), bulk, true)
            };
        }
        // SAFETY: the rest of the caller's range.
        unsafe { copy_in_words(base, at + head + bulk, &src[head + bulk..]) };
    }

    /// [`copy_in`] one aligned word at a time.
    ///
    /// # Safety
    ///
    /// As for [`copy_in`].
    #[inline]
    unsafe fn copy_in_words(base: *mut u8, at: usize, src: &[u8]) {
        let n = src.len();
        let mut pos = at;
        let mut done = 0;
        while done < n {
            let word_at = pos & !7;
            let in_word = pos - word_at;
            let take = (8 - in_word).min(n - done);
            let word = if take == 8 {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&src[done..done + 8]);
                u64::from_ne_bytes(bytes)
            } else {
                // A partial word: keep its other bytes (the caller's too).
                // SAFETY: as below.
                let mut bytes = unsafe { load_word(base, word_at) }.to_ne_bytes();
                bytes[in_word..in_word + take].copy_from_slice(&src[done..done + take]);
                u64::from_ne_bytes(bytes)
            };
            // SAFETY: `word_at` is 8-aligned, covers byte `pos` and is valid
            // for writes (caller contract).
            unsafe { store_word(base, word_at, word) };
            pos += take;
            done += take;
        }
    }

    /// Copies `n` bytes between two shared ranges.
    ///
    /// # Safety
    ///
    /// As for [`copy_out`] on the source and [`copy_in`] on the destination;
    /// the two ranges do not overlap.
    #[inline]
    pub(super) unsafe fn copy_between(
        dst_base: *mut u8,
        dst_at: usize,
        src_base: *mut u8,
        src_at: usize,
        n: usize,
    ) {
        let bulk = bulk_len(n);
        if bulk != 0 {
            #[cfg(all(target_arch = "x86_64", not(miri)))]
            // SAFETY: both ranges are valid (caller) and disjoint.
            unsafe {
                bulk_copy(dst_base.add(dst_at), src_base.add(src_at), bulk, true)
            };
        }
        // The rest (all of it under Miri) through a small stack buffer.
        let mut buf = [0u8; 256];
        let mut done = bulk;
        while done < n {
            let take = (n - done).min(buf.len());
            // SAFETY: sub-ranges of the caller's ranges.
            unsafe {
                copy_out(src_base, src_at + done, &mut buf[..take]);
                copy_in(dst_base, dst_at + done, &buf[..take]);
            }
            done += take;
        }
    }
}

/// Checks `offset..offset + len` against a view of `size` bytes.
#[inline]
fn check(offset: usize, len: usize, size: usize) -> Result<(), VolatileError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(VolatileError::OutOfBounds { offset, len, size }),
    }
}

/// A read-only view of `len` bytes of peer-writable memory.
///
/// Never a `&[u8]`: every read copies bytes out with atomic (or
/// byte-atomic) accesses, so a peer writing at the same time leaves garbage
/// in the copy, never undefined behaviour. Read what you need once, then
/// check the copy ("snapshot, then validate").
///
/// Reading a ring message in place right behind a fast producer: where the
/// order is yours to choose, read a message shorter than
/// [`READ_FORWARD_FROM`] (512 KiB) from the end back to the start, and a
/// longer one front to back, as copying it out does. Front-to-back reads
/// of a short message make the CPU's stream prefetcher fetch the lines
/// after it, which the producer is writing at that moment, and every such
/// fetch stalls it; a long message's last lines are still in the
/// producer's cache, and reading them first takes them from under its
/// next copy. Measured across two cores, reading one byte per cache line:
/// 1 KiB 7-10 M msg/s front to back, 31-34 M back to front; 1 MiB 29.5
/// GB/s back to front, 32.0 GB/s front to back (medians of ten passes;
/// docs/bench/notes.md).
#[derive(Clone, Copy)]
pub struct VolatileSlice<'a> {
    /// 8-byte aligned; the words covering `start..start + len` are valid.
    base: NonNull<u8>,
    start: usize,
    len: usize,
    _memory: PhantomData<&'a [core::cell::UnsafeCell<u8>]>,
}

/// A writable view of `len` bytes of shared memory that this side owns
/// under the ring protocol (a [`WriteGrant`](crate::WriteGrant)'s payload)
/// but that a hostile peer may still read or write.
pub struct VolatileSliceMut<'a> {
    inner: VolatileSlice<'a>,
    _unique: PhantomData<&'a mut [core::cell::UnsafeCell<u8>]>,
}

// SAFETY: a view is a pointer into memory that is shared by design and only
// ever accessed atomically (see the module), so moving it or sharing it
// between threads creates no data race; the lifetime keeps the memory alive.
unsafe impl Send for VolatileSlice<'_> {}
// SAFETY: see `Send` above.
unsafe impl Sync for VolatileSlice<'_> {}
// SAFETY: as for `VolatileSlice`; writes need `&mut self`, so one thread at
// a time writes through a given view.
unsafe impl Send for VolatileSliceMut<'_> {}
// SAFETY: a shared `&VolatileSliceMut` only reads.
unsafe impl Sync for VolatileSliceMut<'_> {}

impl fmt::Debug for VolatileSlice<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VolatileSlice")
            .field("addr", &(self.base.as_ptr() as usize + self.start))
            .field("len", &self.len)
            .finish()
    }
}

impl fmt::Debug for VolatileSliceMut<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VolatileSliceMut")
            .field(
                "addr",
                &(self.inner.base.as_ptr() as usize + self.inner.start),
            )
            .field("len", &self.inner.len)
            .finish()
    }
}

impl<'a> VolatileSlice<'a> {
    /// A view of `len` bytes at `base + start`.
    ///
    /// # Safety
    ///
    /// `base` is 8-byte aligned; the aligned 8-byte words that cover
    /// `base + start .. base + start + len` are valid for reads for `'a`,
    /// and this process accesses them only through volatile views and
    /// aligned atomics while `'a` lasts (another process may write them).
    #[inline]
    pub(crate) unsafe fn new(base: NonNull<u8>, start: usize, len: usize) -> Self {
        debug_assert!(base.as_ptr() as usize % 8 == 0);
        Self {
            base,
            start,
            len,
            _memory: PhantomData,
        }
    }

    /// Length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a zero-length view.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The address of the view's first byte, for code outside Rust (the C
    /// library hands it to C callers, who access the bytes themselves).
    /// Getting it is safe; using it is the caller's affair: the bytes are
    /// shared memory a hostile peer may change at any moment, and the
    /// pointer is only valid while the view's borrow lasts.
    #[inline]
    pub fn as_ptr(&self) -> *const u8 {
        self.base.as_ptr().wrapping_add(self.start)
    }

    /// The `len` bytes at `offset` within this view.
    #[inline]
    pub fn subslice(&self, offset: usize, len: usize) -> Result<VolatileSlice<'a>, VolatileError> {
        check(offset, len, self.len)?;
        Ok(Self {
            start: self.start + offset,
            len,
            ..*self
        })
    }

    /// The view split in two at `mid`.
    pub fn split_at(&self, mid: usize) -> Result<(Self, Self), VolatileError> {
        Ok((self.subslice(0, mid)?, self.subslice(mid, self.len - mid)?))
    }

    /// Copies the bytes at `offset` into `dst` (exactly `dst.len()` bytes).
    #[inline]
    pub fn read_at(&self, offset: usize, dst: &mut [u8]) -> Result<(), VolatileError> {
        check(offset, dst.len(), self.len)?;
        // SAFETY: in bounds (checked), so inside the covering words that the
        // constructor's contract makes valid.
        unsafe { raw::copy_out(self.base.as_ptr(), self.start + offset, dst) };
        Ok(())
    }

    /// Copies as many bytes as fit from the start of the view into `dst`;
    /// returns how many (the shorter of the two lengths).
    #[inline(always)]
    pub fn copy_to(&self, dst: &mut [u8]) -> usize {
        let n = self.len.min(dst.len());
        // SAFETY: `n <= len`, inside the view.
        unsafe { raw::copy_out(self.base.as_ptr(), self.start, &mut dst[..n]) };
        n
    }

    /// Copies the whole view into `dst`, which must be exactly as long.
    #[inline]
    pub fn copy_to_slice(&self, dst: &mut [u8]) -> Result<(), VolatileError> {
        if dst.len() != self.len {
            return Err(VolatileError::LengthMismatch {
                view: self.len,
                buffer: dst.len(),
            });
        }
        self.read_at(0, dst)
    }

    /// Copies the whole view into the start of `buf` and returns that part:
    /// one snapshot to validate and use, whatever the peer does afterwards.
    pub fn snapshot_into<'b>(&self, buf: &'b mut [u8]) -> Result<&'b mut [u8], VolatileError> {
        let available = buf.len();
        let dst = buf
            .get_mut(..self.len)
            .ok_or(VolatileError::LengthMismatch {
                view: self.len,
                buffer: available,
            })?;
        self.read_at(0, dst)?;
        Ok(dst)
    }

    /// The whole view copied into a new buffer (see [`snapshot_into`](Self::snapshot_into)).
    #[cfg(feature = "alloc")]
    pub fn snapshot(&self) -> alloc::vec::Vec<u8> {
        let mut v = alloc::vec![0u8; self.len];
        self.copy_to(&mut v);
        v
    }

    /// `N` bytes at `offset`, copied out.
    #[inline]
    pub fn read_array<const N: usize>(&self, offset: usize) -> Result<[u8; N], VolatileError> {
        let mut bytes = [0u8; N];
        self.read_at(offset, &mut bytes)?;
        Ok(bytes)
    }

    /// Up to 8 bytes at `offset`, with one or two atomic loads.
    #[inline]
    fn read_small<const N: usize>(&self, offset: usize) -> Result<[u8; N], VolatileError> {
        check(offset, N, self.len)?;
        // SAFETY: in bounds (checked): the covering words are valid
        // (constructor contract).
        Ok(unsafe { raw::load_small::<N>(self.base.as_ptr(), self.start + offset) })
    }

    /// The byte at `offset`.
    #[inline]
    pub fn read_u8(&self, offset: usize) -> Result<u8, VolatileError> {
        Ok(self.read_small::<1>(offset)?[0])
    }

    /// The little-endian `u16` at `offset`.
    #[inline]
    pub fn read_u16_le(&self, offset: usize) -> Result<u16, VolatileError> {
        self.read_small(offset).map(u16::from_le_bytes)
    }

    /// The little-endian `u32` at `offset`.
    #[inline]
    pub fn read_u32_le(&self, offset: usize) -> Result<u32, VolatileError> {
        self.read_small(offset).map(u32::from_le_bytes)
    }

    /// The little-endian `u64` at `offset`. One atomic load when the value
    /// lies inside one aligned word of the region (payloads start 8-byte
    /// aligned, so at offsets that are multiples of 8).
    #[inline]
    pub fn read_u64_le(&self, offset: usize) -> Result<u64, VolatileError> {
        self.read_small(offset).map(u64::from_le_bytes)
    }

    /// A `std::io::Read` over the view, from its start.
    #[cfg(feature = "std")]
    pub fn reader(&self) -> VolatileReader<'a> {
        VolatileReader {
            slice: *self,
            pos: 0,
        }
    }
}

impl<'a> VolatileSliceMut<'a> {
    /// A writable view of `len` bytes at `base + start`.
    ///
    /// # Safety
    ///
    /// As for [`VolatileSlice::new`], and the covering words are valid for
    /// writes and owned by the caller (no other live writable view covers
    /// them).
    #[inline]
    pub(crate) unsafe fn new(base: NonNull<u8>, start: usize, len: usize) -> Self {
        Self {
            // SAFETY: the caller's contract includes `VolatileSlice::new`'s.
            inner: unsafe { VolatileSlice::new(base, start, len) },
            _unique: PhantomData,
        }
    }

    /// Length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.inner.len
    }

    /// True for a zero-length view.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.inner.len == 0
    }

    /// The address of the view's first byte, writable, for code outside
    /// Rust (see [`VolatileSlice::as_ptr`]).
    #[inline]
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.inner.base.as_ptr().wrapping_add(self.inner.start)
    }

    /// The same bytes, read-only.
    #[inline]
    pub fn as_volatile(&self) -> VolatileSlice<'_> {
        self.inner
    }

    /// The `len` bytes at `offset`, writable, borrowed from this view.
    #[inline]
    pub fn subslice_mut(
        &mut self,
        offset: usize,
        len: usize,
    ) -> Result<VolatileSliceMut<'_>, VolatileError> {
        let inner = self.inner.subslice(offset, len)?;
        Ok(VolatileSliceMut {
            inner,
            _unique: PhantomData,
        })
    }

    /// Copies `src` into the view at `offset`.
    #[inline]
    pub fn write_at(&mut self, offset: usize, src: &[u8]) -> Result<(), VolatileError> {
        check(offset, src.len(), self.inner.len)?;
        // SAFETY: in bounds (checked), inside covering words valid for writes
        // and owned by this view (constructor contract).
        unsafe { raw::copy_in(self.inner.base.as_ptr(), self.inner.start + offset, src) };
        Ok(())
    }

    /// Copies as many bytes of `src` as fit to the start of the view;
    /// returns how many.
    #[inline(always)]
    pub fn copy_from(&mut self, src: &[u8]) -> usize {
        let n = self.inner.len.min(src.len());
        // SAFETY: `n <= len`, inside the view (see `write_at`).
        unsafe { raw::copy_in(self.inner.base.as_ptr(), self.inner.start, &src[..n]) };
        n
    }

    /// Fills the whole view from `src`, which must be exactly as long.
    #[inline]
    pub fn copy_from_slice(&mut self, src: &[u8]) -> Result<(), VolatileError> {
        if src.len() != self.inner.len {
            return Err(VolatileError::LengthMismatch {
                view: self.inner.len,
                buffer: src.len(),
            });
        }
        self.write_at(0, src)
    }

    /// Copies as many bytes as fit from another shared view (such as a
    /// message being echoed) to the start of this one; returns how many.
    /// Overlapping views copy as `memmove` does.
    pub fn copy_from_volatile(&mut self, src: &VolatileSlice<'_>) -> usize {
        let n = self.inner.len.min(src.len);
        let (dst_base, dst_at) = (self.inner.base.as_ptr(), self.inner.start);
        let (src_base, src_at) = (src.base.as_ptr(), src.start);
        let (dst_addr, src_addr) = (dst_base as usize + dst_at, src_base as usize + src_at);
        if dst_addr < src_addr.saturating_add(n) && src_addr < dst_addr.saturating_add(n) {
            // Overlap: 64-byte steps through a stack buffer, in the
            // direction that reads each byte before it is overwritten.
            let mut buf = [0u8; 64];
            let steps = n.div_ceil(64);
            for i in 0..steps {
                let step = if dst_addr <= src_addr {
                    i
                } else {
                    steps - 1 - i
                };
                let at = step * 64;
                let take = (n - at).min(64);
                // SAFETY: sub-ranges of both views (`n` is at most either
                // length), each access within one call.
                unsafe {
                    raw::copy_out(src_base, src_at + at, &mut buf[..take]);
                    raw::copy_in(dst_base, dst_at + at, &buf[..take]);
                }
            }
            return n;
        }
        // SAFETY: both ranges lie inside their views (`n` is at most either
        // length) and are disjoint (checked above).
        unsafe { raw::copy_between(dst_base, dst_at, src_base, src_at, n) };
        n
    }

    /// Writes the byte at `offset`.
    #[inline]
    pub fn write_u8(&mut self, offset: usize, value: u8) -> Result<(), VolatileError> {
        self.write_at(offset, &[value])
    }

    /// Writes `value` little-endian at `offset`.
    #[inline]
    pub fn write_u16_le(&mut self, offset: usize, value: u16) -> Result<(), VolatileError> {
        self.write_at(offset, &value.to_le_bytes())
    }

    /// Writes `value` little-endian at `offset`.
    #[inline]
    pub fn write_u32_le(&mut self, offset: usize, value: u32) -> Result<(), VolatileError> {
        self.write_at(offset, &value.to_le_bytes())
    }

    /// Writes `value` little-endian at `offset`.
    #[inline]
    pub fn write_u64_le(&mut self, offset: usize, value: u64) -> Result<(), VolatileError> {
        self.write_at(offset, &value.to_le_bytes())
    }

    /// A `std::io::Write` over the view, from its start.
    #[cfg(feature = "std")]
    pub fn writer(&mut self) -> VolatileWriter<'_> {
        VolatileWriter {
            slice: VolatileSliceMut {
                inner: self.inner,
                _unique: PhantomData,
            },
            pos: 0,
        }
    }

    /// The view turned into a `std::io::Write`, from its start.
    #[cfg(feature = "std")]
    pub fn into_writer(self) -> VolatileWriter<'a> {
        VolatileWriter {
            slice: self,
            pos: 0,
        }
    }
}

/// `std::io::Read` over a [`VolatileSlice`]: each `read` copies the next
/// bytes out; end of file at the end of the view.
#[cfg(feature = "std")]
#[derive(Debug, Clone, Copy)]
pub struct VolatileReader<'a> {
    slice: VolatileSlice<'a>,
    pos: usize,
}

#[cfg(feature = "std")]
impl VolatileReader<'_> {
    /// Bytes read so far.
    pub fn position(&self) -> usize {
        self.pos
    }
}

#[cfg(feature = "std")]
impl std::io::Read for VolatileReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.slice.len - self.pos);
        self.slice.read_at(self.pos, &mut buf[..n])?;
        self.pos += n;
        Ok(n)
    }
}

/// `std::io::Write` over a [`VolatileSliceMut`]: each `write` copies as much
/// as still fits; a full view accepts nothing (so `write_all` fails with
/// `WriteZero`). [`position`](Self::position) is the length to commit.
#[cfg(feature = "std")]
#[derive(Debug)]
pub struct VolatileWriter<'a> {
    slice: VolatileSliceMut<'a>,
    pos: usize,
}

#[cfg(feature = "std")]
impl VolatileWriter<'_> {
    /// Bytes written so far.
    pub fn position(&self) -> usize {
        self.pos
    }
}

#[cfg(feature = "std")]
impl std::io::Write for VolatileWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.slice.len() - self.pos);
        self.slice.write_at(self.pos, &buf[..n])?;
        self.pos += n;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writable view over the whole of `words`, starting `start` bytes in.
    fn view(words: &mut [u64], start: usize, len: usize) -> VolatileSliceMut<'_> {
        assert!(start + len <= words.len() * 8);
        let base = NonNull::from(words).cast::<u8>();
        // SAFETY: the words are a unique borrow for the view's lifetime.
        unsafe { VolatileSliceMut::new(base, start, len) }
    }

    #[test]
    fn out_of_bounds_ranges_are_typed_errors() {
        let mut w = [0u64; 4];
        let mut v = view(&mut w, 3, 20);
        let oob = |offset, len| VolatileError::OutOfBounds {
            offset,
            len,
            size: 20,
        };
        assert_eq!(v.write_at(15, &[0; 6]), Err(oob(15, 6)));
        assert_eq!(v.as_volatile().read_u32_le(17), Err(oob(17, 4)));
        assert_eq!(v.as_volatile().read_u8(20), Err(oob(20, 1)));
        assert_eq!(
            v.as_volatile().subslice(usize::MAX, 2).unwrap_err(),
            oob(usize::MAX, 2)
        );
        assert_eq!(v.subslice_mut(21, 0).unwrap_err(), oob(21, 0));
        assert_eq!(v.as_volatile().split_at(21).unwrap_err(), oob(0, 21));
        assert_eq!(
            v.copy_from_slice(&[0; 19]),
            Err(VolatileError::LengthMismatch {
                view: 20,
                buffer: 19
            })
        );
        assert_eq!(
            v.as_volatile().snapshot_into(&mut [0; 19]).unwrap_err(),
            VolatileError::LengthMismatch {
                view: 20,
                buffer: 19
            }
        );
        // Nothing was written by the refused calls.
        assert_eq!(w, [0; 4]);
    }

    #[test]
    fn unaligned_ranges_touch_only_their_bytes() {
        let mut w = [u64::MAX; 4];
        let mut v = view(&mut w, 3, 20);
        let data: Vec<u8> = (1..=20).collect();
        v.copy_from_slice(&data).unwrap();
        assert_eq!(v.as_volatile().snapshot(), data);
        v.write_u16_le(1, 0xBBAA).unwrap();
        let r = v.as_volatile();
        assert_eq!(r.read_u8(1).unwrap(), 0xAA);
        assert_eq!(r.read_u16_le(1).unwrap(), 0xBBAA);
        assert_eq!(r.read_u32_le(4).unwrap(), u32::from_le_bytes([5, 6, 7, 8]));
        // Straddling two region words (the view starts 3 bytes in).
        let want = u64::from_le_bytes(data[10..18].try_into().unwrap());
        assert_eq!(r.read_u64_le(10).unwrap(), want);
        assert_eq!(
            r.read_u64_le(13),
            Err(VolatileError::OutOfBounds {
                offset: 13,
                len: 8,
                size: 20
            })
        );
        let (a, b) = r.split_at(5).unwrap();
        assert_eq!((a.len(), b.len()), (5, 15));
        assert_eq!(b.read_u8(0).unwrap(), 6);
        let mut bytes = [0u8; 32];
        // SAFETY: the view is gone; plain reads of our own buffer.
        for (i, word) in w.iter().enumerate() {
            bytes[i * 8..i * 8 + 8].copy_from_slice(&word.to_ne_bytes());
        }
        assert_eq!(bytes[..3], [0xFF; 3]);
        assert_eq!(bytes[23..], [0xFF; 9]);
        assert_eq!(bytes[3..6], [1, 0xAA, 0xBB]);
    }

    #[test]
    fn every_length_and_offset_round_trips() {
        // Covers the word path and, off Miri, the short (overlapping
        // vector) and bulk paths, and that none writes outside its range.
        let sizes: Vec<usize> = if cfg!(miri) {
            vec![0, 1, 7, 8, 9, 17]
        } else {
            (0..=140)
                .chain([192, 200, 255, 256, 257, 320, 1024, 1032, 1500, 4096, 5000])
                .collect()
        };
        for len in sizes {
            for start in 0..8 {
                let mut w = vec![u64::MAX; (len + 16) / 8 + 2];
                let mut v = view(&mut w, start, len);
                let data: Vec<u8> = (0..len).map(|i| (i * 7 + start) as u8).collect();
                v.copy_from_slice(&data).unwrap();
                // Copied out to several alignments of the destination
                // (which decide the bulk loop's split), inside guard bytes.
                for at in [0, 3, 17, 32] {
                    let mut out = vec![0xEEu8; len + 64];
                    v.as_volatile()
                        .copy_to_slice(&mut out[at..at + len])
                        .unwrap();
                    assert_eq!(out[at..at + len], data, "len {len} start {start} at {at}");
                    assert!(
                        out[..at].iter().chain(&out[at + len..]).all(|&b| b == 0xEE),
                        "copied outside the buffer, len {len} start {start} at {at}"
                    );
                }
                let bytes: Vec<u8> = w.iter().flat_map(|x| x.to_ne_bytes()).collect();
                assert!(
                    bytes[..start]
                        .iter()
                        .chain(&bytes[start + len..])
                        .all(|&b| b == 0xFF),
                    "wrote outside the range, len {len} start {start}"
                );
            }
        }
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "half a megabyte per copy; the word path is covered above"
    )]
    fn long_copies_out_round_trip_in_either_direction() {
        // Copies out run from the end down below `READ_FORWARD_FROM` and
        // front to back from it: both orders, each with a partial word at
        // either end and several destination alignments.
        for len in [
            READ_FORWARD_FROM - 77,
            READ_FORWARD_FROM,
            READ_FORWARD_FROM + 77,
        ] {
            for start in [0, 5] {
                let mut w = vec![0u64; (len + 16) / 8 + 2];
                let mut v = view(&mut w, start, len);
                let data: Vec<u8> = (0..len).map(|i| (i * 13 + i / 251) as u8).collect();
                v.copy_from_slice(&data).unwrap();
                for at in [0, 3, 32] {
                    let mut out = vec![0xEEu8; len + 64];
                    v.as_volatile()
                        .copy_to_slice(&mut out[at..at + len])
                        .unwrap();
                    assert!(
                        out[at..at + len] == data[..],
                        "len {len} start {start} at {at}"
                    );
                    assert!(
                        out[..at].iter().chain(&out[at + len..]).all(|&b| b == 0xEE),
                        "copied outside the buffer, len {len} start {start} at {at}"
                    );
                }
            }
        }
    }

    #[test]
    fn copies_between_views_including_overlap() {
        let mut w = [0u64; 40];
        let mut v = view(&mut w, 0, 320);
        let data: Vec<u8> = (0..320).map(|i| i as u8).collect();
        v.copy_from_slice(&data).unwrap();
        // Move bytes 0..200 to 100..300 (overlapping, forwards).
        let src = v.as_volatile().subslice(0, 200).unwrap();
        // SAFETY-free reborrow trick not allowed: build a second view.
        let base = v.inner.base;
        // SAFETY: the same buffer; the first view is not used while this
        // one writes.
        let mut dst = unsafe { VolatileSliceMut::new(base, 100, 200) };
        assert_eq!(dst.copy_from_volatile(&src), 200);
        let snap = dst.as_volatile().snapshot();
        assert_eq!(snap, data[..200]);
    }

    #[test]
    fn io_adapters_stop_at_the_end() {
        use std::io::{Read, Write};
        let mut w = [0u64; 2];
        let mut v = view(&mut w, 0, 10);
        let mut wr = v.writer();
        assert_eq!(wr.write(b"hello world").unwrap(), 10);
        assert_eq!(wr.write(b"!").unwrap(), 0);
        assert_eq!(wr.position(), 10);
        let mut s = String::new();
        v.as_volatile().reader().read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello worl");
    }
}
