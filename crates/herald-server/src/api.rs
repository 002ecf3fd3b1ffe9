//! The native HTTP API, under `/api/{app_id}/`.
//!
//! Every request authenticates with the app secret as a bearer token
//! (`Authorization: Bearer <secret>`), compared in constant time. Use it over TLS or on a
//! private network. Errors are JSON: `{"error":{"code":…,"name":…,"message":…}}` with the
//! status from the code catalogue (400, 401, 403, 404, 405, 413, 429).
//!
//! | Method | Path | What |
//! |---|---|---|
//! | POST | `publish` | publish one event to `channel` or `channels` |
//! | POST | `batch` | publish several events; all are validated before any is published |
//! | POST | `users/{user_id}/events` | send an event to every connection of a user |
//! | POST | `users/{user_id}/disconnect` | close every connection of a user |
//! | POST | `sockets/{socket_id}/events` | send an event to one connection |
//! | GET | `channels?prefix=` | occupied channels, with subscriber counts |
//! | GET | `channels/{name}` | one channel's subscriber and presence counts |
//! | GET | `channels/{name}/presence` | a presence channel's members |
//! | GET, DELETE | `channels/{name}/history` | read or clear a channel's history (`history_api.rs`) |
//! | GET | `stats` | stored-history and connection figures (`history_api.rs`) |

use std::borrow::Cow;
use std::sync::Arc;

use herald_core::{App, EventData, RawJson, Refusal};
use herald_core::{PublishReceipt, PublishRequest};
use herald_protocol::{ChannelName, CloseCode, ErrorCode, SocketId};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use crate::http::{Body, bearer, error, error_retry, fail, json as json_response, query_param};
use crate::server::Shared;

/// Route and serve one API request; `path` is what follows `/api/`.
pub async fn handle(shared: &Arc<Shared>, req: Request<Incoming>, path: &[&str]) -> Response<Body> {
    let metrics = shared.node.metrics();
    herald_core::Metrics::inc(&metrics.api_requests);
    let response = serve(shared, req, path).await;
    if !response.status().is_success() {
        herald_core::Metrics::inc(&metrics.api_errors);
    }
    response
}

async fn serve(shared: &Arc<Shared>, req: Request<Incoming>, path: &[&str]) -> Response<Body> {
    let Some((app_id, rest)) = path.split_first() else {
        return fail(ErrorCode::NotFound, "API paths start with /api/{app_id}/");
    };
    let Some(app) = shared.node.app_by_id(app_id) else {
        return fail(ErrorCode::UnknownApp, "no app has this id");
    };
    match bearer(&req) {
        None => {
            return fail(
                ErrorCode::Unauthorized,
                "send the app secret as Authorization: Bearer <secret>",
            );
        }
        Some(token) if !app.settings.secret.matches(token.as_bytes()) => {
            return fail(ErrorCode::Unauthorized, "invalid API credentials");
        }
        Some(_) => {}
    }
    if !app.settings.enabled {
        return fail(ErrorCode::AppDisabled, "app is disabled");
    }
    let method = req.method().clone();
    match (&method, rest) {
        (&Method::POST, ["publish"]) => publish(shared, &app, req).await,
        (&Method::POST, ["batch"]) => batch(shared, &app, req).await,
        (&Method::POST, ["users", user, "events"]) => {
            let user = (*user).to_owned();
            direct(shared, &app, req, Target::User(user)).await
        }
        (&Method::POST, ["sockets", socket, "events"]) => match socket.parse::<SocketId>() {
            Ok(id) => direct(shared, &app, req, Target::Socket(id)).await,
            Err(e) => fail(ErrorCode::InvalidRequest, e.to_string()),
        },
        (&Method::POST, ["users", user, "disconnect"]) => {
            let user = (*user).to_owned();
            disconnect(shared, &app, req, &user).await
        }
        (&Method::GET, ["channels"]) => {
            let prefix = query_param(&req, "prefix").unwrap_or_default();
            let channels = match shared.node.channels(&app, &prefix).await {
                Ok(list) => list,
                Err(r) => return error(&r),
            };
            let list: Vec<_> = channels
                .iter()
                .map(|c| channel_json(c.name.as_str(), c.subscribers, c.presence_members))
                .collect();
            json_response(StatusCode::OK, &json!({ "channels": list }))
        }
        (&Method::GET, ["channels", name]) => match channel(name) {
            Ok(channel) => match shared.node.channel_info(&app, &channel).await {
                Ok(info) => {
                    let mut body =
                        channel_json(info.name.as_str(), info.subscribers, info.presence_members);
                    body["occupied"] = json!(info.subscribers > 0);
                    json_response(StatusCode::OK, &body)
                }
                Err(r) => error(&r),
            },
            Err(r) => error(&r),
        },
        (&Method::GET, ["channels", name, "presence"]) => match channel(name) {
            Ok(channel) => match shared.node.presence_members(&app, &channel).await {
                Ok(members) => {
                    let list: Vec<_> = members
                        .iter()
                        .map(|m| json!({"user_id": &*m.user_id, "info": m.info.to_value()}))
                        .collect();
                    json_response(
                        StatusCode::OK,
                        &json!({"members": list, "count": members.len()}),
                    )
                }
                Err(r) => error(&r),
            },
            Err(r) => error(&r),
        },
        (&Method::GET, ["channels", name, "history"]) => {
            crate::history_api::read(shared, &app, &req, name).await
        }
        (&Method::DELETE, ["channels", name, "history"]) => {
            crate::history_api::clear(shared, &app, name).await
        }
        (&Method::GET, ["stats"]) => crate::history_api::stats(shared, &app).await,
        (_, ["channels", _, "history"]) | (_, ["stats"]) => fail(
            ErrorCode::MethodNotAllowed,
            format!("{method} is not allowed here"),
        ),
        (_, ["publish" | "batch"])
        | (_, ["users", _, "events" | "disconnect"])
        | (_, ["sockets", _, "events"])
        | (_, ["channels"])
        | (_, ["channels", _])
        | (_, ["channels", _, "presence"]) => fail(
            ErrorCode::MethodNotAllowed,
            format!("{method} is not allowed here"),
        ),
        _ => fail(ErrorCode::NotFound, "no such API route"),
    }
}

fn channel_json(name: &str, subscribers: usize, presence: Option<usize>) -> serde_json::Value {
    let mut v = json!({"name": name, "subscribers": subscribers});
    if let Some(n) = presence {
        v["presence_members"] = json!(n);
    }
    v
}

fn channel(name: &str) -> Result<ChannelName, Refusal> {
    ChannelName::new(name).map_err(|e| Refusal::new(ErrorCode::InvalidChannel, e.to_string()))
}

/// The body of a publish (and of each batch entry). Strings borrow from the body where
/// they have no escapes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody<'a> {
    /// One channel…
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
    /// …or several.
    #[serde(borrow, default)]
    channels: Option<Vec<Cow<'a, str>>>,
    /// The event name.
    #[serde(borrow)]
    event: Cow<'a, str>,
    /// The data: any JSON value (null when absent).
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    /// A socket id that must not receive the event.
    #[serde(default)]
    exclude_socket: Option<String>,
    /// A repeat of this key within the app's idempotency window is not delivered again.
    #[serde(default)]
    idempotency_key: Option<String>,
}

impl PublishBody<'_> {
    fn into_request(self) -> Result<PublishRequest, Refusal> {
        let channels = match (self.channel, self.channels) {
            (Some(c), None) => vec![c.into_owned()],
            (None, Some(cs)) => cs.into_iter().map(Cow::into_owned).collect(),
            (Some(_), Some(_)) => {
                return Err(Refusal::new(
                    ErrorCode::InvalidRequest,
                    "give either channel or channels, not both",
                ));
            }
            (None, None) => {
                return Err(Refusal::new(
                    ErrorCode::InvalidRequest,
                    "channel or channels is required",
                ));
            }
        };
        let exclude = self
            .exclude_socket
            .map(|s| s.parse::<SocketId>())
            .transpose()
            .map_err(|e| Refusal::new(ErrorCode::InvalidRequest, format!("exclude_socket: {e}")))?;
        if let Some(key) = &self.idempotency_key
            && (key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY)
        {
            return Err(Refusal::new(
                ErrorCode::InvalidRequest,
                format!("idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY} bytes"),
            ));
        }
        Ok(PublishRequest {
            channels,
            event: self.event.into_owned(),
            data: EventData::Json(self.data.map_or_else(RawJson::null, RawJson::from_raw)),
            exclude,
            idempotency_key: self.idempotency_key,
        })
    }
}

/// Parse a JSON body into `T`, mapping syntax errors to 101 and shape errors to 104.
fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Response<Body>> {
    serde_json::from_slice(body).map_err(|e| {
        let code = if e.is_data() {
            ErrorCode::InvalidRequest
        } else {
            ErrorCode::InvalidJson
        };
        fail(code, format!("invalid request body: {e}"))
    })
}

fn rate_limit(app: &App, n: usize) -> Result<(), Response<Body>> {
    for _ in 0..n {
        app.take_publish_token()
            .map_err(|(refusal, retry)| error_retry(&refusal, retry))?;
    }
    Ok(())
}

async fn publish(shared: &Arc<Shared>, app: &Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let body = match shared.api_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    publish_body(shared, app, &body).await
}

/// Publish what a publish request's `body` asks for (the API, and the admin UI's form):
/// parsed, within the app's rate limit, answered with the receipt.
pub(crate) async fn publish_body(shared: &Shared, app: &Arc<App>, body: &[u8]) -> Response<Body> {
    let request = match parse::<PublishBody<'_>>(body).map(PublishBody::into_request) {
        Ok(Ok(r)) => r,
        Ok(Err(refusal)) => return error(&refusal),
        Err(r) => return r,
    };
    if let Err(r) = rate_limit(app, 1) {
        return r;
    }
    match shared.node.publish(app, request).await {
        Ok(receipt) => receipt_response(&receipt),
        Err(r) => error(&r),
    }
}

/// Longest idempotency key accepted, in bytes.
const MAX_IDEMPOTENCY_KEY: usize = 256;

/// `{"id":"…","channels":[…]}`, plus `positions` (channels with history), `unchanged`
/// (dropped by dedupe) and `duplicate` (a repeated idempotency key) when they apply.
/// Written directly: this is the API's hottest answer.
fn receipt_json(receipt: &PublishReceipt, out: &mut Vec<u8>) {
    use herald_protocol::json::{write_str, write_u64};
    out.extend_from_slice(b"{\"id\":");
    write_str(out, &receipt.id);
    out.extend_from_slice(b",\"channels\":[");
    for (i, c) in receipt.channels.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, c.name.as_str());
    }
    out.push(b']');
    let mut positions = receipt
        .channels
        .iter()
        .filter_map(|c| c.position.as_ref().map(|p| (c, p)))
        .peekable();
    if positions.peek().is_some() {
        out.extend_from_slice(b",\"positions\":{");
        for (i, (c, p)) in positions.enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_str(out, c.name.as_str());
            out.extend_from_slice(b":{\"offset\":");
            write_u64(out, p.offset);
            out.extend_from_slice(b",\"epoch\":");
            write_str(out, &p.epoch);
            out.push(b'}');
        }
        out.push(b'}');
    }
    let mut unchanged = receipt.channels.iter().filter(|c| c.unchanged).peekable();
    if unchanged.peek().is_some() {
        out.extend_from_slice(b",\"unchanged\":[");
        for (i, c) in unchanged.enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_str(out, c.name.as_str());
        }
        out.push(b']');
    }
    if receipt.duplicate {
        out.extend_from_slice(b",\"duplicate\":true");
    }
    out.push(b'}');
}

fn receipt_response(receipt: &PublishReceipt) -> Response<Body> {
    let mut out = Vec::with_capacity(48 + receipt.channels.len() * 24);
    receipt_json(receipt, &mut out);
    let mut resp = Response::new(crate::http::full(out));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody<'a> {
    #[serde(borrow)]
    events: Vec<PublishBody<'a>>,
}

async fn batch(shared: &Arc<Shared>, app: &Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let body = match shared.api_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let batch = match parse::<BatchBody<'_>>(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let max = app.settings.limits.max_batch_events;
    if batch.events.len() > max {
        return fail(
            ErrorCode::TooManyChannels,
            format!("a batch may hold at most {max} events"),
        );
    }
    if batch.events.is_empty() {
        return fail(ErrorCode::InvalidRequest, "events is empty");
    }
    let mut requests = Vec::with_capacity(batch.events.len());
    for (i, event) in batch.events.into_iter().enumerate() {
        let request = match event.into_request() {
            Ok(r) => r,
            Err(r) => return error(&Refusal::new(r.code, format!("events[{i}]: {}", r.message))),
        };
        match shared.node.validate_publish(app, &request) {
            Ok(channels) => requests.push((channels, request)),
            Err(r) => return error(&Refusal::new(r.code, format!("events[{i}]: {}", r.message))),
        }
    }
    if let Err(r) = rate_limit(app, requests.len()) {
        return r;
    }
    let mut results = Vec::with_capacity(requests.len());
    for (channels, request) in requests {
        match shared.node.publish_validated(app, channels, request).await {
            Ok(receipt) => {
                let mut out = Vec::new();
                receipt_json(&receipt, &mut out);
                results.push(serde_json::from_slice::<serde_json::Value>(&out).unwrap_or_default());
            }
            Err(r) => return error(&r),
        }
    }
    json_response(StatusCode::OK, &json!({ "results": results }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DirectBody<'a> {
    event: String,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

enum Target {
    User(String),
    Socket(SocketId),
}

async fn direct(
    shared: &Arc<Shared>,
    app: &Arc<App>,
    req: Request<Incoming>,
    target: Target,
) -> Response<Body> {
    let body = match shared.api_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let direct = match parse::<DirectBody<'_>>(&body) {
        Ok(d) => d,
        Err(r) => return r,
    };
    if let Err(r) = rate_limit(app, 1) {
        return r;
    }
    let data = EventData::Json(direct.data.map_or_else(RawJson::null, RawJson::from_raw));
    let result = match target {
        Target::User(user) => {
            shared
                .node
                .send_to_user(app, &user, &direct.event, data)
                .await
        }
        Target::Socket(id) => {
            shared
                .node
                .send_to_socket(app, id, &direct.event, data)
                .await
        }
    };
    match result {
        Ok(id) => json_response(StatusCode::OK, &json!({ "id": &*id })),
        Err(r) => error(&r),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct DisconnectBody {
    /// Ask the clients to reconnect (4200) instead of staying away (4008).
    reconnect: bool,
}

async fn disconnect(
    shared: &Arc<Shared>,
    app: &Arc<App>,
    req: Request<Incoming>,
    user: &str,
) -> Response<Body> {
    let body = match shared.api_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let options = if body.iter().all(u8::is_ascii_whitespace) {
        DisconnectBody::default()
    } else {
        match parse::<DisconnectBody>(&body) {
            Ok(o) => o,
            Err(r) => return r,
        }
    };
    let code = if options.reconnect {
        CloseCode::Reconnect
    } else {
        CloseCode::Terminated
    };
    match shared.node.disconnect_user(app, user, code).await {
        Ok(()) => json_response(StatusCode::OK, &json!({})),
        Err(r) => error(&r),
    }
}
