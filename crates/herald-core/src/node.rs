//! [`Node`]: the composition root of the core. It owns the apps, the broker, the presence
//! manager, the metrics and the registry of live connections, and offers the operations the
//! transports and the HTTP API need: connect, publish, direct sends, disconnects, channel
//! queries and drain.
//!
//! Publishing always goes through the broker, even on one node; the node is also the
//! broker's [`BrokerHandler`], which delivers to local connections.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Weak};

use herald_protocol::{ChannelName, CloseCode, ErrorCode, SocketId};
use parking_lot::Mutex;
use tracing::warn;

use crate::app::{App, AppRegistry};
use crate::broker::memory::MemoryBroker;
use crate::broker::{Broker, BrokerHandler, BrokerHealth, Control, Published};
use crate::cache::ChannelCache;
use crate::clock::{NodeClock, unix_ms};
use crate::heartbeat;
use crate::history::HistoryStore;
use crate::history::memory::MemoryHistory;
use crate::hub::Hub;
use crate::idempotency::{Claim, IdempotencyKeys};
use crate::ids::IdGenerator;
use crate::metrics::Metrics;
use crate::occupancy::memory::MemoryOccupancy;
use crate::occupancy::{Departure, Occupancy, OccupancyHandler};
use crate::outbound::{QueueLimits, SessionHandle};
use crate::presence::PresenceManager;
use crate::presence::memory::MemoryPresence;
use crate::publication::{DirectMessage, EventData, Member, Payload, Position, Publication};
use crate::refusal::Refusal;
use crate::session::Session;
use crate::settings::{AppSettings, NodeLimits};
use crate::webhook::{WebhookEmitter, WebhookEvent};
use crate::wire::Protocol;

/// What a transport knows about a connection attempt.
#[derive(Debug, Clone)]
pub struct ConnectRequest<'a> {
    /// The app key from the URL.
    pub app_key: &'a str,
    /// The connection token, from the query string or `Authorization` header.
    pub token: Option<&'a str>,
    /// The `Origin` header, if the client sent one (browsers always do).
    pub origin: Option<&'a str>,
    /// The client's IP address (after trusted-proxy resolution).
    pub ip: IpAddr,
    /// The protocol the client speaks.
    pub protocol: Protocol,
    /// On HTTP transports (SSE, long-polling): the id the client sends commands with,
    /// announced in the `connected` message.
    pub transport_session: Option<&'a str>,
}

/// A refused connection: the error to report and the close code to end it with.
#[derive(Debug, Clone)]
pub struct ConnectRefusal {
    /// The catalogue error.
    pub refusal: Refusal,
    /// The WebSocket close code (which tells the client whether to retry).
    pub close: CloseCode,
}

impl ConnectRefusal {
    fn new(
        code: ErrorCode,
        close: CloseCode,
        message: impl Into<std::borrow::Cow<'static, str>>,
    ) -> Self {
        Self {
            refusal: Refusal::new(code, message),
            close,
        }
    }
}

/// A publish request from the API, already parsed.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    /// Channel names, not yet validated.
    pub channels: Vec<String>,
    /// The event name.
    pub event: String,
    /// The event data.
    pub data: EventData,
    /// A connection that must not receive it.
    pub exclude: Option<SocketId>,
    /// A repeat of this key within the app's idempotency window is not delivered again.
    pub idempotency_key: Option<String>,
}

/// The result of an accepted publish.
#[derive(Debug, Clone)]
pub struct PublishReceipt {
    /// The message id, shared by all channels of this publish.
    pub id: Arc<str>,
    /// The channels it was published to, in request order.
    pub channels: Vec<PublishedChannel>,
    /// This publish repeated an earlier one's idempotency key and was not delivered again;
    /// the rest of the receipt is the earlier publish's.
    pub duplicate: bool,
}

/// What a publish did on one channel.
#[derive(Debug, Clone)]
pub struct PublishedChannel {
    /// The channel.
    pub name: ChannelName,
    /// Its history position, when the channel keeps history.
    pub position: Option<Position>,
    /// Not delivered: same payload as the channel's previous publication within the
    /// dedupe window (`position` is that publication's).
    pub unchanged: bool,
}

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
        let history = Arc::new(MemoryHistory::new());
        Self {
            broker: Arc::new(MemoryBroker::new(dispatchers, queue, history.clone())),
            presence: Arc::new(MemoryPresence::new()),
            history,
            occupancy: Arc::new(MemoryOccupancy),
        }
    }
}

/// What the API reports about one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelInfo {
    /// The channel name.
    pub name: ChannelName,
    /// Connections subscribed (across the cluster when the backend is shared).
    pub subscribers: usize,
    /// Distinct users present, for presence channels.
    pub presence_members: Option<usize>,
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
    /// Whether the node is draining (shutting down).
    pub draining: bool,
}

/// The longest accepted event name, in bytes.
pub const MAX_EVENT_NAME_LEN: usize = 200;

/// The core of one Herald process.
pub struct Node {
    /// Every app.
    pub apps: AppRegistry,
    /// Node-wide limits and timing.
    pub limits: NodeLimits,
    /// Moves publications between nodes (and to this one).
    pub broker: Arc<dyn Broker>,
    /// Tracks presence members.
    pub presence: Arc<dyn PresenceManager>,
    /// Channel history, for recovery and the history API.
    pub history: Arc<dyn HistoryStore>,
    /// Cluster-wide channel occupancy and counts.
    pub occupancy: Arc<dyn Occupancy>,
    /// Recent idempotency keys of publishes.
    pub idempotency: IdempotencyKeys,
    /// The node's metrics, shared with the transports and the admin endpoint.
    pub metrics: Arc<Metrics>,
    /// Live connections.
    pub sessions: crate::registry::SessionRegistry,
    /// Monotonic clock for activity tracking.
    pub clock: NodeClock,
    /// Message and socket id generator.
    pub ids: IdGenerator,
    /// The last event of every cache channel.
    pub cache: ChannelCache,
    /// Webhook events on their way to the server's sender.
    pub webhooks: WebhookEmitter,
    /// Connections held now, against `limits.max_connections`.
    connections: AtomicU32,
    /// Connections held now per client IP, against `limits.max_connections_per_ip`.
    per_ip: Mutex<HashMap<IpAddr, u32>>,
    /// Set when shutdown starts: no new connections are admitted.
    draining: AtomicBool,
    /// Background tasks (heartbeat), aborted on drop.
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

/// Delivers what the broker hands over to this node's connections. Holds the node weakly
/// so the broker's tasks never keep a dropped node alive.
struct Delivery(Weak<Node>);

impl BrokerHandler for Delivery {
    fn handle_publication(&self, publication: Arc<Publication>) {
        let Some(node) = self.0.upgrade() else { return };
        if let Some(app) = node.apps.by_id(&publication.app_id) {
            app.hub.broadcast(&publication, &node.metrics);
        }
    }

    fn local_subscribers(&self, app_id: &str, channel: &ChannelName) -> usize {
        local_subscribers(&self.0, app_id, channel)
    }

    fn handle_control(&self, control: Control) {
        let Some(node) = self.0.upgrade() else { return };
        match control {
            Control::SendToUser {
                app_id,
                user_id,
                message,
            } => {
                for handle in node.sessions.user_sessions(&app_id, &user_id) {
                    Hub::send_direct(&handle, &message, &node.metrics);
                }
            }
            Control::SendToSocket {
                app_id,
                socket_id,
                message,
            } => {
                if let Some(handle) = node.sessions.get(socket_id)
                    && handle.app_id == app_id
                {
                    Hub::send_direct(&handle, &message, &node.metrics);
                }
            }
            Control::DisconnectUser {
                app_id,
                user_id,
                code,
            } => {
                for handle in node.sessions.user_sessions(&app_id, &user_id) {
                    handle.close(code);
                }
            }
        }
    }
}

fn local_subscribers(node: &Weak<Node>, app_id: &str, channel: &ChannelName) -> usize {
    node.upgrade()
        .and_then(|n| {
            n.apps
                .by_id(app_id)
                .map(|a| a.hub.subscriber_count(channel.as_str()))
        })
        .unwrap_or(0)
}

/// Announces what a dead node left behind: presence `left` events and webhooks. Holds the
/// node weakly, like [`Delivery`].
struct Departures(Weak<Node>);

impl OccupancyHandler for Departures {
    fn local_subscribers(&self, app_id: &str, channel: &ChannelName) -> usize {
        local_subscribers(&self.0, app_id, channel)
    }

    fn departed(&self, departures: Vec<Departure>) {
        let Some(node) = self.0.upgrade() else { return };
        tokio::spawn(async move {
            for departure in departures {
                match departure {
                    Departure::Vacated { app_id, channel } => {
                        if let Some(app) = node.apps.by_id(&app_id).cloned() {
                            node.emit_webhook(&app, WebhookEvent::ChannelVacated { channel });
                        }
                    }
                    Departure::Left {
                        app_id,
                        channel,
                        user_id,
                    } => {
                        let Some(app) = node.apps.by_id(&app_id).cloned() else {
                            continue;
                        };
                        node.emit_webhook(
                            &app,
                            WebhookEvent::MemberRemoved {
                                channel: channel.clone(),
                                user_id: user_id.clone(),
                            },
                        );
                        let payload = Payload::Left { user_id };
                        if let Err(e) = node.publish_payload(&app, &channel, payload, None).await {
                            warn!(error = %e, "cannot announce a departed member");
                        }
                    }
                }
            }
        });
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
            tasks: Mutex::new(Vec::new()),
        });
        node.broker
            .start(Arc::new(Delivery(Arc::downgrade(&node))))
            .map_err(|e| format!("cannot start the {} broker: {e}", node.broker.name()))?;
        node.occupancy
            .start(Arc::new(Departures(Arc::downgrade(&node))))
            .map_err(|e| format!("cannot start {} occupancy: {e}", node.occupancy.name()))?;
        let heartbeat = tokio::spawn(heartbeat::run(Arc::downgrade(&node)));
        node.tasks.lock().push(heartbeat);
        let weak = Arc::downgrade(&node);
        node.tasks.lock().push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
            loop {
                tick.tick().await;
                let Some(node) = weak.upgrade() else { return };
                node.history.sweep();
            }
        }));
        if node
            .apps
            .all()
            .iter()
            .any(|a| !a.settings.webhooks.is_empty())
        {
            let weak = Arc::downgrade(&node);
            node.tasks.lock().push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
                loop {
                    tick.tick().await;
                    let Some(node) = weak.upgrade() else { return };
                    node.webhooks
                        .release_due(node.clock.now_ms(), &node.metrics);
                }
            }));
        }
        Ok(node)
    }

    /// Admit a new connection: find the app, check origin, token and limits, register it.
    pub fn connect(self: &Arc<Self>, req: ConnectRequest<'_>) -> Result<Session, ConnectRefusal> {
        let refused = |r: ConnectRefusal| {
            Metrics::inc(&self.metrics.connections_rejected);
            Err(r)
        };
        if self.draining.load(Ordering::Acquire) {
            return refused(ConnectRefusal::new(
                ErrorCode::TooManyConnections,
                CloseCode::GoingAway,
                "server is shutting down",
            ));
        }
        let Some(app) = self.apps.by_key(req.app_key).cloned() else {
            return refused(ConnectRefusal::new(
                ErrorCode::UnknownApp,
                CloseCode::UnknownApp,
                format!("no app has the key {:?}", truncate(req.app_key, 64)),
            ));
        };
        if !app.settings.enabled {
            return refused(ConnectRefusal::new(
                ErrorCode::AppDisabled,
                CloseCode::AppDisabled,
                "app is disabled",
            ));
        }
        if let Some(origin) = req.origin
            && !app.allows_origin(origin)
        {
            return refused(ConnectRefusal::new(
                ErrorCode::OriginNotAllowed,
                CloseCode::OriginNotAllowed,
                format!("origin {:?} is not allowed", truncate(origin, 128)),
            ));
        }
        let identity = match req.token {
            Some(token) => match app.verifier.connection(token) {
                Ok(identity) => Some(Arc::new(identity)),
                Err(refusal) => {
                    let close = if refusal.code == ErrorCode::TokenExpired {
                        CloseCode::TokenExpired
                    } else {
                        CloseCode::Unauthorized
                    };
                    return refused(ConnectRefusal { refusal, close });
                }
            },
            None if app.settings.require_token => {
                return refused(ConnectRefusal::new(
                    ErrorCode::Unauthorized,
                    CloseCode::Unauthorized,
                    "this app requires a connection token",
                ));
            }
            None => None,
        };
        let admission = match Admission::acquire(self, &app, req.ip) {
            Ok(a) => a,
            Err(what) => {
                let close = if what == "app" {
                    CloseCode::AppOverQuota
                } else {
                    CloseCode::OverCapacity
                };
                return refused(ConnectRefusal::new(
                    ErrorCode::TooManyConnections,
                    close,
                    format!("{what} connection limit reached"),
                ));
            }
        };
        let limits = QueueLimits {
            max_bytes: self.limits.max_queue_bytes,
            max_items: self.limits.max_queue_messages,
        };
        let handle = loop {
            let handle = Arc::new(SessionHandle::new(
                self.ids.socket_id(),
                app.id.clone(),
                req.protocol,
                limits,
                self.clock.now_ms(),
            ));
            if let Some(user) = identity.as_ref().and_then(|i| i.user_id.clone()) {
                handle.set_user_id(user);
            }
            if self.sessions.insert(&handle) {
                break handle;
            }
        };
        self.sessions.index_user(&handle);
        self.metrics.connections.fetch_add(1, Ordering::Relaxed);
        Metrics::inc(&self.metrics.connections_accepted);
        Ok(Session::new(
            self.clone(),
            app,
            handle,
            identity,
            admission,
            req.transport_session,
        ))
    }

    /// Check a publish request against the app's limits without publishing it; returns
    /// the validated channel names. A batch validates every event before publishing any.
    pub fn validate_publish(
        &self,
        app: &App,
        req: &PublishRequest,
    ) -> Result<Vec<ChannelName>, Refusal> {
        let limits = &app.settings.limits;
        if req.channels.is_empty() {
            return Err(Refusal::new(ErrorCode::InvalidRequest, "no channel given"));
        }
        if req.channels.len() > limits.max_channels_per_publish {
            return Err(Refusal::new(
                ErrorCode::TooManyChannels,
                format!(
                    "a publish may name at most {} channels",
                    limits.max_channels_per_publish
                ),
            ));
        }
        check_event_name(&req.event)?;
        check_payload(app, &req.data)?;
        let mut channels: Vec<ChannelName> = Vec::with_capacity(req.channels.len());
        for c in &req.channels {
            let channel = ChannelName::new(c).map_err(|e| {
                Refusal::new(
                    ErrorCode::InvalidChannel,
                    format!("{}: {e}", truncate(c, 64)),
                )
            })?;
            // A channel named twice is published to once: a subscriber gets one copy of a
            // message id, and a publish costs what the rate limit counts.
            if !channels.contains(&channel) {
                channels.push(channel);
            }
        }
        Ok(channels)
    }

    /// Publish one event to one or more channels of `app`, through the broker.
    pub async fn publish(&self, app: &App, req: PublishRequest) -> Result<PublishReceipt, Refusal> {
        let channels = self.validate_publish(app, &req)?;
        self.publish_validated(app, channels, req).await
    }

    /// Publish a request already checked by [`Node::validate_publish`], which returned
    /// `channels` (a batch validates every event first, then publishes each this way).
    pub async fn publish_validated(
        &self,
        app: &App,
        channels: Vec<ChannelName>,
        req: PublishRequest,
    ) -> Result<PublishReceipt, Refusal> {
        let id: Arc<str> = Arc::from(self.ids.next().as_str());
        let limits = &app.settings.limits;
        if let Some(key) = &req.idempotency_key {
            match self.idempotency.claim(
                &app.id,
                key,
                &id,
                app.settings.idempotency_window,
                limits.max_idempotency_keys,
            ) {
                Claim::New => {}
                Claim::Duplicate(receipt) => {
                    Metrics::inc(&self.metrics.publishes_deduplicated);
                    return Ok(PublishReceipt {
                        duplicate: true,
                        ..(*receipt).clone()
                    });
                }
                Claim::InFlight(first) => {
                    Metrics::inc(&self.metrics.publishes_deduplicated);
                    return Ok(PublishReceipt {
                        id: first,
                        channels: Vec::new(),
                        duplicate: true,
                    });
                }
            }
        }
        let result = self.publish_channels(app, &id, channels, &req).await;
        if let Some(key) = &req.idempotency_key {
            match &result {
                Ok(receipt) => {
                    self.idempotency
                        .complete(&app.id, key, Arc::new(receipt.clone()));
                }
                Err(_) => self.idempotency.release(&app.id, key),
            }
        }
        result
    }

    async fn publish_channels(
        &self,
        app: &App,
        id: &Arc<str>,
        channels: Vec<ChannelName>,
        req: &PublishRequest,
    ) -> Result<PublishReceipt, Refusal> {
        let event: Arc<str> = Arc::from(req.event.as_str());
        let timestamp = unix_ms();
        let limits = &app.settings.limits;
        let mut published = Vec::with_capacity(channels.len());
        for channel in channels {
            let payload = Payload::Event {
                event: event.clone(),
                data: req.data.clone(),
                user_id: None,
            };
            let publication = Publication::new(
                app.id.clone(),
                channel.clone(),
                id.clone(),
                payload,
                req.exclude,
                timestamp,
            );
            let policy = app.history_policy(channel.as_str());
            let (position, unchanged) = match self.publish_publication(publication, policy).await? {
                Published::Sent(publication) => {
                    let position = publication.position.clone();
                    if channel.kind().cache {
                        self.cache
                            .store(publication, limits.cache_ttl, limits.max_cached_channels);
                    }
                    (position, false)
                }
                Published::Unchanged(position) => {
                    Metrics::inc(&self.metrics.publishes_unchanged);
                    (Some(position), true)
                }
            };
            published.push(PublishedChannel {
                name: channel,
                position,
                unchanged,
            });
        }
        Ok(PublishReceipt {
            id: id.clone(),
            channels: published,
            duplicate: false,
        })
    }

    /// Hand one publication to the broker (appending it to history under `policy`) and
    /// count it.
    pub(crate) async fn publish_publication(
        &self,
        publication: Publication,
        policy: Option<&crate::history::HistoryPolicy>,
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
        // Presence changes and client events are not kept in history.
        self.publish_publication(publication, None).await?;
        Ok(())
    }

    /// Send an event to every connection of `user_id`, on every node.
    pub async fn send_to_user(
        &self,
        app: &App,
        user_id: &str,
        event: &str,
        data: EventData,
    ) -> Result<Arc<str>, Refusal> {
        let message = self.direct_message(app, event, data, Some(Arc::from(user_id)))?;
        let id = message.id.clone();
        self.control(Control::SendToUser {
            app_id: app.id.clone(),
            user_id: Arc::from(user_id),
            message,
        })
        .await?;
        Ok(id)
    }

    /// Send an event to one connection, wherever it is.
    pub async fn send_to_socket(
        &self,
        app: &App,
        socket_id: SocketId,
        event: &str,
        data: EventData,
    ) -> Result<Arc<str>, Refusal> {
        let message = self.direct_message(app, event, data, None)?;
        let id = message.id.clone();
        self.control(Control::SendToSocket {
            app_id: app.id.clone(),
            socket_id,
            message,
        })
        .await?;
        Ok(id)
    }

    /// Close every connection of `user_id`, on every node, with `code`.
    pub async fn disconnect_user(
        &self,
        app: &App,
        user_id: &str,
        code: CloseCode,
    ) -> Result<(), Refusal> {
        self.control(Control::DisconnectUser {
            app_id: app.id.clone(),
            user_id: Arc::from(user_id),
            code,
        })
        .await
    }

    fn direct_message(
        &self,
        app: &App,
        event: &str,
        data: EventData,
        user: Option<Arc<str>>,
    ) -> Result<Arc<DirectMessage>, Refusal> {
        check_event_name(event)?;
        check_payload(app, &data)?;
        Ok(Arc::new(DirectMessage::new(
            Arc::from(self.ids.next().as_str()),
            Arc::from(event),
            data,
            user,
            unix_ms(),
        )))
    }

    /// Report a webhook event for `app`, if the app has webhooks.
    pub fn emit_webhook(&self, app: &App, event: WebhookEvent) {
        if app.settings.webhooks.is_empty() {
            return;
        }
        let delay = app.settings.webhook_delay.as_millis() as u64;
        self.webhooks
            .emit(&app.id, event, self.clock.now_ms(), delay, &self.metrics);
    }

    async fn control(&self, control: Control) -> Result<(), Refusal> {
        self.broker.control(control).await.map_err(|e| {
            warn!(error = %e, "control message failed");
            Refusal::new(
                ErrorCode::Internal,
                "the broker is unavailable; retry later",
            )
        })
    }

    /// Channels of `app` with subscribers (in the whole cluster), whose name starts with
    /// `prefix`.
    pub async fn channels(&self, app: &App, prefix: &str) -> Result<Vec<ChannelInfo>, Refusal> {
        let listed = match self.occupancy.channels(&app.id, prefix).await {
            Ok(Some(cluster)) => cluster,
            Ok(None) => app.hub.channels(prefix),
            Err(e) => {
                warn!(error = %e, "channel listing failed");
                return Err(Refusal::new(
                    ErrorCode::Internal,
                    "cluster state is unavailable; retry later",
                ));
            }
        };
        let mut out = Vec::new();
        for (name, subscribers) in listed {
            let presence_members = if name.kind().is_presence() {
                self.presence.count(&app.id, &name).await.ok()
            } else {
                None
            };
            out.push(ChannelInfo {
                name,
                subscribers,
                presence_members,
            });
        }
        Ok(out)
    }

    /// One channel's subscriber count and presence member count.
    pub async fn channel_info(
        &self,
        app: &App,
        channel: &ChannelName,
    ) -> Result<ChannelInfo, Refusal> {
        let presence_members = if channel.kind().is_presence() {
            Some(self.presence.count(&app.id, channel).await.map_err(|e| {
                warn!(error = %e, "presence count failed");
                Refusal::plain(ErrorCode::Internal)
            })?)
        } else {
            None
        };
        let subscribers = match self.occupancy.subscriber_count(&app.id, channel).await {
            Ok(Some(n)) => n,
            Ok(None) => app.hub.subscriber_count(channel.as_str()),
            Err(e) => {
                warn!(error = %e, "subscriber count failed");
                return Err(Refusal::new(
                    ErrorCode::Internal,
                    "cluster state is unavailable; retry later",
                ));
            }
        };
        Ok(ChannelInfo {
            name: channel.clone(),
            subscribers,
            presence_members,
        })
    }

    /// The members of a presence channel.
    pub async fn presence_members(
        &self,
        app: &App,
        channel: &ChannelName,
    ) -> Result<Vec<Member>, Refusal> {
        if !channel.kind().is_presence() {
            return Err(Refusal::new(
                ErrorCode::InvalidChannel,
                "not a presence channel (the name must start with presence-)",
            ));
        }
        self.presence.members(&app.id, channel).await.map_err(|e| {
            warn!(error = %e, "presence members failed");
            Refusal::plain(ErrorCode::Internal)
        })
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
            draining: self.draining.load(Ordering::Relaxed),
        }
    }

    /// Whether the node can take traffic: not draining and the broker healthy.
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

    /// Start shutting down: refuse new connections and ask every connection to flush and
    /// close with `code` (1001, "going away, reconnect"). Returns how many were asked.
    pub fn drain(&self, code: CloseCode) -> usize {
        self.draining.store(true, Ordering::Release);
        let mut n = 0;
        self.sessions.for_each(|h| {
            h.close(code);
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

/// Holds one connection's place in the node, app and per-IP counts; releases it on drop.
#[derive(Debug)]
pub(crate) struct Admission {
    node: Weak<Node>,
    app: Arc<App>,
    ip: IpAddr,
}

impl Admission {
    /// Count a connection against every limit, or say which limit it hit.
    fn acquire(node: &Arc<Node>, app: &Arc<App>, ip: IpAddr) -> Result<Self, &'static str> {
        let prev = node.connections.fetch_add(1, Ordering::AcqRel);
        if prev >= node.limits.max_connections {
            node.connections.fetch_sub(1, Ordering::AcqRel);
            return Err("node");
        }
        if !app.try_add_connection() {
            node.connections.fetch_sub(1, Ordering::AcqRel);
            return Err("app");
        }
        let per_ip = node.limits.max_connections_per_ip;
        {
            let mut ips = node.per_ip.lock();
            let count = ips.entry(ip).or_insert(0);
            if per_ip > 0 && *count >= per_ip {
                if *count == 0 {
                    ips.remove(&ip);
                }
                drop(ips);
                app.remove_connection();
                node.connections.fetch_sub(1, Ordering::AcqRel);
                return Err("per-IP");
            }
            *count += 1;
        }
        Ok(Self {
            node: Arc::downgrade(node),
            app: app.clone(),
            ip,
        })
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.app.remove_connection();
        if let Some(node) = self.node.upgrade() {
            node.connections.fetch_sub(1, Ordering::AcqRel);
            let mut ips = node.per_ip.lock();
            if let Some(count) = ips.get_mut(&self.ip) {
                *count -= 1;
                if *count == 0 {
                    ips.remove(&self.ip);
                }
            }
        }
    }
}

fn check_event_name(event: &str) -> Result<(), Refusal> {
    if event.is_empty() || event.len() > MAX_EVENT_NAME_LEN {
        return Err(Refusal::new(
            ErrorCode::InvalidEventName,
            format!("event name must be 1 to {MAX_EVENT_NAME_LEN} bytes"),
        ));
    }
    Ok(())
}

pub(crate) fn check_payload(app: &App, data: &EventData) -> Result<(), Refusal> {
    let max = app.settings.limits.max_payload_bytes;
    if data.len() > max {
        return Err(Refusal::new(
            ErrorCode::PayloadTooLarge,
            format!("data is {} bytes; the limit is {max}", data.len()),
        ));
    }
    Ok(())
}

/// At most `max` bytes of `s`, cut at a character boundary (for echoing input in errors).
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
