//! [`RedisBroker`]: fan-out over Redis pub/sub, history appended by the same Lua script
//! that publishes.
//!
//! # How it meets the broker contract
//! - **Delivery:** at most once, like Redis pub/sub. A node receives every message published
//!   while its pub/sub connection is up. After a reconnect it **catches up** every channel
//!   with history: it reads the stream after the last offset it delivered and delivers what
//!   it missed, in order, before anything newer. Publications on channels without history
//!   made while the connection was down are lost for that node.
//! - **Ordering:** every publication, this node's own included, reaches the handler through
//!   Redis, so every node sees one channel's publications in the same (Redis) order. With
//!   history, the offset is assigned by the script that publishes, so offsets arrive in order
//!   at every node, whichever node published.
//! - **Handler calls** come from one task per node, so they never overlap.
//! - **Outage:** every command has a deadline (`timeout`); `publish`, `control` and
//!   `subscribe` fail with [`BrokerError::Unavailable`] while Redis is unreachable, and
//!   `health` is degraded until the pub/sub connection is back and resubscribed.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use herald_core::broker::{Broker, BrokerError, BrokerHandler, BrokerHealth, Control, Published};
use herald_core::history::HistoryPolicy;
use herald_core::publication::{Position, Publication};
use herald_protocol::ChannelName;
use parking_lot::Mutex;
use redis::aio::PubSubSink;
use tracing::{debug, info, warn};

use super::Link;
use super::history::StreamLog;
use crate::backoff::Backoff;
use crate::envelope;
use crate::envelope::split_position;
use crate::shards::Shards;

/// How many publications a channel may catch up after a reconnect.
const MAX_CATCH_UP: usize = 1000;
/// Shards of the subscribe/unsubscribe lock.
const LOCK_SHARDS: usize = 64;
/// How often an idle pub/sub connection is pinged, to notice a dead one.
const PING_EVERY: Duration = Duration::from_secs(5);

/// The Redis broker. See the module docs for its guarantees.
pub struct RedisBroker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker").finish_non_exhaustive()
    }
}

/// The last position delivered on one history channel.
#[derive(Clone)]
struct Seen {
    app_id: Arc<str>,
    channel: ChannelName,
    epoch: Arc<str>,
    offset: u64,
}

struct Inner {
    /// The shared command connection.
    link: Arc<Link>,
    /// Where deliveries go, set by `start`.
    handler: OnceLock<Arc<dyn BrokerHandler>>,
    /// Pub/sub channels this node is subscribed to, restored after a reconnect.
    subscribed: Mutex<HashSet<String>>,
    /// Serialises subscribe/unsubscribe reconciles of one channel (sharded by name).
    locks: Shards,
    /// The subscribe side of the live pub/sub connection, `None` while it is down.
    sink: Mutex<Option<PubSubSink>>,
    /// Last delivered position per history channel (by pub/sub name): skips repeats and
    /// says where to catch up from after a reconnect.
    seen: Mutex<HashMap<String, Seen>>,
    /// `None` while the pub/sub connection is up; otherwise why not.
    problem: Mutex<Option<String>>,
    /// Times the pub/sub link was lost after being up (for tests and logs).
    losses: std::sync::atomic::AtomicU64,
}

impl RedisBroker {
    /// How many times the pub/sub link was lost after being up.
    pub fn link_losses(&self) -> u64 {
        self.inner.losses.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn new(link: Arc<Link>) -> Self {
        Self {
            inner: Arc::new(Inner {
                link,
                handler: OnceLock::new(),
                subscribed: Mutex::new(HashSet::new()),
                locks: Shards::new(LOCK_SHARDS),
                sink: Mutex::new(None),
                seen: Mutex::new(HashMap::new()),
                problem: Mutex::new(Some("connecting to Redis pub/sub".into())),
                losses: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

impl Inner {
    /// Make this node's subscription to `channel` match whether it has local subscribers.
    async fn reconcile(&self, app_id: &str, channel: &ChannelName) -> Result<(), BrokerError> {
        let handler = self.handler.get().ok_or(BrokerError::Closed)?;
        let name = self.link.keys.publications(app_id, channel.as_str());
        let _guard = self.locks.of(&[&name]).lock().await;
        let want = handler.local_subscribers(app_id, channel) > 0;
        let have = self.subscribed.lock().contains(&name);
        if want == have {
            return Ok(());
        }
        let sink = self.sink.lock().clone();
        if want {
            let mut sink = sink.ok_or_else(|| unavailable("not connected to Redis pub/sub"))?;
            match tokio::time::timeout(self.link.timeout, sink.subscribe(&name)).await {
                Ok(Ok(())) => {
                    self.subscribed.lock().insert(name);
                    Ok(())
                }
                Ok(Err(e)) => Err(unavailable(e)),
                Err(_) => Err(unavailable(
                    "Redis did not confirm the subscription in time",
                )),
            }
        } else {
            self.subscribed.lock().remove(&name);
            self.seen.lock().remove(&name);
            if let Some(mut sink) = sink {
                // A failure here leaves nothing to undo: the connection is gone with it.
                let _ = tokio::time::timeout(self.link.timeout, sink.unsubscribe(&name)).await;
            }
            Ok(())
        }
    }

    /// Hand one pub/sub message to the node.
    fn deliver(&self, channel_name: &str, payload: &[u8]) {
        let Some(handler) = self.handler.get() else {
            return;
        };
        match payload.split_first() {
            Some((b'P', rest)) => {
                let Some((offset, epoch, body)) = split_position(rest) else {
                    warn!("dropped a malformed publication from Redis");
                    return;
                };
                let position = match offset {
                    None => None,
                    Some(offset) => match self.check_seen(channel_name, offset, epoch) {
                        Some(epoch) => Some(Position { offset, epoch }),
                        None => return, // already delivered
                    },
                };
                match envelope::decode_publication(body, position) {
                    Ok(p) => {
                        if let Some(pos) = &p.position {
                            self.record_seen(channel_name, &p, pos);
                        }
                        handler.handle_publication(Arc::new(p));
                    }
                    Err(e) => warn!(error = %e, "dropped an undecodable publication from Redis"),
                }
            }
            Some((b'C', body)) => match envelope::decode_control(body) {
                Ok(c) => handler.handle_control(c),
                Err(e) => warn!(error = %e, "dropped an undecodable control message from Redis"),
            },
            _ => debug!(channel = channel_name, "ignored a foreign message"),
        }
    }

    /// `None` when `offset` of `epoch` was delivered already; otherwise the epoch to use
    /// (shared with earlier publications of the stream when it is the same).
    fn check_seen(&self, channel_name: &str, offset: u64, epoch: &str) -> Option<Arc<str>> {
        match self.seen.lock().get(channel_name) {
            Some(seen) if &*seen.epoch == epoch => {
                (offset > seen.offset).then(|| seen.epoch.clone())
            }
            _ => Some(Arc::from(epoch)),
        }
    }

    fn record_seen(&self, channel_name: &str, p: &Publication, pos: &Position) {
        let mut seen = self.seen.lock();
        match seen.get_mut(channel_name) {
            Some(s) => {
                s.epoch = pos.epoch.clone();
                s.offset = pos.offset;
            }
            None if self.subscribed.lock().contains(channel_name) => {
                seen.insert(
                    channel_name.to_owned(),
                    Seen {
                        app_id: p.app_id.clone(),
                        channel: p.channel.clone(),
                        epoch: pos.epoch.clone(),
                        offset: pos.offset,
                    },
                );
            }
            None => {}
        }
    }

    /// After a reconnect: deliver what each history channel missed while it was down.
    async fn catch_up(&self) {
        let todo: Vec<(String, Seen)> = self
            .seen
            .lock()
            .iter()
            .map(|(name, s)| (name.clone(), s.clone()))
            .collect();
        let mut caught = 0usize;
        let log = StreamLog::new(self.link.clone());
        for (
            name,
            Seen {
                app_id,
                channel,
                epoch,
                offset,
            },
        ) in todo
        {
            match log
                .after(&app_id, channel.as_str(), offset, MAX_CATCH_UP)
                .await
            {
                Ok((stream_epoch, entries)) if *stream_epoch == *epoch => {
                    for (offset, body) in entries {
                        let mut frame = format!("P{offset},{stream_epoch},").into_bytes();
                        frame.extend_from_slice(&body);
                        self.deliver(&name, &frame);
                        caught += 1;
                    }
                }
                Ok(_) => debug!(channel = %channel, "history stream lost; nothing to catch up"),
                Err(e) => warn!(error = %e, channel = %channel, "catch-up read failed"),
            }
        }
        if caught > 0 {
            info!(
                publications = caught,
                "caught up after reconnecting to Redis"
            );
        }
    }
}

/// Keep a pub/sub connection: connect, resubscribe, catch up, deliver; on loss, back off
/// and start again. Ends when the broker is dropped.
async fn run_pubsub(weak: Weak<Inner>) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut connected_before = false;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let timeout = inner.link.timeout;
        let control = inner.link.keys.control();
        let pubsub = match tokio::time::timeout(timeout, inner.link.client.get_async_pubsub()).await
        {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                *inner.problem.lock() = Some(format!("Redis pub/sub unreachable: {e}"));
                drop(inner);
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
            Err(_) => {
                *inner.problem.lock() = Some("Redis pub/sub connect timed out".into());
                drop(inner);
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        let mut names: Vec<String> = inner.subscribed.lock().iter().cloned().collect();
        names.push(control);
        let mut ok = true;
        for chunk in names.chunks(1000) {
            match tokio::time::timeout(timeout * 4, sink.subscribe(chunk)).await {
                Ok(Ok(())) => {}
                _ => {
                    ok = false;
                    break;
                }
            }
        }
        if !ok {
            *inner.problem.lock() = Some("Redis pub/sub resubscribe failed".into());
            drop(inner);
            tokio::time::sleep(backoff.next_delay()).await;
            continue;
        }
        *inner.sink.lock() = Some(sink.clone());
        if connected_before {
            inner.catch_up().await;
            info!(
                channels = names.len() - 1,
                "Redis pub/sub reconnected and resubscribed"
            );
        }
        *inner.problem.lock() = None;
        connected_before = true;
        backoff.reset();
        drop(inner);

        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        let lost = loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else { break "Redis pub/sub connection lost" };
                    let Some(inner) = weak.upgrade() else { return };
                    inner.deliver(msg.get_channel_name(), msg.get_payload_bytes());
                }
                _ = ping.tick() => {
                    if weak.strong_count() == 0 {
                        return;
                    }
                    // In subscribed mode Redis answers PING with a ["pong", ""] push, not
                    // +PONG: any answer proves the link.
                    let ok = matches!(
                        tokio::time::timeout(timeout, sink.ping::<redis::Value>()).await,
                        Ok(Ok(_))
                    );
                    if !ok {
                        break "Redis pub/sub stopped answering";
                    }
                }
            }
        };
        let Some(inner) = weak.upgrade() else { return };
        warn!(reason = lost, "Redis pub/sub link down; reconnecting");
        inner
            .losses
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *inner.sink.lock() = None;
        *inner.problem.lock() = Some(lost.into());
        drop(inner);
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

#[async_trait]
impl Broker for RedisBroker {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn start(&self, handler: Arc<dyn BrokerHandler>) -> Result<(), BrokerError> {
        self.inner
            .handler
            .set(handler)
            .map_err(|_| BrokerError::Unavailable("started twice".into()))?;
        tokio::spawn(run_pubsub(Arc::downgrade(&self.inner)));
        Ok(())
    }

    async fn publish(
        &self,
        mut publication: Publication,
        history: Option<&HistoryPolicy>,
    ) -> Result<Published, BrokerError> {
        let link = &self.inner.link;
        let keys = &link.keys;
        let body = envelope::encode_publication(&publication);
        let channel = keys.publications(&publication.app_id, publication.channel.as_str());
        let Some(policy) = history else {
            let mut frame = Vec::with_capacity(body.len() + 3);
            frame.extend_from_slice(b"P,,");
            frame.extend_from_slice(&body);
            link.query::<i64>(redis::cmd("PUBLISH").arg(&channel).arg(frame))
                .await
                .map_err(unavailable)?;
            return Ok(Published::Sent(Arc::new(publication)));
        };
        let (sent, offset, epoch) = StreamLog::new(link.clone())
            .append(&publication, &body, policy, Some(&channel))
            .await
            .map_err(unavailable)?;
        let position = Position {
            offset,
            epoch: Arc::from(epoch),
        };
        if !sent {
            return Ok(Published::Unchanged(position));
        }
        publication.position = Some(position);
        Ok(Published::Sent(Arc::new(publication)))
    }

    async fn control(&self, control: Control) -> Result<(), BrokerError> {
        let link = &self.inner.link;
        let mut frame = vec![b'C'];
        frame.extend_from_slice(&envelope::encode_control(&control));
        link.query::<i64>(redis::cmd("PUBLISH").arg(link.keys.control()).arg(frame))
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn subscribe(&self, app_id: &str, channel: &ChannelName) -> Result<(), BrokerError> {
        self.inner.reconcile(app_id, channel).await
    }

    async fn unsubscribe(&self, app_id: &str, channel: &ChannelName) -> Result<(), BrokerError> {
        self.inner.reconcile(app_id, channel).await
    }

    fn health(&self) -> BrokerHealth {
        if let Some(why) = self.inner.problem.lock().clone() {
            return BrokerHealth::Degraded(why);
        }
        match self.inner.link.conn.lock().is_some() {
            true => BrokerHealth::Healthy,
            false => BrokerHealth::Degraded("not connected to Redis yet".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::history::split_entry;
    use super::*;

    #[test]
    fn frames_split_into_position_and_body() {
        assert_eq!(
            split_position(b"12,ab,{\"x\":1}"),
            Some((Some(12), "ab", &b"{\"x\":1}"[..]))
        );
        assert_eq!(split_position(b",,{}"), Some((None, "", &b"{}"[..])));
        assert_eq!(split_position(b"x,ab,{}"), None);
        assert_eq!(split_position(b"12"), None);
        assert_eq!(
            split_entry(b"7,1700,{\"a\":\",\"}"),
            Some((7, &b"{\"a\":\",\"}"[..]))
        );
    }
}
