//! Test traffic: message `seq` is a pure function of `seq`, so the receiver
//! checks length, identity and contents without any side channel.
//!
//! Length: 1 B to 64 KiB, log-uniform. Contents: the low bytes of `seq`
//! (as many as fit, up to 8), then for messages over 16 bytes a
//! [`checksum`] of the rest, then a pattern derived from `seq`.
//!
//! A receiver that knows which message comes next uses [`check`]; one that
//! may see a few redelivered messages after a restart uses [`identify`].

use std::ops::RangeInclusive;

use crate::checksum::checksum;

/// Largest traffic message.
pub const MAX_LEN: usize = 64 * 1024;

/// SplitMix64's finaliser: a cheap, well-spread hash of `x`. Also handy as
/// a tiny random number generator (`rng = mix(rng)`).
pub fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Length of message `seq`: 1 to [`MAX_LEN`] bytes, log-uniform.
pub fn len(seq: u64) -> usize {
    let r = mix(seq);
    let bits = r % 17;
    1 + ((r >> 8) % (1u64 << bits)) as usize
}

/// The pattern's `i`-th 8-byte word for message `seq`.
fn pattern_word(base: u64, i: usize) -> [u8; 8] {
    (base ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_le_bytes()
}

fn pattern(seq: u64, dst: &mut [u8]) {
    let base = mix(seq ^ 0x5555);
    for (i, chunk) in dst.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&pattern_word(base, i)[..chunk.len()]);
    }
}

fn pattern_matches(seq: u64, got: &[u8]) -> bool {
    let base = mix(seq ^ 0x5555);
    got.chunks(8)
        .enumerate()
        .all(|(i, chunk)| chunk == &pattern_word(base, i)[..chunk.len()])
}

/// Writes message `seq` into `dst`, which must be `len(seq)` bytes.
pub fn build(seq: u64, dst: &mut [u8]) {
    let n = dst.len();
    let head = n.min(8);
    dst[..head].copy_from_slice(&seq.to_le_bytes()[..head]);
    if n > 16 {
        pattern(seq, &mut dst[16..]);
        let sum = checksum(&dst[16..]);
        dst[8..16].copy_from_slice(&sum.to_le_bytes());
    } else if n > 8 {
        pattern(seq, &mut dst[8..]);
    }
}

/// Message `seq` in a new buffer.
pub fn message(seq: u64) -> Vec<u8> {
    let mut m = vec![0u8; len(seq)];
    build(seq, &mut m);
    m
}

/// Checks that `msg` is message `seq`, byte for byte.
pub fn check(seq: u64, msg: &[u8]) -> Result<(), String> {
    let want = len(seq);
    if msg.len() != want {
        return Err(format!(
            "message {seq}: {} bytes, expected {want}",
            msg.len()
        ));
    }
    let head = want.min(8);
    if msg[..head] != seq.to_le_bytes()[..head] {
        return Err(format!(
            "message {seq}: wrong sequence number (reordered or lost?)"
        ));
    }
    if want > 16 {
        let mut field = [0u8; 8];
        field.copy_from_slice(&msg[8..16]);
        if u64::from_le_bytes(field) != checksum(&msg[16..]) {
            return Err(format!("message {seq}: checksum mismatch"));
        }
    }
    let body = if want > 16 { &msg[16..] } else { &msg[head..] };
    if !pattern_matches(seq, body) {
        return Err(format!("message {seq}: contents differ"));
    }
    Ok(())
}

/// Identifies and checks a message that may be any of `window`, the
/// consecutive sequence numbers a receiver can see next (several only right
/// after a restart, when the last few may be redelivered). Returns its
/// sequence number: the first in `window` whose low bytes match.
pub fn identify(msg: &[u8], window: RangeInclusive<u64>) -> Result<u64, String> {
    let n = msg.len();
    let head = n.min(8);
    let mut low = [0u8; 8];
    low[..head].copy_from_slice(&msg[..head]);
    let low = u64::from_le_bytes(low);
    let mask = if head == 8 {
        u64::MAX
    } else {
        (1u64 << (8 * head)) - 1
    };
    let seq = window
        .clone()
        .find(|s| s & mask == low)
        .ok_or_else(|| format!("message of {n} bytes (low 0x{low:x}) is none of {window:?}"))?;
    check(seq, msg)?;
    Ok(seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_cover_one_byte_to_64_kib() {
        let lens: Vec<usize> = (0..20_000).map(len).collect();
        assert_eq!(lens.iter().min(), Some(&1));
        assert!(*lens.iter().max().unwrap() > 60_000);
        assert!(lens.iter().all(|&l| (1..=MAX_LEN).contains(&l)));
        // Every length class (up to 8, up to 16, more) is exercised.
        assert!(lens.iter().any(|&l| l < 8));
        assert!(lens.iter().any(|&l| (9..=16).contains(&l)));
    }

    #[test]
    fn built_messages_check() {
        for seq in 0..5_000u64 {
            let m = message(seq);
            assert_eq!(m.len(), len(seq));
            assert_eq!(check(seq, &m), Ok(()), "message {seq}");
        }
    }

    #[test]
    fn check_catches_every_kind_of_damage() {
        for seq in [0u64, 5, 77, 1234, 99_999] {
            let mut m = message(seq);
            assert_eq!(check(seq, &m), Ok(()));
            assert!(check(seq + 1, &m).is_err());
            let last = m.len() - 1;
            m[last] ^= 1;
            assert!(check(seq, &m).is_err());
        }
    }

    /// Seqs with one message of each length class: up to 8 bytes, 9 to 16,
    /// and over 16 (with the checksum field).
    fn one_of_each_class() -> Vec<u64> {
        let short = (0..).find(|&s| len(s) <= 8).unwrap();
        let mid = (0..).find(|&s| (9..=16).contains(&len(s))).unwrap();
        let long = (0..).find(|&s| len(s) > 64).unwrap();
        vec![short, mid, long]
    }

    #[test]
    fn a_corrupted_byte_anywhere_is_caught() {
        for seq in one_of_each_class() {
            let good = message(seq);
            for i in 0..good.len() {
                let mut m = good.clone();
                m[i] ^= 0x40;
                let e = check(seq, &m).expect_err("corruption missed");
                assert!(e.contains(&format!("message {seq}")), "{e}");
            }
        }
    }

    #[test]
    fn a_wrong_length_is_caught() {
        for seq in one_of_each_class() {
            let good = message(seq);
            let short = &good[..good.len() - 1];
            let e = check(seq, short).expect_err("short message accepted");
            assert!(e.contains("bytes, expected"), "{e}");
            let mut long = good.clone();
            long.push(0);
            assert!(check(seq, &long).is_err(), "long message accepted");
        }
    }

    #[test]
    fn identify_finds_the_right_seq_in_a_window() {
        for seq in 0..2_000u64 {
            let m = message(seq);
            let lo = seq.saturating_sub(31);
            assert_eq!(identify(&m, lo..=seq + 1), Ok(seq), "message {seq}");
            assert_eq!(identify(&m, seq..=seq), Ok(seq));
        }
        // Outside the window: refused, not mistaken for a neighbour.
        let m = message(1000);
        assert!(identify(&m, 1001..=1040).is_err());
        assert!(identify(&m, 960..=999).is_err());
    }

    #[test]
    fn identify_checks_what_it_finds() {
        let seq = (0..).find(|&s| len(s) > 64).unwrap();
        let mut m = message(seq);
        m[40] ^= 1;
        assert!(identify(&m, seq.saturating_sub(10)..=seq + 1).is_err());
    }
}
