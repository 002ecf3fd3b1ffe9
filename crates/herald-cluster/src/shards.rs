//! Sharded locks: serialise the work on one name (a channel, a route) without keeping a lock
//! per name. Every broker and backend of this crate that needs such locks uses this one.

use tokio::sync::Mutex;

/// A fixed set of async locks; one name always maps to the same lock.
pub(crate) struct Shards {
    /// The locks; a name's lock is the one its hash picks.
    locks: Box<[Mutex<()>]>,
}

impl Shards {
    /// `n` locks (at least one).
    pub(crate) fn new(n: usize) -> Self {
        Self {
            locks: (0..n.max(1)).map(|_| Mutex::new(())).collect(),
        }
    }

    /// The lock of the name made of `parts`, picked by the one shard function of the
    /// workspace ([`herald_core::shard::shard_of`]).
    pub(crate) fn of(&self, parts: &[&str]) -> &Mutex<()> {
        let mut bytes = [&b""[..]; 4];
        debug_assert!(parts.len() <= bytes.len(), "at most four parts");
        let n = parts.len().min(bytes.len());
        for (slot, part) in bytes.iter_mut().zip(parts) {
            *slot = part.as_bytes();
        }
        &self.locks[herald_core::shard::shard_of(&bytes[..n], self.locks.len())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_always_maps_to_the_same_lock() {
        let shards = Shards::new(64);
        let a = shards.of(&["app", "news"]) as *const _;
        assert_eq!(a, shards.of(&["app", "news"]) as *const _);
    }
}
