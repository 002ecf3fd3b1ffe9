//! Refresh: a native connection replaces its token without reconnecting, and the node
//! holds connections to their token's expiry when their app enforces it
//! (`[apps.token_expiry]`).
//!
//! A refresh must keep the user: a token for another user (or for a user, on a connection
//! without one) is refused and the connection keeps its identity. When the app enforces
//! expiry, the heartbeat's sweep sends a `refresh` hint (`event: required`) once the token
//! has expired, and closes the connection with 4005 if no valid refresh arrives within the
//! grace period ([`sweep_expired`]).

use std::sync::Arc;

use herald_protocol::{CloseCode, ErrorCode};

use crate::node::Node;
use crate::outbound::SessionHandle;
use crate::refusal::Refusal;
use crate::session::Session;
use crate::wire::Protocol;

impl Session {
    /// Replace the connection's token with `token`; its new expiry (seconds since the Unix
    /// epoch). On a refusal nothing changes.
    pub fn refresh(&mut self, token: &str) -> Result<u64, Refusal> {
        let identity = self.app.verifier.connection(token)?;
        let current = self.identity.as_ref().and_then(|i| i.user_id.as_ref());
        if identity.user_id.as_ref() != current {
            return Err(Refusal::new(
                ErrorCode::TokenInvalid,
                "a refresh keeps the connection's user: the token is for another user",
            ));
        }
        let expires_at = identity.expires_at;
        self.identity = Some(Arc::new(identity));
        if self.app.settings.token_expiry.enforce {
            self.handle.set_token_expiry(expires_at);
        }
        Ok(expires_at)
    }
}

/// Hint or close native connections of apps that enforce token expiry: at expiry a
/// `refresh` hint, after the grace period the close (4005). Run by the heartbeat sweep.
pub(crate) fn sweep_expired(node: &Node, handle: &SessionHandle, now_secs: u64) {
    let expires_at = handle.token_expires_at();
    if expires_at == u64::MAX || now_secs < expires_at || handle.protocol != Protocol::Native {
        return;
    }
    let Some(app) = node.apps.by_id(&handle.app_id) else {
        return;
    };
    let expiry = app.settings.token_expiry;
    if !expiry.enforce {
        return;
    }
    let grace = expiry.grace.as_secs();
    if now_secs >= expires_at.saturating_add(grace) {
        if handle.closing().is_none() {
            handle.close(CloseCode::TokenExpired);
        }
    } else if handle.hint_refresh() {
        let hint = crate::wire::refresh_hint(node.ids.next().as_str(), expires_at, grace);
        handle.push_message(hint, None, &node.metrics);
    }
}
