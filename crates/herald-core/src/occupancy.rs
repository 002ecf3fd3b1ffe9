//! The [`Occupancy`] trait: which channels have subscribers anywhere in the cluster, and how
//! many.
//!
//! The hub knows this node's subscribers. A cluster needs the sum over nodes for the channel
//! queries of the HTTP APIs, and it needs to know when a channel becomes occupied or vacated
//! **in the cluster** (not on one node), so that `channel_occupied` and `channel_vacated`
//! webhooks fire once per cluster transition.
//!
//! # Contract (every backend documents how it meets it)
//! - **Transitions are atomic:** of all nodes calling [`Occupancy::occupy`] for a channel
//!   nobody occupies, exactly one is told it was first; of all nodes calling
//!   [`Occupancy::vacate`], exactly the one whose call leaves no node occupying it is told it
//!   was last. A node calls `occupy` on its first local subscriber and `vacate` on its last.
//! - **Counts** ([`Occupancy::subscriber_count`], [`Occupancy::channels`]) sum the counts
//!   nodes reported with [`Occupancy::local_count`]; they may lag a node's hub by the
//!   backend's documented flush interval. `None` means "single node: ask the hub".
//! - **Node loss:** a backend shared by several nodes notices a node that stopped
//!   heartbeating within a documented time, removes its channels and presence members, and
//!   reports what that changed through the [`OccupancyHandler`] of exactly one live node.
//! - **Outage:** operations fail fast with [`OccupancyError`]; when the backend is back, the
//!   node's own state is written again (no webhooks fire for that rewrite).
//! - **Reports:** a node's latest [`Occupancy::report`] is readable by every node through
//!   [`Occupancy::reports`] within one heartbeat, and disappears with the node.
//! - **Connections:** the connections a node recorded and did not close are handed, once,
//!   to one live node as [`Departure::ConnectionLost`] when the node dies; a node that
//!   leaves cleanly ([`Occupancy::leave`]) leaves none behind. Records may lag by one
//!   heartbeat: a connection opened and closed within it may never be written.

pub mod memory;

use std::sync::Arc;

use async_trait::async_trait;
use herald_protocol::ChannelName;

use crate::broker::BrokerHealth;
use crate::webhook::ConnectionRecord;

/// Something that changed because a node died without cleaning up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Departure {
    /// A presence member's last connection was on the dead node.
    Left {
        /// The app.
        app_id: Arc<str>,
        /// The presence channel.
        channel: ChannelName,
        /// The user who is no longer present.
        user_id: Arc<str>,
    },
    /// The dead node was the last one with subscribers on the channel.
    Vacated {
        /// The app.
        app_id: Arc<str>,
        /// The channel.
        channel: ChannelName,
    },
    /// A connection the dead node held, recorded with [`Occupancy::connection_opened`].
    ConnectionLost {
        /// The connection, as recorded.
        record: Arc<ConnectionRecord>,
    },
}

/// The node, as an occupancy backend sees it.
pub trait OccupancyHandler: Send + Sync + 'static {
    /// Announce `departures` found by the clean-up of a dead node (presence `left` events,
    /// webhooks). Must not block.
    fn departed(&self, departures: Vec<Departure>);
    /// How many local subscribers `channel` has now: `occupy` and `vacate` calls can
    /// overlap, so a backend reconciles against this rather than trust the call order.
    fn local_subscribers(&self, app_id: &str, channel: &ChannelName) -> usize;
}

/// Why an occupancy operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("occupancy backend unavailable: {0}")]
pub struct OccupancyError(pub String);

/// Cluster-wide channel occupancy. See the module docs for the contract.
#[async_trait]
pub trait Occupancy: Send + Sync + 'static {
    /// A short name for `/status` (`memory`, `redis`, …).
    fn name(&self) -> &'static str;

    /// Start background duties (heartbeats, clean-up of dead nodes). Called once by
    /// [`crate::Node::start`].
    fn start(&self, handler: Arc<dyn OccupancyHandler>) -> Result<(), OccupancyError>;

    /// This node got its first subscriber on `channel`. Returns whether no other node had
    /// one (the channel is now occupied in the cluster).
    async fn occupy(&self, app_id: &str, channel: &ChannelName) -> Result<bool, OccupancyError>;

    /// This node lost its last subscriber on `channel`. Returns whether no other node has
    /// one (the channel is now vacated in the cluster).
    async fn vacate(&self, app_id: &str, channel: &ChannelName) -> Result<bool, OccupancyError>;

    /// This node now has `count` subscribers on `channel` (reported after every change;
    /// must not block).
    fn local_count(&self, app_id: &str, channel: &ChannelName, count: usize);

    /// Subscribers on `channel` across the cluster; `None`: ask the local hub.
    async fn subscriber_count(
        &self,
        app_id: &str,
        channel: &ChannelName,
    ) -> Result<Option<usize>, OccupancyError>;

    /// Channels of `app_id` with subscribers anywhere, whose name starts with `prefix`, with
    /// their cluster-wide subscriber counts; `None`: ask the local hub.
    async fn channels(
        &self,
        app_id: &str,
        prefix: &str,
    ) -> Result<Option<Vec<(ChannelName, usize)>>, OccupancyError>;

    /// The health of the shared state (shown on `/ready` with the broker's).
    fn health(&self) -> BrokerHealth {
        BrokerHealth::Healthy
    }

    /// Keep `report` (a JSON object: what the admin views show of this node) where every
    /// node can read it, replacing the previous one, until this node stops heartbeating.
    /// Called every few seconds; must not block. A single-node backend keeps nothing.
    fn report(&self, _report: Arc<str>) {}

    /// The latest report of every live node, this one's included (once it has been written:
    /// it may lag by the backend's heartbeat), in no particular order. `None`: a single
    /// node, which has only its own.
    async fn reports(&self) -> Result<Option<Vec<Arc<str>>>, OccupancyError> {
        Ok(None)
    }

    /// This node admitted a connection whose app wants the connection lifecycle webhooks:
    /// keep `record` until [`Occupancy::connection_closed`], so that if this node dies the
    /// node that cleans up after it reports the connection closed
    /// ([`Departure::ConnectionLost`]). Must not block. A single-node backend keeps nothing.
    fn connection_opened(&self, _record: &Arc<ConnectionRecord>) {}

    /// The connection recorded with [`Occupancy::connection_opened`] ended.
    fn connection_closed(&self, _app_id: &str, _socket_id: &str) {}

    /// This node is stopping cleanly, its connections gone: write what is pending (counts,
    /// connection records), so that nothing it leaves behind is reported as lost.
    async fn leave(&self) {}
}
