//! [`MemoryHistory`]: channel streams held in this process.
//!
//! How it meets the [`HistoryStore`] contract:
//! - each stream lives in one of [`SHARDS`] mutex-guarded maps; an append (offset, store,
//!   dedupe check, and the broker's enqueue passed in as a closure) runs under that lock, so
//!   offsets are handed to the broker in order;
//! - epochs are a random per-process prefix plus a counter: a restart, an expired stream or a
//!   cleared one always gets an epoch no client has seen;
//! - a stream whose newest publication is older than its TTL is removed by [`sweep`], which
//!   the node runs periodically; entries beyond `size` or older than `ttl` are dropped on
//!   every append and read.
//!
//! With a [`Journal`] ([`MemoryHistory::durable`]) every change is also written to disk, in
//! order, and a restart begins from the streams it restores; see [`super::journal`].
//!
//! [`sweep`]: MemoryHistory::sweep

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use herald_protocol::ChannelName;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio::time::{Duration, Instant};

use super::journal::{Committed, Journal, JournalRecord, JournalSlot, RestoredStream};
use super::{
    Appended, HistoryError, HistoryPage, HistoryPolicy, HistoryQuery, HistoryStats, HistoryStore,
};
use crate::clock::unix_ms;
use crate::publication::{Payload, Position, Publication};

/// Number of stream-map shards.
const SHARDS: usize = 16;

/// One channel's stream.
#[derive(Debug)]
struct Stream {
    /// Chosen at creation; see the module docs.
    epoch: Arc<str>,
    /// The offset of the newest publication (0 before the first).
    top: u64,
    /// Stored publications, oldest first, with their payload size.
    entries: VecDeque<(Arc<Publication>, usize)>,
    /// Sum of the stored payload sizes, for `/stats`.
    bytes: usize,
    /// The newest publication's payload digest and arrival, for dedupe.
    last_digest: Option<([u8; 32], Instant)>,
    /// When the newest publication arrived; the whole stream expires `ttl` after it.
    last_append: Instant,
    /// The policy the stream was last appended with.
    ttl: Duration,
}

impl Stream {
    fn empty(epoch: Arc<str>, ttl: Duration, now: Instant) -> Self {
        Self {
            epoch,
            top: 0,
            entries: VecDeque::new(),
            bytes: 0,
            last_digest: None,
            last_append: now,
            ttl,
        }
    }

    fn trim(&mut self, size: usize, ttl: Duration, now: Instant) {
        while let Some((front, len)) = self.entries.front() {
            let expired = now.saturating_duration_since(front.received_at) >= ttl;
            if self.entries.len() > size || expired {
                self.bytes -= len;
                self.entries.pop_front();
            } else {
                break;
            }
        }
    }

    fn first_offset(&self) -> u64 {
        self.entries
            .front()
            .and_then(|(p, _)| p.position.as_ref())
            .map_or(self.top + 1, |p| p.offset)
    }
}

type StreamMap = HashMap<(Arc<str>, ChannelName), Stream>;

/// The in-process history store.
#[derive(Debug)]
pub struct MemoryHistory {
    /// Streams, sharded by app and channel.
    shards: Box<[Mutex<StreamMap>]>,
    /// Random per-process part of every epoch.
    epoch_prefix: String,
    /// Makes epochs unique within the process.
    epoch_counter: AtomicU64,
    /// Where every change is also written, for a store that survives restarts.
    journal: Option<Journal>,
}

/// What an append did to its stream, for the journal.
struct Change {
    /// The stream was created by this append.
    new_stream: bool,
    /// The oldest offset still stored after it.
    keep_from: u64,
    /// The payload digest, when the channel dedupes.
    digest: Option<[u8; 32]>,
}

impl Default for MemoryHistory {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryHistory {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            epoch_prefix: format!("{:08x}", rand::random::<u32>()),
            epoch_counter: AtomicU64::new(1),
            journal: None,
        }
    }

    /// A store that writes every change to `journal`, starting from the streams a restart
    /// found (`restored`, as the journal's store loaded them).
    pub fn durable(journal: Journal, restored: Vec<RestoredStream>) -> Self {
        let mut store = Self::new();
        let (now, now_ms) = (Instant::now(), unix_ms());
        // The age of a wall-clock time, as an instant on this process's clock.
        let instant = |ms: u64| {
            now.checked_sub(Duration::from_millis(now_ms.saturating_sub(ms)))
                .unwrap_or(now)
        };
        for r in restored {
            let mut stream = Stream::empty(r.epoch, r.ttl, instant(r.last_append_ms));
            stream.top = r.top;
            stream.last_digest = r.last_digest.map(|(d, at)| (d, instant(at)));
            for (mut publication, at_ms) in r.entries {
                publication.received_at = instant(at_ms);
                let len = payload_len(&publication.payload);
                stream.bytes += len;
                stream.entries.push_back((Arc::new(publication), len));
            }
            let key = (r.app_id, r.channel);
            let shard = store.shard(&key.0, &key.1);
            shard.lock().insert(key, stream);
        }
        store.journal = Some(journal);
        store
    }

    /// The journal, when the store is durable.
    pub fn journal(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }

    fn shard(&self, app_id: &str, channel: &ChannelName) -> &Mutex<StreamMap> {
        let i = crate::shard::shard_of(&[app_id.as_bytes(), channel.as_str().as_bytes()], SHARDS);
        &self.shards[i]
    }

    fn new_epoch(&self) -> Arc<str> {
        let n = self.epoch_counter.fetch_add(1, Ordering::Relaxed);
        Arc::from(format!("{}{n:x}", self.epoch_prefix))
    }

    /// Give `publication` the next offset of its channel's stream, store it, and call
    /// `deliver` with it, all under the stream's lock (which keeps offsets in delivery
    /// order). A publication equal to the previous one within the dedupe window is not
    /// stored and not delivered. For a store without a journal.
    pub fn append(
        &self,
        publication: Publication,
        policy: &HistoryPolicy,
        deliver: impl FnOnce(Arc<Publication>),
    ) -> Appended {
        self.append_with(publication, policy, |p, _| deliver(p))
    }

    /// [`append`](Self::append) for a durable store: the publication is queued in `slot`
    /// under the stream's lock, and `deliver` runs once it is committed (see
    /// [`super::journal`]). Without a journal `deliver` runs at once.
    pub fn append_journaled(
        &self,
        publication: Publication,
        policy: &HistoryPolicy,
        slot: Option<JournalSlot>,
        deliver: impl FnOnce(Arc<Publication>) + Send + 'static,
    ) -> Appended {
        let ttl = policy.ttl;
        self.append_with(publication, policy, move |p, change| match slot {
            None => deliver(p),
            Some(slot) => {
                let record = JournalRecord::Appended {
                    publication: p.clone(),
                    keep_from: change.keep_from,
                    new_stream: change.new_stream,
                    ttl,
                    digest: change.digest,
                    at_ms: unix_ms(),
                };
                let then: Committed = Box::new(move || deliver(p));
                slot.write(record, Some(then));
            }
        })
    }

    fn append_with(
        &self,
        mut publication: Publication,
        policy: &HistoryPolicy,
        then: impl FnOnce(Arc<Publication>, Change),
    ) -> Appended {
        let now = Instant::now();
        let digest = policy.dedupe_window.map(|_| digest(&publication.payload));
        let mut shard = self.shard(&publication.app_id, &publication.channel).lock();
        let key = (publication.app_id.clone(), publication.channel.clone());
        let mut new_stream = false;
        let stream = match shard.get_mut(&key) {
            // An idle stream past its TTL is gone: start a new epoch.
            Some(s) if now.saturating_duration_since(s.last_append) < s.ttl => s,
            _ => {
                new_stream = true;
                shard.insert(
                    key.clone(),
                    Stream::empty(self.new_epoch(), policy.ttl, now),
                );
                shard.get_mut(&key).expect("just inserted")
            }
        };
        if let (Some(window), Some(d)) = (policy.dedupe_window, digest)
            && let Some((last, at)) = stream.last_digest
            && last == d
            && now.saturating_duration_since(at) < window
        {
            return Appended::Unchanged(Position {
                offset: stream.top,
                epoch: stream.epoch.clone(),
            });
        }
        stream.top += 1;
        stream.last_append = now;
        stream.ttl = policy.ttl;
        if let Some(d) = digest {
            stream.last_digest = Some((d, now));
        }
        let position = Position {
            offset: stream.top,
            epoch: stream.epoch.clone(),
        };
        publication.position = Some(position.clone());
        let publication = Arc::new(publication);
        if policy.size > 0 {
            let len = payload_len(&publication.payload);
            stream.entries.push_back((publication.clone(), len));
            stream.bytes += len;
        }
        stream.trim(policy.size, policy.ttl, now);
        let change = Change {
            new_stream,
            keep_from: stream.first_offset(),
            digest,
        };
        then(publication, change);
        Appended::Stored(position)
    }

    /// Remove streams whose newest publication is older than their TTL. Returns how many.
    pub fn sweep_expired(&self) -> usize {
        let now = Instant::now();
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut map = shard.lock();
            map.retain(|(app_id, channel), s| {
                let live = now.saturating_duration_since(s.last_append) < s.ttl;
                if !live {
                    removed += 1;
                    // Housekeeping never waits: a removal the queue has no room for now is
                    // made by the next restart, which drops expired streams as it loads.
                    if let Some(slot) = self.journal.as_ref().and_then(Journal::try_reserve) {
                        let record = JournalRecord::Removed {
                            app_id: app_id.clone(),
                            channel: channel.clone(),
                        };
                        slot.write(record, None);
                    }
                }
                live
            });
        }
        removed
    }
}

/// SHA-256 of an event's name and data: a publisher cannot forge a collision to have a
/// changed state dropped as unchanged.
fn digest(payload: &Payload) -> [u8; 32] {
    let mut h = Sha256::new();
    if let Payload::Event { event, data, .. } = payload {
        h.update(event.as_bytes());
        h.update([0]);
        h.update(&*data.native_json());
    }
    h.finalize().into()
}

fn payload_len(payload: &Payload) -> usize {
    match payload {
        Payload::Event { event, data, .. } => event.len() + data.len(),
        _ => 0,
    }
}

#[async_trait]
impl HistoryStore for MemoryHistory {
    async fn read(
        &self,
        app_id: &str,
        channel: &ChannelName,
        query: &HistoryQuery,
        create: Option<&HistoryPolicy>,
    ) -> Result<HistoryPage, HistoryError> {
        // Room to record a stream this read may create, taken before the lock.
        let mut slot = match (&self.journal, create) {
            (Some(journal), Some(_)) => Some(journal.reserve().await?),
            _ => None,
        };
        let now = Instant::now();
        let mut shard = self.shard(app_id, channel).lock();
        let key = (Arc::from(app_id), channel.clone());
        let live = shard
            .get(&key)
            .is_some_and(|s| now.saturating_duration_since(s.last_append) < s.ttl);
        if !live {
            shard.remove(&key);
            if let Some(policy) = create {
                let epoch = self.new_epoch();
                if let Some(slot) = slot.take() {
                    let record = JournalRecord::Created {
                        app_id: key.0.clone(),
                        channel: channel.clone(),
                        epoch: epoch.clone(),
                        ttl: policy.ttl,
                        at_ms: unix_ms(),
                    };
                    slot.write(record, None);
                }
                shard.insert(key.clone(), Stream::empty(epoch, policy.ttl, now));
            }
        }
        let Some(stream) = shard.get_mut(&key) else {
            // No stream: an empty one whose epoch nobody holds.
            return Ok(HistoryPage {
                publications: Vec::new(),
                top: Position {
                    offset: 0,
                    epoch: self.new_epoch(),
                },
                first_offset: 1,
                truncated: false,
            });
        };
        let ttl = stream.ttl;
        let size = stream.entries.len();
        stream.trim(size, ttl, now);
        let mut publications = Vec::new();
        let mut truncated = false;
        for (p, _) in &stream.entries {
            let offset = p.position.as_ref().map_or(0, |pos| pos.offset);
            if query.after_offset.is_some_and(|a| offset <= a)
                || query.since_ms.is_some_and(|s| p.timestamp_ms < s)
            {
                continue;
            }
            if query.until_offset.is_some_and(|u| offset > u)
                || query.until_ms.is_some_and(|u| p.timestamp_ms > u)
            {
                break;
            }
            if publications.len() == query.limit {
                truncated = true;
                break;
            }
            publications.push(p.clone());
        }
        Ok(HistoryPage {
            publications,
            top: Position {
                offset: stream.top,
                epoch: stream.epoch.clone(),
            },
            first_offset: stream.first_offset(),
            truncated,
        })
    }

    fn sweep(&self) -> usize {
        self.sweep_expired()
    }

    async fn clear(&self, app_id: &str, channel: &ChannelName) -> Result<bool, HistoryError> {
        let slot = match &self.journal {
            Some(journal) => Some(journal.reserve().await?),
            None => None,
        };
        let key = (Arc::from(app_id), channel.clone());
        let mut shard = self.shard(app_id, channel).lock();
        let removed = shard.remove(&key).is_some();
        if let Some(slot) = slot.filter(|_| removed) {
            let (app_id, channel) = key;
            slot.write(JournalRecord::Removed { app_id, channel }, None);
        }
        Ok(removed)
    }

    async fn stats(&self, app_id: Option<&str>) -> Result<HistoryStats, HistoryError> {
        let mut stats = HistoryStats::default();
        for shard in self.shards.iter() {
            for ((app, _), s) in shard.lock().iter() {
                if app_id.is_none_or(|a| a == &**app) {
                    stats.streams += 1;
                    stats.publications += s.entries.len() as u64;
                    stats.bytes += s.bytes as u64;
                }
            }
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publication::EventData;
    use crate::raw_json::RawJson;

    fn publication(n: u64) -> Publication {
        Publication::new(
            Arc::from("app"),
            ChannelName::new("feed").unwrap(),
            Arc::from(format!("id-{n}")),
            Payload::Event {
                event: Arc::from("e"),
                data: EventData::Json(RawJson::from_value(&serde_json::json!({ "n": n }))),
                user_id: None,
            },
            None,
            1000 + n,
        )
    }

    fn policy(size: usize, ttl_secs: u64) -> HistoryPolicy {
        HistoryPolicy {
            size,
            ttl: Duration::from_secs(ttl_secs),
            dedupe_window: None,
        }
    }

    fn query(after: Option<u64>, limit: usize) -> HistoryQuery {
        HistoryQuery {
            after_offset: after,
            limit,
            ..HistoryQuery::default()
        }
    }

    fn offsets(page: &HistoryPage) -> Vec<u64> {
        page.publications
            .iter()
            .map(|p| p.position.as_ref().unwrap().offset)
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn offsets_count_up_size_bounds_and_reads_filter() {
        let h = MemoryHistory::new();
        let ch = ChannelName::new("feed").unwrap();
        let mut delivered = Vec::new();
        for n in 1..=7 {
            h.append(publication(n), &policy(5, 300), |p| delivered.push(p));
        }
        assert_eq!(delivered.len(), 7);
        let page = h.read("app", &ch, &query(None, 100), None).await.unwrap();
        assert_eq!(offsets(&page), vec![3, 4, 5, 6, 7]);
        assert_eq!((page.top.offset, page.first_offset), (7, 3));
        let page = h.read("app", &ch, &query(Some(4), 2), None).await.unwrap();
        assert_eq!(offsets(&page), vec![5, 6]);
        assert!(page.truncated);
        let by_time = HistoryQuery {
            since_ms: Some(1004),
            until_ms: Some(1005),
            limit: 10,
            ..HistoryQuery::default()
        };
        let page = h.read("app", &ch, &by_time, None).await.unwrap();
        assert_eq!(offsets(&page), vec![4, 5]);
        let stats = h.stats(Some("app")).await.unwrap();
        assert_eq!((stats.streams, stats.publications), (1, 5));
    }

    #[tokio::test(start_paused = true)]
    async fn ttl_expires_entries_then_the_stream_with_a_new_epoch() {
        let h = MemoryHistory::new();
        let ch = ChannelName::new("feed").unwrap();
        let first = match h.append(publication(1), &policy(10, 5), |_| {}) {
            Appended::Stored(p) => p,
            other => panic!("{other:?}"),
        };
        tokio::time::advance(Duration::from_secs(3)).await;
        h.append(publication(2), &policy(10, 5), |_| {});
        tokio::time::advance(Duration::from_secs(3)).await;
        // The first entry is older than 5 s; the stream lives on.
        let page = h.read("app", &ch, &query(None, 10), None).await.unwrap();
        assert_eq!(offsets(&page), vec![2]);
        assert_eq!(page.top.epoch, first.epoch);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(h.sweep_expired(), 1);
        let next = match h.append(publication(3), &policy(10, 5), |_| {}) {
            Appended::Stored(p) => p,
            other => panic!("{other:?}"),
        };
        assert_eq!(next.offset, 1);
        assert_ne!(next.epoch, first.epoch);
    }

    #[tokio::test(start_paused = true)]
    async fn unchanged_payloads_are_dropped_within_the_window() {
        let h = MemoryHistory::new();
        let p = HistoryPolicy {
            dedupe_window: Some(Duration::from_secs(10)),
            ..policy(10, 300)
        };
        let mut delivered = 0;
        assert!(matches!(
            h.append(publication(1), &p, |_| delivered += 1),
            Appended::Stored(_)
        ));
        assert!(matches!(
            h.append(publication(1), &p, |_| delivered += 1),
            Appended::Unchanged(_)
        ));
        assert!(matches!(
            h.append(publication(2), &p, |_| delivered += 1),
            Appended::Stored(_)
        ));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(matches!(
            h.append(publication(2), &p, |_| delivered += 1),
            Appended::Stored(_)
        ));
        assert_eq!(delivered, 3);
    }

    #[tokio::test]
    async fn a_created_empty_stream_keeps_its_epoch_for_the_first_append() {
        let h = MemoryHistory::new();
        let ch = ChannelName::new("feed").unwrap();
        let p = policy(10, 300);
        let seen = h
            .read("app", &ch, &query(None, 10), Some(&p))
            .await
            .unwrap()
            .top;
        assert_eq!(seen.offset, 0);
        let Appended::Stored(first) = h.append(publication(1), &p, |_| {}) else {
            panic!("not stored");
        };
        assert_eq!((first.offset, &first.epoch), (1, &seen.epoch));
    }

    #[tokio::test]
    async fn clearing_starts_a_new_epoch() {
        let h = MemoryHistory::new();
        let ch = ChannelName::new("feed").unwrap();
        h.append(publication(1), &policy(10, 300), |_| {});
        let before = h
            .read("app", &ch, &query(None, 10), None)
            .await
            .unwrap()
            .top;
        assert!(h.clear("app", &ch).await.unwrap());
        let after = h
            .read("app", &ch, &query(None, 10), None)
            .await
            .unwrap()
            .top;
        assert_eq!(after.offset, 0);
        assert_ne!(after.epoch, before.epoch);
    }
}
