//! FNV-1a over 8-byte little-endian words, then the tail bytes one by one:
//! fast enough to check gigabytes. [`checksum`] and [`Checksum`] agree for
//! any way the input is split.

const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0100_0000_01b3;

/// The checksum of `bytes`; the same as feeding them to a [`Checksum`].
pub fn checksum(bytes: &[u8]) -> u64 {
    let mut c = Checksum::new();
    c.update(bytes);
    c.finish()
}

/// The streaming form of [`checksum`]: feed pieces of any size.
#[derive(Debug, Clone)]
pub struct Checksum {
    hash: u64,
    partial: [u8; 8],
    filled: usize,
}

impl Default for Checksum {
    fn default() -> Self {
        Self::new()
    }
}

impl Checksum {
    /// An empty checksum.
    pub fn new() -> Self {
        Self {
            hash: OFFSET,
            partial: [0; 8],
            filled: 0,
        }
    }

    fn word(&mut self, w: [u8; 8]) {
        self.hash = (self.hash ^ u64::from_le_bytes(w)).wrapping_mul(PRIME);
    }

    /// Adds `bytes`.
    pub fn update(&mut self, mut bytes: &[u8]) {
        if self.filled > 0 {
            let take = (8 - self.filled).min(bytes.len());
            self.partial[self.filled..self.filled + take].copy_from_slice(&bytes[..take]);
            self.filled += take;
            bytes = &bytes[take..];
            if self.filled < 8 {
                return;
            }
            self.word(self.partial);
            self.filled = 0;
        }
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let mut a = [0u8; 8];
            a.copy_from_slice(w);
            self.word(a);
        }
        let rest = words.remainder();
        self.partial[..rest.len()].copy_from_slice(rest);
        self.filled = rest.len();
    }

    /// The checksum of everything added.
    pub fn finish(&self) -> u64 {
        let mut h = self.hash;
        for &b in &self.partial[..self.filled] {
            h = (h ^ u64::from(b)).wrapping_mul(PRIME);
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: u32) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 9) as u8).collect()
    }

    #[test]
    fn known_values() {
        // FNV-1a's offset basis for nothing; one tail byte is plain FNV-1a.
        assert_eq!(checksum(&[]), OFFSET);
        assert_eq!(checksum(b"a"), 0xaf63_dc4c_8601_ec8c);
        // A whole word is taken as one little-endian u64.
        let w = u64::from_le_bytes(*b"abcdefgh");
        assert_eq!(checksum(b"abcdefgh"), (OFFSET ^ w).wrapping_mul(PRIME));
    }

    #[test]
    fn streaming_checksum_matches_one_shot_for_any_split() {
        let data = data(1000);
        let whole = checksum(&data);
        for split in (1..=80usize).chain([999, 1000]) {
            let mut c = Checksum::new();
            for piece in data.chunks(split) {
                c.update(piece);
            }
            assert_eq!(c.finish(), whole, "pieces of {split}");
        }
        // Uneven pieces, including empty ones.
        for cut in 0..=data.len() {
            let mut c = Checksum::new();
            c.update(&data[..cut]);
            c.update(&[]);
            c.update(&data[cut..]);
            assert_eq!(c.finish(), whole, "cut at {cut}");
        }
    }

    #[test]
    fn every_changed_byte_changes_the_checksum() {
        let data = data(100);
        let whole = checksum(&data);
        for i in 0..data.len() {
            let mut d = data.clone();
            d[i] ^= 1;
            assert_ne!(checksum(&d), whole, "byte {i}");
        }
        assert_ne!(checksum(&data[1..]), whole);
        assert_ne!(checksum(&data[..99]), whole);
    }
}
