//! Sign-in (Pusher user authentication): verify the signature over `user_data` and
//! associate the connection with its user id, for `#server-to-user` channels, direct sends
//! and `terminate_connections`.

use std::sync::Arc;

use herald_protocol::ErrorCode;

use crate::refusal::Refusal;
use crate::session::Session;

impl Session {
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
}
