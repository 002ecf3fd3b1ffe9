//! One module per operation, in the style of mini-redis's `cmd/`: what a client or a
//! backend can ask of the node, each in its own file with its own request and result types.
//!
//! | Module | Operation | Asked by |
//! |---|---|---|
//! | [`connect`] | admit a connection (app, origin, token, limits) | every transport |
//! | [`subscribe`] | join a channel, as steps that undo themselves | clients |
//! | [`unsubscribe`] | leave a channel (also what closing a session does per channel) | clients |
//! | [`client_event`] | relay a client event to a private or presence channel | clients |
//! | [`signin`] | Pusher user authentication | Pusher clients |
//! | [`publish`] | publish an event to channels, through the broker | the HTTP APIs, Laravel ingest |
//! | [`direct`] | send to a user or a socket, disconnect a user, on every node | the HTTP APIs |
//! | [`refresh`] | replace a connection's token; hold connections to their token's expiry | native clients, the heartbeat |
//! | [`tap`] | watch a channel's publications without subscribing | the admin views |
//!
//! The protocol adapters (`session/native.rs`, `session/pusher.rs`) parse requests and
//! encode replies; these modules never see bytes.

pub mod client_event;
pub mod connect;
pub mod direct;
pub mod publish;
pub mod refresh;
pub mod signin;
pub mod subscribe;
pub mod tap;
pub mod unsubscribe;

use herald_protocol::{ChannelName, ErrorCode};
use tracing::warn;

use crate::app::App;
use crate::node::Node;
use crate::publication::{EventData, Payload};
use crate::refusal::Refusal;

/// The longest accepted event name, in bytes.
pub const MAX_EVENT_NAME_LEN: usize = 200;

/// Above this many local subscribers a channel no longer gets subscription-count events
/// (Pusher's own rule for the feature).
const SUBSCRIPTION_COUNT_MAX: usize = 100;

pub(crate) fn check_event_name(event: &str) -> Result<(), Refusal> {
    if event.is_empty() || event.len() > MAX_EVENT_NAME_LEN {
        return Err(Refusal::new(
            ErrorCode::InvalidEventName,
            format!("event name must be 1 to {MAX_EVENT_NAME_LEN} bytes"),
        ));
    }
    Ok(())
}

pub(crate) fn check_payload(app: &App, data: &EventData) -> Result<(), Refusal> {
    let max = app.settings.limits.max_payload_bytes;
    if data.len() > max {
        return Err(Refusal::new(
            ErrorCode::PayloadTooLarge,
            format!("data is {} bytes; the limit is {max}", data.len()),
        ));
    }
    Ok(())
}

/// At most `max` bytes of `s`, cut at a character boundary (for echoing input in errors).
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Tell a channel's Pusher subscribers its new subscriber count, if the app enables it.
pub(crate) async fn announce_subscription_count(node: &Node, app: &App, channel: &ChannelName) {
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
