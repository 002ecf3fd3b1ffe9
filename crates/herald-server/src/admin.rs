//! The admin listener: liveness, readiness, status, Prometheus metrics and the web UI, on
//! their own port so they can stay private and keep answering while the client listeners
//! drain.
//!
//! | Path | Answer |
//! |---|---|
//! | `/health` | 200 `{"status":"ok"}` while the process runs (always open) |
//! | `/ready` | 200 `{"status":"ready"}`, or 503 with the reason (draining, broker degraded); always open |
//! | `/status` | JSON: uptime, connections, channels, subscriptions, messages, memory, stored history, SSE/long-poll sessions, TLS, apps (`admin.protect_status` puts it behind the credential) |
//! | `/metrics` | Prometheus text format (`admin.protect_metrics` puts it behind the credential) |
//! | `/ui`, `/ui/…` | the web UI and its JSON API ([`ui`]), behind the credential; off without `admin.token` |
//!
//! The credential is `admin.token`: the password of HTTP Basic authentication (any user
//! name; a browser asks for it) or a bearer token, compared in constant time. Every answer
//! carries strict security headers (a CSP that allows only this origin's scripts and
//! styles, no framing, no sniffing, no caching).

mod report;
mod status;
mod ui;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine;
use herald_core::secret::constant_time_eq;
use herald_protocol::ErrorCode;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::http::{Body, fail, json};
use crate::server::Shared;

pub use report::run_reporter;
pub use status::rss_bytes;

/// Serve the admin endpoints until `stop` fires.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            // A client gets `server.handshake_timeout` for its request's headers, as on the
            // client listeners: a connection that sends nothing is closed, not kept.
            let header_timeout = shared.config.server.handshake_timeout;
            let stop2 = stop.clone();
            let service = service_fn(move |req| route(shared.clone(), req, stop2.clone()));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

async fn route(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    stop: CancellationToken,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let admin = &shared.config.admin;
    let mut response = if path == "/ui" || path.starts_with("/ui/") {
        match &admin.token {
            None => fail(
                ErrorCode::NotFound,
                "the admin UI is off: set admin.token to turn it on",
            ),
            Some(_) if !authorized(&shared, &req) => unauthorized(),
            Some(_) => ui::handle(&shared, req, stop).await,
        }
    } else if req.method() != Method::GET {
        fail(
            ErrorCode::MethodNotAllowed,
            "admin endpoints answer GET only (but /ui/api)",
        )
    } else {
        match path.as_str() {
            "/health" => json(StatusCode::OK, &json!({"status": "ok"})),
            "/ready" => match shared.node.is_ready() {
                Ok(()) => json(StatusCode::OK, &json!({"status": "ready"})),
                Err(reason) => json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"status": "not_ready", "reason": reason}),
                ),
            },
            "/status" if admin.protect_status && !authorized(&shared, &req) => unauthorized(),
            "/status" => json(StatusCode::OK, &status::status(&shared).await),
            "/metrics" if admin.protect_metrics && !authorized(&shared, &req) => unauthorized(),
            "/metrics" => status::metrics(&shared).await,
            _ => fail(
                ErrorCode::NotFound,
                "admin endpoints: /health /ready /status /metrics /ui",
            ),
        }
    };
    secure(response.headers_mut());
    Ok(response)
}

/// Whether `req` carries the admin credential: `Authorization: Bearer <token>`, or Basic
/// with the token as the password (the user name is not checked).
fn authorized(shared: &Shared, req: &Request<Incoming>) -> bool {
    let Some(token) = &shared.config.admin.token else {
        return false;
    };
    let Some(value) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let offered = if let Some(bearer) = value.strip_prefix("Bearer ") {
        bearer.trim().as_bytes().to_vec()
    } else if let Some(basic) = value.strip_prefix("Basic ") {
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(basic.trim()) else {
            return false;
        };
        match decoded.iter().position(|b| *b == b':') {
            Some(colon) => decoded[colon + 1..].to_vec(),
            None => return false,
        }
    } else {
        return false;
    };
    constant_time_eq(&offered, token.expose().as_bytes())
}

/// 401 with the challenge that makes a browser ask for the credential.
fn unauthorized() -> Response<Body> {
    let mut response = fail(
        ErrorCode::Unauthorized,
        "the admin credential (admin.token) is required: HTTP Basic (any user name) or Bearer",
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"Herald admin\", charset=\"UTF-8\""),
    );
    response
}

/// The security headers of every admin answer.
fn secure(headers: &mut http::HeaderMap) {
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
        (
            http::HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
        (
            http::HeaderName::from_static("cross-origin-resource-policy"),
            "same-origin",
        ),
        (
            http::HeaderName::from_static("permissions-policy"),
            "camera=(), microphone=(), geolocation=()",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
}

/// The admin listener's address, for logs.
pub fn describe(addr: SocketAddr) -> String {
    format!("http://{addr} (/health /ready /status /metrics /ui)")
}
