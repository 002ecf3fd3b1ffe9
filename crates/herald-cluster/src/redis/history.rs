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
//! - Every node reads the same streams, so a client recovers on any node.

use std::sync::Arc;

use async_trait::async_trait;
use herald_core::history::{
    HistoryError, HistoryPage, HistoryPolicy, HistoryQuery, HistoryStats, HistoryStore,
};
use herald_core::publication::Position;
use herald_protocol::ChannelName;

use super::broker::split_entry;
use super::scripts::READ_HISTORY;
use super::{Link, StreamRead, new_epoch};
use crate::envelope;

/// Channel history in Redis.
#[derive(Debug)]
pub struct RedisHistory {
    link: Arc<Link>,
}

impl RedisHistory {
    pub(crate) fn new(link: Arc<Link>) -> Self {
        Self { link }
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

    async fn stats(&self, app_id: Option<&str>) -> Result<HistoryStats, HistoryError> {
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
