//! The single-producer/single-consumer ring.
//!
//! A ring is two 64-bit positions and a data area of `capacity` bytes (a
//! power of two). The producer owns `tail`, the consumer owns `head`; both
//! only grow, and `position & (capacity - 1)` is the byte offset in the data
//! area. Records are 8-byte aligned and contiguous:
//!
//! ```text
//! record = len: u32 LE | tag: u32 LE | payload[len] | zero pad to 8
//! ```
//!
//! When a record does not fit before the end of the data area, the producer
//! writes a padding record that covers the rest, and the message starts at
//! offset 0. `docs/PROTOCOL.md` is the normative description.
//!
//! # Trust
//!
//! Each side keeps its own position and the geometry in private memory and
//! treats every word it reads from shared memory as hostile: read once,
//! checked, then used. A failed check poisons the ring: that call and every
//! later one return [`RingError::Corrupt`] without touching shared memory again.

use crate::error::{RingError, Violation};
use crate::sync::{fence, Ordering};
#[cfg(feature = "std")]
use crate::volatile::{VolatileReader, VolatileWriter};
use crate::volatile::{VolatileSlice, VolatileSliceMut};

/// Size of a record header in bytes.
pub const RECORD_HEADER: usize = 8;
/// Tag of a record that carries a message.
pub const TAG_MESSAGE: u32 = 0x4d53_4721;
/// Tag of a record that skips the rest of the data area.
pub const TAG_PADDING: u32 = 0x5044_4121;
/// Smallest ring data area.
pub const MIN_CAPACITY: usize = 64;
/// Largest ring data area (lengths are 32-bit).
pub const MAX_CAPACITY: usize = 1 << 32;

/// The shared words of one ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Word {
    /// Consumer position, written by the consumer only.
    Head,
    /// Producer position, written by the producer only.
    Tail,
    /// Consumer's requests to the producer ([`WAKE_ME`]), written by the
    /// consumer only, on the consumer's cache line.
    ConsumerFlags,
}

/// [`Word::ConsumerFlags`] bit: "I am about to sleep; ring my doorbell
/// after you publish".
pub const WAKE_ME: u64 = 1;

/// Where a ring's positions and data live: a mapped region
/// ([`RegionRing`](crate::RegionRing)) or, for tests and loom models, the
/// heap ([`HeapRing`](crate::HeapRing)).
///
/// Implementations check their own bounds; the ring only ever passes offsets
/// inside `0..capacity()`, 8-aligned for words.
pub trait RingMemory {
    /// Size of the data area in bytes. Read once when a side attaches.
    fn capacity(&self) -> usize;
    /// Loads a position.
    fn load(&self, word: Word, order: Ordering) -> u64;
    /// Stores a position.
    fn store(&self, word: Word, value: u64, order: Ordering);
    /// Loads the 8-byte record header at data offset `offset`.
    fn load_header(&self, offset: usize) -> u64;
    /// Stores the 8-byte record header at data offset `offset`.
    fn store_header(&self, offset: usize, value: u64);
    /// Copies `src` into the data area at `offset`.
    ///
    /// # Safety
    ///
    /// The caller owns `offset..offset + src.len()` under the ring protocol.
    unsafe fn write_bytes(&self, offset: usize, src: &[u8]);
    /// Copies data at `offset` into `dst`.
    ///
    /// # Safety
    ///
    /// The caller owns `offset..offset + dst.len()` under the ring protocol.
    unsafe fn read_bytes(&self, offset: usize, dst: &mut [u8]);
}

/// Ring memory whose data area can be used in place (zero-copy), through
/// volatile views rather than Rust references: the peer may write these
/// bytes at any time (see [`crate::volatile`]).
pub trait DirectMemory: RingMemory {
    /// A read-only view of data bytes.
    fn bytes(&self, offset: usize, len: usize) -> VolatileSlice<'_>;
    /// A writable view of data bytes.
    ///
    /// # Safety
    ///
    /// As for [`RingMemory::write_bytes`], for as long as the view lives.
    unsafe fn bytes_mut(&self, offset: usize, len: usize) -> VolatileSliceMut<'_>;
}

/// Forwards `RingMemory` through a pointer type, so a ring can be shared by
/// reference or by `Arc`.
macro_rules! forward_ring_memory {
    ($($ty:ty),*) => {$(
        impl<T: RingMemory + ?Sized> RingMemory for $ty {
            fn capacity(&self) -> usize {
                (**self).capacity()
            }
            fn load(&self, word: Word, order: Ordering) -> u64 {
                (**self).load(word, order)
            }
            fn store(&self, word: Word, value: u64, order: Ordering) {
                (**self).store(word, value, order)
            }
            fn load_header(&self, offset: usize) -> u64 {
                (**self).load_header(offset)
            }
            fn store_header(&self, offset: usize, value: u64) {
                (**self).store_header(offset, value)
            }
            unsafe fn write_bytes(&self, offset: usize, src: &[u8]) {
                // SAFETY: forwarded with the caller's guarantee.
                unsafe { (**self).write_bytes(offset, src) }
            }
            unsafe fn read_bytes(&self, offset: usize, dst: &mut [u8]) {
                // SAFETY: forwarded with the caller's guarantee.
                unsafe { (**self).read_bytes(offset, dst) }
            }
        }
    )*};
}

forward_ring_memory!(&T);
#[cfg(feature = "alloc")]
forward_ring_memory!(alloc::sync::Arc<T>);

/// Bytes a record with a `len`-byte payload occupies.
pub const fn record_size(len: usize) -> usize {
    RECORD_HEADER + ((len + 7) & !7)
}

/// The largest payload a ring of `capacity` bytes carries. Half the ring
/// minus a header: a record that size always fits contiguously once the ring
/// drains, wherever the wrap falls.
pub const fn max_payload(capacity: usize) -> usize {
    capacity / 2 - RECORD_HEADER
}

const fn header_word(len: u32, tag: u32) -> u64 {
    (len as u64) | ((tag as u64) << 32)
}

/// Private geometry both sides derive from the capacity, once.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    capacity: u64,
    mask: u64,
    max_payload: usize,
}

impl Geometry {
    fn of<M: RingMemory>(mem: &M) -> Result<Self, RingError> {
        let capacity = mem.capacity();
        if !capacity.is_power_of_two() || !(MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) {
            return Err(RingError::BadCapacity { capacity });
        }
        Ok(Self {
            capacity: capacity as u64,
            mask: capacity as u64 - 1,
            max_payload: max_payload(capacity),
        })
    }

    /// Offset of a position in the data area; always `< capacity`.
    #[inline]
    fn offset(&self, position: u64) -> usize {
        // Masked to below `capacity`, which is at most 2^32 and fits usize on
        // the 64-bit targets ivchan supports.
        #[allow(clippy::cast_possible_truncation)]
        let off = (position & self.mask) as usize;
        off
    }
}

/// Checks positions read at attach time: aligned, and no more than a ring
/// apart.
fn check_attach(geo: &Geometry, head: u64, tail: u64) -> Result<(), Violation> {
    for position in [head, tail] {
        if position % 8 != 0 {
            return Err(Violation::Misaligned { position });
        }
    }
    if tail.wrapping_sub(head) > geo.capacity {
        return Err(Violation::TailOutOfRange {
            tail,
            min: head,
            max: head.wrapping_add(geo.capacity),
        });
    }
    Ok(())
}

/// The writing end of a ring.
#[derive(Debug)]
pub struct Producer<M: RingMemory> {
    mem: M,
    geo: Geometry,
    /// Next free position, including staged (unpublished) records.
    tail: u64,
    /// Last value stored to the shared tail.
    published: u64,
    /// Last consumer position seen; reloaded only when the ring looks full.
    head: u64,
    poison: Option<Violation>,
    /// Issue a full fence before publishing (write-combining mappings).
    store_fence: bool,
}

impl<M: RingMemory> Producer<M> {
    /// Attaches to a ring, resuming at the positions stored in it.
    pub fn attach(mem: M) -> Result<Self, RingError> {
        let geo = Geometry::of(&mem)?;
        // SYNC POINT: pairs with the consumer's Release store of head.
        let head = mem.load(Word::Head, Ordering::Acquire);
        let tail = mem.load(Word::Tail, Ordering::Relaxed);
        check_attach(&geo, head, tail)?;
        Ok(Self {
            mem,
            geo,
            tail,
            published: tail,
            head,
            poison: None,
            store_fence: false,
        })
    }

    /// Fences before every publish. Needed when the data area is mapped
    /// write-combining (`resource2_wc`): a Release store alone does not
    /// order earlier write-combined stores on x86.
    pub fn set_store_fence(&mut self, on: bool) {
        self.store_fence = on;
    }

    /// The largest payload [`reserve`](Self::reserve) accepts.
    pub fn max_message(&self) -> usize {
        self.geo.max_payload
    }

    /// Size of the data area in bytes.
    pub fn capacity(&self) -> usize {
        self.mem.capacity()
    }

    /// The published producer position (bytes ever committed).
    pub fn position(&self) -> u64 {
        self.published
    }

    /// True when staged records wait for [`publish`](Self::publish).
    #[inline]
    pub fn has_unpublished(&self) -> bool {
        self.tail != self.published
    }

    /// The violation that poisoned this end, if any.
    pub fn poisoned(&self) -> Option<Violation> {
        self.poison
    }

    /// Gives access to the ring memory (for notification words and tests).
    pub fn memory(&self) -> &M {
        &self.mem
    }

    #[inline]
    fn fail(&mut self, v: Violation) -> RingError {
        self.poison = Some(v);
        RingError::Corrupt(v)
    }

    /// Reloads the consumer position and checks it lies between the last
    /// one seen and what we published.
    #[inline]
    fn refresh_head(&mut self) -> Result<(), RingError> {
        // SYNC POINT: pairs with the consumer's Release store of head, so its
        // reads of the records it released happen before we overwrite them.
        let head = self.mem.load(Word::Head, Ordering::Acquire);
        if head % 8 != 0 {
            return Err(self.fail(Violation::Misaligned { position: head }));
        }
        if head.wrapping_sub(self.head) > self.published.wrapping_sub(self.head) {
            return Err(self.fail(Violation::HeadOutOfRange {
                head,
                min: self.head,
                max: self.published,
            }));
        }
        self.head = head;
        Ok(())
    }

    /// Reserves room for a `len`-byte message. `Ok(None)` means the ring is
    /// full for now; the grant is written in place, then committed or staged.
    /// Dropping a grant abandons it.
    #[inline(always)]
    pub fn reserve(&mut self, len: usize) -> Result<Option<WriteGrant<'_, M>>, RingError> {
        // The common case, kept small enough to inline into the caller so
        // the grant stays in registers: a healthy end, a record that fits
        // before the wrap and in the space already known free. Everything
        // else (errors, padding, reloading `head`) takes the slow path.
        if self.poison.is_none() && len <= self.geo.max_payload {
            let record = record_size(len) as u64;
            let offset = self.geo.offset(self.tail);
            let free = self.geo.capacity - self.tail.wrapping_sub(self.head);
            if record <= self.geo.capacity - offset as u64 && record <= free {
                return Ok(Some(WriteGrant {
                    producer: self,
                    pad: 0,
                    record_offset: offset,
                    len,
                }));
            }
        }
        self.reserve_slow(len)
    }

    /// [`reserve`](Self::reserve) in full: checks, padding, head reloads.
    #[cold]
    #[inline(never)]
    fn reserve_slow(&mut self, len: usize) -> Result<Option<WriteGrant<'_, M>>, RingError> {
        if let Some(v) = self.poison {
            return Err(RingError::Corrupt(v));
        }
        if len > self.geo.max_payload {
            return Err(RingError::TooLarge {
                len,
                max: self.geo.max_payload,
            });
        }
        let record = record_size(len) as u64;
        let offset = self.geo.offset(self.tail);
        let to_end = self.geo.capacity - offset as u64;
        let pad = if record <= to_end { 0 } else { to_end };
        let needed = pad + record;
        if self.geo.capacity - self.tail.wrapping_sub(self.head) < needed {
            self.refresh_head()?;
            if self.geo.capacity - self.tail.wrapping_sub(self.head) < needed {
                return Ok(None);
            }
        }
        let record_offset = if pad == 0 {
            offset
        } else {
            // The space up to the wrap is free (checked above), so the
            // padding header can go in now; it is published with the message.
            // `to_end` is at most the capacity, at most 2^32, and at least 8.
            #[allow(clippy::cast_possible_truncation)]
            let skip = (to_end as usize - RECORD_HEADER) as u32;
            self.mem
                .store_header(offset, header_word(skip, TAG_PADDING));
            0
        };
        Ok(Some(WriteGrant {
            producer: self,
            pad,
            record_offset,
            len,
        }))
    }

    /// Copies `msg` into the ring and publishes it. `Ok(false)` means the ring
    /// is full for now.
    #[inline]
    pub fn send(&mut self, msg: &[u8]) -> Result<bool, RingError> {
        match self.reserve(msg.len())? {
            None => Ok(false),
            Some(mut grant) => {
                grant.write(0, msg)?;
                grant.commit(msg.len())?;
                Ok(true)
            }
        }
    }

    /// Publishes every staged record with one store.
    #[inline(always)]
    pub fn publish(&mut self) {
        if self.tail != self.published {
            if self.store_fence {
                // Drains write-combining buffers before the index store.
                fence(Ordering::SeqCst);
            }
            // SYNC POINT: pairs with the consumer's Acquire load of tail; the
            // record headers and payloads written before are visible to it.
            self.mem.store(Word::Tail, self.tail, Ordering::Release);
            self.published = self.tail;
        }
    }

    /// Whether the consumer asked to be woken (see
    /// [`Consumer::prepare_to_sleep`]). Call after publishing, and ring the
    /// consumer's doorbell when it says so; costs a full fence, so call it
    /// only when notifications are in use. A poisoned end never asks.
    #[inline]
    pub fn wants_wake(&self) -> bool {
        if self.poison.is_some() {
            return false;
        }
        // SYNC POINT: orders our Release store of tail before the load of
        // the flag; pairs with the fence in `Consumer::prepare_to_sleep`
        // (store flag, fence, load tail). At least one side sees the
        // other's store, so a message is never left with its reader asleep.
        fence(Ordering::SeqCst);
        // The peer's word: any value with the bit set only costs a ring.
        self.mem.load(Word::ConsumerFlags, Ordering::Relaxed) & WAKE_ME != 0
    }

    /// Bytes free as of the last consumer position seen (a lower bound).
    #[inline]
    pub fn free_bytes(&self) -> usize {
        let used = self.tail.wrapping_sub(self.head);
        // Both are at most the capacity (2^32).
        #[allow(clippy::cast_possible_truncation)]
        let free = (self.geo.capacity - used) as usize;
        free
    }
}

/// Room for one message, reserved by [`Producer::reserve`].
///
/// Fill it with [`write`](Self::write), through
/// [`volatile_mut`](Self::volatile_mut) (typed writes, sub-views) or
/// [`writer`](Self::writer) (`std::io::Write`), then
/// [`commit`](Self::commit) the length written. Never a `&mut [u8]`: a
/// hostile consumer may touch these bytes while we write them.
#[derive(Debug)]
pub struct WriteGrant<'a, M: RingMemory> {
    producer: &'a mut Producer<M>,
    /// Padding bytes skipped before the record.
    pad: u64,
    record_offset: usize,
    len: usize,
}

impl<M: RingMemory> WriteGrant<'_, M> {
    /// Reserved payload length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a zero-length reservation.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies `src` into the payload at `at`.
    #[inline(always)]
    pub fn write(&mut self, at: usize, src: &[u8]) -> Result<(), RingError> {
        let end = at.saturating_add(src.len());
        if end > self.len {
            return Err(RingError::OutOfGrant { end, len: self.len });
        }
        // SAFETY: the range lies inside this grant's record (checked), which
        // the consumer cannot read until it is published and which no other
        // grant covers while this one borrows the producer mutably.
        unsafe {
            self.producer
                .mem
                .write_bytes(self.record_offset + RECORD_HEADER + at, src)
        };
        Ok(())
    }

    #[inline(always)]
    fn finish(&mut self, len: usize) -> Result<(), RingError> {
        if len > self.len {
            return Err(RingError::OutOfGrant {
                end: len,
                len: self.len,
            });
        }
        // `len` is at most the max payload, below 2^31.
        #[allow(clippy::cast_possible_truncation)]
        let word = header_word(len as u32, TAG_MESSAGE);
        let p = &mut *self.producer;
        p.mem.store_header(self.record_offset, word);
        p.tail = p
            .tail
            .wrapping_add(self.pad)
            .wrapping_add(record_size(len) as u64);
        Ok(())
    }

    /// Finishes the message with its first `len` bytes and publishes it
    /// (and every record staged before it).
    #[inline(always)]
    pub fn commit(mut self, len: usize) -> Result<(), RingError> {
        self.finish(len)?;
        self.producer.publish();
        Ok(())
    }

    /// Finishes the message with its first `len` bytes without publishing;
    /// [`Producer::publish`] makes it visible, together with later ones.
    #[inline(always)]
    pub fn stage(mut self, len: usize) -> Result<(), RingError> {
        self.finish(len)
    }
}

/// In-place access, for ring memory that allows it (a mapped region).
impl<M: DirectMemory> WriteGrant<'_, M> {
    /// The payload as a writable volatile view: typed writes, sub-views,
    /// copies from other views. Never a `&mut [u8]`: a hostile consumer may
    /// read or write these bytes while we fill them.
    #[inline]
    pub fn volatile_mut(&mut self) -> VolatileSliceMut<'_> {
        // SAFETY: the payload lies inside this grant's unpublished record,
        // owned by the producer alone while the grant (borrowed mutably for
        // the view's lifetime) lives.
        unsafe {
            self.producer
                .mem
                .bytes_mut(self.record_offset + RECORD_HEADER, self.len)
        }
    }

    /// The payload as a read-only volatile view.
    #[inline]
    pub fn volatile(&self) -> VolatileSlice<'_> {
        self.producer
            .mem
            .bytes(self.record_offset + RECORD_HEADER, self.len)
    }

    /// A `std::io::Write` over the payload, from its start; its
    /// [`position`](crate::volatile::VolatileWriter::position) is the length
    /// to [`commit`](Self::commit).
    #[cfg(feature = "std")]
    #[inline]
    pub fn writer(&mut self) -> VolatileWriter<'_> {
        // SAFETY: as in `volatile_mut`.
        let view = unsafe {
            self.producer
                .mem
                .bytes_mut(self.record_offset + RECORD_HEADER, self.len)
        };
        view.into_writer()
    }
}

/// The reading end of a ring.
#[derive(Debug)]
pub struct Consumer<M: RingMemory> {
    mem: M,
    geo: Geometry,
    /// Next record to read, including staged (unpublished) releases.
    head: u64,
    /// Last value stored to the shared head.
    published: u64,
    /// Last producer position seen; reloaded only when the ring looks empty.
    tail: u64,
    /// Bytes the last reload of `tail` found (see `last_look_found`).
    found: u64,
    poison: Option<Violation>,
}

impl<M: RingMemory> Consumer<M> {
    /// Attaches to a ring, resuming at the positions stored in it.
    pub fn attach(mem: M) -> Result<Self, RingError> {
        let geo = Geometry::of(&mem)?;
        let head = mem.load(Word::Head, Ordering::Relaxed);
        // SYNC POINT: pairs with the producer's Release store of tail.
        let tail = mem.load(Word::Tail, Ordering::Acquire);
        check_attach(&geo, head, tail)?;
        Ok(Self {
            mem,
            geo,
            head,
            published: head,
            tail,
            found: 0,
            poison: None,
        })
    }

    /// The largest payload the producer may send.
    pub fn max_message(&self) -> usize {
        self.geo.max_payload
    }

    /// Size of the data area in bytes.
    pub fn capacity(&self) -> usize {
        self.mem.capacity()
    }

    /// The published consumer position (bytes ever released).
    pub fn position(&self) -> u64 {
        self.published
    }

    /// The violation that poisoned this end, if any.
    pub fn poisoned(&self) -> Option<Violation> {
        self.poison
    }

    /// Gives access to the ring memory (for notification words and tests).
    pub fn memory(&self) -> &M {
        &self.mem
    }

    #[inline]
    fn fail(&mut self, v: Violation) -> RingError {
        self.poison = Some(v);
        RingError::Corrupt(v)
    }

    /// Reloads the producer position and checks it did not move backwards
    /// nor more than a ring ahead of what we released.
    #[inline(always)]
    fn refresh_tail(&mut self) -> Result<(), RingError> {
        // SYNC POINT: pairs with the producer's Release store of tail, so the
        // records it covers are fully written before we read them.
        let tail = self.mem.load(Word::Tail, Ordering::Acquire);
        let ahead = tail.wrapping_sub(self.published);
        if tail % 8 != 0
            || ahead > self.geo.capacity
            || ahead < self.tail.wrapping_sub(self.published)
        {
            return Err(self.bad_tail(tail));
        }
        self.found = tail.wrapping_sub(self.tail);
        self.tail = tail;
        Ok(())
    }

    /// Poisons the ring with what is wrong with `tail` (see `refresh_tail`).
    #[cold]
    #[inline(never)]
    fn bad_tail(&mut self, tail: u64) -> RingError {
        if tail % 8 != 0 {
            return self.fail(Violation::Misaligned { position: tail });
        }
        self.fail(Violation::TailOutOfRange {
            tail,
            min: self.tail,
            max: self.published.wrapping_add(self.geo.capacity),
        })
    }

    /// Looks at the next message without consuming it. `Ok(None)` means the
    /// ring is empty for now.
    #[inline(always)]
    pub fn peek(&mut self) -> Result<Option<ReadGrant<'_, M>>, RingError> {
        // The common case, small enough to inline: a healthy end and a
        // message record whose header (read once, here) passes every check.
        // Anything else (padding, a header that fails a check) takes the
        // slow path, which reads the header anew and checks its own copy. A
        // ring that looks empty is looked at again here, not in the slow
        // path: a consumer that keeps up finds every message this way, and
        // returning its grant from an out-of-line call costs a trip through
        // the stack per message.
        if let Some(v) = self.poison {
            return Err(RingError::Corrupt(v));
        }
        if self.tail == self.head {
            self.refresh_tail()?;
            if self.tail == self.head {
                return Ok(None);
            }
        }
        let available = self.tail.wrapping_sub(self.head);
        let offset = self.geo.offset(self.head);
        let word = self.mem.load_header(offset);
        #[allow(clippy::cast_possible_truncation)]
        let (len, tag) = (word as u32 as usize, (word >> 32) as u32);
        if tag == TAG_MESSAGE && len <= self.geo.max_payload {
            let record = record_size(len) as u64;
            if record <= available && record <= self.geo.capacity - offset as u64 {
                return Ok(Some(ReadGrant {
                    consumer: self,
                    offset: offset + RECORD_HEADER,
                    len,
                    record,
                }));
            }
        }
        self.peek_slow()
    }

    /// [`peek`](Self::peek) in full: reloads, padding, every violation.
    #[cold]
    #[inline(never)]
    fn peek_slow(&mut self) -> Result<Option<ReadGrant<'_, M>>, RingError> {
        if let Some(v) = self.poison {
            return Err(RingError::Corrupt(v));
        }
        // At most one padding record precedes a message, so this loop runs
        // at most twice; a second padding in a row is a violation.
        for _ in 0..2 {
            let mut available = self.tail.wrapping_sub(self.head);
            if available == 0 {
                self.refresh_tail()?;
                available = self.tail.wrapping_sub(self.head);
                if available == 0 {
                    return Ok(None);
                }
            }
            let position = self.head;
            let offset = self.geo.offset(position);
            // Read the header once; everything below uses this copy.
            let word = self.mem.load_header(offset);
            #[allow(clippy::cast_possible_truncation)]
            let (len, tag) = (word as u32, (word >> 32) as u32);
            match tag {
                TAG_PADDING => {
                    let skip = self.geo.capacity - offset as u64;
                    if offset == 0 || u64::from(len) + RECORD_HEADER as u64 != skip {
                        return Err(self.fail(Violation::BadPadding { position, len }));
                    }
                    if skip > available {
                        return Err(self.fail(Violation::RecordPastTail {
                            position,
                            needed: skip,
                            available,
                        }));
                    }
                    self.head = self.head.wrapping_add(skip);
                }
                TAG_MESSAGE => {
                    let max = self.geo.max_payload;
                    if len as usize > max {
                        #[allow(clippy::cast_possible_truncation)]
                        let max = max as u32;
                        return Err(self.fail(Violation::LengthTooLarge { position, len, max }));
                    }
                    let record = record_size(len as usize) as u64;
                    if record > available {
                        return Err(self.fail(Violation::RecordPastTail {
                            position,
                            needed: record,
                            available,
                        }));
                    }
                    if offset as u64 + record > self.geo.capacity {
                        return Err(self.fail(Violation::RecordPastWrap { position, len }));
                    }
                    return Ok(Some(ReadGrant {
                        consumer: self,
                        offset: offset + RECORD_HEADER,
                        len: len as usize,
                        record,
                    }));
                }
                tag => return Err(self.fail(Violation::BadTag { position, tag })),
            }
        }
        let position = self.head;
        Err(self.fail(Violation::BadPadding { position, len: 0 }))
    }

    /// Copies the next message into `buf` and releases it. Returns its
    /// length, or `Ok(None)` when the ring is empty. A message longer than
    /// `buf` stays queued and yields [`RingError::BufferTooSmall`].
    #[inline]
    pub fn recv_into(&mut self, buf: &mut [u8]) -> Result<Option<usize>, RingError> {
        let Some(grant) = self.peek()? else {
            return Ok(None);
        };
        let len = grant.len();
        let available = buf.len();
        let dst = buf.get_mut(..len).ok_or(RingError::BufferTooSmall {
            needed: len,
            available,
        })?;
        grant.read(0, dst)?;
        grant.release();
        Ok(Some(len))
    }

    /// Publishes every staged release with one store.
    #[inline(always)]
    pub fn publish(&mut self) {
        if self.head != self.published {
            // SYNC POINT: pairs with the producer's Acquire load of head; our
            // reads of the released records happen before it reuses them.
            self.mem.store(Word::Head, self.head, Ordering::Release);
            self.published = self.head;
        }
    }

    /// Before sleeping on a doorbell: asks the producer to ring after its
    /// next publish, then looks at the ring once more. `Ok(true)`: still
    /// empty, sleep until rung (then call [`finish_sleep`](Self::finish_sleep)).
    /// `Ok(false)`: a message arrived meanwhile; the request is withdrawn.
    pub fn prepare_to_sleep(&mut self) -> Result<bool, RingError> {
        if let Some(v) = self.poison {
            return Err(RingError::Corrupt(v));
        }
        if self.tail != self.head {
            return Ok(false);
        }
        self.mem
            .store(Word::ConsumerFlags, WAKE_ME, Ordering::Relaxed);
        // SYNC POINT: orders the flag store before the tail load; pairs with
        // the fence in `Producer::wants_wake` (store tail, fence, load flag).
        fence(Ordering::SeqCst);
        self.refresh_tail()?;
        if self.tail != self.head {
            self.finish_sleep();
            return Ok(false);
        }
        Ok(true)
    }

    /// After a sleep (rung or timed out): withdraws the wake-up request.
    pub fn finish_sleep(&mut self) {
        self.mem.store(Word::ConsumerFlags, 0, Ordering::Relaxed);
    }

    /// Bytes of records taken with [`ReadGrant::stage`] and not yet handed
    /// back with [`publish`](Self::publish).
    #[inline]
    pub fn staged_bytes(&self) -> usize {
        // At most the capacity (2^32).
        #[allow(clippy::cast_possible_truncation)]
        let staged = self.head.wrapping_sub(self.published) as usize;
        staged
    }

    /// Bytes the last look at the producer's position found published
    /// (the backlog it brought, in whole records): how far ahead the
    /// producer had got. A reader that paces its looks keeps this below a
    /// quarter of the ring ([`Waiter::before_look`](crate::Waiter::before_look)).
    #[inline]
    pub fn last_look_found(&self) -> usize {
        // At most the capacity (2^32), checked when `tail` was loaded.
        #[allow(clippy::cast_possible_truncation)]
        let found = self.found as usize;
        found
    }

    /// Bytes published and not yet consumed, as of the last producer
    /// position seen.
    #[inline]
    pub fn pending_bytes(&self) -> usize {
        #[allow(clippy::cast_possible_truncation)]
        let pending = self.tail.wrapping_sub(self.head) as usize;
        pending
    }
}

/// A message borrowed in place by [`Consumer::peek`].
///
/// An honest producer never touches it until it is released; a hostile one
/// may change its bytes at any time. So the payload is never a `&[u8]`:
/// read it through [`volatile`](Self::volatile) (typed reads, sub-views,
/// [`reader`](Self::reader)) or copy it out once with
/// [`snapshot_into`](Self::snapshot_into) / [`read`](Self::read) and check
/// the copy. `docs/PROTOCOL.md` section 6.1 says what a reader may assume.
///
/// ```
/// # use ivchan_protocol::{Header, InitParams, Region, Side};
/// # let mut memory = vec![0u64; (1 << 20) / 8];
/// # let header = Header::create(Region::from_words(&mut memory),
/// #     &InitParams { uuid: [7; 16], name: "doc", ring_size: None })?;
/// # let (mut tx, _) = header.split(Side::Host)?;
/// # let (_, mut rx) = header.split(Side::Guest)?;
/// # tx.send(&[3, 0, 0, 0, b'a', b'b', b'c'])?;
/// let msg = rx.peek()?.expect("a message");
/// // Snapshot, then validate: one copy, checked, then used.
/// let mut buf = [0u8; 64];
/// let copy = msg.snapshot_into(&mut buf)?;
/// let n = u32::from_le_bytes(copy[..4].try_into()?) as usize;
/// let body = copy.get(4..4 + n).ok_or("bad length")?;
/// assert_eq!(body, b"abc");
/// msg.release();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct ReadGrant<'a, M: RingMemory> {
    consumer: &'a mut Consumer<M>,
    offset: usize,
    len: usize,
    record: u64,
}

impl<M: RingMemory> ReadGrant<'_, M> {
    /// Payload length (checked against the ring's geometry).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty message.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies payload bytes starting at `at` into `dst`.
    #[inline(always)]
    pub fn read(&self, at: usize, dst: &mut [u8]) -> Result<(), RingError> {
        let end = at.saturating_add(dst.len());
        if end > self.len {
            return Err(RingError::OutOfGrant { end, len: self.len });
        }
        // SAFETY: inside this published, unreleased record (checked above),
        // which the producer does not reuse until we release it.
        unsafe { self.consumer.mem.read_bytes(self.offset + at, dst) };
        Ok(())
    }

    /// Copies the whole payload into the start of `buf` and returns that
    /// part: one snapshot to check and use ("snapshot, then validate").
    #[inline]
    pub fn snapshot_into<'b>(&self, buf: &'b mut [u8]) -> Result<&'b mut [u8], RingError> {
        let available = buf.len();
        let dst = buf.get_mut(..self.len).ok_or(RingError::BufferTooSmall {
            needed: self.len,
            available,
        })?;
        self.read(0, dst)?;
        Ok(dst)
    }

    /// The whole payload copied into a new buffer.
    #[cfg(feature = "alloc")]
    pub fn to_vec(&self) -> alloc::vec::Vec<u8> {
        let mut v = alloc::vec![0u8; self.len];
        // The buffer is exactly the grant's length.
        let _ = self.read(0, &mut v);
        v
    }

    /// Consumes the message and publishes the new position (and every
    /// release staged before it).
    #[inline(always)]
    pub fn release(self) {
        let c = self.consumer;
        c.head = c.head.wrapping_add(self.record);
        c.publish();
    }

    /// Consumes the message without publishing; [`Consumer::publish`] hands
    /// the space back to the producer, together with later releases.
    #[inline(always)]
    pub fn stage(self) {
        let c = self.consumer;
        c.head = c.head.wrapping_add(self.record);
    }
}

/// In-place access, for ring memory that allows it (a mapped region).
impl<M: DirectMemory> ReadGrant<'_, M> {
    /// The payload as a volatile view: bytes read in place are copied out
    /// with atomic accesses, each read a fresh look at memory a hostile
    /// producer may be rewriting. Copy what you check once
    /// ([`VolatileSlice::snapshot_into`], the typed reads), then use the copy.
    #[inline]
    pub fn volatile(&self) -> VolatileSlice<'_> {
        self.consumer.mem.bytes(self.offset, self.len)
    }

    /// A `std::io::Read` over the payload.
    #[cfg(feature = "std")]
    pub fn reader(&self) -> VolatileReader<'_> {
        self.volatile().reader()
    }
}
