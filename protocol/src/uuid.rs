//! The VM's UUID as ivchan names and compares it.
//!
//! One type for both sides: the host parses it from a region file's name
//! (`fg_<uuid>`), the guest from `/sys/class/dmi/id/product_uuid`, and both
//! compare it with the 16 bytes in the region header.

use std::fmt;
use std::str::FromStr;

/// A VM UUID in RFC 4122 byte order: the bytes in the order their hex digits
/// appear in the canonical text form `8-4-4-4-12`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VmUuid([u8; 16]);

/// A string that is not a canonical `8-4-4-4-12` hex UUID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UuidError {
    /// The rejected text (truncated to 80 characters).
    pub input: String,
}

impl fmt::Display for UuidError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a UUID (expected 8-4-4-4-12 hex digits, e.g. 5b7e6a0c-1d2e-4f3a-9b8c-7d6e5f4a3b2c)",
            self.input
        )
    }
}

impl std::error::Error for UuidError {}

impl VmUuid {
    /// Wraps 16 bytes in RFC 4122 order (as stored in the region header).
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The 16 bytes in RFC 4122 order.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Parses a UUID written the way libvirt domain XML and `virsh` accept
    /// it: surrounding whitespace is ignored, hex digits may be upper or
    /// lower case, and the 32 digits are either in the canonical `8-4-4-4-12`
    /// form or have no dashes at all. Anything else (dashes elsewhere,
    /// braces, `urn:uuid:`, other characters) is refused.
    ///
    /// ```
    /// use ivchan_protocol::VmUuid;
    ///
    /// let u = VmUuid::parse_lenient(" 6B9E1E0A5C1F4B7E9A511D2C3E4F5A6B\n").unwrap();
    /// assert_eq!(u.to_string(), "6b9e1e0a-5c1f-4b7e-9a51-1d2c3e4f5a6b");
    /// assert!(VmUuid::parse_lenient("6b9e1e0a5c1f-4b7e-9a51-1d2c3e4f5a6b").is_err());
    /// ```
    ///
    /// Use [`str::parse`] (strict, canonical only) for names the program
    /// itself wrote, such as region file names.
    pub fn parse_lenient(s: &str) -> Result<Self, UuidError> {
        let err = || UuidError {
            input: s.chars().take(80).collect(),
        };
        let text = s.trim();
        if text.len() == 36 {
            return text.parse().map_err(|_| err());
        }
        let digits = text.as_bytes();
        if digits.len() != 32 {
            return Err(err());
        }
        let mut out = [0u8; 16];
        for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
            let hi = hex_value(pair[0]).ok_or_else(err)?;
            let lo = hex_value(pair[1]).ok_or_else(err)?;
            *byte = hi << 4 | lo;
        }
        Ok(Self(out))
    }
}

/// The value of one ASCII hex digit, either case.
fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl FromStr for VmUuid {
    type Err = UuidError;

    /// Accepts exactly the canonical form, upper or lower case hex. Nothing
    /// else gets through: no braces, no `urn:uuid:`, no whitespace, no path
    /// characters.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || UuidError {
            input: s.chars().take(80).collect(),
        };
        let text = s.as_bytes();
        if text.len() != 36 {
            return Err(err());
        }
        let mut out = [0u8; 16];
        let mut nibbles = 0usize;
        for (i, &c) in text.iter().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                if c != b'-' {
                    return Err(err());
                }
                continue;
            }
            let v = hex_value(c).ok_or_else(err)?;
            out[nibbles / 2] |= if nibbles % 2 == 0 { v << 4 } else { v };
            nibbles += 1;
        }
        Ok(Self(out))
    }
}

impl fmt::Display for VmUuid {
    /// Lower-case canonical form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_in_digit_order() {
        let text = "5b7e6a0c-1d2e-4f3a-9b8c-7d6e5f4a3b2c";
        let u: VmUuid = text.parse().expect("valid");
        assert_eq!(u.as_bytes()[..4], [0x5b, 0x7e, 0x6a, 0x0c]);
        assert_eq!(u.as_bytes()[15], 0x2c);
        assert_eq!(u.to_string(), text);
        let upper: VmUuid = text.to_uppercase().parse().expect("valid");
        assert_eq!(upper, u);
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "",
            "../x",
            "5b7e6a0c-1d2e-4f3a-9b8c-7d6e5f4a3b2",
            "5b7e6a0c-1d2e-4f3a-9b8c-7d6e5f4a3b2c0",
            "5b7e6a0c-1d2e-4f3a-9b8c-7d6e5f4a3bzz",
            "5b7e6a0c11d2e-4f3a-9b8c-7d6e5f4a3b2c",
            "5b7e6a0c-1d2e-4f3a-9b8c-7d6e5f4a3/..",
            "{b7e6a0c-1d2e-4f3a-9b8c-7d6e5f4a3b2}",
            " 5b7e6a0c-1d2e-4f3a-9b8c-7d6e5f4a3b2",
            "5b7e6a0c-1d2e-4f3a-9b8c-7d6e5f4a3b2\u{e9}",
        ] {
            assert!(bad.parse::<VmUuid>().is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn lenient_accepts_what_libvirt_writes() {
        let canonical = "6b9e1e0a-5c1f-4b7e-9a51-1d2c3e4f5a6b";
        let u: VmUuid = canonical.parse().expect("valid");
        for good in [
            canonical,
            "6B9E1E0A-5C1F-4B7E-9A51-1D2C3E4F5A6B",
            "6b9e1e0a5c1f4b7e9a511d2c3e4f5a6b",
            " 6B9E1E0A5C1F4B7E9A511D2C3E4F5A6B ",
            "\n\t6b9e1e0a-5c1f-4B7E-9a51-1d2c3e4f5a6b\r\n",
        ] {
            assert_eq!(VmUuid::parse_lenient(good), Ok(u), "refused {good:?}");
        }
        assert_eq!(
            VmUuid::parse_lenient(canonical).unwrap().to_string(),
            canonical
        );
    }

    #[test]
    fn lenient_refuses_everything_else() {
        for bad in [
            "",
            "   ",
            "nope",
            "6b9e1e0a-5c1f-4b7e-9a51-1d2c3e4f5a6",
            "6b9e1e0a5c1f4b7e9a511d2c3e4f5a6",
            "6b9e1e0a5c1f4b7e9a511d2c3e4f5a6b0",
            "6b9e1e0a5c1f4b7e9a511d2c3e4f5a6g",
            "6b9e1e0a5c1f-4b7e-9a51-1d2c3e4f5a6b",
            "6b9e1e0a-5c1f4b7e9a511d2c3e4f5a6b",
            "-6b9e1e0a5c1f4b7e9a511d2c3e4f5a6",
            "6b9e1e0a-5c1f-4b7e-9a51-1d2c3e4f5a6b-",
            "6b9e1e0a-5c1f-4b7e-9a51--d2c3e4f5a6b",
            "{6b9e1e0a-5c1f-4b7e-9a51-1d2c3e4f5a6b}",
            "urn:uuid:6b9e1e0a-5c1f-4b7e-9a51-1d2c3e4f5a6b",
            "6b9e1e0a 5c1f 4b7e 9a51 1d2c3e4f5a6b",
            "6b9e1e0a5c1f4b7e9a511d2c3e4f5a\u{e9}",
        ] {
            let e = VmUuid::parse_lenient(bad).expect_err(bad);
            assert_eq!(e.input, bad, "the error names the input");
        }
    }
}
