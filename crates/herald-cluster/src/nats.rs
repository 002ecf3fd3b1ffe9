//! [`NatsBroker`]: fan-out over core NATS, paired with Redis for history, presence and
//! occupancy (core NATS keeps no state, so those stay where they are atomic).
//!
//! Subjects: `{prefix}.pub.{app}.{channel}` per channel (dots in names escaped as `%2E`, so a
//! name is always one subject token) and `{prefix}.control`.
//!
//! # What it guarantees, and what it does not
//! - **Delivery:** at most once, like core NATS. A node receives what is published while its
//!   connection is up. After a reconnect (async-nats reconnects and resubscribes by itself),
//!   every channel with history is caught up from the Redis stream after the last offset the
//!   node delivered, up to 1,000 publications, before newer ones. Publications on channels
//!   without history made during the outage are lost for that node.
//! - **Ordering:** publications on one channel published through **one node** reach every node
//!   in publish order: the node holds a per-channel lock from the Redis append (which assigns
//!   the offset) until the NATS publish is queued, and NATS keeps one connection's order.
//!   Publications on one channel from **different nodes** may interleave differently at
//!   different nodes, and offsets may then arrive out of order (by the few milliseconds
//!   between two nodes' appends). Use the Redis broker where cross-node order on one channel
//!   matters; it orders everything in Redis.
//! - **Atomicity:** a publication is appended to history before it is published. If the node
//!   dies between the two (a window of microseconds), the publication is in history but was
//!   not delivered live; clients that recover get it.
//! - **Outage:** `publish`, `control` and `subscribe` fail at once with
//!   [`BrokerError::Unavailable`] while the NATS connection is down (async-nats would
//!   otherwise buffer them silently); `health` is degraded until it is back.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use async_nats::connection::State;
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use herald_core::broker::{Broker, BrokerError, BrokerHandler, BrokerHealth, Control, Published};
use herald_core::history::HistoryPolicy;
use herald_core::publication::{Position, Publication};
use herald_protocol::ChannelName;
use parking_lot::Mutex;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::redis::StreamLog;
use crate::{envelope, relay};

/// Shards of the per-channel locks.
const LOCK_SHARDS: usize = 64;

/// How to reach NATS.
#[derive(Debug, Clone)]
pub struct NatsSettings {
    /// `nats://[user:password@]host:port`, or several separated by commas.
    pub url: String,
    /// First token of every subject, so several clusters can share one NATS.
    pub prefix: String,
    /// The longest connect, subscribe and flush may take.
    pub timeout: Duration,
}

/// The NATS broker. See the module docs for its guarantees.
pub struct NatsBroker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NatsBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBroker").finish_non_exhaustive()
    }
}

struct Inner {
    settings: NatsSettings,
    /// The history streams in Redis.
    log: StreamLog,
    /// The NATS client, once connected the first time (it reconnects by itself).
    client: Mutex<Option<async_nats::Client>>,
    /// Where deliveries go, set by `start`.
    handler: OnceLock<Arc<dyn BrokerHandler>>,
    /// One delivery task per subscribed channel (by subject).
    channels: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    /// Serialise subscribe/unsubscribe reconciles of a channel.
    subscribe_locks: Box<[tokio::sync::Mutex<()>]>,
    /// Serialise append-then-publish of a channel, so this node's order is offset order.
    publish_locks: Box<[tokio::sync::Mutex<()>]>,
    /// Bumped at every reconnect: channel tasks then catch up from history.
    reconnects: watch::Sender<u64>,
    /// `None` while connected; otherwise why not.
    problem: Mutex<Option<String>>,
}

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

/// A name as one subject token: `.` (the token separator) escaped as `%2E`. Channel names
/// and app ids never contain `%`, `*`, `>` or whitespace.
fn token(name: &str) -> String {
    name.replace('.', "%2E")
}

pub(crate) fn shard<'a>(
    locks: &'a [tokio::sync::Mutex<()>],
    key: &str,
) -> &'a tokio::sync::Mutex<()> {
    let h = key
        .bytes()
        .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
    &locks[h % locks.len()]
}

impl NatsBroker {
    /// A broker that connects to NATS on `start`, with history in `log`.
    pub fn new(settings: NatsSettings, log: StreamLog) -> Self {
        let locks = || {
            (0..LOCK_SHARDS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect()
        };
        Self {
            inner: Arc::new(Inner {
                settings,
                log,
                client: Mutex::new(None),
                handler: OnceLock::new(),
                channels: Mutex::new(HashMap::new()),
                subscribe_locks: locks(),
                publish_locks: locks(),
                reconnects: watch::channel(0).0,
                problem: Mutex::new(Some("connecting to NATS".into())),
            }),
        }
    }
}

impl Inner {
    fn subject(&self, app_id: &str, channel: &str) -> String {
        format!(
            "{}.pub.{}.{}",
            self.settings.prefix,
            token(app_id),
            token(channel)
        )
    }

    fn control_subject(&self) -> String {
        format!("{}.control", self.settings.prefix)
    }

    /// The client, if connected now.
    fn connected(&self) -> Result<async_nats::Client, BrokerError> {
        let client = self
            .client
            .lock()
            .clone()
            .ok_or_else(|| unavailable("not connected to NATS yet"))?;
        if client.connection_state() != State::Connected {
            return Err(unavailable("NATS connection is down"));
        }
        Ok(client)
    }

    async fn reconcile(
        self: &Arc<Self>,
        app_id: &str,
        channel: &ChannelName,
    ) -> Result<(), BrokerError> {
        let handler = self.handler.get().ok_or(BrokerError::Closed)?;
        let subject = self.subject(app_id, channel.as_str());
        let _guard = shard(&self.subscribe_locks, &subject).lock().await;
        let want = handler.local_subscribers(app_id, channel) > 0;
        let have = self.channels.lock().contains_key(&subject);
        if want == have {
            return Ok(());
        }
        if !want {
            if let Some(task) = self.channels.lock().remove(&subject) {
                task.abort(); // dropping its subscriber unsubscribes
            }
            return Ok(());
        }
        let client = self.connected()?;
        let timeout = self.settings.timeout;
        let subscriber = tokio::time::timeout(timeout, client.subscribe(subject.clone()))
            .await
            .map_err(|_| unavailable("NATS subscribe timed out"))?
            .map_err(unavailable)?;
        // The server has the subscription once a flush round trip is done.
        tokio::time::timeout(timeout, client.flush())
            .await
            .map_err(|_| unavailable("NATS flush timed out"))?
            .map_err(unavailable)?;
        let task = tokio::spawn(channel_task(
            Arc::downgrade(self),
            Arc::from(app_id),
            channel.clone(),
            subscriber,
            self.reconnects.subscribe(),
        ));
        self.channels.lock().insert(subject, task);
        Ok(())
    }
}

async fn channel_task(
    inner: Weak<Inner>,
    app_id: Arc<str>,
    channel: ChannelName,
    mut subscriber: async_nats::Subscriber,
    mut reconnects: watch::Receiver<u64>,
) {
    let mut delivered = relay::Delivered::default();
    loop {
        tokio::select! {
            msg = subscriber.next() => {
                let Some(msg) = msg else { return };
                let Some(inner) = inner.upgrade() else { return };
                let Some(handler) = inner.handler.get() else { return };
                relay::deliver(handler, &mut delivered, &msg.payload);
            }
            changed = reconnects.changed() => {
                if changed.is_err() {
                    return;
                }
                let Some(inner) = inner.upgrade() else { return };
                let Some(handler) = inner.handler.get().cloned() else { return };
                relay::catch_up(&inner.log, &handler, &app_id, &channel, &mut delivered).await;
            }
        }
    }
}

async fn control_task(inner: Weak<Inner>, mut subscriber: async_nats::Subscriber) {
    while let Some(msg) = subscriber.next().await {
        let Some(inner) = inner.upgrade() else { return };
        let Some(handler) = inner.handler.get() else {
            return;
        };
        relay::deliver_control(handler, &msg.payload);
    }
}

/// Connect (retrying until it works), subscribe to control messages, and follow the
/// connection's events for health and catch-up.
async fn connect(weak: Weak<Inner>) {
    let Some(inner) = weak.upgrade() else { return };
    let events = weak.clone();
    let options = async_nats::ConnectOptions::new()
        .connection_timeout(inner.settings.timeout)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            let cap = Duration::from_millis(100) * 2u32.saturating_pow(attempts.min(6) as u32);
            let cap = cap.min(Duration::from_secs(5));
            cap / 2 + (cap / 2).mul_f64(rand::random::<f64>())
        })
        .event_callback(move |event| {
            let events = events.clone();
            async move {
                let Some(inner) = events.upgrade() else {
                    return;
                };
                match event {
                    async_nats::Event::Connected => {
                        let was_down = inner.problem.lock().take().is_some();
                        if was_down && inner.client.lock().is_some() {
                            info!("NATS reconnected; catching up channels with history");
                            inner.reconnects.send_modify(|n| *n += 1);
                        }
                    }
                    async_nats::Event::Disconnected => {
                        warn!("NATS connection lost; reconnecting");
                        *inner.problem.lock() = Some("NATS connection lost".into());
                    }
                    other => debug!(event = %other, "NATS event"),
                }
            }
        });
    let url = inner.settings.url.clone();
    drop(inner);
    let client = match options.connect(url.as_str()).await {
        Ok(c) => c,
        Err(e) => {
            if let Some(inner) = weak.upgrade() {
                *inner.problem.lock() = Some(format!("cannot connect to NATS: {e}"));
            }
            return;
        }
    };
    let Some(inner) = weak.upgrade() else { return };
    match client.subscribe(inner.control_subject()).await {
        Ok(sub) => {
            tokio::spawn(control_task(weak.clone(), sub));
        }
        Err(e) => warn!(error = %e, "cannot subscribe to NATS control messages"),
    }
    let _ = tokio::time::timeout(inner.settings.timeout, client.flush()).await;
    *inner.client.lock() = Some(client);
    if inner.client.lock().as_ref().map(|c| c.connection_state()) == Some(State::Connected) {
        *inner.problem.lock() = None;
    }
}

#[async_trait]
impl Broker for NatsBroker {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn start(&self, handler: Arc<dyn BrokerHandler>) -> Result<(), BrokerError> {
        self.inner
            .handler
            .set(handler)
            .map_err(|_| unavailable("started twice"))?;
        tokio::spawn(connect(Arc::downgrade(&self.inner)));
        Ok(())
    }

    async fn publish(
        &self,
        mut publication: Publication,
        history: Option<&HistoryPolicy>,
    ) -> Result<Published, BrokerError> {
        let inner = &self.inner;
        let client = inner.connected()?;
        let subject = inner.subject(&publication.app_id, publication.channel.as_str());
        let body = envelope::encode_publication(&publication);
        let Some(policy) = history else {
            client
                .publish(subject, Bytes::from(relay::publication_frame(None, &body)))
                .await
                .map_err(unavailable)?;
            return Ok(Published::Sent(Arc::new(publication)));
        };
        let _order = shard(&inner.publish_locks, &subject).lock().await;
        let (sent, offset, epoch) = inner
            .log
            .append(&publication, &body, policy, None)
            .await
            .map_err(unavailable)?;
        let position = Position {
            offset,
            epoch: Arc::from(epoch.as_str()),
        };
        if !sent {
            return Ok(Published::Unchanged(position));
        }
        let frame = relay::publication_frame(Some((offset, &epoch)), &body);
        client
            .publish(subject, Bytes::from(frame))
            .await
            .map_err(unavailable)?;
        publication.position = Some(position);
        Ok(Published::Sent(Arc::new(publication)))
    }

    async fn control(&self, control: Control) -> Result<(), BrokerError> {
        let client = self.inner.connected()?;
        client
            .publish(
                self.inner.control_subject(),
                Bytes::from(relay::control_frame(&control)),
            )
            .await
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
        match self.inner.connected() {
            Ok(_) => BrokerHealth::Healthy,
            Err(e) => BrokerHealth::Degraded(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_single_subject_tokens() {
        assert_eq!(token("private-orders.1"), "private-orders%2E1");
        assert_eq!(token("a..b"), "a%2E%2Eb");
    }
}
