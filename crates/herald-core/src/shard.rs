//! [`shard_of`]: which of `n` shards a key belongs to.
//!
//! FNV-1a, not the standard library's SipHash: shard selection is on the hot path (every
//! publish picks a dispatcher and a hub shard) and needs speed, not flooding resistance.
//! It only spreads keys over a few locks; the maps behind them keep SipHash.

/// The shard of `key` among `n` (n > 0), combining several parts of a key.
pub fn shard_of(parts: &[&[u8]], n: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separate parts so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % n as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_and_is_stable() {
        let n = 32;
        let mut counts = vec![0; n];
        for i in 0..32_000 {
            counts[shard_of(&[format!("channel-{i}").as_bytes()], n)] += 1;
        }
        assert!(counts.iter().all(|c| (700..1300).contains(c)), "{counts:?}");
        assert_eq!(shard_of(&[b"a"], 7), shard_of(&[b"a"], 7));
        assert_ne!(
            shard_of(&[b"ab", b"c"], 1 << 30),
            shard_of(&[b"a", b"bc"], 1 << 30)
        );
    }
}
