//! Test traffic: message `seq` is a pure function of `seq`, so the receiver
//! checks length, identity and contents without any side channel.
//!
//! Length: 1 B to 64 KiB, log-uniform. Contents: the low bytes of `seq`
//! (as many as fit, up to 8), then for messages over 16 bytes an FNV-1a
//! checksum of the rest, then a pattern derived from `seq`.

use crate::checksum;

/// Largest traffic message.
pub const MAX_LEN: usize = 64 * 1024;

fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Length of message `seq`.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_cover_one_byte_to_64_kib() {
        let lens: Vec<usize> = (0..20_000).map(len).collect();
        assert_eq!(lens.iter().min(), Some(&1));
        assert!(*lens.iter().max().unwrap() > 60_000);
        assert!(lens.iter().all(|&l| (1..=MAX_LEN).contains(&l)));
    }

    #[test]
    fn check_catches_every_kind_of_damage() {
        for seq in [0u64, 5, 77, 1234, 99_999] {
            let mut m = vec![0u8; len(seq)];
            build(seq, &mut m);
            assert_eq!(check(seq, &m), Ok(()));
            assert!(check(seq + 1, &m).is_err());
            let last = m.len() - 1;
            m[last] ^= 1;
            assert!(check(seq, &m).is_err());
        }
    }
}
