//! [`ChannelCache`]: the last event of each Pusher cache channel (`cache-`, `private-cache-`,
//! `presence-cache-`, `private-encrypted-cache-`), replayed to every new subscriber.
//!
//! Only events published through an API are cached, not client events (as in Pusher). Each
//! entry lives for the app's `cache_ttl`; at most `max_cached_channels` entries are kept per
//! app on each node, the least recently written forgotten first. This store is node-local: with several nodes, each
//! caches what was published through it or delivered to it (clustering documents this).

use std::collections::{HashMap, VecDeque};
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

/// One app's cached events, with the order they were written in for eviction.
#[derive(Debug, Default)]
struct AppCache {
    /// The last event per channel.
    entries: HashMap<ChannelName, Entry>,
    /// `(channel, stored)` per write, oldest first. A record whose `stored` no longer matches
    /// the entry was superseded by a later write and is skipped; the queue is compacted when
    /// it grows past twice the entries, so eviction stays amortised O(1) and memory bounded.
    order: VecDeque<(ChannelName, Instant)>,
}

impl AppCache {
    /// Forget the oldest entry that is still current.
    fn evict_oldest(&mut self) {
        while let Some((channel, stored)) = self.order.pop_front() {
            if self
                .entries
                .get(&channel)
                .is_some_and(|e| e.stored == stored)
            {
                self.entries.remove(&channel);
                return;
            }
        }
    }

    fn compact(&mut self) {
        if self.order.len() > 2 * self.entries.len() + 16 {
            let entries = &self.entries;
            self.order
                .retain(|(c, stored)| entries.get(c).is_some_and(|e| e.stored == *stored));
        }
    }
}

/// The node's cache-channel store. Each app has its own bound, so one app's channels never
/// evict another's.
#[derive(Debug, Default)]
pub struct ChannelCache {
    apps: Mutex<HashMap<Arc<str>, AppCache>>,
}

impl ChannelCache {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Remember `publication` as its channel's last event, keeping at most `max_entries`
    /// channels for its app (the least recently written is forgotten first).
    pub fn store(&self, publication: Arc<Publication>, ttl: Duration, max_entries: usize) {
        if max_entries == 0 {
            return;
        }
        let channel = publication.channel.clone();
        let mut apps = self.apps.lock();
        let app = apps.entry(publication.app_id.clone()).or_default();
        if !app.entries.contains_key(&channel) {
            while app.entries.len() >= max_entries {
                app.evict_oldest();
            }
        }
        // Distinct instants per write keep superseded order records recognisable.
        let stored = match app.order.back() {
            Some((_, last)) if *last >= Instant::now() => *last + Duration::from_nanos(1),
            _ => Instant::now(),
        };
        app.order.push_back((channel.clone(), stored));
        app.entries.insert(
            channel,
            Entry {
                publication,
                stored,
                ttl,
            },
        );
        app.compact();
    }

    /// The channel's cached event, if any and not expired, with its remaining lifetime.
    pub fn get(&self, app_id: &str, channel: &ChannelName) -> Option<(Arc<Publication>, Duration)> {
        let mut apps = self.apps.lock();
        let app = apps.get_mut(app_id)?;
        let entry = app.entries.get(channel)?;
        let age = Instant::now().saturating_duration_since(entry.stored);
        if age >= entry.ttl {
            app.entries.remove(channel);
            app.compact();
            return None;
        }
        Some((entry.publication.clone(), entry.ttl - age))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publication::Payload;

    fn publication(app: &str, channel: &str) -> Arc<Publication> {
        Arc::new(Publication::new(
            Arc::from(app),
            ChannelName::new(channel).unwrap(),
            Arc::from("id"),
            Payload::SubscriptionCount(0),
            None,
            0,
        ))
    }

    fn has(cache: &ChannelCache, app: &str, channel: &str) -> bool {
        cache
            .get(app, &ChannelName::new(channel).unwrap())
            .is_some()
    }

    #[tokio::test]
    async fn each_app_keeps_its_own_bounded_set_and_forgets_the_least_recently_written() {
        let cache = ChannelCache::new();
        let ttl = Duration::from_secs(60);
        cache.store(publication("a", "cache-1"), ttl, 2);
        cache.store(publication("a", "cache-2"), ttl, 2);
        // Rewriting cache-1 makes cache-2 the oldest.
        cache.store(publication("a", "cache-1"), ttl, 2);
        cache.store(publication("b", "cache-9"), ttl, 2);
        cache.store(publication("a", "cache-3"), ttl, 2);
        assert!(has(&cache, "a", "cache-1"));
        assert!(!has(&cache, "a", "cache-2"));
        assert!(has(&cache, "a", "cache-3"));
        // Another app's entries are untouched by app a's evictions.
        assert!(has(&cache, "b", "cache-9"));
        // Many rewrites of one channel keep the bookkeeping bounded.
        for _ in 0..1000 {
            cache.store(publication("a", "cache-3"), ttl, 2);
        }
        assert!(cache.apps.lock()["a"].order.len() <= 2 * 2 + 17);
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_their_ttl() {
        let cache = ChannelCache::new();
        cache.store(publication("a", "cache-1"), Duration::from_secs(5), 10);
        tokio::time::advance(Duration::from_secs(4)).await;
        let (_, left) = cache
            .get("a", &ChannelName::new("cache-1").unwrap())
            .unwrap();
        assert_eq!(left, Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!has(&cache, "a", "cache-1"));
    }
}
