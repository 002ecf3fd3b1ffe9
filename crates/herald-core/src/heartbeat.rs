//! The heartbeat: one task per node that pings idle connections and closes silent ones.
//!
//! One sweep over the registry replaces a timer per connection: a timer costs memory in every
//! connection's task and a wake-up per connection per interval, while a sweep costs one
//! atomic read per connection per period. A connection silent for `ping_interval` gets a
//! protocol ping; one silent for `activity_timeout` is closed with 4201.

use std::sync::Weak;
use std::time::Duration;

use herald_protocol::CloseCode;

use crate::metrics::Metrics;
use crate::node::Node;
use crate::wire::Protocol;

/// Run sweeps until the node is dropped.
pub(crate) async fn run(node: Weak<Node>) {
    let period = match node.upgrade() {
        Some(n) => sweep_period(n.limits.ping_interval),
        None => return,
    };
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(node) = node.upgrade() else { return };
        sweep(&node);
    }
}

/// A quarter of the ping interval, between 50 ms and 1 s: timing is accurate to that.
fn sweep_period(ping_interval: Duration) -> Duration {
    (ping_interval / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// Ping idle connections, close silent ones, and close Pusher connections that did not
/// sign in within their app's `user_authentication_timeout`.
pub(crate) fn sweep(node: &Node) {
    let now = node.clock.now_ms();
    let ping = node.limits.ping_interval.as_millis() as u64;
    let timeout = node.limits.activity_timeout.as_millis() as u64;
    let signin_deadlines: Vec<(&str, u64)> = node
        .apps
        .all()
        .iter()
        .filter_map(|a| {
            a.settings
                .user_authentication_timeout
                .map(|t| (&*a.id, t.as_millis() as u64))
        })
        .collect();
    let enforce_expiry = node
        .apps
        .all()
        .iter()
        .any(|a| a.settings.token_expiry.enforce);
    let now_secs = crate::clock::unix_secs();
    node.sessions.for_each(|h| {
        if enforce_expiry {
            crate::cmd::refresh::sweep_expired(node, h, now_secs);
        }
        if !signin_deadlines.is_empty()
            && h.protocol == Protocol::Pusher
            && !h.is_authorized()
            && let Some((_, limit)) = signin_deadlines.iter().find(|(id, _)| **id == *h.app_id)
            && now.saturating_sub(h.connected_ms()) >= *limit
        {
            h.close(CloseCode::Unauthorized);
            return;
        }
        let idle = now.saturating_sub(h.last_activity_ms());
        if idle >= timeout {
            if h.closing().is_none() {
                Metrics::inc(&node.metrics.activity_timeouts);
                h.close(CloseCode::ActivityTimeout);
            }
        } else if idle >= ping && now.saturating_sub(h.last_ping_ms()) >= ping {
            h.mark_pinged(now);
            let ping = crate::wire::ping(h.protocol, node.ids.next().as_str());
            h.push_message(ping, None, &node.metrics);
        }
    });
}
