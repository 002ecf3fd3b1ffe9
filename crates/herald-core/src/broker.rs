//! The [`Broker`] trait: how publications and control messages reach every node.
//!
//! Every publication goes through the broker, even on a single node, so that a cluster
//! backend can be swapped in without changing anything above this trait. The broker calls
//! back into the node through a [`BrokerHandler`], which fans out to local connections.
//!
//! # Contract (every backend documents how it meets it)
//! - **Delivery:** at most once. A publication accepted by [`Broker::publish`] is delivered to
//!   the handler of every node that is subscribed to its channel and reachable, or not at all
//!   (lost with a broker outage). Loss is made visible and recoverable by channel history
//!   offsets where the backend supports history.
//! - **Ordering:** publications on one channel published through one node are delivered to
//!   every node in the order `publish` was called for them (for calls that do not overlap).
//!   There is no order across channels.
//! - **Handler calls** for one channel never overlap, and a handler call never blocks on I/O:
//!   it queues bytes and returns.
//! - **History:** when `publish` is given a [`HistoryPolicy`], the broker appends the
//!   publication to the channel's stream (which assigns its offset) and hands it on as one
//!   atomic step per channel, so every node receives a channel's publications in offset
//!   order and a publication is in history if and only if it was sent.
//! - **Outage:** `publish` and `control` fail fast with [`BrokerError::Unavailable`] rather than
//!   wait indefinitely; `health` reports [`BrokerHealth::Degraded`] until the backend has
//!   reconnected and resubscribed.
//! - **Subscriptions:** `subscribe` is called when a channel gets its first local subscriber and
//!   `unsubscribe` when it loses its last. Both are idempotent. After `subscribe` returns, every
//!   publication published afterwards (anywhere) reaches this node.

pub mod memory;

use std::sync::Arc;

use async_trait::async_trait;
use herald_protocol::{ChannelName, CloseCode, SocketId};

use crate::history::HistoryPolicy;
use crate::publication::{DirectMessage, Position, Publication};

/// What [`Broker::publish`] did.
#[derive(Debug, Clone)]
pub enum Published {
    /// Accepted for delivery, with its history position set when the channel keeps history.
    Sent(Arc<Publication>),
    /// Not sent: its payload equals the channel's previous publication within the dedupe
    /// window. The position is that previous publication's.
    Unchanged(Position),
}

/// A message about connections rather than channels, delivered to every node.
#[derive(Debug, Clone)]
pub enum Control {
    /// Deliver to every connection of a user.
    SendToUser {
        /// The app.
        app_id: Arc<str>,
        /// The user.
        user_id: Arc<str>,
        /// The message.
        message: Arc<DirectMessage>,
    },
    /// Deliver to one connection.
    SendToSocket {
        /// The app (the socket must belong to it).
        app_id: Arc<str>,
        /// The connection.
        socket_id: SocketId,
        /// The message.
        message: Arc<DirectMessage>,
    },
    /// Close every connection of a user.
    DisconnectUser {
        /// The app.
        app_id: Arc<str>,
        /// The user.
        user_id: Arc<str>,
        /// The close code to send.
        code: CloseCode,
    },
}

/// Why a broker operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// The backend is unreachable or erroring; the operation was not performed.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker has shut down.
    #[error("broker closed")]
    Closed,
}

/// A broker's health, shown on `/ready` and in metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerHealth {
    /// Connected and subscribed.
    Healthy,
    /// Serving local clients, but the cluster link is down or recovering (with a reason).
    Degraded(String),
}

/// Receives what the broker delivers to this node.
pub trait BrokerHandler: Send + Sync + 'static {
    /// A publication for a channel this node subscribed to.
    fn handle_publication(&self, publication: Arc<Publication>);
    /// A control message.
    fn handle_control(&self, control: Control);
    /// How many local subscribers `channel` has now. A backend whose subscribe and
    /// unsubscribe calls can overlap reconciles against this, so the last call leaves the
    /// node subscribed exactly when it has subscribers.
    fn local_subscribers(&self, app_id: &str, channel: &ChannelName) -> usize;
}

/// Moves publications and control messages between nodes. See the module docs for the
/// contract every implementation must meet.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// A short name for logs and `/status` (`memory`, `redis`, …).
    fn name(&self) -> &'static str;

    /// Start delivering to `handler`. Called once, before any other method.
    fn start(&self, handler: Arc<dyn BrokerHandler>) -> Result<(), BrokerError>;

    /// Publish to every node subscribed to the publication's channel, this one included,
    /// appending it to the channel's history first when `history` is given (see the module
    /// docs). Returns once the broker has accepted it, without waiting for the fan-out.
    async fn publish(
        &self,
        publication: Publication,
        history: Option<&HistoryPolicy>,
    ) -> Result<Published, BrokerError>;

    /// Deliver a control message to every node, this one included.
    async fn control(&self, control: Control) -> Result<(), BrokerError>;

    /// This node now has local subscribers for `channel`.
    async fn subscribe(&self, app_id: &str, channel: &ChannelName) -> Result<(), BrokerError>;

    /// This node no longer has local subscribers for `channel`.
    async fn unsubscribe(&self, app_id: &str, channel: &ChannelName) -> Result<(), BrokerError>;

    /// Current health.
    fn health(&self) -> BrokerHealth;
}
