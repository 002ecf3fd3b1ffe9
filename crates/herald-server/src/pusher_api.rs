//! The Pusher Channels HTTP API, under `/apps/{app_id}/`, so every Pusher server SDK
//! (PHP/Laravel, Node, Python, Ruby, Go…) works against Herald unchanged.
//!
//! | Method | Path | What |
//! |---|---|---|
//! | POST | `events` | trigger an event on `channel` or `channels` (at most 100) |
//! | POST | `batch_events` | trigger up to 10 events |
//! | GET | `channels` | occupied channels (`filter_by_prefix`, `info=user_count`) |
//! | GET | `channels/{name}` | `occupied`, `info=user_count,subscription_count,cache` |
//! | GET | `channels/{name}/users` | a presence channel's user ids |
//! | POST | `users/{id}/terminate_connections` | close every connection of a user |
//!
//! Every request is signed (`auth_key`, `auth_timestamp` within 600 s, `auth_version`,
//! `body_md5` for a non-empty body, `auth_signature` = HMAC-SHA256 of
//! `METHOD\nPATH\nsorted params`), and the signature is compared in constant time.
//! Publishing to `#server-to-user-<id>` (the SDKs' `sendToUser`) sends to that user.

use std::borrow::Cow;
use std::sync::Arc;

use herald_core::PublishRequest;
use herald_core::pusher_auth::{hex, sign};
use herald_core::secret::constant_time_eq;
use herald_core::{App, EventData, RawJson, Refusal};
use herald_protocol::{ChannelName, CloseCode, ErrorCode, SocketId};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use md5::{Digest, Md5};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::http::{Body, error, error_retry, fail, json as json_response};
use crate::server::Shared;

/// The largest accepted difference between `auth_timestamp` and the server clock, seconds.
pub const MAX_CLOCK_SKEW_SECS: u64 = 600;

/// Route and serve one request; `path` is what follows `/apps/`.
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
        return fail(
            ErrorCode::NotFound,
            "Pusher API paths start with /apps/{app_id}/",
        );
    };
    let Some(app) = shared.node.app_by_id(app_id) else {
        return fail(ErrorCode::UnknownApp, "no app has this id");
    };
    let method = req.method().clone();
    // Everything the head carries is checked before a byte of the body is read: the key,
    // the timestamp and the signature (which covers `body_md5`). An unauthenticated client
    // is answered at once and never makes the server hold its body.
    let params = match verify(
        &app,
        &method,
        req.uri().path(),
        req.uri().query().unwrap_or(""),
    ) {
        Ok(p) => p,
        Err(r) => return error(&r),
    };
    let body = match shared.api_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    if let Err(r) = verify_body(&params, &body) {
        return error(&r);
    }
    if !app.settings.enabled {
        return fail(ErrorCode::AppDisabled, "app is disabled");
    }
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    match (&method, rest) {
        (&Method::POST, ["events"]) => events(shared, &app, &body).await,
        (&Method::POST, ["batch_events"]) => batch_events(shared, &app, &body).await,
        (&Method::GET, ["channels"]) => {
            channels(shared, &app, param("filter_by_prefix"), param("info")).await
        }
        (&Method::GET, ["channels", name]) => channel(shared, &app, name, param("info")).await,
        (&Method::GET, ["channels", name, "users"]) => users(shared, &app, name).await,
        (&Method::POST, ["users", user, "terminate_connections"]) => {
            match shared
                .node
                .disconnect_user(&app, user, CloseCode::Terminated)
                .await
            {
                Ok(()) => json_response(StatusCode::OK, &json!({})),
                Err(r) => error(&r),
            }
        }
        _ => fail(ErrorCode::NotFound, "no such Pusher API route"),
    }
}

/// Check the request signature from the head alone; return the query parameters
/// (decoded). The body is checked against the signed `body_md5` by [`verify_body`].
fn verify(
    app: &App,
    method: &Method,
    path: &str,
    query: &str,
) -> Result<Vec<(String, String)>, Refusal> {
    let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let unauthorized = |m: &'static str| Refusal::new(ErrorCode::Unauthorized, m);
    let key = get("auth_key").ok_or_else(|| unauthorized("auth_key is required"))?;
    if !constant_time_eq(key.as_bytes(), app.settings.key.as_bytes()) {
        return Err(unauthorized("auth_key does not match the app"));
    }
    let timestamp: u64 = get("auth_timestamp")
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| unauthorized("auth_timestamp is required"))?;
    let now = herald_core::clock::unix_secs();
    if now.abs_diff(timestamp) > MAX_CLOCK_SKEW_SECS {
        return Err(Refusal::new(
            ErrorCode::Unauthorized,
            format!(
                "auth_timestamp is more than {MAX_CLOCK_SKEW_SECS} s from the server time ({now})"
            ),
        ));
    }
    if get("auth_version") != Some("1.0") {
        return Err(unauthorized("auth_version must be 1.0"));
    }
    let signature =
        get("auth_signature").ok_or_else(|| unauthorized("auth_signature is required"))?;
    let expected = sign(&app.settings.secret, &string_to_sign(method, path, &params));
    if !constant_time_eq(signature.as_bytes(), expected.as_bytes()) {
        return Err(Refusal::new(
            ErrorCode::BadSignature,
            "invalid auth_signature",
        ));
    }
    Ok(params)
}

/// Check a body against the `body_md5` its (already verified) signature covers.
fn verify_body(params: &[(String, String)], body: &[u8]) -> Result<(), Refusal> {
    if body.is_empty() {
        return Ok(());
    }
    let expected = hex(&Md5::digest(body));
    let md5 = params.iter().find(|(k, _)| k == "body_md5").map(|(_, v)| v);
    match md5 {
        Some(md5) if constant_time_eq(md5.as_bytes(), expected.as_bytes()) => Ok(()),
        Some(_) => Err(Refusal::new(
            ErrorCode::Unauthorized,
            "body_md5 does not match the body",
        )),
        None => Err(Refusal::new(
            ErrorCode::Unauthorized,
            "body_md5 is required with a body",
        )),
    }
}

/// What a request signature covers: `METHOD\nPATH\nparams`, the params being every query
/// parameter but `auth_signature`, keys lower-cased, sorted by key, joined as `k=v&…`
/// without URL escaping.
fn string_to_sign(method: &Method, path: &str, params: &[(String, String)]) -> String {
    let mut signed: Vec<(String, &str)> = params
        .iter()
        .filter(|(k, _)| k != "auth_signature")
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
        .collect();
    signed.sort_by(|a, b| a.0.cmp(&b.0));
    let query = signed
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    format!("{method}\n{path}\n{query}")
}

/// One event to trigger.
#[derive(Deserialize)]
struct EventBody<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    channels: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow, default)]
    socket_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    info: Option<Cow<'a, str>>,
}

/// An event, validated, ready to publish.
struct Trigger {
    request: PublishRequest,
    channels: Vec<ChannelName>,
    users: Vec<String>,
    info: Vec<String>,
}

fn prepare(shared: &Shared, app: &App, body: EventBody<'_>) -> Result<Trigger, Refusal> {
    let names: Vec<String> = match (body.channel, body.channels) {
        (Some(c), None) => vec![c.into_owned()],
        (None, Some(cs)) => cs.into_iter().map(Cow::into_owned).collect(),
        (Some(_), Some(_)) => {
            return Err(Refusal::new(
                ErrorCode::InvalidRequest,
                "give either channel or channels",
            ));
        }
        (None, None) => {
            return Err(Refusal::new(
                ErrorCode::InvalidRequest,
                "channel or channels is required",
            ));
        }
    };
    let max = app.settings.limits.max_channels_per_publish;
    if names.len() > max {
        return Err(Refusal::new(
            ErrorCode::TooManyChannels,
            format!("an event may name at most {max} channels"),
        ));
    }
    // Pusher's data is a string; an SDK that sends another JSON value gets it as JSON.
    let data = match serde_json::from_str::<String>(body.data.get()) {
        Ok(text) => EventData::Text(Arc::from(text)),
        Err(_) => EventData::Json(RawJson::from_raw(body.data)),
    };
    let exclude = body
        .socket_id
        .map(|s| s.parse::<SocketId>())
        .transpose()
        .map_err(|e| Refusal::new(ErrorCode::InvalidRequest, format!("socket_id: {e}")))?;
    let (users, regular): (Vec<String>, Vec<String>) = names
        .into_iter()
        .partition(|c| herald_protocol::pusher::server_to_user_id(c).is_some());
    let mut users: Vec<String> = users
        .iter()
        .filter_map(|c| herald_protocol::pusher::server_to_user_id(c).map(str::to_owned))
        .collect();
    // A user named twice gets one copy, as a channel named twice does.
    users.sort_unstable();
    users.dedup();
    let request = PublishRequest {
        channels: regular,
        event: body.name.into_owned(),
        data,
        exclude,
        idempotency_key: None,
    };
    let channels = if request.channels.is_empty() {
        // Only user channels: still check the event itself.
        if users.is_empty() {
            return Err(Refusal::new(ErrorCode::InvalidRequest, "no channel given"));
        }
        Vec::new()
    } else {
        shared.node.validate_publish(app, &request)?
    };
    let info = body
        .info
        .map(|i| {
            i.split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    Ok(Trigger {
        request,
        channels,
        users,
        info,
    })
}

/// Publish a prepared event; with `info`, return the requested counts per channel.
async fn trigger(
    shared: &Shared,
    app: &App,
    t: Trigger,
) -> Result<Option<Map<String, Value>>, Refusal> {
    for user in &t.users {
        shared
            .node
            .send_to_user(app, user, &t.request.event, t.request.data.clone())
            .await?;
    }
    let channels = t.channels.clone();
    if !channels.is_empty() {
        shared
            .node
            .publish_validated(app, t.channels, t.request)
            .await?;
    }
    if t.info.is_empty() {
        return Ok(None);
    }
    let mut out = Map::new();
    for channel in &channels {
        out.insert(
            channel.to_string(),
            Value::Object(counts(shared, app, channel, &t.info).await?),
        );
    }
    Ok(Some(out))
}

/// `user_count` and `subscription_count` for `channel`, as requested in `info`.
async fn counts(
    shared: &Shared,
    app: &App,
    channel: &ChannelName,
    info: &[String],
) -> Result<Map<String, Value>, Refusal> {
    let mut attrs = Map::new();
    let details = shared.node.channel_info(app, channel).await?;
    if info.iter().any(|i| i == "user_count")
        && let Some(n) = details.presence_members
    {
        attrs.insert("user_count".into(), json!(n));
    }
    if info.iter().any(|i| i == "subscription_count") {
        attrs.insert("subscription_count".into(), json!(details.subscribers));
    }
    Ok(attrs)
}

fn rate_limit(app: &App, n: usize) -> Result<(), Response<Body>> {
    for _ in 0..n {
        app.take_publish_token()
            .map_err(|(refusal, retry)| error_retry(&refusal, retry))?;
    }
    Ok(())
}

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

async fn events(shared: &Arc<Shared>, app: &Arc<App>, body: &[u8]) -> Response<Body> {
    let event: EventBody<'_> = match parse(body) {
        Ok(e) => e,
        Err(r) => return r,
    };
    let prepared = match prepare(shared, app, event) {
        Ok(p) => p,
        Err(r) => return error(&r),
    };
    if let Err(r) = rate_limit(app, 1) {
        return r;
    }
    match trigger(shared, app, prepared).await {
        Ok(None) => json_response(StatusCode::OK, &json!({})),
        Ok(Some(channels)) => json_response(StatusCode::OK, &json!({ "channels": channels })),
        Err(r) => error(&r),
    }
}

#[derive(Deserialize)]
struct BatchBody<'a> {
    #[serde(borrow)]
    batch: Vec<EventBody<'a>>,
}

async fn batch_events(shared: &Arc<Shared>, app: &Arc<App>, body: &[u8]) -> Response<Body> {
    let batch: BatchBody<'_> = match parse(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let max = app.settings.limits.max_batch_events;
    if batch.batch.len() > max {
        return fail(
            ErrorCode::TooManyChannels,
            format!("a batch may hold at most {max} events"),
        );
    }
    let mut prepared = Vec::with_capacity(batch.batch.len());
    for (i, event) in batch.batch.into_iter().enumerate() {
        match prepare(shared, app, event) {
            Ok(p) => prepared.push(p),
            Err(r) => return error(&Refusal::new(r.code, format!("batch[{i}]: {}", r.message))),
        }
    }
    if let Err(r) = rate_limit(app, prepared.len()) {
        return r;
    }
    let wants_info = prepared.iter().any(|p| !p.info.is_empty());
    let mut results = Vec::with_capacity(prepared.len());
    for p in prepared {
        let channel = p.channels.first().cloned();
        let info = p.info.clone();
        match trigger(shared, app, p).await {
            Ok(_) if wants_info => {
                let attrs = match &channel {
                    Some(c) if !info.is_empty() => match counts(shared, app, c, &info).await {
                        Ok(a) => a,
                        Err(r) => return error(&r),
                    },
                    _ => Map::new(),
                };
                results.push(Value::Object(attrs));
            }
            Ok(_) => {}
            Err(r) => return error(&r),
        }
    }
    if wants_info {
        json_response(StatusCode::OK, &json!({ "batch": results }))
    } else {
        json_response(StatusCode::OK, &json!({}))
    }
}

async fn channels(
    shared: &Arc<Shared>,
    app: &Arc<App>,
    prefix: Option<&str>,
    info: Option<&str>,
) -> Response<Body> {
    let prefix = prefix.unwrap_or("");
    let want_users = info.is_some_and(|i| i.split(',').any(|a| a.trim() == "user_count"));
    if want_users && !prefix.starts_with("presence-") {
        return fail(
            ErrorCode::InvalidRequest,
            "info=user_count needs filter_by_prefix to start with presence-",
        );
    }
    let list = match shared.node.channels(app, prefix).await {
        Ok(list) => list,
        Err(r) => return error(&r),
    };
    let mut out = Map::new();
    for c in list {
        let mut attrs = Map::new();
        if want_users && let Some(n) = c.presence_members {
            attrs.insert("user_count".into(), json!(n));
        }
        out.insert(c.name.to_string(), Value::Object(attrs));
    }
    json_response(StatusCode::OK, &json!({ "channels": out }))
}

async fn channel(
    shared: &Arc<Shared>,
    app: &Arc<App>,
    name: &str,
    info: Option<&str>,
) -> Response<Body> {
    let Ok(channel) = ChannelName::new(name) else {
        return fail(ErrorCode::InvalidChannel, "invalid channel name");
    };
    let attrs: Vec<&str> = info
        .map(|i| i.split(',').map(str::trim).collect())
        .unwrap_or_default();
    if attrs.contains(&"user_count") && !channel.kind().is_presence() {
        return fail(
            ErrorCode::InvalidRequest,
            "user_count is only available for presence channels",
        );
    }
    let details = match shared.node.channel_info(app, &channel).await {
        Ok(d) => d,
        Err(r) => return error(&r),
    };
    let mut out = Map::new();
    out.insert("occupied".into(), json!(details.subscribers > 0));
    if attrs.contains(&"user_count") {
        out.insert(
            "user_count".into(),
            json!(details.presence_members.unwrap_or(0)),
        );
    }
    if attrs.contains(&"subscription_count") {
        out.insert("subscription_count".into(), json!(details.subscribers));
    }
    if attrs.contains(&"cache") && channel.kind().cache {
        if let Some((cached, ttl)) = shared.node.cached_event(app, &channel) {
            let (event, data) = match &cached.payload {
                herald_core::publication::Payload::Event { event, data, .. } => (
                    event.to_string(),
                    String::from_utf8_lossy(&data.pusher_literal()).into_owned(),
                ),
                _ => (String::new(), "\"\"".to_owned()),
            };
            let data: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
            out.insert(
                "cache".into(),
                json!({"event": event, "data": data, "ttl": ttl.as_secs()}),
            );
        }
    }
    json_response(StatusCode::OK, &Value::Object(out))
}

async fn users(shared: &Arc<Shared>, app: &Arc<App>, name: &str) -> Response<Body> {
    let Ok(channel) = ChannelName::new(name) else {
        return fail(ErrorCode::InvalidChannel, "invalid channel name");
    };
    match shared.node.presence_members(app, &channel).await {
        Ok(members) => {
            let users: Vec<Value> = members.iter().map(|m| json!({"id": &*m.user_id})).collect();
            json_response(StatusCode::OK, &json!({ "users": users }))
        }
        Err(r) => error(&r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::secret::Secret;

    /// The worked example of the Pusher HTTP API documentation.
    #[test]
    fn documented_request_signature() {
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        let md5 = hex(&Md5::digest(body));
        assert_eq!(md5, "ec365a775a4cd0599faeb73354201b6f");
        let params: Vec<(String, String)> = [
            ("auth_key", "278d425bdf160c739803"),
            ("auth_timestamp", "1353088179"),
            ("auth_version", "1.0"),
            ("body_md5", md5.as_str()),
            ("auth_signature", "ignored"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let base = string_to_sign(&Method::POST, "/apps/3/events", &params);
        assert_eq!(
            base,
            "POST\n/apps/3/events\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f"
        );
        assert_eq!(
            sign(&Secret::new("7ad3773142a6692b25b8"), &base),
            "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
    }
}
