//! [`Session`]: one client connection's state and the operations it can perform,
//! independent of transport and protocol.
//!
//! A transport (WebSocket, SSE, long-polling) owns exactly one `Session` per connection. It
//! hands every received text message to [`Session::handle_text`], writes whatever appears in
//! the session's outbound queue ([`Session::handle`]), and calls [`Session::close`] when the
//! connection ends. It never interprets messages itself. The protocol adapters (the
//! [`native`] and [`pusher`] submodules) parse requests, call the operations below and
//! encode the replies; both protocols share every operation, so a native and a Pusher
//! client on the same channel see the same publications and the same presence.
//!
//! Operations return `Result<_, Refusal>`; a refusal becomes an error reply and the
//! connection stays open. Only `handle_text` can ask for the connection to be closed.

mod native;
mod pusher;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use herald_protocol::native::StreamPosition;
use herald_protocol::{ChannelName, CloseCode, ErrorCode, SocketId};
use tracing::{debug, warn};

use crate::app::App;
use crate::auth::{Identity, authorize_channel};
use crate::history::HistoryQuery;
use crate::metrics::Metrics;
use crate::node::{Admission, Node, check_payload, truncate};
use crate::outbound::SessionHandle;
use crate::presence::JoinOutcome;
use crate::publication::{EventData, Member, Payload, Publication};
use crate::ratelimit::{Rate, TokenBucket};
use crate::raw_json::RawJson;
use crate::recovery::{Gate, Recovery};
use crate::refusal::Refusal;
use crate::webhook::WebhookEvent;
use crate::wire::Protocol;

/// Above this many local subscribers a channel no longer gets subscription-count events
/// (Pusher's own rule for the feature).
const SUBSCRIPTION_COUNT_MAX: usize = 100;

/// One channel subscription of a session.
#[derive(Debug)]
struct Subscription {
    /// The channel.
    channel: ChannelName,
    /// On presence channels: the user this connection is present as.
    presence_user: Option<Arc<str>>,
    /// False for a Pusher `#server-to-user-<id>` subscription, which is served from the
    /// user index rather than the hub.
    in_hub: bool,
}

/// How a subscription is authorised.
#[derive(Debug, Clone, Copy)]
pub enum ChannelAuth<'a> {
    /// Native protocol: the connection token, or this subscription token.
    Token(Option<&'a str>),
    /// Pusher protocol: `key:signature`, and for presence channels the signed
    /// `channel_data`.
    Pusher {
        /// The `auth` field.
        auth: Option<&'a str>,
        /// The `channel_data` field.
        channel_data: Option<&'a str>,
    },
}

/// A successful subscribe.
#[derive(Debug)]
pub struct SubscribeOk {
    /// The channel, validated.
    pub channel: ChannelName,
    /// On presence channels: the members present right after joining (this user included).
    pub members: Option<Vec<Member>>,
    /// On cache channels: the cached last event, or `None` for a cache miss.
    pub cached: Option<Option<Arc<Publication>>>,
    /// On channels with history: the stream position, and the recovery result and replay
    /// when the client asked to recover.
    pub recovery: Option<Recovery>,
    /// On channels with history: holds live publications until the protocol adapter has
    /// queued the reply and the replay, then calls [`Session::open_gate`].
    gate: Option<Arc<Gate>>,
}

/// A connection's state.
pub struct Session {
    /// The node, for the broker, presence and metrics.
    node: Arc<Node>,
    /// The app the connection belongs to.
    app: Arc<App>,
    /// The connection's id and outbound queue, shared with the hub and registry.
    handle: Arc<SessionHandle>,
    /// Who the connection is, from its connection token (native protocol).
    identity: Option<Arc<Identity>>,
    /// Current subscriptions. A short vector: the per-connection limit is small, and a linear
    /// scan beats a map at that size in both time and memory.
    subscriptions: Vec<Subscription>,
    /// Rate limit for client events.
    client_events: TokenBucket,
    /// Rate limit for all inbound messages.
    inbound: TokenBucket,
    /// The connection's place in the connection limits, released when the session ends.
    admission: Option<Admission>,
    /// Most publications, and bytes of them, one recovery may queue: half the outbound
    /// queue by default, so a replay never overflows it by itself (a larger gap is
    /// `recovered: false`, `too_many`). Transports with a smaller buffer lower it.
    recovery_budget: (u32, u32),
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("socket_id", &self.handle.socket_id)
            .field("app", &self.app.id)
            .field("protocol", &self.handle.protocol)
            .field("subscriptions", &self.subscriptions.len())
            .finish()
    }
}

impl Session {
    pub(crate) fn new(
        node: Arc<Node>,
        app: Arc<App>,
        handle: Arc<SessionHandle>,
        identity: Option<Arc<Identity>>,
        admission: Admission,
        transport_session: Option<&str>,
    ) -> Self {
        let inbound_rate = node.limits.max_client_messages_per_second;
        let half = node_limits_half(&node);
        let recovery_budget = (
            u32::try_from(half.0).unwrap_or(u32::MAX),
            u32::try_from(half.1).unwrap_or(u32::MAX),
        );
        let session = Self {
            client_events: TokenBucket::new(Rate::per_second(
                app.settings.limits.client_event_rate,
            )),
            inbound: TokenBucket::new(Rate {
                per_second: f64::from(inbound_rate),
                burst: f64::from(inbound_rate) * 2.0,
            }),
            node,
            app,
            handle,
            identity,
            subscriptions: Vec::new(),
            admission: Some(admission),
            recovery_budget,
        };
        let hello = match session.handle.protocol {
            Protocol::Native => native::connected(&session, transport_session),
            Protocol::Pusher => pusher::connected(&session),
        };
        session.push(hello);
        session
    }

    /// The connection's shared handle (its outbound queue).
    pub fn handle(&self) -> &Arc<SessionHandle> {
        &self.handle
    }

    /// The connection's socket id.
    pub fn socket_id(&self) -> SocketId {
        self.handle.socket_id
    }

    /// The node this session belongs to.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// The app this session belongs to.
    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Lower the recovery budget to at most `messages` publications and `bytes` bytes (for
    /// transports whose buffer is smaller than the outbound queue).
    pub fn limit_recovery(&mut self, messages: usize, bytes: usize) {
        let (m, b) = self.recovery_budget;
        self.recovery_budget = (
            m.min(u32::try_from(messages).unwrap_or(u32::MAX)),
            b.min(u32::try_from(bytes).unwrap_or(u32::MAX)),
        );
    }

    /// The channels this session is subscribed to (not counting Pusher user channels).
    pub fn channels(&self) -> Vec<ChannelName> {
        self.subscriptions
            .iter()
            .filter(|s| s.in_hub)
            .map(|s| s.channel.clone())
            .collect()
    }

    /// Handle one text message from the client. Replies (and errors) are queued on the
    /// handle; `Err` means the connection must be closed with that code.
    pub async fn handle_text(&mut self, text: &[u8]) -> Result<(), CloseCode> {
        self.handle.touch(self.node.clock.now_ms());
        Metrics::inc(&self.node.metrics.messages_received);
        if !self.inbound.try_take() {
            debug!(socket_id = %self.handle.socket_id, "inbound message rate exceeded");
            return Err(CloseCode::TooManyRequests);
        }
        match self.handle.protocol {
            Protocol::Native => native::handle(self, text).await,
            Protocol::Pusher => pusher::handle(self, text).await,
        }
    }

    /// Record client activity that is not a message (a transport-level pong, say).
    pub fn touch(&self) {
        self.handle.touch(self.node.clock.now_ms());
    }

    /// The encoded protocol-level heartbeat for this connection.
    pub fn encode_ping(&self) -> Bytes {
        match self.handle.protocol {
            Protocol::Native => native::ping(self),
            Protocol::Pusher => pusher::ping(),
        }
    }

    /// Queue an encoded message (a reply) for this connection.
    fn push(&self, bytes: Vec<u8>) {
        self.handle
            .push_message(Bytes::from(bytes), None, &self.node.metrics);
    }

    /// Let live publications through to a subscription made by [`Session::subscribe`], after
    /// the reply and the replay have been queued. Returns `false` when live publications
    /// were lost while the replay was prepared: the connection must then be closed with
    /// [`CloseCode::Reconnect`] so the client recovers again from the position it has.
    pub fn open_gate(&self, ok: &SubscribeOk) -> bool {
        let Some(gate) = &ok.gate else {
            return true;
        };
        let seam = ok.recovery.as_ref().map_or(0, Recovery::seam);
        gate.open(seam, &self.handle, &self.node.metrics)
    }

    /// Subscribe to `name`, authorised according to `auth`, recovering from `since` when the
    /// channel keeps history.
    pub async fn subscribe(
        &mut self,
        name: &str,
        auth: ChannelAuth<'_>,
        since: Option<&StreamPosition>,
    ) -> Result<SubscribeOk, Refusal> {
        if let ChannelAuth::Pusher { .. } = auth
            && let Some(user) = herald_protocol::pusher::server_to_user_id(name)
        {
            return self.subscribe_server_to_user(name, user);
        }
        let channel = ChannelName::new(name).map_err(|e| {
            Refusal::new(
                ErrorCode::InvalidChannel,
                format!("{:?}: {e}", truncate(name, 64)),
            )
        })?;
        if self.subscriptions.iter().any(|s| s.channel == channel) {
            return Err(Refusal::plain(ErrorCode::AlreadySubscribed));
        }
        let max = self.app.settings.limits.max_subscriptions_per_connection as usize;
        if self.subscriptions.len() >= max {
            return Err(Refusal::new(
                ErrorCode::TooManySubscriptions,
                format!("a connection may hold at most {max} subscriptions"),
            ));
        }
        let access = match auth {
            ChannelAuth::Token(token) => authorize_channel(
                &self.app.settings,
                &self.app.verifier,
                self.identity.as_deref(),
                &channel,
                token,
            )?,
            ChannelAuth::Pusher { auth, channel_data } => crate::pusher_auth::authorize_channel(
                &self.app.settings,
                self.handle.socket_id,
                &channel,
                auth,
                channel_data,
            )?,
        };
        let node = self.node.clone();
        let app = self.app.clone();
        let socket = self.handle.socket_id;
        if channel.kind().is_protected() {
            self.handle.mark_authorized();
        }

        let mut joined = None;
        let mut presence_user = None;
        if channel.kind().is_presence() {
            let user_id = access
                .user_id
                .clone()
                .ok_or_else(|| Refusal::plain(ErrorCode::Unauthorized))?;
            let info = access.info.clone().unwrap_or_else(RawJson::null);
            let max_info = app.settings.limits.max_user_info_bytes;
            if info.len() > max_info {
                return Err(Refusal::new(
                    ErrorCode::PayloadTooLarge,
                    format!(
                        "presence info is {} bytes; the limit is {max_info}",
                        info.len()
                    ),
                ));
            }
            let member = Member { user_id, info };
            let outcome = node
                .presence
                .join(
                    &app.id,
                    &channel,
                    socket,
                    &member,
                    app.settings.limits.max_presence_members,
                )
                .await
                .map_err(|e| {
                    warn!(error = %e, "presence join failed");
                    Refusal::new(ErrorCode::Internal, "presence is unavailable; retry later")
                })?;
            match outcome {
                JoinOutcome::Full => {
                    return Err(Refusal::new(
                        ErrorCode::PresenceFull,
                        format!(
                            "presence channel has its maximum of {} members",
                            app.settings.limits.max_presence_members
                        ),
                    ));
                }
                JoinOutcome::FirstConnection => joined = Some(member.clone()),
                JoinOutcome::AnotherConnection => {}
            }
            presence_user = Some(member.user_id);
        }

        let policy = app.history_policy(channel.as_str()).cloned();
        let gate = policy
            .as_ref()
            .map(|_| Arc::new(Gate::new(node.limits.max_queue_messages)));
        let added = app
            .hub
            .subscribe(&channel, self.handle.clone(), gate.clone(), &node.metrics);
        if added.first_on_node {
            if let Err(e) = node.broker.subscribe(&app.id, &channel).await {
                warn!(error = %e, channel = %channel, "broker subscribe failed");
                let sub = Subscription {
                    channel,
                    presence_user,
                    in_hub: true,
                };
                release_subscription(&node, &app, socket, sub).await;
                return Err(Refusal::new(
                    ErrorCode::Internal,
                    "the broker is unavailable; retry later",
                ));
            }
            match node.occupancy.occupy(&app.id, &channel).await {
                Ok(true) => node.emit_webhook(
                    &app,
                    WebhookEvent::ChannelOccupied {
                        channel: channel.clone(),
                    },
                ),
                Ok(false) => {}
                Err(e) => warn!(error = %e, channel = %channel, "occupancy update failed"),
            }
        }
        {
            node.occupancy.local_count(
                &app.id,
                &channel,
                app.hub.subscriber_count(channel.as_str()),
            );
        }
        // History is read after joining the hub: see `recovery.rs` for why.
        let recovery = match &policy {
            Some(policy) => {
                let max = app
                    .settings
                    .limits
                    .max_recovery_publications
                    .min(self.recovery_budget.0 as usize);
                let query = HistoryQuery {
                    after_offset: since.map(|s| s.offset),
                    limit: if since.is_some() { max } else { 0 },
                    ..HistoryQuery::default()
                };
                match node
                    .history
                    .read(&app.id, &channel, &query, Some(policy))
                    .await
                {
                    Ok(page) => {
                        let mut recovery = Recovery::decide(since, page, max);
                        let protocol = self.handle.protocol;
                        let bytes: usize = recovery
                            .replay
                            .iter()
                            .filter_map(|p| p.encoded(protocol).map(|b| b.len()))
                            .sum();
                        if bytes > self.recovery_budget.1 as usize {
                            recovery.too_many();
                        }
                        Some(recovery)
                    }
                    Err(e) => {
                        warn!(error = %e, channel = %channel, "history read failed");
                        let sub = Subscription {
                            channel,
                            presence_user,
                            in_hub: true,
                        };
                        release_subscription(&node, &app, socket, sub).await;
                        return Err(Refusal::new(
                            ErrorCode::Internal,
                            "history is unavailable; retry later",
                        ));
                    }
                }
            }
            None => None,
        };
        if let Some(outcome) = recovery.as_ref().and_then(|r| r.outcome) {
            match outcome {
                Ok(()) => {
                    Metrics::inc(&node.metrics.recoveries_succeeded);
                    let n = recovery.as_ref().map_or(0, |r| r.replay.len());
                    node.metrics
                        .recovered_publications
                        .fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(_) => Metrics::inc(&node.metrics.recoveries_failed),
            }
        }
        self.subscriptions.push(Subscription {
            channel: channel.clone(),
            presence_user: presence_user.clone(),
            in_hub: true,
        });

        let members = if presence_user.is_some() {
            Some(
                node.presence
                    .members(&app.id, &channel)
                    .await
                    .unwrap_or_default(),
            )
        } else {
            None
        };
        if let Some(member) = joined {
            node.emit_webhook(
                &app,
                WebhookEvent::MemberAdded {
                    channel: channel.clone(),
                    user_id: member.user_id.clone(),
                },
            );
            if let Err(e) = node
                .publish_payload(&app, &channel, Payload::Joined(member), Some(socket))
                .await
            {
                warn!(error = %e, "cannot announce presence join");
            }
        }
        announce_subscription_count(&node, &app, &channel).await;
        let cached = if channel.kind().cache {
            let hit = node.cache.get(&app.id, &channel).map(|(p, _)| p);
            if hit.is_none() {
                node.emit_webhook(
                    &app,
                    WebhookEvent::CacheMiss {
                        channel: channel.clone(),
                    },
                );
            }
            Some(hit)
        } else {
            None
        };
        Ok(SubscribeOk {
            channel,
            members,
            cached,
            recovery,
            gate,
        })
    }

    /// A Pusher `#server-to-user-<id>` subscription: allowed only to a connection signed in
    /// as that user. Delivery to it goes through the user index, not the hub.
    fn subscribe_server_to_user(&mut self, name: &str, user: &str) -> Result<SubscribeOk, Refusal> {
        if self.handle.user_id().map(|u| &**u) != Some(user) {
            return Err(Refusal::new(
                ErrorCode::ChannelNotAllowed,
                "sign in as this user before subscribing to its channel",
            ));
        }
        let channel = ChannelName::internal(name);
        if !self.subscriptions.iter().any(|s| s.channel == channel) {
            self.subscriptions.push(Subscription {
                channel: channel.clone(),
                presence_user: None,
                in_hub: false,
            });
        }
        Ok(SubscribeOk {
            channel,
            members: None,
            cached: None,
            recovery: None,
            gate: None,
        })
    }

    /// Unsubscribe from `name`.
    pub async fn unsubscribe(&mut self, name: &str) -> Result<ChannelName, Refusal> {
        let Some(i) = self
            .subscriptions
            .iter()
            .position(|s| s.channel.as_str() == name)
        else {
            return Err(Refusal::plain(ErrorCode::NotSubscribed));
        };
        let sub = self.subscriptions.swap_remove(i);
        let channel = sub.channel.clone();
        release_subscription(&self.node, &self.app, self.handle.socket_id, sub).await;
        Ok(channel)
    }

    /// Sign in (Pusher user authentication): verify the signature over `user_data`, and
    /// associate the connection with its user id. Returns the user id.
    pub fn signin(&mut self, auth: &str, user_data: &str) -> Result<Arc<str>, Refusal> {
        let user = crate::pusher_auth::verify_signin(
            &self.app.settings,
            self.handle.socket_id,
            auth,
            user_data,
        )?;
        let first = self.handle.user_id().is_none();
        if !self.handle.set_user_id(user.clone()) {
            return Err(Refusal::new(
                ErrorCode::InvalidRequest,
                "this connection is already signed in as another user",
            ));
        }
        if first {
            self.node.sessions.index_user(&self.handle);
        }
        self.handle.mark_authorized();
        Ok(user)
    }

    /// Send a client event to the other subscribers of a private or presence channel.
    pub async fn client_event(
        &mut self,
        channel: &str,
        event: &str,
        data: EventData,
    ) -> Result<(), Refusal> {
        if !self.app.settings.client_events {
            return Err(Refusal::new(
                ErrorCode::ClientEventsDisabled,
                "client events are disabled for this app",
            ));
        }
        if !event.starts_with("client-") || event.len() > crate::node::MAX_EVENT_NAME_LEN {
            return Err(Refusal::new(
                ErrorCode::InvalidEventName,
                "client event names must start with client- and be at most 200 bytes",
            ));
        }
        let Some(sub) = self
            .subscriptions
            .iter()
            .find(|s| s.channel.as_str() == channel && s.in_hub)
        else {
            return Err(Refusal::new(
                ErrorCode::NotSubscribed,
                "subscribe to the channel before sending client events on it",
            ));
        };
        if !sub.channel.kind().is_protected() {
            return Err(Refusal::new(
                ErrorCode::ClientEventsDisabled,
                "client events are only allowed on private and presence channels",
            ));
        }
        // As in Pusher: the server could not tell an encrypted payload from a plain one.
        if sub.channel.kind().access == herald_protocol::channel::Access::PrivateEncrypted {
            return Err(Refusal::new(
                ErrorCode::ClientEventsDisabled,
                "client events are not supported on private-encrypted channels",
            ));
        }
        check_payload(&self.app, &data)?;
        if !self.client_events.try_take() {
            return Err(Refusal::new(
                ErrorCode::RateLimited,
                format!(
                    "client event rate limit of {}/s exceeded",
                    self.app.settings.limits.client_event_rate
                ),
            ));
        }
        let user_id = sub
            .presence_user
            .clone()
            .or_else(|| self.handle.user_id().cloned());
        let channel = sub.channel.clone();
        let event: Arc<str> = Arc::from(event);
        self.node.emit_webhook(
            &self.app,
            WebhookEvent::ClientEvent {
                channel: channel.clone(),
                event: event.clone(),
                data: data.clone(),
                socket_id: self.handle.socket_id,
                user_id: sub.presence_user.clone(),
            },
        );
        let payload = Payload::Event {
            event,
            data,
            user_id,
        };
        self.node
            .publish_payload(&self.app, &channel, payload, Some(self.handle.socket_id))
            .await
    }

    /// End the session: leave every channel (announcing presence leaves), unregister, and
    /// release the connection's place in the limits. Always call this when the transport
    /// ends; dropping a session without it spawns the same cleanup.
    pub async fn close(mut self) {
        let parts = self.take_parts();
        if let Some(parts) = parts {
            parts.release().await;
        }
    }

    fn take_parts(&mut self) -> Option<Released> {
        let admission = self.admission.take()?;
        Some(Released {
            node: self.node.clone(),
            app: self.app.clone(),
            handle: self.handle.clone(),
            subscriptions: std::mem::take(&mut self.subscriptions),
            admission,
        })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(parts) = self.take_parts()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(parts.release());
        }
    }
}

/// What a closing session hands over for cleanup.
struct Released {
    node: Arc<Node>,
    app: Arc<App>,
    handle: Arc<SessionHandle>,
    subscriptions: Vec<Subscription>,
    admission: Admission,
}

impl Released {
    async fn release(self) {
        let socket = self.handle.socket_id;
        for sub in self.subscriptions {
            release_subscription(&self.node, &self.app, socket, sub).await;
        }
        self.node.sessions.remove(&self.handle);
        self.node
            .metrics
            .connections
            .fetch_sub(1, Ordering::Relaxed);
        drop(self.admission);
    }
}

/// Leave one channel: hub, broker interest, presence (announcing the user's last leave),
/// webhooks and subscription counts.
async fn release_subscription(node: &Node, app: &App, socket: SocketId, sub: Subscription) {
    if !sub.in_hub {
        return;
    }
    let removed = app.hub.unsubscribe(&sub.channel, socket, &node.metrics);
    if removed.last_on_node {
        if let Err(e) = node.broker.unsubscribe(&app.id, &sub.channel).await {
            warn!(error = %e, channel = %sub.channel, "broker unsubscribe failed");
        }
        match node.occupancy.vacate(&app.id, &sub.channel).await {
            Ok(true) => node.emit_webhook(
                app,
                WebhookEvent::ChannelVacated {
                    channel: sub.channel.clone(),
                },
            ),
            Ok(false) => {}
            Err(e) => warn!(error = %e, channel = %sub.channel, "occupancy update failed"),
        }
    } else if removed.removed {
        node.occupancy.local_count(
            &app.id,
            &sub.channel,
            app.hub.subscriber_count(sub.channel.as_str()),
        );
    }
    if let Some(user_id) = sub.presence_user {
        match node
            .presence
            .leave(&app.id, &sub.channel, socket, &user_id)
            .await
        {
            Ok(outcome) if outcome.last_connection => {
                node.emit_webhook(
                    app,
                    WebhookEvent::MemberRemoved {
                        channel: sub.channel.clone(),
                        user_id: user_id.clone(),
                    },
                );
                let payload = Payload::Left { user_id };
                if let Err(e) = node.publish_payload(app, &sub.channel, payload, None).await {
                    warn!(error = %e, "cannot announce presence leave");
                }
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "presence leave failed"),
        }
    } else if removed.removed {
        announce_subscription_count(node, app, &sub.channel).await;
    }
}

/// Tell a channel's Pusher subscribers its new subscriber count, if the app enables it.
async fn announce_subscription_count(node: &Node, app: &App, channel: &ChannelName) {
    if !app.settings.subscription_count || channel.kind().is_presence() {
        return;
    }
    let count = app.hub.subscriber_count(channel.as_str());
    if count == 0 || count > SUBSCRIPTION_COUNT_MAX {
        return;
    }
    if let Err(e) = node
        .publish_payload(app, channel, Payload::SubscriptionCount(count), None)
        .await
    {
        warn!(error = %e, "cannot announce the subscription count");
    }
}

/// Half of the node's outbound queue limits (messages, bytes): the default recovery budget.
fn node_limits_half(node: &Node) -> (usize, usize) {
    (
        node.limits.max_queue_messages / 2,
        node.limits.max_queue_bytes / 2,
    )
}
