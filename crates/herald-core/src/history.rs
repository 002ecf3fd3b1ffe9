//! Channel history: a bounded stream of recent publications per channel, with offsets and an
//! epoch, so a client that reconnects can be sent exactly what it missed.
//!
//! # Contract (every backend documents how it meets it)
//! - **Offsets:** every publication appended to a channel's stream gets the next offset,
//!   starting at 1, with no gaps and no reuse within one epoch.
//! - **Epoch:** a stream's epoch is chosen when the stream is created. When a stream is lost
//!   (a restart of an in-memory store, expiry of an idle stream, an explicit clear) the next
//!   append creates a new stream with a new epoch, so a position from the old stream can never
//!   be mistaken for one in the new stream.
//! - **Atomicity and order:** appending and handing the publication to the broker happen as
//!   one step per channel (the broker calls [`HistoryStore`] from inside its publish), so
//!   publications reach every node in offset order.
//! - **Bounds:** a stream keeps at most `size` publications, none older than `ttl`; a stream
//!   whose newest publication is older than `ttl` may be removed whole.
//! - **Reads** never block appends for longer than copying the requested entries.

pub mod journal;
pub mod memory;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_protocol::ChannelName;

use crate::publication::{Position, Publication};

/// How one channel's history is kept (from the app's `[[apps.history]]` rules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPolicy {
    /// Most publications kept; 0 keeps none (offsets and dedupe still work).
    pub size: usize,
    /// Publications older than this are dropped.
    pub ttl: Duration,
    /// Drop a publication whose payload equals the previous one's within this window.
    pub dedupe_window: Option<Duration>,
}

/// Which part of a stream to read.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    /// Only publications with an offset above this.
    pub after_offset: Option<u64>,
    /// Only publications with an offset at or below this.
    pub until_offset: Option<u64>,
    /// Only publications published at or after this (ms since the Unix epoch).
    pub since_ms: Option<u64>,
    /// Only publications published at or before this (ms since the Unix epoch).
    pub until_ms: Option<u64>,
    /// At most this many publications (the oldest matching first).
    pub limit: usize,
}

/// The result of a read.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// Matching publications, oldest first.
    pub publications: Vec<Arc<Publication>>,
    /// The stream's newest position (offset 0 for an empty, new stream).
    pub top: Position,
    /// The oldest offset still stored (`top.offset + 1` when nothing is stored).
    pub first_offset: u64,
    /// More publications matched than `limit` allowed.
    pub truncated: bool,
}

/// What an append did.
#[derive(Debug, Clone)]
pub enum Appended {
    /// Stored (when `size > 0`) at this position.
    Stored(Position),
    /// Dropped: same payload as the previous publication within the dedupe window.
    Unchanged(Position),
}

/// Figures for `/stats` and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryStats {
    /// Streams held.
    pub streams: u64,
    /// Publications stored across all streams.
    pub publications: u64,
    /// Approximate bytes of stored payloads.
    pub bytes: u64,
}

/// Why a history operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HistoryError {
    /// The backend is unreachable; nothing was read or changed.
    #[error("history unavailable: {0}")]
    Unavailable(String),
}

/// Reads and administers channel streams. Appends go through the broker (see the module docs),
/// so they are not part of this trait.
#[async_trait]
pub trait HistoryStore: Send + Sync + 'static {
    /// Read part of a channel's stream. A channel without a stream reads as an empty stream
    /// with a fresh epoch; with `create`, that empty stream is kept (with the policy's TTL),
    /// so the position handed to a subscriber names a real stream and a later recovery from
    /// it can tell "nothing missed" from "the stream was lost".
    async fn read(
        &self,
        app_id: &str,
        channel: &ChannelName,
        query: &HistoryQuery,
        create: Option<&HistoryPolicy>,
    ) -> Result<HistoryPage, HistoryError>;

    /// Remove a channel's stream; the next publication starts a new epoch. Returns whether
    /// there was one.
    async fn clear(&self, app_id: &str, channel: &ChannelName) -> Result<bool, HistoryError>;

    /// Totals over every stream of `app_id` (all apps when `None`).
    async fn stats(&self, app_id: Option<&str>) -> Result<HistoryStats, HistoryError>;

    /// Housekeeping the node runs every few seconds: remove expired streams, for stores
    /// without expiry of their own. Returns how many were removed.
    fn sweep(&self) -> usize {
        0
    }
}
