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
//! - **Atomicity:** as for the NATS broker: appended to history, then published; a publish
//!   RabbitMQ refuses (or does not confirm in time) is withdrawn from history again.
//! - **Outage:** `publish`, `control` and `subscribe` fail at once while the connection is
//!   down; the node reconnects with jittered backoff, redeclares, rebinds and catches up.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use herald_core::broker::BrokerError;
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
use crate::relay::{self, Bus, Delivered, Paired, Shared, unavailable};

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
pub type AmqpBroker = Paired<AmqpBus>;

/// The RabbitMQ side of an [`AmqpBroker`]: the connection, the exchange and the node's
/// queue. Made only by [`AmqpBroker::new`].
pub struct AmqpBus {
    /// Where RabbitMQ is, the exchange and the deadlines.
    settings: AmqpSettings,
    /// The live connection, `None` while down.
    live: Mutex<Option<Live>>,
}

/// The live connection: the AMQP channel everything goes through and the node's queue.
#[derive(Clone)]
struct Live {
    /// Publishes (with confirms), binds and consumes, in one order.
    channel: lapin::Channel,
    /// This node's exclusive queue, bound to the routing keys it receives.
    queue: String,
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
        Paired::with_bus(
            AmqpBus {
                settings,
                live: Mutex::new(None),
            },
            log,
        )
    }
}

impl AmqpBus {
    fn live(&self) -> Result<Live, BrokerError> {
        self.live
            .lock()
            .clone()
            .ok_or_else(|| unavailable("not connected to RabbitMQ"))
    }
}

impl Bus for AmqpBus {
    /// Nothing: the node's one consumer receives every bound key.
    type Receiver = ();
    const NAME: &'static str = "rabbitmq";
    const SERVICE: &'static str = "RabbitMQ";
    const BROKER: &'static str = "AmqpBroker";

    fn route(&self, app_id: &str, channel: &str) -> String {
        routing_key(app_id, channel)
    }

    fn control_route(&self) -> String {
        CONTROL_KEY.to_owned()
    }

    fn ready(&self) -> Result<(), BrokerError> {
        self.live().map(|_| ())
    }

    async fn send(&self, key: String, frame: Vec<u8>) -> Result<(), BrokerError> {
        let live = self.live()?;
        let confirm = tokio::time::timeout(self.settings.timeout, async {
            live.channel
                .basic_publish(
                    self.settings.exchange.as_str().into(),
                    key.as_str().into(),
                    BasicPublishOptions::default(),
                    &frame,
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

    async fn receive(
        shared: &Arc<Shared<Self>>,
        key: &str,
        _app_id: &str,
        _channel: &ChannelName,
    ) -> Result<(), BrokerError> {
        let bus = &shared.bus;
        let live = bus.live()?;
        tokio::time::timeout(
            bus.settings.timeout,
            live.channel.queue_bind(
                live.queue.as_str().into(),
                bus.settings.exchange.as_str().into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .map_err(|_| unavailable("RabbitMQ bind timed out"))?
        .map_err(unavailable)
    }

    async fn ignore(&self, key: &str, (): ()) {
        if let Ok(live) = self.live() {
            let _ = tokio::time::timeout(
                self.settings.timeout,
                live.channel.queue_unbind(
                    live.queue.as_str().into(),
                    self.settings.exchange.as_str().into(),
                    key.into(),
                    FieldTable::default(),
                ),
            )
            .await;
        }
    }

    async fn run(shared: Weak<Shared<Self>>) {
        run(shared).await;
    }
}

/// Connect, declare, bind what is wanted, and start consuming.
async fn connect(shared: &Shared<AmqpBus>) -> Result<(Connection, lapin::Consumer, Live), String> {
    let s = &shared.bus.settings;
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
        let mut keys: Vec<String> = shared.receiving.lock().keys().cloned().collect();
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

/// Keep a connection: connect, bind, catch up, deliver; on loss, back off and start again.
async fn run(weak: Weak<Shared<AmqpBus>>) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut delivered: HashMap<String, Delivered> = HashMap::new();
    let mut connected_before = false;
    loop {
        let Some(shared) = weak.upgrade() else { return };
        let (connection, mut consumer, live) = match connect(&shared).await {
            Ok(c) => c,
            Err(e) => {
                *shared.problem.lock() = Some(format!("RabbitMQ unreachable: {e}"));
                drop(shared);
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        *shared.bus.live.lock() = Some(live);
        let Some(handler) = shared.handler.get().cloned() else {
            return;
        };
        if connected_before {
            shared.catch_up_all(&handler, &mut delivered).await;
            info!("RabbitMQ reconnected, rebound and caught up");
        }
        *shared.problem.lock() = None;
        connected_before = true;
        backoff.reset();
        drop(shared);
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
        let Some(shared) = weak.upgrade() else { return };
        warn!("RabbitMQ connection lost; reconnecting");
        *shared.bus.live.lock() = None;
        *shared.problem.lock() = Some("RabbitMQ connection lost".into());
        drop(connection);
        drop(shared);
        tokio::time::sleep(backoff.next_delay()).await;
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
