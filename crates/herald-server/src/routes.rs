//! The routes of the client-facing listeners.
//!
//! | Method | Path | What |
//! |---|---|---|
//! | GET | `/` | name and version |
//! | GET | `/ws/{app_key}` | native-protocol WebSocket |
//! | GET | `/app/{app_key}` | Pusher-protocol WebSocket (protocol 7) |
//! | * | `/api/{app_id}/…` | native HTTP API (see `api.rs`) |
//! | * | `/apps/{app_id}/…` | Pusher HTTP API (see `pusher_api.rs`) |

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use herald_core::{ConnectRequest, Protocol};

use crate::transport::Refused;
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
            websocket(&shared, client_ip, req, &app_key, Protocol::Native)
        }
        (&Method::GET, ["app", app_key]) => {
            let app_key = (*app_key).to_owned();
            websocket(&shared, client_ip, req, &app_key, Protocol::Pusher)
        }
        (_, ["api", rest @ ..]) => crate::api::handle(&shared, req, rest).await,
        (_, ["apps", rest @ ..]) => crate::pusher_api::handle(&shared, req, rest).await,
        _ => fail(ErrorCode::NotFound, format!("no route for {path}")),
    };
    Ok(response)
}

/// Upgrade to a WebSocket session speaking `protocol`.
fn websocket(
    shared: &Arc<Shared>,
    ip: IpAddr,
    mut req: Request<Incoming>,
    app_key: &str,
    protocol: Protocol,
) -> Response<Body> {
    let response = match crate::transport::websocket::handshake(&req) {
        Ok(r) => r,
        Err(r) => return r,
    };
    // Pusher clients announce their protocol version; a wrong one is refused with the
    // Pusher close code for it, after the upgrade so the client can read it.
    let version = match protocol {
        Protocol::Pusher => {
            herald_protocol::pusher::check_version(query_param(&req, "protocol").as_deref()).err()
        }
        Protocol::Native => None,
    };
    let session = match version {
        Some(v) => Err(Refused::raw(protocol, v.close_code(), v.reason())),
        None => {
            let token = match protocol {
                Protocol::Native => {
                    query_param(&req, "token").or_else(|| bearer(&req).map(str::to_owned))
                }
                Protocol::Pusher => None,
            };
            shared
                .node
                .connect(ConnectRequest {
                    app_key,
                    token: token.as_deref(),
                    origin: header_str(&req, "origin"),
                    ip,
                    protocol,
                })
                .map_err(|r| {
                    debug!(%ip, code = %r.refusal.code, "websocket connection refused");
                    Refused::from_refusal(protocol, &r)
                })
        }
    };
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
