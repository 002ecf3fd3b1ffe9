//! Direct sends: an event to every connection of a user, or to one socket, and closing a
//! user's connections. These go over the broker's control channel, so they reach the
//! connections on every node; they are never kept in history.

use std::sync::Arc;

use herald_protocol::{CloseCode, ErrorCode, SocketId};
use tracing::warn;

use super::{check_event_name, check_payload};
use crate::app::App;
use crate::broker::Control;
use crate::clock::unix_ms;
use crate::node::Node;
use crate::publication::{DirectMessage, EventData};
use crate::refusal::Refusal;

impl Node {
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

    async fn control(&self, control: Control) -> Result<(), Refusal> {
        self.broker.control(control).await.map_err(|e| {
            warn!(error = %e, "control message failed");
            Refusal::new(
                ErrorCode::Internal,
                "the broker is unavailable; retry later",
            )
        })
    }
}
