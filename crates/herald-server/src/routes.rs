//! The routes of the client-facing listeners.
//!
//! | Method | Path | What |
//! |---|---|---|
//! | GET | `/` | name and version |
//! | GET | `/ws/{app_key}` | native-protocol WebSocket |
//! | * | `/api/{app_id}/…` | native HTTP API (see `api.rs`) |

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use herald_core::{ConnectRequest, Protocol};
use herald_protocol::ErrorCode;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tracing::debug;

use crate::http::{Body, bearer, fail, header_str, json, query_param};
use crate::server::Shared;

/// Route one request.
pub async fn handle(
    shared: Arc<Shared>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let client_ip = shared.ip_filter.client_ip(peer.ip(), req.headers());
    if shared.ip_filter.is_trusted_proxy(peer.ip()) && !shared.ip_filter.allows(client_ip) {
        return Ok(fail(ErrorCode::IpDenied, "client address not allowed"));
    }
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let response = match (req.method(), segments.as_slice()) {
        (&Method::GET, [""]) => json(
            StatusCode::OK,
            &serde_json::json!({"name": "herald", "version": env!("CARGO_PKG_VERSION")}),
        ),
        (&Method::GET, ["ws", app_key]) => {
            let app_key = (*app_key).to_owned();
            websocket(&shared, client_ip, req, &app_key)
        }
        (_, ["api", rest @ ..]) => crate::api::handle(&shared, req, rest).await,
        _ => fail(ErrorCode::NotFound, format!("no route for {path}")),
    };
    Ok(response)
}

/// Upgrade to a native-protocol WebSocket session.
fn websocket(
    shared: &Arc<Shared>,
    ip: IpAddr,
    mut req: Request<Incoming>,
    app_key: &str,
) -> Response<Body> {
    let response = match crate::transport::websocket::handshake(&req) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let token = query_param(&req, "token").or_else(|| bearer(&req).map(str::to_owned));
    let session = shared.node.connect(ConnectRequest {
        app_key,
        token: token.as_deref(),
        origin: header_str(&req, "origin"),
        ip,
        protocol: Protocol::Native,
    });
    if let Err(refusal) = &session {
        debug!(%ip, code = %refusal.refusal.code, "websocket connection refused");
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let opts = shared.ws_options();
    let tracker = shared.tracker.clone();
    // This task only waits for the upgrade, then hands the connection to a fresh task: the
    // long-lived task's future then holds the session's state and nothing else.
    shared.tracker.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                tracker.spawn(crate::transport::run_websocket(upgraded, session, opts));
            }
            Err(e) => {
                debug!(error = %e, "websocket upgrade failed");
                if let Ok(session) = session {
                    Box::pin(session.close()).await;
                }
            }
        }
    });
    response
}
