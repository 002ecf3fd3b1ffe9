//! Asking an app's own backend (docs/backend-auth.md):
//!
//! - **Connect proxy** (`[apps.connect_proxy]`): a native connection (WebSocket, SSE,
//!   long-polling) that brings no token is described to the backend (`POST` JSON with the
//!   allowed headers, the allowed cookies as a `Cookie` header, the client's address and the
//!   transport). `200` with `{"user_id", "channels", "roles", "permissions", "info",
//!   "expires_at"}` (every field optional) is the connection's identity, as a token's claims
//!   would be; `401`/`403` with `{"error": {"code", "message"}}` refuses it (code 4004).
//! - **Subscribe proxy** (`[apps.subscribe_proxy]`): a private or presence channel no token
//!   grants is asked of the backend in Laravel's `/broadcasting/auth` format (a form with
//!   `socket_id` and `channel_name`, the allowed cookies, `X-XSRF-TOKEN` from Laravel's
//!   cookie). The answer `{"auth": "key:signature", "channel_data": "…"}` is checked like a
//!   Pusher client's signature (HMAC-SHA256 with the app secret): `routes/channels.php`
//!   authorises native clients unchanged.
//!
//! Both fail closed: no answer within `timeout`, another status, or an answer that does not
//! parse or verify refuses with 210 `backend_unavailable` (a connection closes with 1013, try
//! again later). Each app has its own bound of calls in flight (`max_concurrent`): a call
//! over it waits at most the timeout for a free one, then is refused, so a slow backend piles nothing up and
//! holds up no other app. Answers are not cached: a backend that revokes a session is
//! obeyed at the next connection or subscription. Counted in
//! `herald_backend_requests_total{app, proxy, outcome}`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use herald_core::auth::{ChannelAccess, Identity};
use herald_core::backend::{BackendContext, SubscribeAuthority};
use herald_core::pattern::Pattern;
use herald_core::settings::ProxySettings;
use herald_core::{App, ConnectRefusal, Node, RawJson, Refusal, Transport};
use herald_protocol::{ChannelName, CloseCode, ErrorCode, SocketId};
use http::{HeaderMap, Method};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Semaphore;
use tracing::debug;

use crate::backend_http::{HttpTarget, RequestError, request};

/// The most of a backend's answer that is read.
const MAX_ANSWER: usize = 64 * 1024;

/// Longest user id a backend may give (as for tokens).
const MAX_USER_ID: usize = herald_protocol::token::MAX_USER_ID_LEN;

/// How a call to a backend ended, for the metrics.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Allowed = 0,
    Denied = 1,
    Failed = 2,
    Timeout = 3,
    Overloaded = 4,
}

const OUTCOMES: [&str; 5] = ["allowed", "denied", "failed", "timeout", "overloaded"];

/// One proxy of one app.
struct Proxy {
    target: HttpTarget,
    settings: ProxySettings,
    /// Calls in flight, bounded by `max_concurrent`.
    permits: Semaphore,
    /// Calls by [`Outcome`].
    outcomes: [AtomicU64; 5],
}

impl Proxy {
    fn new(settings: &ProxySettings) -> Result<Self, String> {
        Ok(Self {
            target: HttpTarget::parse(&settings.url)?,
            settings: settings.clone(),
            permits: Semaphore::new(settings.max_concurrent as usize),
            outcomes: Default::default(),
        })
    }

    fn count(&self, outcome: Outcome) {
        self.outcomes[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// POST `body` with the connection's allowed headers and cookies, within the
    /// concurrency bound: a call waits at most `timeout` for a free slot, then the backend
    /// has `timeout` to answer. (Waiting and answering have separate deadlines so that a
    /// call that got a slot late is not abandoned mid-answer, which would let the backend
    /// see more calls at once than the bound.)
    async fn post(
        &self,
        context: &BackendContext,
        content_type: &str,
        body: Bytes,
    ) -> Result<crate::backend_http::Answer, Refusal> {
        let timeout = self.settings.timeout;
        let Ok(Ok(_permit)) = tokio::time::timeout(timeout, self.permits.acquire()).await else {
            self.count(Outcome::Overloaded);
            return Err(unavailable("too many calls to the app's backend in flight"));
        };
        let mut headers: Vec<(&str, &str)> = vec![
            ("content-type", content_type),
            ("accept", "application/json"),
            ("x-requested-with", "XMLHttpRequest"),
        ];
        let cookie = cookie_header(&context.cookies);
        if !cookie.is_empty() {
            headers.push(("cookie", &cookie));
        }
        let xsrf = self.settings.xsrf_cookie.as_deref().and_then(|name| {
            context
                .cookies
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| percent_decode(v))
        });
        if let Some(xsrf) = &xsrf {
            headers.push(("x-xsrf-token", xsrf));
        }
        for (name, value) in &context.headers {
            headers.push((name, value));
        }
        match request(
            &self.target,
            Method::POST,
            &headers,
            body,
            timeout,
            MAX_ANSWER,
        )
        .await
        {
            Ok(answer) => Ok(answer),
            Err(RequestError::Timeout) => {
                self.count(Outcome::Timeout);
                Err(unavailable("the app's backend did not answer in time"))
            }
            Err(RequestError::Failed(e)) => {
                self.count(Outcome::Failed);
                debug!(host = %self.target.authority, error = %e, "backend request failed");
                Err(unavailable("the app's backend could not be reached"))
            }
        }
    }
}

fn unavailable(message: &'static str) -> Refusal {
    Refusal::new(ErrorCode::BackendUnavailable, message)
}

/// The proxies of one app.
#[derive(Default)]
struct AppProxies {
    connect: Option<Proxy>,
    subscribe: Option<Proxy>,
}

/// Every app's proxies.
pub struct AppBackends {
    apps: HashMap<Arc<str>, AppProxies>,
}

impl std::fmt::Debug for AppBackends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppBackends")
            .field("apps", &self.apps.len())
            .finish()
    }
}

impl AppBackends {
    /// The proxies the apps of `node` configure.
    pub fn new(node: &Node) -> Result<Self, String> {
        let mut apps = HashMap::new();
        for app in node.apps() {
            let proxy = |s: &Option<ProxySettings>, key: &str| {
                s.as_ref()
                    .map(Proxy::new)
                    .transpose()
                    .map_err(|e| format!("apps {}: {key}.url: {e}", app.id))
            };
            let proxies = AppProxies {
                connect: proxy(&app.settings.connect_proxy, "connect_proxy")?,
                subscribe: proxy(&app.settings.subscribe_proxy, "subscribe_proxy")?,
            };
            if proxies.connect.is_some() || proxies.subscribe.is_some() {
                apps.insert(app.id.clone(), proxies);
            }
        }
        Ok(Self { apps })
    }

    /// Whether any app has a subscribe proxy (the node then asks this one).
    pub fn has_subscribe_proxies(&self) -> bool {
        self.apps.values().any(|p| p.subscribe.is_some())
    }

    /// What a connection to `app` brings for its proxies: the headers and cookies they
    /// allow, the client's address and the transport. `None` when the app has no proxy.
    pub fn context(
        &self,
        app: &App,
        headers: &HeaderMap,
        ip: std::net::IpAddr,
        transport: Transport,
    ) -> Option<Arc<BackendContext>> {
        let proxies = self.apps.get(&app.id)?;
        let allowed: Vec<&ProxySettings> = [&proxies.connect, &proxies.subscribe]
            .into_iter()
            .flatten()
            .map(|p| &p.settings)
            .collect();
        let mut context = BackendContext {
            ip: Some(ip),
            transport: Some(transport),
            ..BackendContext::default()
        };
        for (name, value) in headers {
            let Ok(value) = value.to_str() else { continue };
            if name == http::header::COOKIE {
                for (n, v) in value.split(';').filter_map(|c| c.trim().split_once('=')) {
                    if allowed.iter().any(|s| s.forwards_cookie(n))
                        && !context.cookies.iter().any(|(seen, _)| seen == n)
                    {
                        context.cookies.push((n.to_owned(), v.to_owned()));
                    }
                }
            } else if allowed.iter().any(|s| s.forwards_header(name.as_str())) {
                context
                    .headers
                    .push((name.as_str().to_owned(), value.to_owned()));
            }
        }
        Some(Arc::new(context))
    }

    /// Who a connection without a token is, by the app's connect proxy: `Ok(None)` when the
    /// app has none.
    pub async fn identify(
        &self,
        app: &App,
        context: &BackendContext,
    ) -> Result<Option<Identity>, ConnectRefusal> {
        let Some(proxy) = self.apps.get(&app.id).and_then(|p| p.connect.as_ref()) else {
            return Ok(None);
        };
        let body = json!({
            "app_id": &*app.id,
            "transport": context.transport.map(Transport::name),
            "client_ip": context.ip.map(|ip| ip.to_string()),
        });
        let refused = |refusal: Refusal| {
            let close = if refusal.code == ErrorCode::BackendUnavailable {
                CloseCode::TryAgainLater
            } else {
                CloseCode::Unauthorized
            };
            ConnectRefusal { refusal, close }
        };
        let answer = proxy
            .post(context, "application/json", Bytes::from(body.to_string()))
            .await
            .map_err(refused)?;
        match answer.status {
            200 => match identity(&answer.body) {
                Ok(identity) => {
                    proxy.count(Outcome::Allowed);
                    Ok(Some(identity))
                }
                Err(refusal) => {
                    proxy.count(Outcome::Failed);
                    Err(refused(refusal))
                }
            },
            401 | 403 => {
                proxy.count(Outcome::Denied);
                Err(refused(denial(&answer.body, ErrorCode::Unauthorized)))
            }
            status => {
                proxy.count(Outcome::Failed);
                debug!(status, "connect proxy answered with an error status");
                Err(refused(unavailable(
                    "the app's backend answered with an error",
                )))
            }
        }
    }

    /// What a native connection to the app `app_key` brings for its proxies, and who it
    /// is when it brings no token and the app has a connect proxy. Nothing for an app
    /// without proxies (or an unknown key, which the core refuses).
    pub async fn prepare(
        &self,
        node: &Node,
        app_key: &str,
        headers: &HeaderMap,
        ip: std::net::IpAddr,
        transport: Transport,
        token: Option<&str>,
    ) -> Result<(Option<Identity>, Option<Arc<BackendContext>>), ConnectRefusal> {
        let Some(app) = node.app_by_key(app_key) else {
            return Ok((None, None));
        };
        if let Some(token) = token {
            // With a key set, the key the token names may need fetching first.
            app.verifier.ready_for(token, crate::jwks::KEY_WAIT).await;
        }
        let Some(context) = self.context(&app, headers, ip, transport) else {
            return Ok((None, None));
        };
        let identity = if token.is_some() {
            None
        } else {
            self.identify(&app, &context).await?
        };
        Ok((identity, Some(context)))
    }

    /// `herald_backend_requests_total`, for `/metrics`.
    pub fn render_metrics(&self, out: &mut String) {
        if self.apps.is_empty() {
            return;
        }
        let _ = writeln!(
            out,
            "# HELP herald_backend_requests_total Calls to apps' connect and subscribe proxies, by outcome.\n\
             # TYPE herald_backend_requests_total counter"
        );
        for (app, proxies) in &self.apps {
            for (name, proxy) in [
                ("connect", &proxies.connect),
                ("subscribe", &proxies.subscribe),
            ] {
                let Some(proxy) = proxy else { continue };
                for (outcome, count) in OUTCOMES.iter().zip(&proxy.outcomes) {
                    let _ = writeln!(
                        out,
                        "herald_backend_requests_total{{app=\"{app}\",proxy=\"{name}\",outcome=\"{outcome}\"}} {}",
                        count.load(Ordering::Relaxed)
                    );
                }
            }
        }
    }
}

#[async_trait]
impl SubscribeAuthority for AppBackends {
    async fn authorize(
        &self,
        app: &App,
        socket_id: SocketId,
        channel: &ChannelName,
        context: &BackendContext,
    ) -> Result<ChannelAccess, Refusal> {
        let Some(proxy) = self.apps.get(&app.id).and_then(|p| p.subscribe.as_ref()) else {
            return Err(Refusal::plain(ErrorCode::Unauthorized));
        };
        let form = format!(
            "socket_id={}&channel_name={}",
            form_encode(&socket_id.to_string()),
            form_encode(channel.as_str())
        );
        let answer = proxy
            .post(
                context,
                "application/x-www-form-urlencoded",
                Bytes::from(form),
            )
            .await?;
        match answer.status {
            200 => {}
            401 | 403 => {
                proxy.count(Outcome::Denied);
                return Err(Refusal::new(
                    ErrorCode::ChannelNotAllowed,
                    format!("the app's backend does not allow channel {channel}"),
                ));
            }
            status => {
                proxy.count(Outcome::Failed);
                debug!(status, "subscribe proxy answered with an error status");
                return Err(unavailable("the app's backend answered with an error"));
            }
        }
        #[derive(Deserialize)]
        struct PusherAuth {
            auth: String,
            #[serde(default)]
            channel_data: Option<String>,
        }
        let verified = serde_json::from_slice::<PusherAuth>(&answer.body)
            .map_err(|_| ())
            .and_then(|a| {
                herald_core::pusher_auth::authorize_channel(
                    &app.settings,
                    socket_id,
                    channel,
                    Some(&a.auth),
                    a.channel_data.as_deref(),
                )
                .map_err(|_| ())
            });
        match verified {
            Ok(access) => {
                proxy.count(Outcome::Allowed);
                Ok(access)
            }
            Err(()) => {
                proxy.count(Outcome::Failed);
                Err(unavailable(
                    "the app's backend answered with an auth that does not verify (is it signed with this app's key and secret?)",
                ))
            }
        }
    }
}

/// The connect proxy's answer to an allowed connection.
#[derive(Deserialize)]
struct ConnectAnswer {
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    permissions: Vec<String>,
    #[serde(default)]
    info: Option<serde_json::Value>,
    /// Seconds since the Unix epoch after which the identity no longer holds.
    #[serde(default)]
    expires_at: Option<u64>,
}

/// The identity in a `200` answer, or why it is not one.
fn identity(body: &[u8]) -> Result<Identity, Refusal> {
    let answer: ConnectAnswer = serde_json::from_slice(body).map_err(|_| {
        unavailable("the app's backend answered with something that is not an identity")
    })?;
    if let Some(user) = &answer.user_id
        && (user.is_empty() || user.len() > MAX_USER_ID)
    {
        return Err(unavailable(
            "the app's backend gave an empty or too long user_id",
        ));
    }
    Ok(Identity {
        user_id: answer.user_id.map(Arc::from),
        channels: answer.channels.iter().map(|p| Pattern::new(p)).collect(),
        roles: answer.roles,
        permissions: answer.permissions,
        info: answer.info.as_ref().map(RawJson::from_value),
        expires_at: answer.expires_at.unwrap_or(u64::MAX),
    })
}

/// The refusal a `401`/`403` answer carries: its `error.code` when it is a catalogue code
/// of the authorisation range (200–209), `fallback` otherwise, with its message.
fn denial(body: &[u8], fallback: ErrorCode) -> Refusal {
    #[derive(Deserialize)]
    struct Body {
        error: Error,
    }
    #[derive(Deserialize)]
    struct Error {
        #[serde(default)]
        code: Option<u16>,
        #[serde(default)]
        message: Option<String>,
    }
    let parsed = serde_json::from_slice::<Body>(body).ok();
    let code = parsed
        .as_ref()
        .and_then(|b| b.error.code)
        .and_then(ErrorCode::from_code)
        .filter(|c| (200..=209).contains(&c.code()))
        .unwrap_or(fallback);
    let message: String = parsed
        .and_then(|b| b.error.message)
        .unwrap_or_else(|| "the app's backend refused this connection".into())
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    Refusal::new(code, message)
}

/// `name=value; …` of the cookies passed on.
fn cookie_header(cookies: &[(String, String)]) -> String {
    cookies
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `application/x-www-form-urlencoded` escaping of one value.
fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.*".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Percent-decoding (Laravel's `XSRF-TOKEN` cookie is URL-encoded).
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(
                std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                16,
            )
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        assert_eq!(form_encode("private-orders.1"), "private-orders.1");
        assert_eq!(form_encode("a b;c"), "a%20b%3Bc");
        assert_eq!(percent_decode("eyJpdiI6%3D%3D"), "eyJpdiI6==");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn denials_keep_only_authorisation_codes() {
        let r = denial(
            br#"{"error":{"code":206,"message":"no\nway"}}"#,
            ErrorCode::Unauthorized,
        );
        assert_eq!(
            (r.code, r.message.as_ref()),
            (ErrorCode::PermissionDenied, "noway")
        );
        let r = denial(br#"{"error":{"code":100}}"#, ErrorCode::Unauthorized);
        assert_eq!(r.code, ErrorCode::Unauthorized);
        let r = denial(b"<html>", ErrorCode::ChannelNotAllowed);
        assert_eq!(r.code, ErrorCode::ChannelNotAllowed);
    }
}
