//! Identifiers the node generates: socket ids and message ids.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use herald_protocol::SocketId;

/// Generates message ids: a random per-node prefix and a counter, e.g. `3f9a1c07-1a2b`.
///
/// Ids are unique per node run and, through the random prefix, across nodes and restarts
/// with overwhelming probability. They identify messages for logs and client-side dedupe;
/// they are not secrets.
#[derive(Debug)]
pub struct IdGenerator {
    /// Random per-process prefix, as 8 lowercase hex digits.
    prefix: [u8; 8],
    /// The next sequence number.
    counter: AtomicU64,
}

impl IdGenerator {
    /// A generator with a random prefix.
    pub fn new() -> Self {
        let n: u32 = rand::random();
        let mut prefix = [0u8; 8];
        for (i, b) in prefix.iter_mut().enumerate() {
            let nibble = (n >> (28 - 4 * i)) & 0xF;
            *b = b"0123456789abcdef"[nibble as usize];
        }
        Self {
            prefix,
            counter: AtomicU64::new(1),
        }
    }

    /// The next message id.
    pub fn next(&self) -> MessageId {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut id = MessageId {
            bytes: [0; 26],
            len: 0,
        };
        id.bytes[..8].copy_from_slice(&self.prefix);
        id.bytes[8] = b'-';
        let mut len = 9;
        // Lowercase hex of the counter, most significant digit first.
        let digits = if n == 0 {
            1
        } else {
            (64 - n.leading_zeros()).div_ceil(4) as usize
        };
        for i in (0..digits).rev() {
            let nibble = (n >> (4 * i)) & 0xF;
            id.bytes[len] = b"0123456789abcdef"[nibble as usize];
            len += 1;
        }
        id.len = len as u8;
        id
    }

    /// A fresh random socket id.
    pub fn socket_id(&self) -> SocketId {
        SocketId::new(rand::random(), rand::random())
    }
}

impl Default for IdGenerator {
    fn default() -> Self {
        Self::new()
    }
}

/// A message id held on the stack (no allocation).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MessageId {
    /// ASCII bytes: 8 hex prefix, `-`, up to 16 hex digits.
    bytes: [u8; 26],
    /// How many bytes are used.
    len: u8,
}

impl MessageId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits and '-' are ever written.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_well_formed() {
        let g = IdGenerator::new();
        let a = g.next();
        let b = g.next();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 10);
        assert!(a.as_str().ends_with("-1"));
        assert!(b.as_str().ends_with("-2"));
        g.counter.store(u64::MAX, Ordering::Relaxed);
        assert!(g.next().as_str().ends_with("-ffffffffffffffff"));
        let s = g.socket_id().to_string();
        assert!(
            s.split('.')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        );
    }
}
