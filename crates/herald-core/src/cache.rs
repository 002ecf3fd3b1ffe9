//! [`ChannelCache`]: the last event of each Pusher cache channel (`cache-`, `private-cache-`,
//! `presence-cache-`, `private-encrypted-cache-`), replayed to every new subscriber.
//!
//! Only events published through an API are cached, not client events (as in Pusher). Each
//! entry lives for the app's `cache_ttl`; at most `max_cached_channels` entries are kept per
//! node, the oldest forgotten first. This store is node-local: with several nodes, each
//! caches what was published through it or delivered to it (clustering documents this).

use std::collections::HashMap;
use std::sync::Arc;

use herald_protocol::ChannelName;
use parking_lot::Mutex;
use tokio::time::{Duration, Instant};

use crate::publication::Publication;

/// One cached event.
#[derive(Debug, Clone)]
struct Entry {
    publication: Arc<Publication>,
    stored: Instant,
    ttl: Duration,
}

/// The node's cache-channel store.
#[derive(Debug, Default)]
pub struct ChannelCache {
    entries: Mutex<HashMap<(Arc<str>, ChannelName), Entry>>,
}

impl ChannelCache {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Remember `publication` as its channel's last event.
    pub fn store(&self, publication: Arc<Publication>, ttl: Duration, max_entries: usize) {
        let key = (publication.app_id.clone(), publication.channel.clone());
        let mut entries = self.entries.lock();
        if entries.len() >= max_entries && !entries.contains_key(&key) {
            let now = Instant::now();
            entries.retain(|_, e| now.saturating_duration_since(e.stored) < e.ttl);
            if entries.len() >= max_entries
                && let Some(oldest) = entries
                    .iter()
                    .min_by_key(|(_, e)| e.stored)
                    .map(|(k, _)| k.clone())
            {
                entries.remove(&oldest);
            }
        }
        entries.insert(
            key,
            Entry {
                publication,
                stored: Instant::now(),
                ttl,
            },
        );
    }

    /// The channel's cached event, if any and not expired, with its remaining lifetime.
    pub fn get(&self, app_id: &str, channel: &ChannelName) -> Option<(Arc<Publication>, Duration)> {
        let key = (Arc::from(app_id), channel.clone());
        let mut entries = self.entries.lock();
        let entry = entries.get(&key)?;
        let age = Instant::now().saturating_duration_since(entry.stored);
        if age >= entry.ttl {
            entries.remove(&key);
            return None;
        }
        Some((entry.publication.clone(), entry.ttl - age))
    }
}
