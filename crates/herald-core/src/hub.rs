//! [`Hub`]: which local connections are subscribed to which channel of one app, and the
//! fan-out of a publication to them.
//!
//! # Locking
//! Channels are spread over [`SHARDS`] maps by a hash of their name. A fan-out takes its
//! shard's read lock only long enough to clone the channel's `Arc`, then the channel's own
//! read lock while it pushes to the subscribers, so publications on different channels
//! never wait for each other and subscribes to other channels are not blocked by a long
//! fan-out. Subscribe and unsubscribe take the shard's write lock and then the channel's, so
//! a channel is removed from the map exactly when its last subscriber leaves.
//!
//! # Cost per subscriber
//! One reference-count increment of the shared encoded bytes and one push into that
//! subscriber's queue (see `outbound.rs`). No allocation, no encoding, no syscall.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use herald_protocol::{ChannelName, SocketId};
use indexmap::IndexMap;
use parking_lot::RwLock;

use crate::metrics::Metrics;
use crate::outbound::SessionHandle;
use crate::publication::{DirectMessage, Publication};
use crate::recovery::{Gate, Offered};

/// Number of channel-map shards.
pub const SHARDS: usize = 32;

/// One subscriber of a channel.
#[derive(Debug)]
struct Subscriber {
    /// The connection.
    handle: Arc<SessionHandle>,
    /// Present while (and after) the subscriber recovers on a channel with history; see
    /// `recovery.rs`. `None` for everyone else, which keeps their fan-out a plain push.
    gate: Option<Arc<Gate>>,
}

/// The local subscribers of one channel.
#[derive(Debug, Default)]
struct Channel {
    /// Subscribers by socket id. An IndexMap: O(1) insert and remove, and iteration over
    /// contiguous memory during fan-out.
    subscribers: RwLock<IndexMap<SocketId, Subscriber>>,
}

/// One shard of the channel map.
type ChannelMap = HashMap<ChannelName, Arc<Channel>>;

/// The subscriptions of one app on this node.
#[derive(Debug)]
pub struct Hub {
    /// Channel maps, sharded by channel-name hash.
    shards: Box<[RwLock<ChannelMap>]>,
}

/// What a subscribe changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscribed {
    /// This is the channel's first local subscriber: the node must now receive the
    /// channel's publications from the broker.
    pub first_on_node: bool,
}

/// What an unsubscribe changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsubscribed {
    /// The connection was subscribed (and now is not).
    pub removed: bool,
    /// That was the channel's last local subscriber.
    pub last_on_node: bool,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, channel: &str) -> &RwLock<ChannelMap> {
        &self.shards[crate::shard::shard_of(&[channel.as_bytes()], SHARDS)]
    }

    /// Add `handle` to `channel`, behind `gate` if given. Subscribing twice replaces the
    /// first entry.
    pub fn subscribe(
        &self,
        channel: &ChannelName,
        handle: Arc<SessionHandle>,
        gate: Option<Arc<Gate>>,
        metrics: &Metrics,
    ) -> Subscribed {
        let mut shard = self.shard(channel.as_str()).write();
        let entry = shard.entry(channel.clone()).or_default();
        let mut subs = entry.subscribers.write();
        let first_on_node = subs.is_empty();
        if subs
            .insert(handle.socket_id, Subscriber { handle, gate })
            .is_none()
        {
            metrics.subscriptions.fetch_add(1, Ordering::Relaxed);
        }
        if first_on_node {
            metrics.channels.fetch_add(1, Ordering::Relaxed);
        }
        Subscribed { first_on_node }
    }

    /// Remove `socket` from `channel`.
    pub fn unsubscribe(
        &self,
        channel: &ChannelName,
        socket: SocketId,
        metrics: &Metrics,
    ) -> Unsubscribed {
        let mut shard = self.shard(channel.as_str()).write();
        let Some(entry) = shard.get(channel.as_str()) else {
            return Unsubscribed {
                removed: false,
                last_on_node: false,
            };
        };
        let mut subs = entry.subscribers.write();
        let removed = subs.swap_remove(&socket).is_some();
        let last_on_node = removed && subs.is_empty();
        drop(subs);
        if removed {
            metrics.subscriptions.fetch_sub(1, Ordering::Relaxed);
        }
        if last_on_node {
            shard.remove(channel.as_str());
            metrics.channels.fetch_sub(1, Ordering::Relaxed);
        }
        Unsubscribed {
            removed,
            last_on_node,
        }
    }

    /// Queue `publication` for every local subscriber of its channel except the excluded
    /// one. Returns how many connections it was queued for.
    pub fn broadcast(&self, publication: &Arc<Publication>, metrics: &Metrics) -> usize {
        let Some(channel) = self
            .shard(publication.channel.as_str())
            .read()
            .get(publication.channel.as_str())
            .cloned()
        else {
            return 0;
        };
        let subs = channel.subscribers.read();
        let mut queued = 0;
        for (socket, sub) in subs.iter() {
            if publication.exclude == Some(*socket) {
                continue;
            }
            let handle = &sub.handle;
            if let Some(gate) = &sub.gate {
                if gate.offer(publication, handle, metrics) == Offered::Queued {
                    queued += 1;
                }
                continue;
            }
            if let Some(frame) = publication.frame_for(handle) {
                handle.push_frame(frame, Some(publication.received_at), metrics);
                queued += 1;
            }
        }
        queued
    }

    /// Queue a direct message for `handle`.
    pub fn send_direct(handle: &SessionHandle, message: &DirectMessage, metrics: &Metrics) {
        handle.push_frame(
            message.frame_for(handle),
            Some(message.received_at),
            metrics,
        );
    }

    /// Local subscribers of `channel`.
    pub fn subscriber_count(&self, channel: &str) -> usize {
        self.shard(channel)
            .read()
            .get(channel)
            .map_or(0, |c| c.subscribers.read().len())
    }

    /// Every channel with local subscribers whose name starts with `prefix`, with its
    /// subscriber count, sorted by name.
    pub fn channels(&self, prefix: &str) -> Vec<(ChannelName, usize)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            for (name, channel) in shard.read().iter() {
                if name.as_str().starts_with(prefix) {
                    out.push((name.clone(), channel.subscribers.read().len()));
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::{OutItem, QueueLimits};
    use crate::publication::Payload;
    use crate::raw_json::RawJson;
    use crate::wire::Protocol;
    use std::collections::VecDeque;

    fn handle(n: u64) -> Arc<SessionHandle> {
        Arc::new(SessionHandle::new(
            SocketId::new(n, n),
            Arc::from("app"),
            Protocol::Native,
            QueueLimits {
                max_bytes: 1 << 20,
                max_items: 100,
            },
            0,
        ))
    }

    fn publication(channel: &ChannelName, exclude: Option<SocketId>) -> Publication {
        Publication::new(
            Arc::from("app"),
            channel.clone(),
            Arc::from("id-1"),
            Payload::Event {
                event: Arc::from("e"),
                data: crate::publication::EventData::Json(RawJson::string("hi")),
                user_id: None,
            },
            exclude,
            1,
        )
    }

    #[test]
    fn fans_out_shared_bytes_and_honours_exclusion() {
        let m = Metrics::new();
        let hub = Hub::new();
        let ch = ChannelName::new("news").unwrap();
        let (a, b, c) = (handle(1), handle(2), handle(3));
        assert!(hub.subscribe(&ch, a.clone(), None, &m).first_on_node);
        assert!(!hub.subscribe(&ch, b.clone(), None, &m).first_on_node);
        hub.subscribe(&ch, c.clone(), None, &m);
        assert_eq!(
            hub.broadcast(&Arc::new(publication(&ch, Some(b.socket_id))), &m),
            2
        );
        let take = |h: &SessionHandle| {
            let mut out = VecDeque::new();
            h.take_into(&mut out);
            out
        };
        let (qa, qb, qc) = (take(&a), take(&b), take(&c));
        assert!(qb.is_empty());
        let (OutItem::Message { bytes: ba, .. }, OutItem::Message { bytes: bc, .. }) =
            (&qa[0], &qc[0])
        else {
            panic!("expected messages");
        };
        // The very same allocation is shared.
        assert_eq!(ba.as_ptr(), bc.as_ptr());
        assert_eq!(m.subscriptions.load(Ordering::Relaxed), 3);
        assert_eq!(m.channels.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn last_unsubscribe_removes_the_channel() {
        let m = Metrics::new();
        let hub = Hub::new();
        let ch = ChannelName::new("private-x").unwrap();
        let (a, b) = (handle(1), handle(2));
        hub.subscribe(&ch, a.clone(), None, &m);
        hub.subscribe(&ch, b.clone(), None, &m);
        assert_eq!(hub.channels("private-"), vec![(ch.clone(), 2)]);
        let u = hub.unsubscribe(&ch, a.socket_id, &m);
        assert!(u.removed && !u.last_on_node);
        assert!(!hub.unsubscribe(&ch, a.socket_id, &m).removed);
        assert!(hub.unsubscribe(&ch, b.socket_id, &m).last_on_node);
        assert!(hub.channels("").is_empty());
        assert_eq!(hub.subscriber_count("private-x"), 0);
        assert_eq!(m.channels.load(Ordering::Relaxed), 0);
        assert_eq!(m.subscriptions.load(Ordering::Relaxed), 0);
    }
}
