//! Unsubscribe: leave a channel. Closing a session leaves each of its channels the same way.
//!
//! Leaving undoes a completed subscribe in the same order as its steps, newest first: the
//! hub (and, for the last local subscriber, the broker and the cluster's occupancy, sending
//! `channel_vacated` when the cluster has no subscriber left), then presence (sending
//! `member_removed` and the `left` event when it was the user's last connection), then the
//! subscription count.

use herald_protocol::{ChannelName, ErrorCode, SocketId};
use tracing::warn;

use super::announce_subscription_count;
use crate::app::App;
use crate::node::Node;
use crate::publication::Payload;
use crate::refusal::Refusal;
use crate::session::{Session, Subscription};
use crate::webhook::WebhookEvent;

impl Session {
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
        // Run to completion in its own task: if this future is dropped (the connection
        // went away mid-unsubscribe), the channel is still left, presence included.
        let (node, app, socket) = (self.node.clone(), self.app.clone(), self.handle.socket_id);
        let leaving = tokio::spawn(async move { leave(&node, &app, socket, sub).await });
        let _ = leaving.await;
        Ok(channel)
    }
}

/// Leave one channel: hub, broker interest, presence (announcing the user's last leave),
/// webhooks and subscription counts.
pub(crate) async fn leave(node: &Node, app: &App, socket: SocketId, sub: Subscription) {
    if !sub.in_hub {
        return;
    }
    let removed = app.hub.unsubscribe(&sub.channel, socket, &node.metrics);
    if removed.last_on_node {
        // A tapped channel stays subscribed at the broker (cmd/tap.rs).
        if node.taps.count(&app.id, &sub.channel) == 0
            && let Err(e) = node.broker.unsubscribe(&app.id, &sub.channel).await
        {
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
