//! [`Session`]: one client connection's state, independent of transport and protocol.
//!
//! A transport (WebSocket, SSE, long-polling) owns exactly one `Session` per connection. It
//! hands every received text message to [`Session::handle_text`], writes whatever appears in
//! the session's outbound queue ([`Session::handle`]), and calls [`Session::close`] when the
//! connection ends. It never interprets messages itself. The protocol adapters (the
//! [`native`] and [`pusher`] submodules) parse requests, call the operations in
//! [`crate::cmd`] (subscribe, unsubscribe, client events, sign-in) and encode the replies;
//! both protocols share every operation, so a native and a Pusher client on the same channel
//! see the same publications and the same presence.
//!
//! Operations return `Result<_, Refusal>`; a refusal becomes an error reply and the
//! connection stays open. Only `handle_text` can ask for the connection to be closed.

mod native;
mod pusher;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use herald_protocol::{ChannelName, CloseCode, SocketId};
use tracing::debug;

use crate::app::App;
use crate::auth::Identity;
use crate::cmd::connect::Admission;
use crate::cmd::subscribe::SubscribeOk;
use crate::metrics::Metrics;
use crate::node::Node;
use crate::outbound::SessionHandle;
use crate::ratelimit::{Rate, TokenBucket};
use crate::recovery::Recovery;
use crate::webhook::{ConnectionRecord, WebhookEvent};
use crate::wire::Protocol;

pub use crate::cmd::subscribe::ChannelAuth;

/// One channel subscription of a session.
#[derive(Debug)]
pub(crate) struct Subscription {
    /// The channel.
    pub(crate) channel: ChannelName,
    /// On presence channels: the user this connection is present as.
    pub(crate) presence_user: Option<Arc<str>>,
    /// False for a Pusher `#server-to-user-<id>` subscription, which is served from the
    /// user index rather than the hub.
    pub(crate) in_hub: bool,
}

/// What only some connections carry.
#[derive(Debug, Default)]
pub(crate) struct SessionExtras {
    /// What the connection brought for the app's subscribe proxy, when the app has one.
    pub(crate) backend_context: Option<Arc<crate::backend::BackendContext>>,
    /// The connection as the lifecycle webhooks report it, when the app wants them.
    pub(crate) lifecycle: Option<Arc<ConnectionRecord>>,
}

/// A connection's state.
pub struct Session {
    /// The node, for the broker, presence and metrics.
    pub(crate) node: Arc<Node>,
    /// The app the connection belongs to.
    pub(crate) app: Arc<App>,
    /// The connection's id and outbound queue, shared with the hub and registry.
    pub(crate) handle: Arc<SessionHandle>,
    /// Who the connection is, from its connection token (native protocol).
    pub(crate) identity: Option<Arc<Identity>>,
    /// Current subscriptions. A short vector: the per-connection limit is small, and a linear
    /// scan beats a map at that size in both time and memory.
    pub(crate) subscriptions: Vec<Subscription>,
    /// Rate limit for client events.
    pub(crate) client_events: TokenBucket,
    /// Rate limit for all inbound messages.
    inbound: TokenBucket,
    /// The connection's place in the connection limits, released when the session ends.
    admission: Option<Admission>,
    /// What only some apps' connections carry (a subscribe proxy's context, a lifecycle
    /// record), boxed so that other connections pay one pointer for it.
    pub(crate) extras: Option<Box<SessionExtras>>,
    /// Most publications, and bytes of them, one recovery may queue: half the outbound
    /// queue by default, so a replay never overflows it by itself (a larger gap is
    /// `recovered: false`, `too_many`). Transports with a smaller buffer lower it.
    pub(crate) recovery_budget: (u32, u32),
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
            extras: None,
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

    /// Queue an encoded message (a reply) for this connection.
    pub(crate) fn push(&self, bytes: Vec<u8>) {
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

    /// End the session: leave every channel (announcing presence leaves), unregister, and
    /// release the connection's place in the limits. Always call this when the transport
    /// ends; dropping a session without it spawns the same cleanup.
    pub async fn close(mut self) {
        let parts = self.take_parts();
        if let Some(parts) = parts {
            // Its own task, so the release completes even if the caller is cancelled (a
            // transport stopped at the end of the shutdown grace period, say).
            let _ = tokio::spawn(parts.release()).await;
        }
    }

    fn take_parts(&mut self) -> Option<Released> {
        let admission = self.admission.take()?;
        Some(Released {
            node: self.node.clone(),
            app: self.app.clone(),
            handle: self.handle.clone(),
            subscriptions: std::mem::take(&mut self.subscriptions),
            lifecycle: self.extras.as_mut().and_then(|e| e.lifecycle.take()),
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
    lifecycle: Option<Arc<ConnectionRecord>>,
    admission: Admission,
}

impl Released {
    async fn release(self) {
        let socket = self.handle.socket_id;
        for sub in self.subscriptions {
            crate::cmd::unsubscribe::leave(&self.node, &self.app, socket, sub).await;
        }
        self.node.sessions.remove(&self.handle);
        self.node
            .metrics
            .connections
            .fetch_sub(1, Ordering::Relaxed);
        if let Some(connection) = self.lifecycle {
            // 1000 is only ever the server answering the client's own close.
            let (code, reason) = match self.handle.closing() {
                Some(CloseCode::Normal) => (Some(1000), "client"),
                Some(code) => (Some(code.code()), code.reason()),
                None => (None, "client"),
            };
            let duration_ms = crate::clock::unix_ms().saturating_sub(connection.opened_at_ms);
            self.node
                .occupancy
                .connection_closed(&self.app.id, &connection.socket_id);
            self.node.emit_webhook(
                &self.app,
                WebhookEvent::ConnectionClosed {
                    connection,
                    duration_ms,
                    code,
                    reason: Arc::from(reason),
                },
            );
        }
        drop(self.admission);
    }
}

/// Half of the node's outbound queue limits (messages, bytes): the default recovery budget.
fn node_limits_half(node: &Node) -> (usize, usize) {
    (
        node.limits.max_queue_messages / 2,
        node.limits.max_queue_bytes / 2,
    )
}
