//! Client events: a message a client sends to the other subscribers of a private or
//! presence channel it has joined (never echoed to itself), within the app's rate. They are
//! published through the broker like any publication, but never kept in history.

use std::sync::Arc;

use herald_protocol::ErrorCode;

use super::{MAX_EVENT_NAME_LEN, check_payload};
use crate::publication::{EventData, Payload};
use crate::refusal::Refusal;
use crate::session::Session;
use crate::webhook::WebhookEvent;

impl Session {
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
        if !event.starts_with("client-") || event.len() > MAX_EVENT_NAME_LEN {
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
}
