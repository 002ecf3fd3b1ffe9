//! [`Node`]: the composition root of the core. It owns the apps, the backends (broker,
//! presence, history, occupancy), the metrics and the registry of live connections.
//!
//! Other crates see a narrow API: look an app up, publish and send (`cmd::publish`,
//! `cmd::direct`), admit a connection (`cmd::connect`), query channels (`node::queries`),
//! read the node's health and drain it. The backends themselves stay inside the core: every
//! change to shared state goes through an operation that keeps its invariants.
//!
//! Publishing always goes through the broker, even on one node; the node's
//! [`delivery::Delivery`] is the broker's handler, which delivers to local connections.

mod admin;
mod delivery;
pub mod queries;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use herald_protocol::{ChannelName, CloseCode, ErrorCode, SocketId};
use parking_lot::Mutex;
use tracing::warn;

use crate::app::{App, AppRegistry};
use crate::broker::memory::MemoryBroker;
use crate::broker::{Broker, BrokerHealth, Published};
use crate::cache::ChannelCache;
use crate::clock::{NodeClock, unix_ms};
use crate::heartbeat;
use crate::history::memory::MemoryHistory;
use crate::history::{HistoryError, HistoryPolicy, HistoryStats, HistoryStore};
use crate::idempotency::IdempotencyKeys;
use crate::ids::IdGenerator;
use crate::metrics::Metrics;
use crate::occupancy::Occupancy;
use crate::occupancy::memory::MemoryOccupancy;
use crate::presence::PresenceManager;
use crate::presence::memory::MemoryPresence;
use crate::publication::{Payload, Publication};
use crate::refusal::Refusal;
use crate::settings::{AppSettings, NodeLimits};
use crate::webhook::{WebhookEmitter, WebhookEvent};

pub use queries::ChannelInfo;

/// The backends a node runs on: fan-out, presence and history.
pub struct Backends {
    /// Moves publications between nodes (and appends history as part of a publish).
    pub broker: Arc<dyn Broker>,
    /// Tracks presence members.
    pub presence: Arc<dyn PresenceManager>,
    /// Reads and administers channel history.
    pub history: Arc<dyn HistoryStore>,
    /// Which channels have subscribers anywhere in the cluster.
    pub occupancy: Arc<dyn Occupancy>,
}

impl Backends {
    /// The single-node, in-memory backends: `dispatchers` fan-out tasks with `queue`-entry
    /// queues, memory presence and memory history.
    pub fn memory(dispatchers: usize, queue: usize) -> Self {
        Self::memory_with_history(dispatchers, queue, Arc::new(MemoryHistory::new()))
    }

    /// The single-node backends with a given history store (a durable one, for
    /// `history.store = "disk"`).
    pub fn memory_with_history(
        dispatchers: usize,
        queue: usize,
        history: Arc<MemoryHistory>,
    ) -> Self {
        Self {
            broker: Arc::new(MemoryBroker::new(dispatchers, queue, history.clone())),
            presence: Arc::new(MemoryPresence::new()),
            history,
            occupancy: Arc::new(MemoryOccupancy),
        }
    }
}

/// A point-in-time summary for `/status`.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    /// Realtime connections open.
    pub connections: usize,
    /// Channels with local subscribers, over all apps.
    pub channels: i64,
    /// Subscriptions held.
    pub subscriptions: i64,
    /// Messages received from clients since start.
    pub messages_in: u64,
    /// Messages written to clients since start.
    pub messages_out: u64,
    /// Publications accepted since start.
    pub messages_published: u64,
    /// The broker's name and health.
    pub broker: (&'static str, BrokerHealth),
    /// The shared cluster state's name and health (`memory` on one node).
    pub cluster: (&'static str, BrokerHealth),
    /// Whether the node is draining (shutting down).
    pub draining: bool,
}

/// The core of one Herald process.
pub struct Node {
    /// Every app, by id and by key.
    pub(crate) apps: AppRegistry,
    /// Node-wide limits and timing.
    pub(crate) limits: NodeLimits,
    /// Moves publications between nodes (and to this one).
    pub(crate) broker: Arc<dyn Broker>,
    /// Tracks presence members.
    pub(crate) presence: Arc<dyn PresenceManager>,
    /// Channel history, for recovery and the history API.
    pub(crate) history: Arc<dyn HistoryStore>,
    /// Cluster-wide channel occupancy and counts.
    pub(crate) occupancy: Arc<dyn Occupancy>,
    /// Recent idempotency keys of publishes, so a retried publish is delivered once.
    pub(crate) idempotency: IdempotencyKeys,
    /// The node's metrics, shared with the transports and the admin endpoint.
    pub(crate) metrics: Arc<Metrics>,
    /// Live connections, by socket id and by user (direct sends, disconnects, the heartbeat).
    pub(crate) sessions: crate::registry::SessionRegistry,
    /// Monotonic clock for activity tracking.
    pub(crate) clock: NodeClock,
    /// Message and socket id generator.
    pub(crate) ids: IdGenerator,
    /// The last event of every cache channel.
    pub(crate) cache: ChannelCache,
    /// Webhook events on their way to the server's sender.
    pub(crate) webhooks: WebhookEmitter,
    /// Connections held now, against `limits.max_connections`.
    pub(crate) connections: AtomicU32,
    /// Connections held now per client IP, against `limits.max_connections_per_ip`.
    pub(crate) per_ip: Mutex<HashMap<IpAddr, u32>>,
    /// Channels watched by the admin views' live tail.
    pub(crate) taps: crate::cmd::tap::Taps,
    /// Asks apps' backends about channels no token grants (set by the server).
    pub(crate) subscribe_authority: crate::backend::Authority,
    /// Set when shutdown starts: no new connections are admitted.
    pub(crate) draining: AtomicBool,
    /// Background tasks (heartbeat, history sweep, webhook release), aborted on drop.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("apps", &self.apps.all().len())
            .field("broker", &self.broker.name())
            .finish_non_exhaustive()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
    }
}

impl Node {
    /// Build the node, start the broker's delivery and the heartbeat. Must run inside a
    /// tokio runtime. Fails on invalid app settings (duplicate ids, bad keys).
    pub fn start(
        limits: NodeLimits,
        apps: Vec<AppSettings>,
        backends: Backends,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, String> {
        let node = Arc::new(Self {
            apps: AppRegistry::new(apps)?,
            limits,
            broker: backends.broker,
            presence: backends.presence,
            history: backends.history,
            occupancy: backends.occupancy,
            idempotency: IdempotencyKeys::new(),
            metrics,
            sessions: crate::registry::SessionRegistry::new(),
            clock: NodeClock::new(),
            ids: IdGenerator::new(),
            cache: ChannelCache::new(),
            webhooks: WebhookEmitter::new(),
            connections: AtomicU32::new(0),
            per_ip: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            taps: crate::cmd::tap::Taps::default(),
            subscribe_authority: crate::backend::Authority::new(),
            tasks: Mutex::new(Vec::new()),
        });
        node.broker
            .start(Arc::new(delivery::Delivery(Arc::downgrade(&node))))
            .map_err(|e| format!("cannot start the {} broker: {e}", node.broker.name()))?;
        node.occupancy
            .start(Arc::new(delivery::Departures(Arc::downgrade(&node))))
            .map_err(|e| format!("cannot start {} occupancy: {e}", node.occupancy.name()))?;
        node.spawn_background_tasks();
        Ok(node)
    }

    /// The heartbeat, the history sweep and (when an app has webhooks) the release of
    /// debounced webhook events. Each holds the node weakly and ends when it is dropped.
    fn spawn_background_tasks(self: &Arc<Self>) {
        let mut tasks = self.tasks.lock();
        tasks.push(tokio::spawn(heartbeat::run(Arc::downgrade(self))));
        let weak = Arc::downgrade(self);
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
            loop {
                tick.tick().await;
                let Some(node) = weak.upgrade() else { return };
                node.history.sweep();
            }
        }));
        if self
            .apps
            .all()
            .iter()
            .any(|a| !a.settings.webhooks.is_empty())
        {
            let weak = Arc::downgrade(self);
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
                loop {
                    tick.tick().await;
                    let Some(node) = weak.upgrade() else { return };
                    node.webhooks
                        .release_due(node.clock.now_ms(), &node.metrics);
                }
            }));
        }
    }

    /// The app with this id.
    pub fn app_by_id(&self, id: &str) -> Option<Arc<App>> {
        self.apps.by_id(id).cloned()
    }

    /// The app with this key.
    pub fn app_by_key(&self, key: &str) -> Option<Arc<App>> {
        self.apps.by_key(key).cloned()
    }

    /// Every app.
    pub fn apps(&self) -> &[Arc<App>] {
        self.apps.all()
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The node clock's reading, in milliseconds (what [`SessionHandle::touch`] takes).
    ///
    /// [`SessionHandle::touch`]: crate::outbound::SessionHandle::touch
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Node-wide limits and timing.
    pub fn limits(&self) -> &NodeLimits {
        &self.limits
    }

    /// The last event of a cache channel, with its remaining time to live.
    pub fn cached_event(
        &self,
        app: &App,
        channel: &ChannelName,
    ) -> Option<(Arc<Publication>, std::time::Duration)> {
        self.cache.get(&app.id, channel)
    }

    /// A page of a channel's stored history, for the history API.
    pub async fn read_history(
        &self,
        app: &App,
        channel: &ChannelName,
        query: &crate::history::HistoryQuery,
    ) -> Result<crate::history::HistoryPage, HistoryError> {
        self.history.read(&app.id, channel, query, None).await
    }

    /// Stored-history figures, for one app or (with `None`) all of them.
    pub async fn history_stats(&self, app: Option<&App>) -> Result<HistoryStats, HistoryError> {
        self.history.stats(app.map(|a| &*a.id)).await
    }

    /// Delete a channel's history (its next publication starts a new epoch). Returns
    /// whether there was any.
    pub async fn clear_history(
        &self,
        app: &App,
        channel: &ChannelName,
    ) -> Result<bool, HistoryError> {
        self.history.clear(&app.id, channel).await
    }

    /// The receiving end of the webhook queue, for the server's sender. `None` after the
    /// first call.
    pub fn take_webhook_receiver(
        &self,
    ) -> Option<tokio::sync::mpsc::Receiver<crate::webhook::AppWebhookEvent>> {
        self.webhooks.take_receiver()
    }

    /// Report a webhook event for `app`, if the app has webhooks.
    pub(crate) fn emit_webhook(&self, app: &App, event: WebhookEvent) {
        if app.settings.webhooks.is_empty() {
            return;
        }
        let delay = app.settings.webhook_delay.as_millis() as u64;
        self.webhooks
            .emit(&app.id, event, self.clock.now_ms(), delay, &self.metrics);
    }

    /// Hand one publication to the broker (appending it to history under `policy`) and
    /// count it. Every publication of the node, from the API or a client, passes here.
    pub(crate) async fn publish_publication(
        &self,
        publication: Publication,
        policy: Option<&HistoryPolicy>,
    ) -> Result<Published, Refusal> {
        let published = self
            .broker
            .publish(publication, policy)
            .await
            .map_err(|e| {
                warn!(error = %e, "publish failed");
                Refusal::new(
                    ErrorCode::Internal,
                    "the broker is unavailable; retry later",
                )
            })?;
        if matches!(published, Published::Sent(_)) {
            Metrics::inc(&self.metrics.messages_published);
        }
        Ok(published)
    }

    /// Publish a server-generated payload (presence change, client event) on a channel.
    /// These are not kept in history.
    pub(crate) async fn publish_payload(
        &self,
        app: &App,
        channel: &ChannelName,
        payload: Payload,
        exclude: Option<SocketId>,
    ) -> Result<(), Refusal> {
        let id: Arc<str> = Arc::from(self.ids.next().as_str());
        let publication = Publication::new(
            app.id.clone(),
            channel.clone(),
            id,
            payload,
            exclude,
            unix_ms(),
        );
        self.publish_publication(publication, None).await?;
        Ok(())
    }

    /// A summary for `/status`.
    pub fn status(&self) -> NodeStatus {
        let m = &self.metrics;
        NodeStatus {
            connections: self.connections.load(Ordering::Relaxed) as usize,
            channels: m.channels.load(Ordering::Relaxed),
            subscriptions: m.subscriptions.load(Ordering::Relaxed),
            messages_in: Metrics::get(&m.messages_received),
            messages_out: Metrics::get(&m.messages_delivered),
            messages_published: Metrics::get(&m.messages_published),
            broker: (self.broker.name(), self.broker.health()),
            cluster: (self.occupancy.name(), self.occupancy.health()),
            draining: self.draining.load(Ordering::Relaxed),
        }
    }

    /// The broker's health.
    pub fn broker_health(&self) -> BrokerHealth {
        self.broker.health()
    }

    /// The shared cluster state's health.
    pub fn cluster_health(&self) -> BrokerHealth {
        self.occupancy.health()
    }

    /// Whether the node can take traffic: not draining, and the broker and the cluster
    /// state healthy.
    pub fn is_ready(&self) -> Result<(), String> {
        if self.draining.load(Ordering::Relaxed) {
            return Err("draining".into());
        }
        if let BrokerHealth::Degraded(why) = self.broker.health() {
            return Err(format!("broker degraded: {why}"));
        }
        match self.occupancy.health() {
            BrokerHealth::Healthy => Ok(()),
            BrokerHealth::Degraded(why) => Err(format!("cluster state degraded: {why}")),
        }
    }

    /// Start shutting down: `/ready` fails, and every connection is asked to flush and close
    /// with `code` (1001, "going away, reconnect"). Returns how many were asked now (a
    /// connection already closing is not asked again).
    pub fn drain(&self, code: CloseCode) -> usize {
        self.draining.store(true, Ordering::Release);
        let mut n = 0;
        self.sessions.for_each(|h| {
            n += usize::from(h.close(code));
        });
        n
    }

    /// Start shutting down as [`Node::drain`] does, but spread the closes evenly over
    /// `window`, so that the clients' reconnects reach the other nodes (or the process that
    /// took over) as a steady stream instead of all at once. Connections are closed in the
    /// registry's order, which follows the hash of their socket id: no client group goes
    /// first. A zero `window` closes them all at once.
    ///
    /// A connection admitted after the first pass (its request was on its way when the
    /// listener stopped) is asked as well: the drain sweeps every 100 ms until no connection
    /// is left, so it runs until then or until the caller drops it.
    pub async fn drain_over(&self, code: CloseCode, window: std::time::Duration) {
        /// How often a batch of closes is sent while the window runs.
        const TICK: std::time::Duration = std::time::Duration::from_millis(10);
        /// How often late connections are looked for after the window.
        const SWEEP: std::time::Duration = std::time::Duration::from_millis(100);
        self.draining.store(true, Ordering::Release);
        let mut handles = Vec::with_capacity(self.connection_count());
        self.sessions.for_each(|h| handles.push(h.clone()));
        let total = handles.len();
        let started = tokio::time::Instant::now();
        let mut pending = handles.into_iter();
        let mut asked = 0;
        while asked < total {
            let share = if window.is_zero() {
                1.0
            } else {
                started.elapsed().as_secs_f64() / window.as_secs_f64()
            };
            // One connection at the first tick, then the share of the window gone by.
            let due = ((share * total as f64) as usize + 1).min(total);
            for handle in pending.by_ref().take(due.saturating_sub(asked)) {
                handle.close(code);
            }
            asked = asked.max(due);
            if asked < total {
                tokio::time::sleep(TICK).await;
            }
        }
        while self.connection_count() > 0 {
            self.drain(code);
            tokio::time::sleep(SWEEP).await;
        }
    }

    /// Ask `authority` about channels no token grants, for apps with a subscribe proxy.
    /// Set once; later calls are ignored.
    pub fn set_subscribe_authority(&self, authority: Arc<dyn crate::backend::SubscribeAuthority>) {
        let _ = self.subscribe_authority.set(authority);
    }

    /// This node is stopping and its connections are gone: tell the cluster state, so that
    /// nothing this node leaves behind is reported as lost with it.
    pub async fn leave_cluster(&self) {
        self.occupancy.leave().await;
    }

    /// End every connection still open now, mid-write or not (the shutdown grace period is
    /// over). Returns how many there were.
    pub fn abort_all(&self) -> usize {
        let mut n = 0;
        self.sessions.for_each(|h| {
            h.abort();
            n += 1;
        });
        n
    }

    /// Whether shutdown has started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Realtime connections open now.
    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Relaxed) as usize
    }
}
