//! The admin web UI: its page and assets, embedded in the binary (no build step, no CDN),
//! and the JSON API it reads. Every path here is behind the admin credential (checked by
//! the caller).
//!
//! | Method | Path | Answer |
//! |---|---|---|
//! | GET | `/ui`, `/ui/app.js`, `/ui/app.css`, `/ui/vendor/uplot/…` | the page and its assets |
//! | GET | `/ui/api/overview` | every node's report, this node's latency histogram, history, webhooks |
//! | GET | `/ui/api/channels?app=&prefix=` | channels with subscribers, cluster-wide counts |
//! | GET | `/ui/api/channel?app=&channel=` | one channel: subscribers, presence members, recent history |
//! | GET | `/ui/api/connections?app=` | this node's connections by transport, and its top client addresses |
//! | GET | `/ui/api/user?app=&user=` | this node's connections of a user |
//! | POST | `/ui/api/disconnect` | `{"app","user"}`: close the user's connections on every node |
//! | POST | `/ui/api/publish` | `{"app","channel","event","data"}`: publish, as the HTTP API does |
//! | GET | `/ui/api/tail?app=&channel=` | Server-Sent Events: the channel's publications as they happen |
//!
//! POSTs must carry `X-Herald-Admin: 1` and a JSON content type: a cross-site form cannot
//! set either, so a page elsewhere cannot make a logged-in browser act (CSRF).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_core::{App, Protocol};
use herald_protocol::{ChannelName, CloseCode, ErrorCode};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::report;
use crate::http::{Body, error, fail, full, header_str, json, query_param};
use crate::server::Shared;

/// Most channels one list answer holds.
const MAX_CHANNELS: usize = 1_000;

/// Publications the channel page shows.
const HISTORY_SHOWN: usize = 50;

/// Client addresses the connections page shows.
const TOP_IPS: usize = 20;

/// How often an idle tail sends a keep-alive comment.
const TAIL_KEEPALIVE: Duration = Duration::from_secs(15);

/// A file of the UI, embedded at build time.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "/ui",
        content_type: "text/html; charset=utf-8",
        bytes: include_bytes!("../../assets/admin/index.html"),
    },
    Asset {
        path: "/ui/app.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../assets/admin/app.js"),
    },
    Asset {
        path: "/ui/app.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../../assets/admin/app.css"),
    },
    Asset {
        path: "/ui/vendor/uplot/uPlot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../assets/admin/vendor/uplot/uPlot.iife.min.js"),
    },
    Asset {
        path: "/ui/vendor/uplot/uPlot.min.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../../assets/admin/vendor/uplot/uPlot.min.css"),
    },
];

/// Answer one authorised `/ui` request.
pub async fn handle(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    stop: CancellationToken,
) -> Response<Body> {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let path = if path.is_empty() {
        "/ui".to_owned()
    } else {
        path
    };
    let method = req.method().clone();
    if method == Method::GET
        && let Some(asset) = ASSETS.iter().find(|a| a.path == path)
    {
        let mut resp = Response::new(full(Bytes::from_static(asset.bytes)));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        return resp;
    }
    match (&method, path.as_str()) {
        (&Method::GET, "/ui/api/overview") => json(StatusCode::OK, &overview(shared).await),
        (&Method::POST, "/ui/api/publish") => post(shared, req, Action::Publish).await,
        (&Method::POST, "/ui/api/disconnect") => post(shared, req, Action::Disconnect).await,
        (
            &Method::GET,
            "/ui/api/channels"
            | "/ui/api/channel"
            | "/ui/api/connections"
            | "/ui/api/user"
            | "/ui/api/tail",
        ) => {
            let name = query_param(&req, "app").unwrap_or_default();
            let Some(app) = shared.node.app_by_id(&name) else {
                return fail(ErrorCode::UnknownApp, "no such app (give ?app=)");
            };
            match path.as_str() {
                "/ui/api/channels" => channels(shared, &app, &req).await,
                "/ui/api/channel" => channel(shared, &app, &req).await,
                "/ui/api/connections" => connections(shared, &app),
                "/ui/api/user" => user(shared, &app, &req),
                _ => tail(shared, &app, &req, stop).await,
            }
        }
        (_, p) if p.starts_with("/ui/api/") => fail(
            ErrorCode::NotFound,
            "admin UI API: overview, channels, channel, connections, user, tail, publish, disconnect",
        ),
        _ => fail(ErrorCode::NotFound, "no such page"),
    }
}

/// `/ui/api/overview`.
async fn overview(shared: &Shared) -> Value {
    let node = &shared.node;
    let (buckets, sum, count) = node.metrics().publish_to_write.snapshot();
    let buckets: Vec<Value> = buckets
        .into_iter()
        .map(|(le, n)| match le {
            Some(le) => json!({"le": le, "count": n}),
            None => json!({"le": "+Inf", "count": n}),
        })
        .collect();
    let history = match node.history_stats(None).await {
        Ok(h) => json!({"streams": h.streams, "publications": h.publications, "bytes": h.bytes}),
        Err(e) => json!({"error": e.to_string()}),
    };
    let m = node.metrics();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    json!({
        "node_id": &*shared.node_id,
        "time_ms": herald_core::clock::unix_ms(),
        "apps": node.apps().iter().map(|a| &*a.id).collect::<Vec<_>>(),
        "nodes": report::cluster(shared).await,
        "latency": {"buckets": buckets, "sum_seconds": sum, "count": count},
        "history": history,
        "webhooks": {
            "queued": m.webhooks_queued.load(std::sync::atomic::Ordering::Relaxed).max(0),
            "sent": load(&m.webhooks_sent),
            "failed": load(&m.webhooks_failed),
            "dropped": load(&m.webhooks_dropped),
        },
    })
}

/// `/ui/api/channels`.
async fn channels(shared: &Shared, app: &App, req: &Request<Incoming>) -> Response<Body> {
    let prefix = query_param(req, "prefix").unwrap_or_default();
    match shared.node.channels(app, &prefix).await {
        Ok(list) => {
            let truncated = list.len() > MAX_CHANNELS;
            let list: Vec<Value> = list
                .iter()
                .take(MAX_CHANNELS)
                .map(|c| json!({"name": c.name.as_str(), "subscribers": c.subscribers}))
                .collect();
            json(
                StatusCode::OK,
                &json!({"app": &*app.id, "channels": list, "truncated": truncated}),
            )
        }
        Err(r) => error(&r),
    }
}

/// `/ui/api/channel`: subscribers, presence members and the latest publications.
async fn channel(shared: &Shared, app: &App, req: &Request<Incoming>) -> Response<Body> {
    let name = query_param(req, "channel").unwrap_or_default();
    let channel = match ChannelName::new(&name) {
        Ok(c) => c,
        Err(e) => return fail(ErrorCode::InvalidChannel, e.to_string()),
    };
    let node = &shared.node;
    let info = match node.channel_info(app, &channel).await {
        Ok(info) => info,
        Err(r) => return error(&r),
    };
    let presence = if channel.kind().is_presence() {
        match node.presence_members(app, &channel).await {
            Ok(members) => Value::Array(
                members
                    .iter()
                    .map(|m| json!({"user_id": &*m.user_id, "user_info": m.info.to_value()}))
                    .collect(),
            ),
            Err(r) => return error(&r),
        }
    } else {
        Value::Null
    };
    let history = if app.history_policy(channel.as_str()).is_some() {
        recent_history(shared, app, &channel).await
    } else {
        Value::Null
    };
    json(
        StatusCode::OK,
        &json!({
            "app": &*app.id,
            "channel": channel.as_str(),
            "subscribers": info.subscribers,
            "presence": presence,
            "history": history,
        }),
    )
}

/// The channel's latest [`HISTORY_SHOWN`] publications, oldest first.
async fn recent_history(shared: &Shared, app: &App, channel: &ChannelName) -> Value {
    let query = herald_core::history::HistoryQuery {
        after_offset: None,
        until_offset: None,
        since_ms: None,
        until_ms: None,
        limit: crate::history_api::MAX_HISTORY_LIMIT,
    };
    match shared.node.read_history(app, channel, &query).await {
        Ok(page) => {
            let skip = page.publications.len().saturating_sub(HISTORY_SHOWN);
            let publications: Vec<Value> = page.publications[skip..]
                .iter()
                .filter_map(|p| p.encoded(Protocol::Native))
                .filter_map(|bytes| serde_json::from_slice::<Value>(bytes).ok())
                .map(|p| {
                    json!({
                        "offset": p["offset"],
                        "event": p["event"],
                        "data": p["data"],
                        "timestamp": p["timestamp"],
                    })
                })
                .collect();
            json!({"epoch": &*page.top.epoch, "offset": page.top.offset, "publications": publications})
        }
        Err(e) => json!({"error": e.to_string()}),
    }
}

/// `/ui/api/connections`: this node's counts by transport, and its busiest client addresses.
fn connections(shared: &Shared, app: &App) -> Response<Body> {
    let by_transport: Vec<Value> = app
        .connections_by_transport()
        .iter()
        .map(|(protocol, transport, n)| {
            json!({"protocol": protocol.name(), "transport": transport.name(), "connections": n})
        })
        .collect();
    let top_ips: Vec<Value> = shared
        .node
        .top_ips(TOP_IPS)
        .iter()
        .map(|(ip, n)| json!({"ip": ip.to_string(), "connections": n}))
        .collect();
    json(
        StatusCode::OK,
        &json!({
            "app": &*app.id,
            "node_id": &*shared.node_id,
            "connections": app.connections(),
            "by_transport": by_transport,
            "top_ips": top_ips,
        }),
    )
}

/// `/ui/api/user`: this node's connections of one user.
fn user(shared: &Shared, app: &App, req: &Request<Incoming>) -> Response<Body> {
    let Some(user) = query_param(req, "user").filter(|u| !u.is_empty()) else {
        return fail(ErrorCode::InvalidRequest, "give ?user=");
    };
    let now = shared.node.clock_ms();
    let list: Vec<Value> = shared
        .node
        .user_connections(&app.id, &user)
        .iter()
        .map(|h| {
            json!({
                "socket_id": h.socket_id.to_string(),
                "protocol": h.protocol.name(),
                "transport": h.transport.name(),
                "ip": h.ip.to_string(),
                "connected_seconds": now.saturating_sub(h.connected_ms()) / 1000,
            })
        })
        .collect();
    json(
        StatusCode::OK,
        &json!({"app": &*app.id, "user": user, "node_id": &*shared.node_id, "connections": list}),
    )
}

/// What a POST asks for.
enum Action {
    Publish,
    Disconnect,
}

/// A POST: the CSRF guard, the body, then the action.
async fn post(shared: &Arc<Shared>, req: Request<Incoming>, action: Action) -> Response<Body> {
    let json_type = header_str(&req, "content-type")
        .is_some_and(|t| t.trim_start().starts_with("application/json"));
    if header_str(&req, "x-herald-admin") != Some("1") || !json_type {
        return fail(
            ErrorCode::PermissionDenied,
            "admin UI requests need X-Herald-Admin: 1 and Content-Type: application/json",
        );
    }
    let body = match shared.api_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut value: Value = match serde_json::from_slice(&body) {
        Ok(Value::Object(map)) => Value::Object(map),
        Ok(_) => return fail(ErrorCode::InvalidRequest, "the body must be a JSON object"),
        Err(e) => return fail(ErrorCode::InvalidJson, format!("invalid request body: {e}")),
    };
    let app_id = value
        .as_object_mut()
        .and_then(|m| m.remove("app"))
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let Some(app) = shared.node.app_by_id(&app_id) else {
        return fail(ErrorCode::UnknownApp, "no such app (give \"app\")");
    };
    match action {
        Action::Publish => {
            let body = serde_json::to_vec(&value).unwrap_or_default();
            crate::api::publish_body(shared, &app, &body).await
        }
        Action::Disconnect => {
            let Some(user) = value["user"].as_str().filter(|u| !u.is_empty()) else {
                return fail(ErrorCode::InvalidRequest, "give \"user\"");
            };
            match shared
                .node
                .disconnect_user(&app, user, CloseCode::Terminated)
                .await
            {
                Ok(()) => json(StatusCode::OK, &json!({"ok": true})),
                Err(r) => error(&r),
            }
        }
    }
}

/// `/ui/api/tail`: the channel's publications as Server-Sent Events, from a tap (which
/// neither subscribes nor counts as a connection), until the browser goes or the server
/// stops.
async fn tail(
    shared: &Shared,
    app: &App,
    req: &Request<Incoming>,
    stop: CancellationToken,
) -> Response<Body> {
    let name = query_param(req, "channel").unwrap_or_default();
    let tap = match shared.node.tap(&app.id, &name).await {
        Ok(tap) => tap,
        Err(r) => return error(&r),
    };
    let mut keepalive = tokio::time::interval(TAIL_KEEPALIVE);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = (tap, keepalive, stop, 0u64);
    let stream = futures_util::stream::unfold(
        state,
        |(mut tap, mut keepalive, stop, missed)| async move {
            let chunk = tokio::select! {
                p = tap.next() => {
                    let p = p?;
                    let mut out = Vec::with_capacity(256);
                    let now_missed = tap.missed();
                    if now_missed > missed {
                        out.extend_from_slice(format!("event: missed\ndata: {}\n\n", now_missed - missed).as_bytes());
                    }
                    if let Some(bytes) = p.encoded(Protocol::Native) {
                        out.extend_from_slice(b"event: publication\n");
                        for line in bytes.split(|b| *b == b'\n') {
                            out.extend_from_slice(b"data: ");
                            out.extend_from_slice(line);
                            out.push(b'\n');
                        }
                        out.push(b'\n');
                    }
                    let missed = now_missed;
                    return Some((Ok(hyper::body::Frame::data(Bytes::from(out))), (tap, keepalive, stop, missed)));
                }
                _ = keepalive.tick() => Bytes::from_static(b": keepalive\n\n"),
                () = stop.cancelled() => return None,
            };
            Some((
                Ok(hyper::body::Frame::data(chunk)),
                (tap, keepalive, stop, missed),
            ))
        },
    );
    let mut resp = Response::new(StreamBody::new(stream).boxed());
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}
