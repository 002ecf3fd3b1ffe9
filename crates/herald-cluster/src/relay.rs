//! What the brokers that pair their own fan-out bus with Redis history share: one
//! implementation of [`Broker`] ([`Paired`], generic over the [`Bus`] that differs), the
//! frames they carry, skipping what a catch-up already delivered, and the catch-up itself.
//!
//! Frames: `P{offset},{epoch},{json}` for a publication (offset and epoch empty without
//! history) and `C{json}` for a control message (see [`crate::envelope`]).
//!
//! # History and the bus
//! - **Order:** a channel's publication is appended to its Redis stream (which assigns the
//!   offset) and then sent on the bus, under a per-channel lock, so one node's publications
//!   on a channel are sent in offset order.
//! - **Accepted ⇒ in history:** `publish` reports success only after both the append and
//!   the send succeeded.
//! - **Refused ⇒ withdrawn:** when the send fails after the append, the entry is withdrawn
//!   from the stream again (one Lua step: that offset's entry, and the dedupe hash if it is
//!   still this publication's, so a retry is not taken for a duplicate) before `publish`
//!   returns the error. Until then a recovering client may read it. If the withdrawal fails
//!   too (Redis down), the entry stays and a warning is logged. The withdrawn offset is not
//!   reused: the stream has a gap there. A send that timed out may still have been delivered
//!   live; it is withdrawn all the same.
//! - **A node that dies** between the append and the send leaves the publication in history
//!   without having delivered it live; clients that recover get it.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, OnceLock, Weak};

use async_trait::async_trait;
use herald_core::broker::{Broker, BrokerError, BrokerHandler, BrokerHealth, Control, Published};
use herald_core::history::HistoryPolicy;
use herald_core::publication::{Position, Publication};
use herald_protocol::ChannelName;
use parking_lot::Mutex;
use tracing::{debug, info, warn};

use crate::envelope;
use crate::redis::StreamLog;
use crate::shards::Shards;

/// Shards of the per-channel subscribe and publish locks.
const LOCK_SHARDS: usize = 64;

/// What differs between the paired brokers: the bus that carries frames between nodes, how
/// a channel is named on it, and how a node starts and stops receiving a channel. Sealed:
/// only this crate's NATS, RabbitMQ and PostgreSQL buses implement it.
pub trait Bus: Send + Sync + Sized + 'static {
    /// What the bus keeps for each channel this node receives (NATS: the channel's task).
    type Receiver: Send + 'static;
    /// [`Broker::name`]: `nats`, `rabbitmq`, `postgres`.
    const NAME: &'static str;
    /// The service, for messages (`NATS`, …).
    const SERVICE: &'static str;
    /// The public broker type's name, for `Debug`.
    const BROKER: &'static str;

    /// The name a channel's frames travel under (subject, routing key, notification channel).
    fn route(&self, app_id: &str, channel: &str) -> String;

    /// The route of control messages, which every node receives.
    fn control_route(&self) -> String;

    /// `Ok` when the bus can take a frame now; otherwise at once why not (fail fast).
    fn ready(&self) -> Result<(), BrokerError>;

    /// Send `frame` under `route`; `Ok` once the bus has taken it.
    fn send(
        &self,
        route: String,
        frame: Vec<u8>,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Start receiving `route` (the channel `channel` of `app_id`); `Ok` once everything
    /// published on it afterwards reaches this node.
    fn receive(
        shared: &Arc<Shared<Self>>,
        route: &str,
        app_id: &str,
        channel: &ChannelName,
    ) -> impl Future<Output = Result<Self::Receiver, BrokerError>> + Send;

    /// Stop receiving `route`. Best effort: when the bus is down there is nothing to undo.
    fn ignore(&self, route: &str, receiver: Self::Receiver) -> impl Future<Output = ()> + Send;

    /// Keep the connection: connect, deliver what arrives, and after a loss reconnect,
    /// receive every channel again and catch up. Ends when the broker is dropped.
    fn run(shared: Weak<Shared<Self>>) -> impl Future<Output = ()> + Send;
}

/// A channel this node receives on the bus.
pub struct Receiving<R> {
    /// Its app, to catch the channel up after a reconnect ([`Shared::catch_up_all`]).
    pub(crate) app_id: Arc<str>,
    /// The channel, to catch it up after a reconnect ([`Shared::catch_up_all`]).
    pub(crate) channel: ChannelName,
    /// What the bus keeps for it while it is received.
    pub(crate) receiver: R,
}

/// The state of a paired broker, shared with its bus's tasks.
pub struct Shared<B: Bus> {
    /// The bus: its connection and names.
    pub(crate) bus: B,
    /// The history streams in Redis: appends, withdrawals, catch-up reads.
    pub(crate) log: StreamLog,
    /// Where deliveries go, set by `start`.
    pub(crate) handler: OnceLock<Arc<dyn BrokerHandler>>,
    /// Channels this node receives, by route (received again and caught up after a
    /// reconnect).
    pub(crate) receiving: Mutex<HashMap<String, Receiving<B::Receiver>>>,
    /// Serialise subscribe/unsubscribe reconciles of a channel.
    subscribe_locks: Shards,
    /// Serialise append-then-send of a channel, so this node's order is offset order (and a
    /// withdrawal ends before the channel's next append).
    publish_locks: Shards,
    /// `None` while connected; otherwise why not.
    pub(crate) problem: Mutex<Option<String>>,
}

/// A broker that carries publications on the bus `B` and keeps history in Redis: the one
/// [`Broker`] implementation of [`crate::nats::NatsBroker`], [`crate::amqp::AmqpBroker`]
/// and [`crate::postgres::PostgresBroker`]. See their module docs for their guarantees.
pub struct Paired<B: Bus> {
    /// The state, shared (weakly) with the bus's tasks, which end when this is dropped.
    shared: Arc<Shared<B>>,
}

impl<B: Bus> std::fmt::Debug for Paired<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(B::BROKER).finish_non_exhaustive()
    }
}

/// A bus failure as the broker reports it.
pub(crate) fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

impl<B: Bus> Paired<B> {
    /// A broker on `bus` (which connects on `start`), with history in `log`.
    pub(crate) fn with_bus(bus: B, log: StreamLog) -> Self {
        Self {
            shared: Arc::new(Shared {
                bus,
                log,
                handler: OnceLock::new(),
                receiving: Mutex::new(HashMap::new()),
                subscribe_locks: Shards::new(LOCK_SHARDS),
                publish_locks: Shards::new(LOCK_SHARDS),
                problem: Mutex::new(Some(format!("connecting to {}", B::SERVICE))),
            }),
        }
    }
}

impl<B: Bus> Shared<B> {
    /// Make this node's reception of `channel` match whether it has local subscribers.
    async fn reconcile(
        self: &Arc<Self>,
        app_id: &str,
        channel: &ChannelName,
    ) -> Result<(), BrokerError> {
        let handler = self.handler.get().ok_or(BrokerError::Closed)?;
        let route = self.bus.route(app_id, channel.as_str());
        let _guard = self.subscribe_locks.of(&[&route]).lock().await;
        let want = handler.local_subscribers(app_id, channel) > 0;
        let have = self.receiving.lock().contains_key(&route);
        if want == have {
            return Ok(());
        }
        if !want {
            let removed = self.receiving.lock().remove(&route);
            if let Some(r) = removed {
                self.bus.ignore(&route, r.receiver).await;
            }
            return Ok(());
        }
        let receiver = B::receive(self, &route, app_id, channel).await?;
        let receiving = Receiving {
            app_id: Arc::from(app_id),
            channel: channel.clone(),
            receiver,
        };
        self.receiving.lock().insert(route, receiving);
        Ok(())
    }

    /// Append to history, then send; withdraw the entry again when the send fails.
    async fn publish_with_history(
        &self,
        mut publication: Publication,
        route: String,
        body: &[u8],
        policy: &HistoryPolicy,
    ) -> Result<Published, BrokerError> {
        let _order = self.publish_locks.of(&[&route]).lock().await;
        let (sent, offset, epoch) = self
            .log
            .append(&publication, body, policy, None)
            .await
            .map_err(unavailable)?;
        let position = Position {
            offset,
            epoch: Arc::from(epoch.as_str()),
        };
        if !sent {
            return Ok(Published::Unchanged(position));
        }
        let frame = publication_frame(Some((offset, &epoch)), body);
        if let Err(e) = self.bus.send(route, frame).await {
            self.withdraw(&publication, offset, &epoch).await;
            return Err(e);
        }
        publication.position = Some(position);
        Ok(Published::Sent(Arc::new(publication)))
    }

    /// Take back the entry at `offset` of a publication the bus refused (see the module
    /// docs); a failure is logged, not returned: the send's error is what the caller gets.
    async fn withdraw(&self, publication: &Publication, offset: u64, epoch: &str) {
        let (app, channel) = (&*publication.app_id, publication.channel.as_str());
        match self.log.withdraw(app, channel, offset, epoch).await {
            Ok(_) => debug!(channel, offset, "withdrew a publication the bus refused"),
            Err(e) => warn!(
                error = %e,
                channel,
                offset,
                "could not withdraw a refused publication from history; it stays there"
            ),
        }
    }

    /// After a reconnect: catch up every channel received, from its history stream.
    /// `delivered` (by route) loses the channels no longer received.
    pub(crate) async fn catch_up_all(
        &self,
        handler: &Arc<dyn BrokerHandler>,
        delivered: &mut HashMap<String, Delivered>,
    ) {
        let receiving: Vec<(String, Arc<str>, ChannelName)> = self
            .receiving
            .lock()
            .iter()
            .map(|(route, r)| (route.clone(), r.app_id.clone(), r.channel.clone()))
            .collect();
        delivered.retain(|k, _| receiving.iter().any(|(route, _, _)| route == k));
        for (route, app, channel) in receiving {
            let d = delivered.entry(route).or_default();
            catch_up(&self.log, handler, &app, &channel, d).await;
        }
    }
}

#[async_trait]
impl<B: Bus> Broker for Paired<B> {
    fn name(&self) -> &'static str {
        B::NAME
    }

    fn start(&self, handler: Arc<dyn BrokerHandler>) -> Result<(), BrokerError> {
        self.shared
            .handler
            .set(handler)
            .map_err(|_| unavailable("started twice"))?;
        tokio::spawn(B::run(Arc::downgrade(&self.shared)));
        Ok(())
    }

    async fn publish(
        &self,
        publication: Publication,
        history: Option<&HistoryPolicy>,
    ) -> Result<Published, BrokerError> {
        let shared = &self.shared;
        shared.bus.ready()?;
        let route = shared
            .bus
            .route(&publication.app_id, publication.channel.as_str());
        let body = envelope::encode_publication(&publication);
        let Some(policy) = history else {
            shared
                .bus
                .send(route, publication_frame(None, &body))
                .await?;
            return Ok(Published::Sent(Arc::new(publication)));
        };
        shared
            .publish_with_history(publication, route, &body, policy)
            .await
    }

    async fn control(&self, control: Control) -> Result<(), BrokerError> {
        let bus = &self.shared.bus;
        bus.send(bus.control_route(), control_frame(&control)).await
    }

    async fn subscribe(&self, app_id: &str, channel: &ChannelName) -> Result<(), BrokerError> {
        self.shared.reconcile(app_id, channel).await
    }

    async fn unsubscribe(&self, app_id: &str, channel: &ChannelName) -> Result<(), BrokerError> {
        self.shared.reconcile(app_id, channel).await
    }

    fn health(&self) -> BrokerHealth {
        if let Some(why) = self.shared.problem.lock().clone() {
            return BrokerHealth::Degraded(why);
        }
        match self.shared.bus.ready() {
            Ok(()) => BrokerHealth::Healthy,
            Err(e) => BrokerHealth::Degraded(e.to_string()),
        }
    }
}

/// How many publications a channel may catch up after a reconnect.
pub(crate) const MAX_CATCH_UP: usize = 1000;

/// The frame of a publication: its position (if any) in front of its encoding.
pub(crate) fn publication_frame(position: Option<(u64, &str)>, body: &[u8]) -> Vec<u8> {
    let mut frame = match position {
        Some((offset, epoch)) => format!("P{offset},{epoch},").into_bytes(),
        None => b"P,,".to_vec(),
    };
    frame.extend_from_slice(body);
    frame
}

/// The frame of a control message.
pub(crate) fn control_frame(control: &herald_core::broker::Control) -> Vec<u8> {
    let mut frame = vec![b'C'];
    frame.extend_from_slice(&envelope::encode_control(control));
    frame
}

/// What one channel has had delivered on this node, to catch up and to skip repeats.
#[derive(Debug, Default)]
pub(crate) struct Delivered {
    /// The stream and highest offset delivered.
    pub(crate) top: Option<(Arc<str>, u64)>,
    /// Offsets delivered by the last catch-up: the same publications may still arrive live.
    caught: HashSet<u64>,
}

impl Delivered {
    /// Whether to deliver a publication at `offset` of `epoch` (recording it), with the
    /// epoch to give it.
    pub(crate) fn admit(&mut self, offset: u64, epoch: &str) -> Option<Arc<str>> {
        if self.caught.remove(&offset) {
            return None;
        }
        let epoch = match &self.top {
            Some((e, _)) if &**e == epoch => e.clone(),
            _ => Arc::from(epoch),
        };
        let top = self.top.as_ref().map_or(0, |(_, o)| *o);
        self.top = Some((epoch.clone(), top.max(offset)));
        Some(epoch)
    }
}

/// Decode a publication frame (after admitting its offset); `None` when it is a repeat or
/// malformed.
pub(crate) fn decode(delivered: &mut Delivered, frame: &[u8]) -> Option<Publication> {
    let Some((b'P', rest)) = frame.split_first() else {
        debug!("ignored a foreign message");
        return None;
    };
    let Some((offset, epoch, body)) = crate::redis::split_frame(rest) else {
        warn!("dropped a malformed publication");
        return None;
    };
    let position = match offset {
        Some(offset) => Some(Position {
            offset,
            epoch: delivered.admit(offset, epoch)?,
        }),
        None => None,
    };
    match envelope::decode_publication(body, position) {
        Ok(p) => Some(p),
        Err(e) => {
            warn!(error = %e, "dropped an undecodable publication");
            None
        }
    }
}

/// Decode and hand a publication frame to the node.
pub(crate) fn deliver(handler: &Arc<dyn BrokerHandler>, delivered: &mut Delivered, frame: &[u8]) {
    if let Some(p) = decode(delivered, frame) {
        handler.handle_publication(Arc::new(p));
    }
}

/// Hand a control frame to the node.
pub(crate) fn deliver_control(handler: &Arc<dyn BrokerHandler>, frame: &[u8]) {
    match frame.split_first() {
        Some((b'C', body)) => match envelope::decode_control(body) {
            Ok(c) => handler.handle_control(c),
            Err(e) => warn!(error = %e, "dropped an undecodable control message"),
        },
        _ => debug!("ignored a foreign control message"),
    }
}

/// After a reconnect: deliver what `channel` missed, from its history stream, after the
/// last offset delivered. Nothing to do for channels without history or a lost stream.
pub(crate) async fn catch_up(
    log: &StreamLog,
    handler: &Arc<dyn BrokerHandler>,
    app_id: &str,
    channel: &ChannelName,
    delivered: &mut Delivered,
) {
    let Some((epoch, top)) = delivered.top.clone() else {
        return;
    };
    match log.after(app_id, channel.as_str(), top, MAX_CATCH_UP).await {
        Ok((stream_epoch, entries)) if *stream_epoch == *epoch => {
            let n = entries.len();
            for (offset, body) in entries {
                deliver(
                    handler,
                    delivered,
                    &publication_frame(Some((offset, &stream_epoch)), &body),
                );
                delivered.caught.insert(offset);
            }
            if n > 0 {
                info!(channel = %channel, publications = n, "caught up after a reconnect");
            }
        }
        Ok(_) => debug!(channel = %channel, "history stream lost; nothing to catch up"),
        Err(e) => warn!(error = %e, channel = %channel, "catch-up read failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catch_up_repeats_are_skipped_once() {
        let mut d = Delivered::default();
        assert!(d.admit(1, "e").is_some());
        d.caught.insert(2);
        assert!(
            d.admit(2, "e").is_none(),
            "delivered by the catch-up already"
        );
        assert!(d.admit(3, "e").is_some());
        assert_eq!(d.top.as_ref().map(|(_, o)| *o), Some(3));
    }

    #[test]
    fn frames_carry_the_position_in_front() {
        assert_eq!(publication_frame(Some((3, "ab")), b"{}"), b"P3,ab,{}");
        assert_eq!(publication_frame(None, b"{}"), b"P,,{}");
    }
}
