//! Where VM `U`'s region lives and how large it may be: the one source the
//! host crate, the provisioning tools, the CLIs and the tests all read.
//!
//! ```
//! use ivchan_protocol::naming::{self, RegionSize};
//! use ivchan_protocol::VmUuid;
//!
//! let uuid: VmUuid = "5b7e6a0c-1d2e-4f3a-9b8c-7d6e5f4a3b2c".parse()?;
//! assert_eq!(
//!     naming::default_region_path(&uuid).to_str(),
//!     Some("/dev/shm/fg_5b7e6a0c-1d2e-4f3a-9b8c-7d6e5f4a3b2c"),
//! );
//! let size: RegionSize = "8M".parse()?;
//! assert_eq!(size.bytes(), 8 << 20);
//! assert!("3M".parse::<RegionSize>().is_err()); // not a power of two
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use core::fmt;
use core::str::FromStr;
use std::path::PathBuf;

use crate::layout::MIN_REGION_SIZE as MIN_REGION_BYTES;
use crate::ring::MAX_CAPACITY;
use crate::VmUuid;

/// Directory of region files: QEMU's `memory-backend-file` maps
/// `/dev/shm/fg_<uuid>` by default.
pub const REGION_DIR: &str = "/dev/shm";
/// File-name prefix before the VM's UUID.
pub const REGION_PREFIX: &str = "fg_";
/// Default region size: 8 MiB.
pub const DEFAULT_REGION_SIZE: u64 = 8 << 20;
/// Smallest region the layout accepts: 1 MiB.
pub const MIN_REGION_SIZE: u64 = MIN_REGION_BYTES as u64;
/// Largest region the layout accepts: each ring takes a quarter of the
/// region and a ring holds at most 4 GiB, so 16 GiB.
pub const MAX_REGION_SIZE: u64 = 4 * MAX_CAPACITY as u64;

/// `fg_<uuid>`.
pub fn region_file_name(uuid: &VmUuid) -> String {
    format!("{REGION_PREFIX}{uuid}")
}

/// `/dev/shm/fg_<uuid>`.
pub fn default_region_path(uuid: &VmUuid) -> PathBuf {
    PathBuf::from(REGION_DIR).join(region_file_name(uuid))
}

/// A region size that host, guest and provisioning all accept: a power of
/// two from [`MIN_REGION_SIZE`] to [`MAX_REGION_SIZE`]. Parses `8M`,
/// `8MiB`, `1G`, `1048576` (binary units).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RegionSize(u64);

impl RegionSize {
    /// The default, 8 MiB.
    pub const DEFAULT: Self = Self(DEFAULT_REGION_SIZE);

    /// Checks `bytes` against the layout's limits.
    pub fn new(bytes: u64) -> Result<Self, SizeError> {
        if bytes < MIN_REGION_SIZE {
            return Err(SizeError::TooSmall { bytes });
        }
        if bytes > MAX_REGION_SIZE {
            return Err(SizeError::TooLarge { bytes });
        }
        if !bytes.is_power_of_two() {
            return Err(SizeError::NotPowerOfTwo { bytes });
        }
        Ok(Self(bytes))
    }

    /// Size in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl Default for RegionSize {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for RegionSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::report::human_size(self.0))
    }
}

impl FromStr for RegionSize {
    type Err = SizeError;

    fn from_str(s: &str) -> Result<Self, SizeError> {
        Self::new(parse_bytes(s)?)
    }
}

/// Parses a byte count with an optional binary suffix: `4096`, `64K`,
/// `8M`, `8MiB`, `1G` (`k`/`KiB`/`KB` alike: all binary).
pub fn parse_bytes(s: &str) -> Result<u64, SizeError> {
    let bad = || SizeError::Malformed { text: s.to_owned() };
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" | "kb" => 10,
        "m" | "mib" | "mb" => 20,
        "g" | "gib" | "gb" => 30,
        "t" | "tib" | "tb" => 40,
        _ => return Err(bad()),
    };
    n.checked_mul(1u64 << shift).ok_or_else(bad)
}

/// A region size that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SizeError {
    /// Not a number with a known suffix.
    Malformed {
        /// What was given.
        text: String,
    },
    /// Below [`MIN_REGION_SIZE`].
    TooSmall {
        /// The size in bytes.
        bytes: u64,
    },
    /// Above [`MAX_REGION_SIZE`].
    TooLarge {
        /// The size in bytes.
        bytes: u64,
    },
    /// Not a power of two.
    NotPowerOfTwo {
        /// The size in bytes.
        bytes: u64,
    },
}

impl fmt::Display for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let human = crate::report::human_size;
        let (min, max) = (human(MIN_REGION_SIZE), human(MAX_REGION_SIZE));
        match self {
            Self::Malformed { text } => write!(
                f,
                "invalid size {text:?}: expected bytes or a number with K, M, G or T (binary units), e.g. 8M"
            ),
            Self::TooSmall { bytes } => {
                write!(f, "region size {bytes} is below the {min} minimum")
            }
            Self::TooLarge { bytes } => {
                write!(f, "region size {bytes} is above the {max} maximum")
            }
            Self::NotPowerOfTwo { bytes } => write!(
                f,
                "region size {bytes} is not a power of two ({min} to {max}, e.g. 8M)"
            ),
        }
    }
}

impl std::error::Error for SizeError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("64K"), Ok(64 << 10));
        assert_eq!(parse_bytes(" 8MiB "), Ok(8 << 20));
        assert_eq!(parse_bytes("1g"), Ok(1 << 30));
        assert!(matches!(
            parse_bytes("8X"),
            Err(SizeError::Malformed { .. })
        ));
        assert!(matches!(parse_bytes(""), Err(SizeError::Malformed { .. })));
        assert!(matches!(
            parse_bytes("99999999999T"),
            Err(SizeError::Malformed { .. })
        ));
    }

    #[test]
    fn region_sizes_match_the_layout_limits() {
        assert_eq!("1M".parse(), Ok(RegionSize(1 << 20)));
        assert_eq!("16G".parse(), Ok(RegionSize(16 << 30)));
        assert_eq!(
            "512K".parse::<RegionSize>(),
            Err(SizeError::TooSmall { bytes: 512 << 10 })
        );
        assert_eq!(
            "64G".parse::<RegionSize>(),
            Err(SizeError::TooLarge { bytes: 64 << 30 })
        );
        assert_eq!(
            "3M".parse::<RegionSize>(),
            Err(SizeError::NotPowerOfTwo { bytes: 3 << 20 })
        );
        // The largest accepted size lays out: a ring is a quarter of it.
        assert_eq!(MAX_REGION_SIZE / 4, MAX_CAPACITY as u64);
    }

    #[test]
    fn errors_say_what_is_accepted() {
        let e = "3M".parse::<RegionSize>().unwrap_err().to_string();
        assert!(e.contains("not a power of two (1 MiB to 16 GiB"), "{e}");
        let e = "lots".parse::<RegionSize>().unwrap_err().to_string();
        assert!(e.contains("e.g. 8M"), "{e}");
    }
}
