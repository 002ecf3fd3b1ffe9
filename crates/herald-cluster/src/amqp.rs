//! [`AmqpBroker`]: fan-out over RabbitMQ (AMQP 0-9-1), paired with Redis for history,
//! presence and occupancy.
//!
//! Every node declares a durable **topic exchange** named after the prefix, and one
//! exclusive, auto-deleted queue of its own. It binds the queue to `pub.{app}.{channel}`
//! (dots escaped, so each name is one word; names too long for a routing key are hashed)
//! for every channel it has subscribers on, and to `control`. Publications are published
//! with publisher confirms: `publish` returns once RabbitMQ has taken the message.
//!
//! # What it guarantees, and what it does not
//! - **Delivery:** at most once. The queue goes with the connection, so messages published
//!   while a node is disconnected are not kept for it; after reconnecting, the node catches
//!   up every channel with history from the Redis stream (up to 1,000 publications each).
//! - **Ordering:** as for the NATS broker: one channel's publications published through one
//!   node arrive in order everywhere (append and publish happen under a per-channel lock, on
//!   one AMQP channel); concurrent publications from different nodes may interleave
//!   differently at different nodes.
//! - **Outage:** `publish`, `control` and `subscribe` fail at once while the connection is
//!   down; the node reconnects with jittered backoff, redeclares, rebinds and catches up.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use herald_core::broker::{Broker, BrokerError, BrokerHandler, BrokerHealth, Control, Published};
use herald_core::history::HistoryPolicy;
use herald_core::publication::{Position, Publication};
use herald_protocol::ChannelName;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::redis::StreamLog;
use crate::relay::{self, Delivered};
use crate::{envelope, nats::shard};

/// How to reach RabbitMQ.
#[derive(Debug, Clone)]
pub struct AmqpSettings {
    /// `amqp://user:password@host:5672/%2f`, or `amqps://` for TLS.
    pub url: String,
    /// The exchange's name, so several clusters can share one RabbitMQ.
    pub exchange: String,
    /// The longest a connect, bind or confirm may take.
    pub timeout: Duration,
}

/// The RabbitMQ broker. See the module docs for its guarantees.
pub struct AmqpBroker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AmqpBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpBroker").finish_non_exhaustive()
    }
}

/// The live connection: the AMQP channel everything goes through and the node's queue.
#[derive(Clone)]
struct Live {
    channel: lapin::Channel,
    queue: String,
}

struct Inner {
    settings: AmqpSettings,
    /// The history streams in Redis.
    log: StreamLog,
    /// Where deliveries go, set by `start`.
    handler: OnceLock<Arc<dyn BrokerHandler>>,
    /// The live connection, `None` while down.
    live: Mutex<Option<Live>>,
    /// Routing keys bound for local subscribers, with their channel (rebound after a
    /// reconnect, and caught up).
    bound: Mutex<HashMap<String, (Arc<str>, ChannelName)>>,
    /// Serialise bind/unbind reconciles of a channel.
    bind_locks: Box<[tokio::sync::Mutex<()>]>,
    /// Serialise append-then-publish of a channel.
    publish_locks: Box<[tokio::sync::Mutex<()>]>,
    /// `None` while connected; otherwise why not.
    problem: Mutex<Option<String>>,
}

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

/// The routing key of a channel: one word per name, hashed when too long for AMQP.
fn routing_key(app_id: &str, channel: &str) -> String {
    let key = format!(
        "pub.{}.{}",
        app_id.replace('.', "%2E"),
        channel.replace('.', "%2E")
    );
    if key.len() <= 255 {
        return key;
    }
    let digest = Sha256::digest(key.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("pub.h.{hex}")
}

const CONTROL_KEY: &str = "control";

impl AmqpBroker {
    /// A broker that connects to RabbitMQ on `start`, with history in `log`.
    pub fn new(settings: AmqpSettings, log: StreamLog) -> Self {
        let locks = || {
            (0..64)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect::<Box<[_]>>()
        };
        Self {
            inner: Arc::new(Inner {
                settings,
                log,
                handler: OnceLock::new(),
                live: Mutex::new(None),
                bound: Mutex::new(HashMap::new()),
                bind_locks: locks(),
                publish_locks: locks(),
                problem: Mutex::new(Some("connecting to RabbitMQ".into())),
            }),
        }
    }
}

impl Inner {
    fn live(&self) -> Result<Live, BrokerError> {
        self.live
            .lock()
            .clone()
            .ok_or_else(|| unavailable("not connected to RabbitMQ"))
    }

    async fn publish_frame(&self, key: &str, frame: &[u8]) -> Result<(), BrokerError> {
        let live = self.live()?;
        let confirm = tokio::time::timeout(self.settings.timeout, async {
            live.channel
                .basic_publish(
                    self.settings.exchange.as_str().into(),
                    key.into(),
                    BasicPublishOptions::default(),
                    frame,
                    BasicProperties::default(),
                )
                .await?
                .await
        })
        .await
        .map_err(|_| unavailable("RabbitMQ did not confirm in time"))?
        .map_err(unavailable)?;
        if confirm.is_nack() {
            return Err(unavailable("RabbitMQ refused the message"));
        }
        Ok(())
    }

    async fn reconcile(&self, app_id: &str, channel: &ChannelName) -> Result<(), BrokerError> {
        let handler = self.handler.get().ok_or(BrokerError::Closed)?;
        let key = routing_key(app_id, channel.as_str());
        let _guard = shard(&self.bind_locks, &key).lock().await;
        let want = handler.local_subscribers(app_id, channel) > 0;
        let have = self.bound.lock().contains_key(&key);
        if want == have {
            return Ok(());
        }
        if !want {
            self.bound.lock().remove(&key);
            if let Ok(live) = self.live() {
                let _ = tokio::time::timeout(
                    self.settings.timeout,
                    live.channel.queue_unbind(
                        live.queue.as_str().into(),
                        self.settings.exchange.as_str().into(),
                        key.as_str().into(),
                        FieldTable::default(),
                    ),
                )
                .await;
            }
            return Ok(());
        }
        let live = self.live()?;
        tokio::time::timeout(
            self.settings.timeout,
            live.channel.queue_bind(
                live.queue.as_str().into(),
                self.settings.exchange.as_str().into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .map_err(|_| unavailable("RabbitMQ bind timed out"))?
        .map_err(unavailable)?;
        self.bound
            .lock()
            .insert(key, (Arc::from(app_id), channel.clone()));
        Ok(())
    }

    /// Connect, declare, bind what is wanted, and start consuming.
    async fn connect(&self) -> Result<(Connection, lapin::Consumer, Live), String> {
        let s = &self.settings;
        let connection = tokio::time::timeout(
            s.timeout,
            Connection::connect(&s.url, ConnectionProperties::default()),
        )
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
        let setup = async {
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            channel
                .exchange_declare(
                    s.exchange.as_str().into(),
                    ExchangeKind::Topic,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            let queue = channel
                .queue_declare(
                    "".into(),
                    QueueDeclareOptions {
                        exclusive: true,
                        auto_delete: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            let queue = queue.name().to_string();
            let mut keys: Vec<String> = self.bound.lock().keys().cloned().collect();
            keys.push(CONTROL_KEY.to_owned());
            for key in keys {
                channel
                    .queue_bind(
                        queue.as_str().into(),
                        s.exchange.as_str().into(),
                        key.as_str().into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
            }
            let consumer = channel
                .basic_consume(
                    queue.as_str().into(),
                    "herald".into(),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..BasicConsumeOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            Ok::<_, lapin::Error>((consumer, Live { channel, queue }))
        };
        let (consumer, live) = tokio::time::timeout(s.timeout * 4, setup)
            .await
            .map_err(|_| "setup timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        Ok((connection, consumer, live))
    }
}

/// Keep a connection: connect, bind, catch up, deliver; on loss, back off and start again.
async fn run(weak: Weak<Inner>) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut delivered: HashMap<String, Delivered> = HashMap::new();
    let mut connected_before = false;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let (connection, mut consumer, live) = match inner.connect().await {
            Ok(c) => c,
            Err(e) => {
                *inner.problem.lock() = Some(format!("RabbitMQ unreachable: {e}"));
                drop(inner);
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        *inner.live.lock() = Some(live);
        let Some(handler) = inner.handler.get().cloned() else {
            return;
        };
        if connected_before {
            let bound: Vec<(String, (Arc<str>, ChannelName))> = inner
                .bound
                .lock()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            delivered.retain(|k, _| bound.iter().any(|(b, _)| b == k));
            for (key, (app, channel)) in bound {
                let d = delivered.entry(key).or_default();
                relay::catch_up(&inner.log, &handler, &app, &channel, d).await;
            }
            info!("RabbitMQ reconnected, rebound and caught up");
        }
        *inner.problem.lock() = None;
        connected_before = true;
        backoff.reset();
        drop(inner);
        while let Some(delivery) = consumer.next().await {
            let Ok(delivery) = delivery else { break };
            let key = delivery.routing_key.as_str();
            if key == CONTROL_KEY {
                relay::deliver_control(&handler, &delivery.data);
                continue;
            }
            let d = match delivered.get_mut(key) {
                Some(d) => d,
                None => delivered.entry(key.to_owned()).or_default(),
            };
            relay::deliver(&handler, d, &delivery.data);
            if weak.strong_count() == 0 {
                return;
            }
        }
        let Some(inner) = weak.upgrade() else { return };
        warn!("RabbitMQ connection lost; reconnecting");
        *inner.live.lock() = None;
        *inner.problem.lock() = Some("RabbitMQ connection lost".into());
        drop(connection);
        drop(inner);
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

#[async_trait]
impl Broker for AmqpBroker {
    fn name(&self) -> &'static str {
        "rabbitmq"
    }

    fn start(&self, handler: Arc<dyn BrokerHandler>) -> Result<(), BrokerError> {
        self.inner
            .handler
            .set(handler)
            .map_err(|_| unavailable("started twice"))?;
        tokio::spawn(run(Arc::downgrade(&self.inner)));
        Ok(())
    }

    async fn publish(
        &self,
        mut publication: Publication,
        history: Option<&HistoryPolicy>,
    ) -> Result<Published, BrokerError> {
        let inner = &self.inner;
        inner.live()?;
        let key = routing_key(&publication.app_id, publication.channel.as_str());
        let body = envelope::encode_publication(&publication);
        let Some(policy) = history else {
            inner
                .publish_frame(&key, &relay::publication_frame(None, &body))
                .await?;
            return Ok(Published::Sent(Arc::new(publication)));
        };
        let _order = shard(&inner.publish_locks, &key).lock().await;
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
        inner
            .publish_frame(
                &key,
                &relay::publication_frame(Some((offset, &epoch)), &body),
            )
            .await?;
        publication.position = Some(position);
        Ok(Published::Sent(Arc::new(publication)))
    }

    async fn control(&self, control: Control) -> Result<(), BrokerError> {
        self.inner
            .publish_frame(CONTROL_KEY, &relay::control_frame(&control))
            .await
    }

    async fn subscribe(&self, app_id: &str, channel: &ChannelName) -> Result<(), BrokerError> {
        self.inner.reconcile(app_id, channel).await
    }

    async fn unsubscribe(&self, app_id: &str, channel: &ChannelName) -> Result<(), BrokerError> {
        self.inner.reconcile(app_id, channel).await
    }

    fn health(&self) -> BrokerHealth {
        match self.inner.problem.lock().clone() {
            None => BrokerHealth::Healthy,
            Some(why) => BrokerHealth::Degraded(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keys_are_one_word_per_name_and_bounded() {
        assert_eq!(routing_key("app", "private-a.b"), "pub.app.private-a%2Eb");
        let long = "x".repeat(300);
        let key = routing_key("app", &long);
        assert!(key.len() <= 255 && key.starts_with("pub.h."));
    }
}
