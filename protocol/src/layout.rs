//! The region layout, version 1: header, part table, side blocks and the two
//! rings. `docs/PROTOCOL.md` gives the same facts as byte offsets.
//!
//! The header is written by the host once (magic last, with Release) and
//! then only read. Everything read from it is read once into a private
//! [`Layout`] and checked; rings and side blocks are located from that copy,
//! never from the shared header again.

use crate::error::{LayoutError, RingError};
use crate::region::Region;
use crate::ring::{Consumer, DirectMemory, Producer, RingMemory, Word, MAX_CAPACITY};
use crate::sync::Ordering;
use crate::volatile::{VolatileSlice, VolatileSliceMut};

/// `b"IVCHANRG"` read as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"IVCHANRG");
/// Major version: a reader refuses any other.
pub const VERSION_MAJOR: u16 = 1;
/// Minor version: later minors only add compatible fields.
pub const VERSION_MINOR: u16 = 1;
/// Bytes reserved for the header at offset 0.
pub const HEADER_SIZE: usize = 4096;
/// Bytes of one ring control block: producer line, consumer line.
pub const CONTROL_SIZE: usize = 256;
/// Smallest region ivchan uses.
pub const MIN_REGION_SIZE: usize = 1 << 20;
/// Smallest ring data area in a region.
pub const MIN_RING_SIZE: usize = 4096;
/// Length of the channel-name field.
pub const NAME_LEN: usize = 32;
/// Incompatible feature bits this build understands (none yet).
pub const KNOWN_INCOMPAT_FEATURES: u32 = 0;
/// Compatible feature bit: the consumer-flags word and the side blocks'
/// doorbell addresses are in use (protocol 1.1).
pub const FEATURE_NOTIFY: u32 = 1;

/// Byte offsets of header fields (all little-endian, 8-byte words).
pub mod offsets {
    /// u64 magic, [`MAGIC`](super::MAGIC); written last.
    pub const MAGIC: usize = 0x00;
    /// u16 major | u16 minor << 16 | u32 header size << 32.
    pub const VERSION: usize = 0x08;
    /// u32 incompatible features | u32 compatible features << 32.
    pub const FEATURES: usize = 0x10;
    /// u64 region size in bytes.
    pub const REGION_SIZE: usize = 0x18;
    /// 16 bytes: the VM UUID in RFC 4122 byte order.
    pub const UUID: usize = 0x20;
    /// 32 bytes: channel name, UTF-8, NUL-padded.
    pub const NAME: usize = 0x30;
    /// u32 number of parts (4) | u32 reserved.
    pub const PART_COUNT: usize = 0x50;
    /// Part table: 4 × (u64 offset, u64 size).
    pub const PARTS: usize = 0x58;
    /// Host side block (128 bytes).
    pub const HOST_SIDE: usize = 0x100;
    /// Guest side block (128 bytes).
    pub const GUEST_SIDE: usize = 0x180;
    /// In a side block: u64 session epoch.
    pub const SIDE_EPOCH: usize = 0x00;
    /// In a side block: u64 heartbeat counter.
    pub const SIDE_HEARTBEAT: usize = 0x08;
    /// In a side block: u64 state.
    pub const SIDE_STATE: usize = 0x10;
    /// In a side block: u64 doorbell address (1.1): bit 63 set when present,
    /// bits 16..32 the vector count, bits 0..16 the ivshmem peer id to ring.
    pub const SIDE_DOORBELL: usize = 0x18;
    /// In a ring control block: u64 producer position (tail).
    pub const RING_TAIL: usize = 0x00;
    /// In a ring control block: u64 consumer position (head).
    pub const RING_HEAD: usize = 0x80;
    /// In a ring control block: u64 consumer flags (`WAKE_ME`).
    pub const RING_CONSUMER_FLAGS: usize = 0x88;
}

/// Index of each part in the table.
pub mod parts {
    /// Host→guest ring control block.
    pub const H2G_CONTROL: usize = 0;
    /// Host→guest ring data area.
    pub const H2G_DATA: usize = 1;
    /// Guest→host ring control block.
    pub const G2H_CONTROL: usize = 2;
    /// Guest→host ring data area.
    pub const G2H_DATA: usize = 3;
    /// Number of parts in version 1.
    pub const COUNT: usize = 4;
}

/// Which side of the channel a process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The host agent.
    Host,
    /// The guest agent.
    Guest,
}

impl Side {
    /// The other side.
    pub fn peer(self) -> Self {
        match self {
            Self::Host => Self::Guest,
            Self::Guest => Self::Host,
        }
    }

    fn block(self) -> usize {
        match self {
            Self::Host => offsets::HOST_SIDE,
            Self::Guest => offsets::GUEST_SIDE,
        }
    }
}

/// Direction of a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Host produces, guest consumes.
    HostToGuest,
    /// Guest produces, host consumes.
    GuestToHost,
}

/// A side's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// Never attached (0).
    Absent,
    /// Attached and serving (1).
    Ready,
    /// Detached cleanly (2).
    Closed,
}

impl PeerState {
    fn to_word(self) -> u64 {
        match self {
            Self::Absent => 0,
            Self::Ready => 1,
            Self::Closed => 2,
        }
    }

    fn from_word(value: u64) -> Result<Self, LayoutError> {
        match value {
            0 => Ok(Self::Absent),
            1 => Ok(Self::Ready),
            2 => Ok(Self::Closed),
            value => Err(LayoutError::BadState { value }),
        }
    }
}

/// One read of a side block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SideStatus {
    /// Session counter: a new value means the side (re)attached.
    pub epoch: u64,
    /// Liveness counter: it moves while the side is alive.
    pub heartbeat: u64,
    /// Lifecycle state.
    pub state: PeerState,
}

/// How to ring a side: its ivshmem peer id and vector count, published in
/// its side block when it runs on an `ivshmem-doorbell` device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DoorbellAddress {
    /// Peer id on the ivshmem server (the host agent is 0).
    pub peer: u16,
    /// Number of interrupt vectors it listens on.
    pub vectors: u16,
}

const DOORBELL_PRESENT: u64 = 1 << 63;

/// Where one ring lives in the region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingPlace {
    /// Offset of the control block.
    pub control: usize,
    /// Offset of the data area.
    pub data: usize,
    /// Size of the data area (a power of two).
    pub size: usize,
}

/// What to write into a fresh header.
#[derive(Debug, Clone, Copy)]
pub struct InitParams<'n> {
    /// The VM's UUID, RFC 4122 byte order.
    pub uuid: [u8; 16],
    /// Channel name (at most 32 bytes of UTF-8).
    pub name: &'n str,
    /// Data area per ring; `None` picks a quarter of the region.
    pub ring_size: Option<usize>,
}

/// The checked, private copy of a region's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Region size in bytes.
    pub region_size: usize,
    /// Minor version found in the region.
    pub version_minor: u16,
    /// Compatible feature bits found (informational).
    pub compat_features: u32,
    /// VM UUID, RFC 4122 byte order.
    pub uuid: [u8; 16],
    /// Channel name, NUL-padded.
    pub name: [u8; NAME_LEN],
    /// Host→guest ring.
    pub host_to_guest: RingPlace,
    /// Guest→host ring.
    pub guest_to_host: RingPlace,
}

impl Layout {
    /// The channel name, if it is valid UTF-8 (trailing NULs removed).
    pub fn name_str(&self) -> Option<&str> {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
        core::str::from_utf8(&self.name[..end]).ok()
    }

    /// The ring going in `direction`.
    pub fn ring(&self, direction: Direction) -> RingPlace {
        match direction {
            Direction::HostToGuest => self.host_to_guest,
            Direction::GuestToHost => self.guest_to_host,
        }
    }

    /// The default layout for a region of `region_size` bytes.
    fn plan(
        region_size: usize,
        ring_size: Option<usize>,
    ) -> Result<[(usize, usize); 4], LayoutError> {
        if region_size < MIN_REGION_SIZE {
            return Err(LayoutError::RegionTooSmall {
                len: region_size,
                min: MIN_REGION_SIZE,
            });
        }
        if !region_size.is_power_of_two() {
            return Err(LayoutError::RegionNotPowerOfTwo { len: region_size });
        }
        // With a power-of-two region, two power-of-two rings plus the header
        // fit at most a quarter each. Each ring is aligned to its own size
        // (good for huge pages); the last quarter is left for future parts.
        let default = region_size / 4;
        let size = ring_size.unwrap_or(default);
        if !size.is_power_of_two() || !(MIN_RING_SIZE..=default.min(MAX_CAPACITY)).contains(&size) {
            return Err(LayoutError::BadField {
                field: "ring_size",
                value: size as u64,
            });
        }
        Ok([
            (HEADER_SIZE, CONTROL_SIZE),
            (default, size),
            (HEADER_SIZE + CONTROL_SIZE, CONTROL_SIZE),
            (2 * default, size),
        ])
    }
}

fn read_bytes<const N: usize>(region: &Region<'_>, offset: usize) -> [u8; N] {
    let mut out = [0u8; N];
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let word = region.load(offset + 8 * i, Ordering::Relaxed).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    out
}

fn write_bytes(region: &Region<'_>, offset: usize, bytes: &[u8]) {
    for (i, chunk) in bytes.chunks(8).enumerate() {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        region.store(offset + 8 * i, u64::from_le_bytes(word), Ordering::Relaxed);
    }
}

/// Checks the part table against the region's true size.
fn check_parts(
    table: &[(u64, u64); parts::COUNT],
    region_size: usize,
) -> Result<[RingPlace; 2], LayoutError> {
    let mut spans = [(0usize, 0usize); parts::COUNT];
    for (index, &(offset, size)) in table.iter().enumerate() {
        let bad = LayoutError::BadPart {
            index,
            offset,
            size,
        };
        let is_control = index % 2 == 0;
        let (Ok(start), Ok(len)) = (usize::try_from(offset), usize::try_from(size)) else {
            return Err(bad);
        };
        let end = start.checked_add(len).ok_or(bad)?;
        let shape_ok = if is_control {
            len == CONTROL_SIZE && start % 128 == 0
        } else {
            len.is_power_of_two() && (MIN_RING_SIZE..=MAX_CAPACITY).contains(&len) && start % 8 == 0
        };
        if !shape_ok || start < HEADER_SIZE || end > region_size {
            return Err(bad);
        }
        spans[index] = (start, end);
    }
    for i in 0..parts::COUNT {
        for j in i + 1..parts::COUNT {
            let (a, b) = (spans[i], spans[j]);
            if a.0 < b.1 && b.0 < a.1 {
                let (offset, size) = table[j];
                return Err(LayoutError::BadPart {
                    index: j,
                    offset,
                    size,
                });
            }
        }
    }
    let place = |c: usize, d: usize| RingPlace {
        control: spans[c].0,
        data: spans[d].0,
        size: spans[d].1 - spans[d].0,
    };
    Ok([
        place(parts::H2G_CONTROL, parts::H2G_DATA),
        place(parts::G2H_CONTROL, parts::G2H_DATA),
    ])
}

/// A region whose header has been written or checked.
#[derive(Debug, Clone, Copy)]
pub struct Header<'a> {
    region: Region<'a>,
    layout: Layout,
}

impl<'a> Header<'a> {
    /// Writes a fresh header and empty rings. Call only when no peer is using
    /// the region (a new or all-zero file); the magic is written last, so a
    /// peer that polls for it never sees a half-written header.
    pub fn create(region: Region<'a>, params: &InitParams<'_>) -> Result<Self, LayoutError> {
        let plan = Layout::plan(region.len(), params.ring_size)?;
        let name = params.name.as_bytes();
        if name.len() > NAME_LEN {
            return Err(LayoutError::NameTooLong { len: name.len() });
        }
        // Retract any previous magic first, then clear header and control
        // blocks (positions restart at zero).
        region.store(offsets::MAGIC, 0, Ordering::Release);
        for offset in (8..HEADER_SIZE + 2 * CONTROL_SIZE).step_by(8) {
            region.store(offset, 0, Ordering::Relaxed);
        }
        let version =
            u64::from(VERSION_MAJOR) | u64::from(VERSION_MINOR) << 16 | (HEADER_SIZE as u64) << 32;
        region.store(offsets::VERSION, version, Ordering::Relaxed);
        region.store(
            offsets::FEATURES,
            u64::from(FEATURE_NOTIFY) << 32,
            Ordering::Relaxed,
        );
        region.store(offsets::REGION_SIZE, region.len() as u64, Ordering::Relaxed);
        write_bytes(&region, offsets::UUID, &params.uuid);
        let mut name_field = [0u8; NAME_LEN];
        name_field[..name.len()].copy_from_slice(name);
        write_bytes(&region, offsets::NAME, &name_field);
        region.store(offsets::PART_COUNT, parts::COUNT as u64, Ordering::Relaxed);
        for (i, (offset, size)) in plan.iter().enumerate() {
            region.store(offsets::PARTS + 16 * i, *offset as u64, Ordering::Relaxed);
            region.store(offsets::PARTS + 16 * i + 8, *size as u64, Ordering::Relaxed);
        }
        // SYNC POINT: pairs with the Acquire load of the magic in `open`.
        region.store(offsets::MAGIC, MAGIC, Ordering::Release);
        Self::open(region)
    }

    /// Reads and checks the header of a region someone initialised.
    pub fn open(region: Region<'a>) -> Result<Self, LayoutError> {
        if region.len() < MIN_REGION_SIZE {
            return Err(LayoutError::RegionTooSmall {
                len: region.len(),
                min: MIN_REGION_SIZE,
            });
        }
        // SYNC POINT: pairs with the Release store of the magic in `create`.
        let magic = region.load(offsets::MAGIC, Ordering::Acquire);
        match magic {
            0 => return Err(LayoutError::NotInitialized),
            MAGIC => {}
            found => return Err(LayoutError::BadMagic { found }),
        }
        let version = region.load(offsets::VERSION, Ordering::Relaxed);
        #[allow(clippy::cast_possible_truncation)]
        let (major, minor, header_size) = (version as u16, (version >> 16) as u16, version >> 32);
        if major != VERSION_MAJOR {
            return Err(LayoutError::IncompatibleVersion {
                found_major: major,
                found_minor: minor,
                supported_major: VERSION_MAJOR,
                supported_minor: VERSION_MINOR,
            });
        }
        if header_size != HEADER_SIZE as u64 {
            return Err(LayoutError::BadField {
                field: "header_size",
                value: header_size,
            });
        }
        let features = region.load(offsets::FEATURES, Ordering::Relaxed);
        #[allow(clippy::cast_possible_truncation)]
        let (incompat, compat) = (features as u32, (features >> 32) as u32);
        if incompat & !KNOWN_INCOMPAT_FEATURES != 0 {
            return Err(LayoutError::UnsupportedFeatures {
                bits: incompat & !KNOWN_INCOMPAT_FEATURES,
            });
        }
        let size = region.load(offsets::REGION_SIZE, Ordering::Relaxed);
        if size != region.len() as u64 {
            return Err(LayoutError::SizeMismatch {
                header: size,
                mapped: region.len(),
            });
        }
        let count = region.load(offsets::PART_COUNT, Ordering::Relaxed);
        if count != parts::COUNT as u64 {
            return Err(LayoutError::BadField {
                field: "part_count",
                value: count,
            });
        }
        let mut table = [(0u64, 0u64); parts::COUNT];
        for (i, entry) in table.iter_mut().enumerate() {
            *entry = (
                region.load(offsets::PARTS + 16 * i, Ordering::Relaxed),
                region.load(offsets::PARTS + 16 * i + 8, Ordering::Relaxed),
            );
        }
        let [host_to_guest, guest_to_host] = check_parts(&table, region.len())?;
        let layout = Layout {
            region_size: region.len(),
            version_minor: minor,
            compat_features: compat,
            uuid: read_bytes(&region, offsets::UUID),
            name: read_bytes(&region, offsets::NAME),
            host_to_guest,
            guest_to_host,
        };
        Ok(Self { region, layout })
    }

    /// The checked layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The underlying region.
    pub fn region(&self) -> Region<'a> {
        self.region
    }

    /// The memory of the ring going in `direction`.
    pub fn ring(&self, direction: Direction) -> RegionRing<'a> {
        let place = self.layout.ring(direction);
        RegionRing {
            region: self.region,
            control: place.control,
            data: place.data,
            capacity: place.size,
        }
    }

    /// Attaches `side`'s ends: it produces into its outgoing ring and
    /// consumes from its incoming one, resuming at the stored positions.
    #[allow(clippy::type_complexity)]
    pub fn split(
        &self,
        side: Side,
    ) -> Result<(Producer<RegionRing<'a>>, Consumer<RegionRing<'a>>), RingError> {
        let (out, inc) = match side {
            Side::Host => (Direction::HostToGuest, Direction::GuestToHost),
            Side::Guest => (Direction::GuestToHost, Direction::HostToGuest),
        };
        Ok((
            Producer::attach(self.ring(out))?,
            Consumer::attach(self.ring(inc))?,
        ))
    }

    /// Starts a new session for `side`: bumps its epoch and marks it ready.
    /// Returns the new epoch (never 0).
    pub fn begin_session(&self, side: Side) -> u64 {
        let at = side.block() + offsets::SIDE_EPOCH;
        let epoch = match self.region.load(at, Ordering::Relaxed).wrapping_add(1) {
            0 => 1,
            e => e,
        };
        self.region.store(at, epoch, Ordering::Relaxed);
        self.set_state(side, PeerState::Ready);
        epoch
    }

    /// Publishes `side`'s state.
    pub fn set_state(&self, side: Side, state: PeerState) {
        // SYNC POINT: pairs with the Acquire load in `status`; the epoch
        // written before is visible with the state.
        self.region.store(
            side.block() + offsets::SIDE_STATE,
            state.to_word(),
            Ordering::Release,
        );
    }

    /// Advances `side`'s heartbeat counter (only `side` calls this).
    pub fn heartbeat(&self, side: Side) {
        let at = side.block() + offsets::SIDE_HEARTBEAT;
        let beat = self.region.load(at, Ordering::Relaxed).wrapping_add(1);
        self.region.store(at, beat, Ordering::Release);
    }

    /// Publishes how to ring `side` (or that it has no doorbell).
    pub fn set_doorbell(&self, side: Side, address: Option<DoorbellAddress>) {
        let word = address.map_or(0, |a| {
            DOORBELL_PRESENT | u64::from(a.vectors) << 16 | u64::from(a.peer)
        });
        self.region.store(
            side.block() + offsets::SIDE_DOORBELL,
            word,
            Ordering::Release,
        );
    }

    /// How to ring `side`, if it published a doorbell. Any value the peer
    /// wrote decodes to some peer id and vector count: the worst a lie can
    /// do is make us ring the wrong peer, which the device tolerates.
    pub fn doorbell(&self, side: Side) -> Option<DoorbellAddress> {
        let word = self
            .region
            .load(side.block() + offsets::SIDE_DOORBELL, Ordering::Acquire);
        #[allow(clippy::cast_possible_truncation)]
        (word & DOORBELL_PRESENT != 0).then_some(DoorbellAddress {
            peer: word as u16,
            vectors: (word >> 16) as u16,
        })
    }

    /// Checks that the header is still there: its magic word unchanged
    /// since [`open`](Self::open) (a reset, a stray write or a truncated
    /// file clears it).
    pub fn check_present(&self) -> Result<(), LayoutError> {
        match self.region.load(offsets::MAGIC, Ordering::Acquire) {
            MAGIC => Ok(()),
            found => Err(LayoutError::HeaderWiped { found }),
        }
    }

    /// Reads `side`'s block once.
    pub fn status(&self, side: Side) -> Result<SideStatus, LayoutError> {
        let block = side.block();
        // SYNC POINT: pairs with the Release store in `set_state`.
        let state = self
            .region
            .load(block + offsets::SIDE_STATE, Ordering::Acquire);
        Ok(SideStatus {
            epoch: self
                .region
                .load(block + offsets::SIDE_EPOCH, Ordering::Relaxed),
            heartbeat: self
                .region
                .load(block + offsets::SIDE_HEARTBEAT, Ordering::Acquire),
            state: PeerState::from_word(state)?,
        })
    }

    /// Raw positions of a ring, for inspection tools (not validated).
    pub fn ring_positions(&self, direction: Direction) -> (u64, u64) {
        let ring = self.ring(direction);
        (
            ring.load(Word::Head, Ordering::Relaxed),
            ring.load(Word::Tail, Ordering::Relaxed),
        )
    }
}

/// One ring inside a mapped region.
#[derive(Debug, Clone, Copy)]
pub struct RegionRing<'a> {
    region: Region<'a>,
    control: usize,
    data: usize,
    capacity: usize,
}

impl RegionRing<'_> {
    #[inline]
    fn word_offset(&self, word: Word) -> usize {
        self.control
            + match word {
                Word::Tail => offsets::RING_TAIL,
                Word::Head => offsets::RING_HEAD,
                Word::ConsumerFlags => offsets::RING_CONSUMER_FLAGS,
            }
    }
}

impl RingMemory for RegionRing<'_> {
    #[inline]
    fn capacity(&self) -> usize {
        self.capacity
    }
    #[inline(always)]
    fn load(&self, word: Word, order: Ordering) -> u64 {
        self.region.load(self.word_offset(word), order)
    }
    #[inline(always)]
    fn store(&self, word: Word, value: u64, order: Ordering) {
        self.region.store(self.word_offset(word), value, order)
    }
    #[inline(always)]
    fn load_header(&self, offset: usize) -> u64 {
        self.region.load(self.data + offset, Ordering::Relaxed)
    }
    #[inline(always)]
    fn store_header(&self, offset: usize, value: u64) {
        self.region
            .store(self.data + offset, value, Ordering::Relaxed)
    }
    #[inline(always)]
    unsafe fn write_bytes(&self, offset: usize, src: &[u8]) {
        // SAFETY: the ring owns this range (caller contract); the region
        // checks the bounds.
        unsafe { self.region.copy_in(self.data + offset, src) }
    }
    #[inline(always)]
    unsafe fn read_bytes(&self, offset: usize, dst: &mut [u8]) {
        self.region.copy_out(self.data + offset, dst)
    }
}

impl DirectMemory for RegionRing<'_> {
    #[inline]
    fn bytes(&self, offset: usize, len: usize) -> VolatileSlice<'_> {
        self.region.volatile(self.data + offset, len)
    }
    #[inline]
    unsafe fn bytes_mut(&self, offset: usize, len: usize) -> VolatileSliceMut<'_> {
        // SAFETY: as for `write_bytes`, for the view's lifetime.
        unsafe { self.region.volatile_mut(self.data + offset, len) }
    }
}
