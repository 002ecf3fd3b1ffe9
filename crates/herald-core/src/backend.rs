//! What the core needs from the app's own backend, which the server asks over HTTP: the
//! subscribe proxy (`[apps.subscribe_proxy]`), as the [`SubscribeAuthority`] trait. (The
//! connect proxy is asked before the core sees the connection: its answer arrives as the
//! connection's [`crate::auth::Identity`] in the connect request.)
//!
//! # Contract of a [`SubscribeAuthority`]
//! - It is asked only for private and presence channels that no token of the connection
//!   grants, of apps with a subscribe proxy, on native connections.
//! - It answers within the proxy's timeout, with the access the backend granted, or a
//!   refusal: the backend's denial (`Unauthorized`, `ChannelNotAllowed`,
//!   `PermissionDenied`), or `BackendUnavailable` when the backend did not answer usably.
//!   It never grants on a failure (it fails closed).
//! - It bounds its own concurrency per app; a call over the bound waits within the
//!   timeout, then is refused.

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use herald_protocol::{ChannelName, SocketId};

use crate::app::App;
use crate::auth::ChannelAccess;
use crate::refusal::Refusal;
use crate::wire::Transport;

/// What a connection brought that its app's backend may see: the headers and cookies the
/// proxy settings allow (and only those), the client's address and the transport. Kept for
/// the connection's life when the app has a subscribe proxy.
#[derive(Debug, Clone, Default)]
pub struct BackendContext {
    /// Allowed request headers, lower-case names.
    pub headers: Vec<(String, String)>,
    /// Allowed cookies, by name.
    pub cookies: Vec<(String, String)>,
    /// The client's address (after trusted-proxy resolution).
    pub ip: Option<IpAddr>,
    /// How the connection reaches the node.
    pub transport: Option<Transport>,
}

/// Asks an app's backend whether a connection may join a channel. See the module docs.
#[async_trait]
pub trait SubscribeAuthority: Send + Sync + 'static {
    /// Whether the connection `socket_id` of `app`, which brought `context`, may subscribe
    /// to `channel`, and as whom.
    async fn authorize(
        &self,
        app: &App,
        socket_id: SocketId,
        channel: &ChannelName,
        context: &BackendContext,
    ) -> Result<ChannelAccess, Refusal>;
}

/// The authority a node asks, set once by the server.
pub(crate) type Authority = std::sync::OnceLock<Arc<dyn SubscribeAuthority>>;
