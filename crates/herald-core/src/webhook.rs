//! Webhook events: what the core reports to apps' backends, and the debounce Pusher
//! specifies for `channel_vacated` and `member_removed`.
//!
//! The core only decides *what* happened and *when* to report it; sending (batching,
//! signing, retries) is the server's job. Events go out through a bounded queue: if the
//! sender falls that far behind, new events are dropped and counted, never buffered without
//! bound, and the fan-out path never waits on a webhook.
//!
//! # Debounce
//! A `channel_vacated` (or `member_removed`) is held for the app's `webhook_delay`. If the
//! channel is occupied again (the member comes back) in that time, both the held event and
//! the new `channel_occupied` (`member_added`) are dropped: a page reload produces nothing.

use std::collections::HashMap;
use std::sync::Arc;

use herald_protocol::{ChannelName, SocketId};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::publication::EventData;

/// One webhook event.
#[derive(Debug, Clone, PartialEq)]
pub enum WebhookEvent {
    /// The channel got its first subscriber.
    ChannelOccupied {
        /// The channel.
        channel: ChannelName,
    },
    /// The channel lost its last subscriber.
    ChannelVacated {
        /// The channel.
        channel: ChannelName,
    },
    /// A user's first connection joined a presence channel.
    MemberAdded {
        /// The channel.
        channel: ChannelName,
        /// The user.
        user_id: Arc<str>,
    },
    /// A user's last connection left a presence channel.
    MemberRemoved {
        /// The channel.
        channel: ChannelName,
        /// The user.
        user_id: Arc<str>,
    },
    /// A client sent a client event.
    ClientEvent {
        /// The channel.
        channel: ChannelName,
        /// The event name.
        event: Arc<str>,
        /// The data.
        data: EventData,
        /// The sending connection.
        socket_id: SocketId,
        /// The sending user, on presence channels.
        user_id: Option<Arc<str>>,
    },
    /// A client subscribed to a cache channel with nothing cached.
    CacheMiss {
        /// The channel.
        channel: ChannelName,
    },
    /// A connection was admitted (sent only to endpoints that list `connection_opened`).
    ConnectionOpened {
        /// Who and how.
        connection: Arc<ConnectionRecord>,
    },
    /// A connection ended, or was lost with the node that held it (sent only to endpoints
    /// that list `connection_closed`).
    ConnectionClosed {
        /// Who and how.
        connection: Arc<ConnectionRecord>,
        /// How long it was open, in milliseconds.
        duration_ms: u64,
        /// The close code, when there was a close handshake (1000: the client closed);
        /// `None` when the connection dropped or its node was lost.
        code: Option<u16>,
        /// Why: `client` (the client closed, or the connection dropped), the server's close
        /// reason, or `node_lost`.
        reason: Arc<str>,
    },
}

/// What the connection lifecycle webhooks say about a connection. Kept in the cluster state
/// while the connection is open, so the node that cleans up after a dead node can report its
/// connections closed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConnectionRecord {
    /// The app.
    pub app_id: String,
    /// The connection's socket id (`"123.456"`).
    pub socket_id: String,
    /// The user, when the connection has one.
    pub user_id: Option<String>,
    /// `native` or `pusher`.
    pub protocol: String,
    /// `websocket`, `sse`, `long_poll` or `http`.
    pub transport: String,
    /// The client's address (sent only to endpoints with `include_client_ip`).
    pub ip: String,
    /// When it opened, milliseconds since the Unix epoch.
    pub opened_at_ms: u64,
}

impl WebhookEvent {
    /// The event's name in the webhook body (and in `event_types` filters).
    pub fn name(&self) -> &'static str {
        match self {
            Self::ChannelOccupied { .. } => "channel_occupied",
            Self::ChannelVacated { .. } => "channel_vacated",
            Self::MemberAdded { .. } => "member_added",
            Self::MemberRemoved { .. } => "member_removed",
            Self::ClientEvent { .. } => "client_event",
            Self::CacheMiss { .. } => "cache_miss",
            Self::ConnectionOpened { .. } => "connection_opened",
            Self::ConnectionClosed { .. } => "connection_closed",
        }
    }

    /// The channel the event is about (connection events have none).
    pub fn channel(&self) -> Option<&ChannelName> {
        match self {
            Self::ChannelOccupied { channel }
            | Self::ChannelVacated { channel }
            | Self::MemberAdded { channel, .. }
            | Self::MemberRemoved { channel, .. }
            | Self::ClientEvent { channel, .. }
            | Self::CacheMiss { channel } => Some(channel),
            Self::ConnectionOpened { .. } | Self::ConnectionClosed { .. } => None,
        }
    }

    /// Whether this is a connection lifecycle event (sent only where asked for).
    pub fn is_connection_event(&self) -> bool {
        matches!(
            self,
            Self::ConnectionOpened { .. } | Self::ConnectionClosed { .. }
        )
    }
}

/// An event for one app, with the wall-clock time (ms) it happened.
#[derive(Debug, Clone)]
pub struct AppWebhookEvent {
    /// The app.
    pub app_id: Arc<str>,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The event.
    pub event: WebhookEvent,
}

/// What a held event is waiting for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Held {
    Vacated(Arc<str>, ChannelName),
    Removed(Arc<str>, ChannelName, Arc<str>),
}

/// Queue capacity between the core and the webhook sender.
const QUEUE: usize = 16_384;

/// Emits webhook events, with the vacate/remove debounce.
#[derive(Debug)]
pub struct WebhookEmitter {
    tx: mpsc::Sender<AppWebhookEvent>,
    /// The receiving end, until the server takes it.
    rx: Mutex<Option<mpsc::Receiver<AppWebhookEvent>>>,
    /// Held events and the node-clock time (ms) they become due.
    held: Mutex<HashMap<Held, (u64, AppWebhookEvent)>>,
}

impl Default for WebhookEmitter {
    fn default() -> Self {
        Self::new()
    }
}

impl WebhookEmitter {
    /// An emitter with an empty queue.
    pub fn new() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Self {
            tx,
            rx: Mutex::new(Some(rx)),
            held: Mutex::new(HashMap::new()),
        }
    }

    /// The receiving end (once): the server's webhook sender reads from it.
    pub fn take_receiver(&self) -> Option<mpsc::Receiver<AppWebhookEvent>> {
        self.rx.lock().take()
    }

    /// Report `event` for app `app_id`; `now_ms` is the node clock, `delay_ms` the app's
    /// debounce delay.
    pub fn emit(
        &self,
        app_id: &Arc<str>,
        event: WebhookEvent,
        now_ms: u64,
        delay_ms: u64,
        metrics: &Metrics,
    ) {
        let item = AppWebhookEvent {
            app_id: app_id.clone(),
            time_ms: crate::clock::unix_ms(),
            event,
        };
        let held_key = match &item.event {
            WebhookEvent::ChannelVacated { channel } => {
                Some(Held::Vacated(app_id.clone(), channel.clone()))
            }
            WebhookEvent::MemberRemoved { channel, user_id } => Some(Held::Removed(
                app_id.clone(),
                channel.clone(),
                user_id.clone(),
            )),
            _ => None,
        };
        if let Some(key) = held_key {
            if delay_ms > 0 {
                self.held.lock().insert(key, (now_ms + delay_ms, item));
                return;
            }
        } else {
            let cancels = match &item.event {
                WebhookEvent::ChannelOccupied { channel } => {
                    Some(Held::Vacated(app_id.clone(), channel.clone()))
                }
                WebhookEvent::MemberAdded { channel, user_id } => Some(Held::Removed(
                    app_id.clone(),
                    channel.clone(),
                    user_id.clone(),
                )),
                _ => None,
            };
            if let Some(key) = cancels
                && self.held.lock().remove(&key).is_some()
            {
                // Back within the delay: neither the held event nor this one is sent.
                return;
            }
        }
        self.send(item, metrics);
    }

    /// Send every held event that is due at `now_ms`.
    pub fn release_due(&self, now_ms: u64, metrics: &Metrics) {
        let due: Vec<AppWebhookEvent> = {
            let mut held = self.held.lock();
            let keys: Vec<Held> = held
                .iter()
                .filter(|(_, (at, _))| *at <= now_ms)
                .map(|(k, _)| k.clone())
                .collect();
            keys.into_iter()
                .filter_map(|k| held.remove(&k).map(|(_, e)| e))
                .collect()
        };
        for item in due {
            self.send(item, metrics);
        }
    }

    fn send(&self, item: AppWebhookEvent, metrics: &Metrics) {
        if self.tx.try_send(item).is_err() {
            Metrics::inc(&metrics.webhooks_dropped);
        } else {
            metrics
                .webhooks_queued
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(n: &str) -> ChannelName {
        ChannelName::new(n).unwrap()
    }

    #[test]
    fn vacate_then_reoccupy_within_the_delay_sends_nothing() {
        let m = Metrics::new();
        let e = WebhookEmitter::new();
        let mut rx = e.take_receiver().unwrap();
        let app: Arc<str> = Arc::from("a");
        e.emit(
            &app,
            WebhookEvent::ChannelOccupied { channel: ch("x") },
            0,
            100,
            &m,
        );
        e.emit(
            &app,
            WebhookEvent::ChannelVacated { channel: ch("x") },
            10,
            100,
            &m,
        );
        e.emit(
            &app,
            WebhookEvent::ChannelOccupied { channel: ch("x") },
            50,
            100,
            &m,
        );
        e.release_due(500, &m);
        assert_eq!(rx.try_recv().unwrap().event.name(), "channel_occupied");
        assert!(rx.try_recv().is_err(), "the flap produced nothing");
        // A real vacate is sent once due.
        e.emit(
            &app,
            WebhookEvent::ChannelVacated { channel: ch("x") },
            600,
            100,
            &m,
        );
        e.release_due(650, &m);
        assert!(rx.try_recv().is_err());
        e.release_due(700, &m);
        assert_eq!(rx.try_recv().unwrap().event.name(), "channel_vacated");
    }
}
