//! How the backends reach back into the node: [`Delivery`] is the broker's handler (it
//! delivers publications and control messages to local connections), [`Departures`] the
//! occupancy's (it announces what a dead node left behind). Both hold the node weakly, so
//! a backend's tasks never keep a dropped node alive.

use std::sync::{Arc, Weak};

use herald_protocol::ChannelName;
use tracing::warn;

use super::Node;
use crate::broker::{BrokerHandler, Control};
use crate::hub::Hub;
use crate::occupancy::{Departure, OccupancyHandler};
use crate::publication::{Payload, Publication};
use crate::webhook::WebhookEvent;

/// Delivers what the broker hands over to this node's connections.
pub(super) struct Delivery(pub(super) Weak<Node>);

impl BrokerHandler for Delivery {
    fn handle_publication(&self, publication: Arc<Publication>) {
        let Some(node) = self.0.upgrade() else { return };
        if let Some(app) = node.apps.by_id(&publication.app_id) {
            app.hub.broadcast(&publication, &node.metrics);
        }
        node.taps.deliver(&publication);
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
                .map(|a| a.hub.subscriber_count(channel.as_str()) + n.taps.count(app_id, channel))
        })
        .unwrap_or(0)
}

/// Announces what a dead node left behind: presence `left` events and webhooks.
pub(super) struct Departures(pub(super) Weak<Node>);

impl OccupancyHandler for Departures {
    fn local_subscribers(&self, app_id: &str, channel: &ChannelName) -> usize {
        local_subscribers(&self.0, app_id, channel)
    }

    fn departed(&self, departures: Vec<Departure>) {
        let Some(node) = self.0.upgrade() else { return };
        tokio::spawn(async move {
            for departure in departures {
                announce(&node, departure).await;
            }
        });
    }
}

async fn announce(node: &Node, departure: Departure) {
    match departure {
        Departure::Vacated { app_id, channel } => {
            if let Some(app) = node.apps.by_id(&app_id) {
                node.emit_webhook(app, WebhookEvent::ChannelVacated { channel });
            }
        }
        Departure::ConnectionLost { record } => {
            if let Some(app) = node.apps.by_id(&record.app_id) {
                let duration_ms = crate::clock::unix_ms().saturating_sub(record.opened_at_ms);
                node.emit_webhook(
                    app,
                    WebhookEvent::ConnectionClosed {
                        connection: record,
                        duration_ms,
                        code: None,
                        reason: Arc::from("node_lost"),
                    },
                );
            }
        }
        Departure::Left {
            app_id,
            channel,
            user_id,
        } => {
            let Some(app) = node.apps.by_id(&app_id).cloned() else {
                return;
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
