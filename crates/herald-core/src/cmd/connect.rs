//! Connect: admit a connection. The app is found by key; then, in order, the origin, the
//! connection token and the connection limits (node, app, per IP) are checked. An admitted
//! connection is registered and gets its [`Session`]; a refused one gets the error and the
//! close code that tells its client whether to retry.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use herald_protocol::{CloseCode, ErrorCode};

use super::truncate;
use crate::app::App;
use crate::auth::Identity;
use crate::backend::BackendContext;
use crate::metrics::Metrics;
use crate::node::Node;
use crate::outbound::{QueueLimits, SessionHandle};
use crate::refusal::Refusal;
use crate::session::Session;
use crate::webhook::{ConnectionRecord, WebhookEvent};
use crate::wire::{Protocol, Transport};

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
    /// How it reaches the node.
    pub transport: Transport,
    /// On HTTP transports (SSE, long-polling): the id the client sends commands with,
    /// announced in the `connected` message.
    pub transport_session: Option<&'a str>,
    /// The WebSocket negotiated permessage-deflate: publications past the app's threshold
    /// reach it compressed.
    pub deflate: bool,
    /// Who the connection is, as the app's connect proxy answered (the server asked it
    /// before connecting); used in place of a token.
    pub identity: Option<Identity>,
    /// What the connection brought for the app's subscribe proxy (allowed headers and
    /// cookies), kept for its life when the app has one.
    pub backend_context: Option<Arc<BackendContext>>,
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

/// What the checks of a connection found: its app, who it is, and its place in the limits.
type Admitted = (Arc<App>, Option<Arc<Identity>>, Admission);

impl Node {
    /// Admit a new connection: find the app, check origin, token and limits, register it.
    pub fn connect(self: &Arc<Self>, req: ConnectRequest<'_>) -> Result<Session, ConnectRefusal> {
        let admitted = self.admit(&req);
        let (app, identity, admission) = match admitted {
            Ok(admitted) => admitted,
            Err(refusal) => {
                Metrics::inc(&self.metrics.connections_rejected);
                return Err(refusal);
            }
        };
        let handle = self.register(&app, identity.as_deref(), &req);
        Metrics::inc(&self.metrics.connections_accepted);
        let lifecycle = app.lifecycle_webhooks.then(|| {
            Arc::new(ConnectionRecord {
                app_id: app.id.to_string(),
                socket_id: handle.socket_id.to_string(),
                user_id: handle.user_id().map(|u| u.to_string()),
                protocol: req.protocol.name().to_owned(),
                transport: req.transport.name().to_owned(),
                ip: req.ip.to_string(),
                opened_at_ms: crate::clock::unix_ms(),
            })
        });
        let mut session = Session::new(
            self.clone(),
            app.clone(),
            handle,
            identity,
            admission,
            req.transport_session,
        );
        if app.settings.token_expiry.enforce
            && let Some(identity) = &session.identity
        {
            session.handle.set_token_expiry(identity.expires_at);
        }
        if app.settings.subscribe_proxy.is_some() && req.backend_context.is_some() {
            session.extras.get_or_insert_default().backend_context = req.backend_context.clone();
        }
        if let Some(connection) = lifecycle {
            self.occupancy.connection_opened(&connection);
            self.emit_webhook(
                &app,
                WebhookEvent::ConnectionOpened {
                    connection: connection.clone(),
                },
            );
            session.extras.get_or_insert_default().lifecycle = Some(connection);
        }
        Ok(session)
    }

    /// Every check, in order: app, origin, token, limits. A draining node still admits: only
    /// a request that was on its way when the listener stopped gets here, and the drain asks
    /// that connection to reconnect like every other (`Node::drain_over`), after it has been
    /// told it is connected; a refusal would look like a failed attempt to the client.
    fn admit(self: &Arc<Self>, req: &ConnectRequest<'_>) -> Result<Admitted, ConnectRefusal> {
        let app = self.app_for(req)?;
        let identity = match &req.identity {
            Some(identity) => Some(Arc::new(identity.clone())),
            None => authenticate(&app, req.token)?,
        };
        let admission = Admission::acquire(self, &app, req).map_err(|what| {
            let close = if what == "app" {
                CloseCode::AppOverQuota
            } else {
                CloseCode::OverCapacity
            };
            ConnectRefusal::new(
                ErrorCode::TooManyConnections,
                close,
                format!("{what} connection limit reached"),
            )
        })?;
        Ok((app, identity, admission))
    }

    /// The app named by the key, if it is enabled and allows the request's origin.
    fn app_for(&self, req: &ConnectRequest<'_>) -> Result<Arc<App>, ConnectRefusal> {
        let Some(app) = self.apps.by_key(req.app_key).cloned() else {
            return Err(ConnectRefusal::new(
                ErrorCode::UnknownApp,
                CloseCode::UnknownApp,
                format!("no app has the key {:?}", truncate(req.app_key, 64)),
            ));
        };
        if !app.settings.enabled {
            return Err(ConnectRefusal::new(
                ErrorCode::AppDisabled,
                CloseCode::AppDisabled,
                "app is disabled",
            ));
        }
        if let Some(origin) = req.origin
            && !app.allows_origin(origin)
        {
            return Err(ConnectRefusal::new(
                ErrorCode::OriginNotAllowed,
                CloseCode::OriginNotAllowed,
                format!("origin {:?} is not allowed", truncate(origin, 128)),
            ));
        }
        Ok(app)
    }

    /// A fresh handle with a socket id no live connection has, in the registry.
    fn register(
        &self,
        app: &App,
        identity: Option<&Identity>,
        req: &ConnectRequest<'_>,
    ) -> Arc<SessionHandle> {
        let limits = QueueLimits {
            max_bytes: self.limits.max_queue_bytes,
            max_items: self.limits.max_queue_messages,
        };
        let handle = loop {
            let mut handle = SessionHandle::new(
                self.ids.socket_id(),
                app.id.clone(),
                req.protocol,
                limits,
                self.clock.now_ms(),
            )
            .reached_by(req.transport, req.ip);
            let compression = app.settings.compression;
            if req.deflate && compression.enabled {
                handle = handle.with_compression(compression.threshold);
            }
            let handle = Arc::new(handle);
            if let Some(user) = identity.and_then(|i| i.user_id.clone()) {
                handle.set_user_id(user);
            }
            if self.sessions.insert(&handle) {
                break handle;
            }
        };
        self.sessions.index_user(&handle);
        self.metrics.connections.fetch_add(1, Ordering::Relaxed);
        handle
    }
}

/// Who the connection is, from its token; none without one, unless the app requires it.
fn authenticate(app: &App, token: Option<&str>) -> Result<Option<Arc<Identity>>, ConnectRefusal> {
    match token {
        Some(token) => match app.verifier.connection(token) {
            Ok(identity) => Ok(Some(Arc::new(identity))),
            Err(refusal) => {
                let close = if refusal.code == ErrorCode::TokenExpired {
                    CloseCode::TokenExpired
                } else {
                    CloseCode::Unauthorized
                };
                Err(ConnectRefusal { refusal, close })
            }
        },
        None if app.settings.require_token => Err(ConnectRefusal::new(
            ErrorCode::Unauthorized,
            CloseCode::Unauthorized,
            "this app requires a connection token",
        )),
        None => Ok(None),
    }
}

/// Holds one connection's place in the node, app and per-IP counts; releases it on drop.
#[derive(Debug)]
pub(crate) struct Admission {
    node: Weak<Node>,
    app: Arc<App>,
    ip: IpAddr,
    /// What the connection is counted under in the app's per-transport counts.
    protocol: Protocol,
    transport: Transport,
}

impl Admission {
    /// Count a connection against every limit, or say which limit it hit.
    fn acquire(
        node: &Arc<Node>,
        app: &Arc<App>,
        req: &ConnectRequest<'_>,
    ) -> Result<Self, &'static str> {
        let ip = req.ip;
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
        app.count_transport(req.protocol, req.transport, true);
        Ok(Self {
            node: Arc::downgrade(node),
            app: app.clone(),
            ip,
            protocol: req.protocol,
            transport: req.transport,
        })
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.app.remove_connection();
        self.app
            .count_transport(self.protocol, self.transport, false);
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
