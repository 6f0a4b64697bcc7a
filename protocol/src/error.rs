//! Typed errors. `no_std`: hand-written `Display`, `std::error::Error`
//! behind the `std` feature.

use core::fmt;

/// Something the peer wrote that breaks the ring protocol.
///
/// A violation poisons the ring that saw it: every later call on that ring
/// returns the same violation at once, without touching shared memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// The consumer's position moved backwards or past the producer's.
    HeadOutOfRange {
        /// The position read from the region.
        head: u64,
        /// Lowest acceptable value (the last one seen).
        min: u64,
        /// Highest acceptable value (the producer's published position).
        max: u64,
    },
    /// The producer's position moved backwards or more than a ring ahead.
    TailOutOfRange {
        /// The position read from the region.
        tail: u64,
        /// Lowest acceptable value (the last one seen).
        min: u64,
        /// Highest acceptable value (consumer position + capacity).
        max: u64,
    },
    /// A position that is not a multiple of 8.
    Misaligned {
        /// The position read from the region.
        position: u64,
    },
    /// A record header whose tag is neither "message" nor "padding".
    BadTag {
        /// Ring position of the record.
        position: u64,
        /// The tag read.
        tag: u32,
    },
    /// A message longer than the largest message this ring can carry.
    LengthTooLarge {
        /// Ring position of the record.
        position: u64,
        /// The length read.
        len: u32,
        /// The largest payload the ring allows.
        max: u32,
    },
    /// A record that extends past the producer's published position.
    RecordPastTail {
        /// Ring position of the record.
        position: u64,
        /// Bytes the record needs.
        needed: u64,
        /// Bytes published.
        available: u64,
    },
    /// A message record that runs past the end of the data area.
    RecordPastWrap {
        /// Ring position of the record.
        position: u64,
        /// The length read.
        len: u32,
    },
    /// A padding record that does not run exactly to the end of the data
    /// area, or a padding record at offset 0.
    BadPadding {
        /// Ring position of the record.
        position: u64,
        /// The length field read.
        len: u32,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::HeadOutOfRange { head, min, max } => {
                write!(f, "consumer position {head} outside [{min}, {max}]")
            }
            Self::TailOutOfRange { tail, min, max } => {
                write!(f, "producer position {tail} outside [{min}, {max}]")
            }
            Self::Misaligned { position } => {
                write!(f, "position {position} is not a multiple of 8")
            }
            Self::BadTag { position, tag } => {
                write!(f, "record at {position} has unknown tag 0x{tag:08x}")
            }
            Self::LengthTooLarge { position, len, max } => write!(
                f,
                "record at {position} claims {len} bytes, more than the {max}-byte maximum"
            ),
            Self::RecordPastTail {
                position,
                needed,
                available,
            } => write!(
                f,
                "record at {position} needs {needed} bytes but only {available} are published"
            ),
            Self::RecordPastWrap { position, len } => write!(
                f,
                "record at {position} with length {len} runs past the end of the data area"
            ),
            Self::BadPadding { position, len } => write!(
                f,
                "padding record at {position} with length {len} does not end at the wrap"
            ),
        }
    }
}

/// Errors from ring operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingError {
    /// The peer broke the protocol (see [`Violation`]). The ring is poisoned.
    Corrupt(Violation),
    /// The message is larger than the ring can ever carry.
    TooLarge {
        /// Requested payload length.
        len: usize,
        /// The largest payload that fits.
        max: usize,
    },
    /// The ring memory reports a capacity the protocol does not allow
    /// (a power of two from 64 bytes to 4 GiB).
    BadCapacity {
        /// The capacity reported.
        capacity: usize,
    },
    /// A grant was committed or accessed beyond its reserved length.
    OutOfGrant {
        /// End of the requested range.
        end: usize,
        /// Length of the grant.
        len: usize,
    },
    /// The caller's buffer cannot hold the next message; it stays queued.
    BufferTooSmall {
        /// Length of the waiting message.
        needed: usize,
        /// Length of the caller's buffer.
        available: usize,
    },
}

impl RingError {
    /// True when the ring is unusable from now on (the peer broke the
    /// protocol). Retrying a fatal error never succeeds.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::Corrupt(_))
    }
}

impl From<Violation> for RingError {
    fn from(v: Violation) -> Self {
        Self::Corrupt(v)
    }
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Corrupt(v) => write!(f, "ring poisoned by a protocol violation: {v}"),
            Self::TooLarge { len, max } => {
                write!(
                    f,
                    "message of {len} bytes exceeds the ring's {max}-byte maximum"
                )
            }
            Self::BadCapacity { capacity } => write!(
                f,
                "ring capacity {capacity} is not a power of two between 64 and 4294967296"
            ),
            Self::OutOfGrant { end, len } => {
                write!(f, "access up to byte {end} of a {len}-byte grant")
            }
            Self::BufferTooSmall { needed, available } => write!(
                f,
                "next message is {needed} bytes but the buffer holds only {available}"
            ),
        }
    }
}

/// Errors from reading, checking or writing the region header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutError {
    /// The region pointer is null or not 8-byte aligned.
    BadPointer {
        /// The address handed in.
        addr: usize,
    },
    /// The region is smaller than the protocol's minimum.
    RegionTooSmall {
        /// The region's length.
        len: usize,
        /// The minimum length.
        min: usize,
    },
    /// The region is not a power of two in size (required when creating it).
    RegionNotPowerOfTwo {
        /// The region's length.
        len: usize,
    },
    /// The magic word is zero: nobody has initialised the header yet.
    NotInitialized,
    /// The header's magic word changed while the region was in use: it was
    /// reset (`ivchan reset`), overwritten, or its file truncated.
    HeaderWiped {
        /// The value read.
        found: u64,
    },
    /// The magic word is something other than ivchan's.
    BadMagic {
        /// The value read.
        found: u64,
    },
    /// A major version this implementation does not speak.
    IncompatibleVersion {
        /// Major version in the region.
        found_major: u16,
        /// Minor version in the region.
        found_minor: u16,
        /// Major version supported here.
        supported_major: u16,
        /// Minor version supported here.
        supported_minor: u16,
    },
    /// Incompatible feature bits this implementation does not know.
    UnsupportedFeatures {
        /// The unknown bits.
        bits: u32,
    },
    /// A header field has a value the protocol does not allow.
    BadField {
        /// Name of the field.
        field: &'static str,
        /// The value read.
        value: u64,
    },
    /// The header's region size differs from the mapped length.
    SizeMismatch {
        /// Size recorded in the header.
        header: u64,
        /// Length actually mapped.
        mapped: usize,
    },
    /// A part of the layout table is misplaced, misaligned, mis-sized,
    /// outside the region or overlapping another part.
    BadPart {
        /// Index of the part in the table.
        index: usize,
        /// Its recorded offset.
        offset: u64,
        /// Its recorded size.
        size: u64,
    },
    /// A side's state word holds an unknown value.
    BadState {
        /// The value read.
        value: u64,
    },
    /// A channel name longer than the header's field.
    NameTooLong {
        /// Length of the name in bytes.
        len: usize,
    },
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::BadPointer { addr } => {
                write!(f, "region address 0x{addr:x} is null or not 8-byte aligned")
            }
            Self::RegionTooSmall { len, min } => {
                write!(f, "region of {len} bytes is smaller than the {min}-byte minimum")
            }
            Self::RegionNotPowerOfTwo { len } => {
                write!(f, "region of {len} bytes is not a power of two")
            }
            Self::NotInitialized => write!(f, "region header is not initialised yet"),
            Self::BadMagic { found } => {
                write!(f, "region magic 0x{found:016x} is not ivchan's")
            }
            Self::HeaderWiped { found } => write!(
                f,
                "the region's header was wiped while in use (magic now 0x{found:016x}): \
                 it was reset, overwritten, or its file truncated"
            ),
            Self::IncompatibleVersion {
                found_major,
                found_minor,
                supported_major,
                supported_minor,
            } => write!(
                f,
                "region speaks protocol {found_major}.{found_minor}, this build speaks {supported_major}.{supported_minor}"
            ),
            Self::UnsupportedFeatures { bits } => {
                write!(f, "region requires unknown features 0x{bits:08x}")
            }
            Self::BadField { field, value } => {
                write!(f, "header field {field} has invalid value {value}")
            }
            Self::SizeMismatch { header, mapped } => write!(
                f,
                "header says the region is {header} bytes but {mapped} bytes are mapped"
            ),
            Self::BadPart {
                index,
                offset,
                size,
            } => write!(
                f,
                "layout part {index} (offset {offset}, size {size}) is invalid"
            ),
            Self::BadState { value } => write!(f, "side state {value} is unknown"),
            Self::NameTooLong { len } => {
                write!(f, "channel name of {len} bytes exceeds 32 bytes")
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Violation {}
#[cfg(feature = "std")]
impl std::error::Error for RingError {}
#[cfg(feature = "std")]
impl std::error::Error for LayoutError {}
