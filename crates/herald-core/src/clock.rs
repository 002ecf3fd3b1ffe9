//! Time sources: wall-clock milliseconds for the wire, and a monotonic node clock.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Milliseconds since the Unix epoch, as put in every message's `timestamp`.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch, for token expiry.
pub fn unix_secs() -> u64 {
    unix_ms() / 1000
}

/// A monotonic clock counting milliseconds since the node started.
///
/// Sessions store their last activity as a `u64` from this clock in an atomic, which is
/// smaller and cheaper to update than an `Instant` behind a lock.
#[derive(Debug, Clone, Copy)]
pub struct NodeClock {
    /// When the node started; every reading is relative to it.
    start: Instant,
}

impl NodeClock {
    /// A clock starting now.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
        }
    }

    /// Milliseconds since the node started.
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// When the node started.
    pub fn start(&self) -> Instant {
        self.start
    }
}

impl Default for NodeClock {
    fn default() -> Self {
        Self::new()
    }
}
