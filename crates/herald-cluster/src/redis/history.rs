//! [`RedisHistory`]: reads and administers the channel streams the broker's publish script
//! writes.
//!
//! # How it meets the history contract
//! - **Offsets and epoch** live in one hash per channel; the publish script increments the
//!   offset and appends in the same atomic step (see [`super::RedisBroker`]).
//! - **Epoch:** a stream's hash and entries expire together `ttl` after its last
//!   publication; a stream removed by expiry, `clear` or a Redis restart without
//!   persistence comes back with a new epoch.
//! - **Bounds:** the script trims to `size` entries and drops entries older than `ttl`.
//! - **Withdrawals:** a paired broker (NATS, RabbitMQ, PostgreSQL) whose fan-out refuses a
//!   publication after its append takes the entry back ([`StreamLog::withdraw`]); its offset
//!   is not reused, so such a stream has a gap there.
//! - **Stats** are reused for up to 10 seconds per app filter (see `stats`).
//! - Every node reads the same streams, so a client recovers on any node.

use std::sync::Arc;

use async_trait::async_trait;
use herald_core::history::{
    HistoryError, HistoryPage, HistoryPolicy, HistoryQuery, HistoryStats, HistoryStore,
};
use herald_core::publication::Position;
use herald_protocol::ChannelName;

use herald_core::publication::{Payload, Publication};
use sha2::{Digest, Sha256};

use super::scripts::{PUBLISH_WITH_HISTORY, READ_HISTORY, WITHDRAW};
use super::stats::{STATS_TTL, StatsCache};
use super::{Link, StreamRead, new_epoch};
use crate::envelope;

/// The history streams as a broker uses them: append (assigning the offset), withdraw what
/// the fan-out refused after the append, and read what followed a position (to catch up
/// after a reconnect). Shared by the Redis broker and by brokers that pair their own fan-out
/// with Redis history.
#[derive(Debug, Clone)]
pub struct StreamLog {
    link: Arc<Link>,
}

/// What an append did: `(sent, offset, epoch)`; not sent means a duplicate within the dedupe
/// window, and the position is the previous publication's.
pub type Appended = (bool, u64, String);

impl StreamLog {
    pub(crate) fn new(link: Arc<Link>) -> Self {
        Self { link }
    }

    /// Append `body` (the encoded `publication`) under `policy`; with `publish_to`, the same
    /// script also PUBLISHes it there, so offset order is delivery order.
    pub async fn append(
        &self,
        publication: &Publication,
        body: &[u8],
        policy: &HistoryPolicy,
        publish_to: Option<&str>,
    ) -> Result<Appended, String> {
        let keys = &self.link.keys;
        let (app, ch) = (&*publication.app_id, publication.channel.as_str());
        let mut invocation = PUBLISH_WITH_HISTORY.prepare_invoke();
        invocation
            .key(keys.history_meta(app, ch))
            .key(keys.history_entries(app, ch))
            .arg(body)
            .arg(policy.size)
            .arg(policy.ttl.as_millis().max(1) as u64)
            .arg(policy.dedupe_window.map_or(0, |w| w.as_millis() as u64))
            .arg(payload_hash(&publication.payload))
            .arg(new_epoch())
            .arg(publish_to.unwrap_or(""));
        let (sent, offset, epoch): (i64, u64, String) = self.link.script(&invocation).await?;
        Ok((sent == 1, offset, epoch))
    }

    /// Withdraw the entry at `offset` of the stream `epoch` (appended by [`Self::append`],
    /// then refused by the fan-out), and its dedupe hash when nothing was appended after it;
    /// one atomic step (the `WITHDRAW` script). Returns whether an entry was removed.
    pub async fn withdraw(
        &self,
        app_id: &str,
        channel: &str,
        offset: u64,
        epoch: &str,
    ) -> Result<bool, String> {
        let keys = &self.link.keys;
        let mut invocation = WITHDRAW.prepare_invoke();
        invocation
            .key(keys.history_meta(app_id, channel))
            .key(keys.history_entries(app_id, channel))
            .arg(offset)
            .arg(epoch);
        let removed: i64 = self.link.script(&invocation).await?;
        Ok(removed > 0)
    }

    /// The stream's epoch and the entries after `offset` (at most `max`), each as
    /// `(offset, body)`. An empty epoch means the stream does not exist.
    pub async fn after(
        &self,
        app_id: &str,
        channel: &str,
        offset: u64,
        max: usize,
    ) -> Result<(String, Vec<(u64, Vec<u8>)>), String> {
        let keys = &self.link.keys;
        let mut invocation = READ_HISTORY.prepare_invoke();
        invocation
            .key(keys.history_meta(app_id, channel))
            .key(keys.history_entries(app_id, channel))
            .arg(0)
            .arg("")
            .arg(0)
            .arg(format!("({offset}"))
            .arg("+inf")
            .arg(max);
        let (epoch, _, _, entries): StreamRead = self.link.script(&invocation).await?;
        let entries = entries
            .iter()
            .filter_map(|e| split_entry(e).map(|(o, body)| (o, body.to_vec())))
            .collect();
        Ok((epoch, entries))
    }
}

/// The dedupe hash of a payload: equal events hash equal, other payloads never match.
fn payload_hash(payload: &Payload) -> String {
    match payload {
        Payload::Event { event, data, .. } => {
            let mut h = Sha256::new();
            h.update(event.as_bytes());
            h.update([0]);
            h.update(&*data.native_json());
            let d = h.finalize();
            d[..12].iter().map(|b| format!("{b:02x}")).collect()
        }
        _ => new_epoch(),
    }
}

/// Split a stored history entry `offset,timestamp,body`.
pub(crate) fn split_entry(entry: &[u8]) -> Option<(u64, &[u8])> {
    let c1 = entry.iter().position(|&b| b == b',')?;
    let c2 = c1 + 1 + entry[c1 + 1..].iter().position(|&b| b == b',')?;
    let offset = std::str::from_utf8(&entry[..c1]).ok()?.parse().ok()?;
    Some((offset, &entry[c2 + 1..]))
}

/// Channel history in Redis.
pub struct RedisHistory {
    /// The shared command connection.
    link: Arc<Link>,
    /// Recent [`HistoryStore::stats`] figures, so scrapes do not scan Redis every time.
    stats: StatsCache,
}

impl std::fmt::Debug for RedisHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisHistory").finish_non_exhaustive()
    }
}

impl RedisHistory {
    pub(crate) fn new(link: Arc<Link>) -> Self {
        Self {
            link,
            stats: StatsCache::new(STATS_TTL),
        }
    }

    /// Count the streams of `app_id` (all apps when `None`), their publications and bytes:
    /// a SCAN of the keyspace, then `ZCARD` and `MEMORY USAGE` of every stream.
    async fn scan_stats(&self, app_id: Option<&str>) -> Result<HistoryStats, HistoryError> {
        let keys = &self.link.keys;
        let pattern = keys.history_meta_pattern(app_id);
        let mut metas: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        // Bounded: at most 1,000 SCAN calls (a million keys at COUNT 1000).
        for _ in 0..1000 {
            let (next, batch): (u64, Vec<String>) = self
                .link
                .query(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000),
                )
                .await
                .map_err(unavailable)?;
            metas.extend(batch);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        let mut stats = HistoryStats {
            streams: metas.len() as u64,
            ..HistoryStats::default()
        };
        for chunk in metas.chunks(500) {
            let mut pipe = redis::pipe();
            for meta in chunk {
                let entries = meta.replacen(":hm:", ":he:", 1);
                pipe.cmd("ZCARD").arg(&entries);
                pipe.cmd("MEMORY").arg("USAGE").arg(&entries);
            }
            let figures: Vec<Option<u64>> = self.link.pipe(&pipe).await.map_err(unavailable)?;
            for pair in figures.chunks(2) {
                stats.publications += pair[0].unwrap_or(0);
                stats.bytes += pair.get(1).copied().flatten().unwrap_or(0);
            }
        }
        Ok(stats)
    }
}

fn unavailable(e: String) -> HistoryError {
    HistoryError::Unavailable(e)
}

#[async_trait]
impl HistoryStore for RedisHistory {
    async fn read(
        &self,
        app_id: &str,
        channel: &ChannelName,
        query: &HistoryQuery,
        create: Option<&HistoryPolicy>,
    ) -> Result<HistoryPage, HistoryError> {
        let keys = &self.link.keys;
        let by_time = query.since_ms.is_some() || query.until_ms.is_some();
        let count: i64 = match query.limit {
            0 => 0,
            _ if by_time => -1,
            n => n as i64 + 1,
        };
        let mut invocation = READ_HISTORY.prepare_invoke();
        invocation
            .key(keys.history_meta(app_id, channel.as_str()))
            .key(keys.history_entries(app_id, channel.as_str()))
            .arg(u8::from(create.is_some()))
            .arg(new_epoch())
            .arg(create.map_or(1, |p| p.ttl.as_millis().max(1) as u64))
            .arg(format!("({}", query.after_offset.unwrap_or(0)))
            .arg(
                query
                    .until_offset
                    .map_or_else(|| "+inf".to_owned(), |o| o.to_string()),
            )
            .arg(count);
        let (epoch, top, first, entries): StreamRead =
            self.link.script(&invocation).await.map_err(unavailable)?;
        let epoch: Arc<str> = if epoch.is_empty() {
            Arc::from(new_epoch())
        } else {
            Arc::from(epoch)
        };
        let mut publications = Vec::with_capacity(entries.len());
        for entry in &entries {
            let Some((offset, body)) = split_entry(entry) else {
                continue;
            };
            let position = Position {
                offset,
                epoch: epoch.clone(),
            };
            let Ok(p) = envelope::decode_publication(body, Some(position)) else {
                continue;
            };
            if query.since_ms.is_some_and(|s| p.timestamp_ms < s)
                || query.until_ms.is_some_and(|u| p.timestamp_ms > u)
            {
                continue;
            }
            publications.push(Arc::new(p));
        }
        let truncated = publications.len() > query.limit;
        publications.truncate(query.limit);
        Ok(HistoryPage {
            publications,
            top: Position { offset: top, epoch },
            first_offset: first,
            truncated,
        })
    }

    async fn clear(&self, app_id: &str, channel: &ChannelName) -> Result<bool, HistoryError> {
        let keys = &self.link.keys;
        let removed: i64 = self
            .link
            .query(
                redis::cmd("DEL")
                    .arg(keys.history_meta(app_id, channel.as_str()))
                    .arg(keys.history_entries(app_id, channel.as_str())),
            )
            .await
            .map_err(unavailable)?;
        Ok(removed > 0)
    }

    /// The figures are up to 10 seconds old: they are taken (a SCAN of the keyspace and a
    /// `MEMORY USAGE` per stream) at most once per 10 seconds per `app_id` filter on this
    /// node, and concurrent callers share one refresh. Appends, clears and expiries on any
    /// node show up once the figures are retaken.
    async fn stats(&self, app_id: Option<&str>) -> Result<HistoryStats, HistoryError> {
        self.stats.get(app_id, || self.scan_stats(app_id)).await
    }
}
