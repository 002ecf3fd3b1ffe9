//! Webhook delivery: batching, signing and retries, away from the fan-out path.
//!
//! Events come from the core's bounded queue ([`herald_core::webhook`]). They are grouped
//! into batches (up to [`BATCH_MAX`] events, or what arrives within [`BATCH_WINDOW`]) per app,
//! filtered per endpoint (event types, channel prefix), and handed to that endpoint's own
//! sender task through a bounded queue. A sender POSTs
//! `{"time_ms":…,"events":[…]}` with `X-Pusher-Key` and `X-Pusher-Signature` (HMAC-SHA256 of
//! the body with the app secret), and retries a failed batch (transport error or non-2xx)
//! with exponential backoff from 1 s up to 60 s, for [`RETRY_WINDOW`] in all; then the batch
//! is given up, logged and counted (`herald_webhooks_failed_total`). Batches for one
//! endpoint go out in order, one at a time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_core::settings::WebhookSettings;
use herald_core::webhook::{AppWebhookEvent, ConnectionRecord, WebhookEvent};
use herald_core::{Metrics, Node};
use herald_protocol::ChannelName;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Most events in one webhook request.
pub const BATCH_MAX: usize = 50;
/// How long the first event of a batch waits for others.
pub const BATCH_WINDOW: Duration = Duration::from_millis(50);
/// How long a batch is retried before it is given up.
pub const RETRY_WINDOW: Duration = Duration::from_secs(5 * 60);
/// Time allowed for one webhook request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Batches an endpoint may have waiting; beyond it new batches are dropped and counted.
pub const ENDPOINT_QUEUE: usize = 1024;
/// The most of an endpoint's answer that is read (its body is not used).
const MAX_ANSWER: usize = 64 * 1024;

/// One endpoint's filters and the queue to its sender.
struct Endpoint {
    settings: WebhookSettings,
    tx: mpsc::Sender<Vec<Value>>,
}

/// Deliver webhooks until `stop` fires or the core's queue closes.
pub async fn run(
    node: Arc<Node>,
    targets: HashMap<String, Vec<WebhookTarget>>,
    mut rx: mpsc::Receiver<AppWebhookEvent>,
    stop: CancellationToken,
) {
    let mut endpoints: HashMap<Arc<str>, Vec<Endpoint>> = HashMap::new();
    for app in node.apps() {
        let app_targets = targets.get(&*app.id).map_or(&[][..], Vec::as_slice);
        let list = app
            .settings
            .webhooks
            .iter()
            .zip(app_targets)
            .map(|(settings, target)| {
                let (tx, rx) = mpsc::channel(ENDPOINT_QUEUE);
                tokio::spawn(sender(
                    node.clone(),
                    app.id.clone(),
                    target.clone(),
                    rx,
                    stop.clone(),
                ));
                Endpoint {
                    settings: settings.clone(),
                    tx,
                }
            })
            .collect();
        endpoints.insert(app.id.clone(), list);
    }
    loop {
        let first = tokio::select! {
            e = rx.recv() => match e { Some(e) => e, None => return },
            () = stop.cancelled() => return,
        };
        let mut batch = vec![first];
        let deadline = Instant::now() + BATCH_WINDOW;
        while batch.len() < BATCH_MAX * 4 {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(e)) => batch.push(e),
                _ => break,
            }
        }
        // Out of the core's queue; counted again below per endpoint queue they enter.
        queued(&node, -(batch.len() as i64));
        let mut by_app: HashMap<Arc<str>, Vec<AppWebhookEvent>> = HashMap::new();
        for e in batch {
            by_app.entry(e.app_id.clone()).or_default().push(e);
        }
        for (app_id, events) in by_app {
            let Some(list) = endpoints.get(&app_id) else {
                continue;
            };
            for endpoint in list {
                let selected: Vec<Value> = events
                    .iter()
                    .filter(|e| wanted(&endpoint.settings, &e.event))
                    .map(|e| event_json(&e.event, endpoint.settings.include_client_ip))
                    .collect();
                for chunk in selected.chunks(BATCH_MAX) {
                    if endpoint.tx.try_send(chunk.to_vec()).is_ok() {
                        queued(&node, chunk.len() as i64);
                    } else {
                        node.metrics()
                            .webhooks_dropped
                            .fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        warn!(app = %app_id, "webhook endpoint queue is full; events dropped");
                    }
                }
            }
        }
    }
}

/// Move the count of webhook events waiting by `delta`.
fn queued(node: &Node, delta: i64) {
    node.metrics()
        .webhooks_queued
        .fetch_add(delta, std::sync::atomic::Ordering::Relaxed);
}

/// Whether `endpoint` wants `event`: the connection lifecycle only when listed, other
/// events when listed or when the list is empty; the channel prefix applies to events
/// about a channel.
fn wanted(endpoint: &WebhookSettings, event: &WebhookEvent) -> bool {
    let listed = endpoint.event_types.iter().any(|t| t == event.name());
    let by_type = listed || (endpoint.event_types.is_empty() && !event.is_connection_event());
    by_type
        && match (endpoint.channel_prefix.as_deref(), event.channel()) {
            (Some(prefix), Some(channel)) => channel.as_str().starts_with(prefix),
            _ => true,
        }
}

/// The Pusher webhook form of an event.
pub fn event_json(event: &WebhookEvent, include_ip: bool) -> Value {
    let name = event.name();
    let channel = event.channel().map(ChannelName::as_str);
    match event {
        WebhookEvent::ChannelOccupied { .. }
        | WebhookEvent::ChannelVacated { .. }
        | WebhookEvent::CacheMiss { .. } => json!({"name": name, "channel": channel}),
        WebhookEvent::MemberAdded { user_id, .. } | WebhookEvent::MemberRemoved { user_id, .. } => {
            json!({"name": name, "channel": channel, "user_id": &**user_id})
        }
        WebhookEvent::ClientEvent {
            event,
            data,
            socket_id,
            user_id,
            ..
        } => {
            let data: Value = serde_json::from_slice(&data.pusher_literal()).unwrap_or(Value::Null);
            let mut v = json!({
                "name": name,
                "channel": channel,
                "event": &**event,
                "data": data,
                "socket_id": socket_id.to_string(),
            });
            if let Some(u) = user_id {
                v["user_id"] = json!(&**u);
            }
            v
        }
        WebhookEvent::ConnectionOpened { connection } => {
            connection_json(name, connection, include_ip)
        }
        WebhookEvent::ConnectionClosed {
            connection,
            duration_ms,
            code,
            reason,
        } => {
            let mut v = connection_json(name, connection, include_ip);
            v["duration_ms"] = json!(duration_ms);
            v["close_code"] = json!(code);
            v["reason"] = json!(&**reason);
            v
        }
    }
}

/// The fields of a connection event.
fn connection_json(name: &str, c: &ConnectionRecord, include_ip: bool) -> Value {
    let mut v = json!({
        "name": name,
        "socket_id": &c.socket_id,
        "user_id": c.user_id.as_deref(),
        "protocol": &c.protocol,
        "transport": &c.transport,
        "opened_at_ms": c.opened_at_ms,
    });
    if include_ip {
        v["client_ip"] = json!(&c.ip);
    }
    v
}

/// One endpoint's sender: batches in order, each retried within the retry window.
async fn sender(
    node: Arc<Node>,
    app_id: Arc<str>,
    target: WebhookTarget,
    mut rx: mpsc::Receiver<Vec<Value>>,
    stop: CancellationToken,
) {
    let Some(app) = node.app_by_id(&app_id) else {
        return;
    };
    loop {
        let events = tokio::select! {
            b = rx.recv() => match b { Some(b) => b, None => return },
            () = stop.cancelled() => return,
        };
        let count = events.len() as i64;
        let body = serde_json::to_vec(&json!({
            "time_ms": herald_core::clock::unix_ms(),
            "events": events,
        }))
        .expect("webhook bodies serialise");
        let signature = herald_core::pusher_auth::sign(
            &app.settings.secret,
            std::str::from_utf8(&body).unwrap_or(""),
        );
        let body = Bytes::from(body);
        let started = Instant::now();
        let mut backoff = Duration::from_secs(1);
        loop {
            match post(&target, body.clone(), &app.settings.key, &signature).await {
                Ok(status) if (200..300).contains(&status) => {
                    Metrics::inc(&node.metrics().webhooks_sent);
                    break;
                }
                result => {
                    let why = match result {
                        Ok(status) => format!("answered {status}"),
                        Err(e) => e,
                    };
                    if started.elapsed() + backoff > RETRY_WINDOW {
                        Metrics::inc(&node.metrics().webhooks_failed);
                        warn!(app = %app_id, host = %target.authority, reason = %why, "webhook given up after retrying");
                        break;
                    }
                    debug!(app = %app_id, host = %target.authority, reason = %why, retry_in = ?backoff, "webhook failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = stop.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            }
        }
        queued(&node, -count);
    }
}

/// A parsed webhook URL: made once, by configuration validation.
pub type WebhookTarget = crate::backend_http::HttpTarget;

/// POST `body` to `target`; the HTTP status, or why it failed.
async fn post(
    target: &WebhookTarget,
    body: Bytes,
    key: &str,
    signature: &str,
) -> Result<u16, String> {
    crate::backend_http::request(
        target,
        http::Method::POST,
        &[
            ("content-type", "application/json"),
            ("x-pusher-key", key),
            ("x-pusher-signature", signature),
        ],
        body,
        REQUEST_TIMEOUT,
        MAX_ANSWER,
    )
    .await
    .map(|answer| answer.status)
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_and_shapes_events() {
        let ch = ChannelName::new("presence-room").unwrap();
        let e = WebhookEvent::MemberAdded {
            channel: ch.clone(),
            user_id: Arc::from("7"),
        };
        assert_eq!(
            event_json(&e, false),
            json!({"name": "member_added", "channel": "presence-room", "user_id": "7"})
        );
        let all = WebhookSettings {
            url: "http://x".into(),
            event_types: vec![],
            channel_prefix: None,
            include_client_ip: false,
        };
        assert!(wanted(&all, &e));
        let only_vacated = WebhookSettings {
            url: "http://x".into(),
            event_types: vec!["channel_vacated".into()],
            channel_prefix: None,
            include_client_ip: false,
        };
        assert!(!wanted(&only_vacated, &e));
        let prefix = WebhookSettings {
            url: "http://x".into(),
            event_types: vec![],
            channel_prefix: Some("private-".into()),
            include_client_ip: false,
        };
        assert!(!wanted(&prefix, &e));
        let t = WebhookTarget::parse("https://hooks.example.com:8443/pusher?x=1").unwrap();
        assert!(
            t.is_tls()
                && t.port() == 8443
                && t.path() == "/pusher?x=1"
                && t.authority == "hooks.example.com:8443"
        );
    }
}
