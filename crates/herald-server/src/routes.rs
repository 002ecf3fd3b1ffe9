//! The routes of the client-facing listeners.
//!
//! | Method | Path | What |
//! |---|---|---|
//! | GET | `/` | name and version |
//! | GET | `/ws/{app_key}` | native-protocol WebSocket |
//! | GET | `/app/{app_key}` | Pusher-protocol WebSocket (protocol 7) |
//! | GET | `/sse/{app_key}` | native protocol over Server-Sent Events (see `transport/sse.rs`) |
//! | POST, GET, DELETE | `/poll/{app_key}[/{session}]` | native protocol over long-polling (`transport/long_poll.rs`) |
//! | POST | `/sse/{app_key}/{session}` | a client message for an SSE session |
//! | POST | `[/pusher]/app/{app_key}/{server}/{session}/{xhr_streaming\|xhr\|xhr_send}` | pusher-js's HTTP fallback (`transport/pusher_http.rs`) |
//! | * | `/api/{app_id}/…` | native HTTP API (see `api.rs`) |
//! | * | `/apps/{app_id}/…` | Pusher HTTP API (see `pusher_api.rs`) |

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use herald_core::{ConnectRequest, Protocol, Transport};

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
    let cors = cors_origin(&shared, &req, &segments);
    if cors.is_some() && req.method() == Method::OPTIONS {
        return Ok(with_cors(preflight(), cors));
    }
    let response = match (req.method(), segments.as_slice()) {
        (&Method::GET, [""]) => json(
            StatusCode::OK,
            &serde_json::json!({"name": "herald", "version": env!("CARGO_PKG_VERSION")}),
        ),
        (&Method::GET, ["ws", app_key]) => {
            let app_key = (*app_key).to_owned();
            websocket(&shared, client_ip, req, &app_key, Protocol::Native).await
        }
        (&Method::GET, ["app", app_key]) => {
            let app_key = (*app_key).to_owned();
            websocket(&shared, client_ip, req, &app_key, Protocol::Pusher).await
        }
        (&Method::GET, ["sse", app_key]) if shared.config.sse.enabled => {
            let app_key = (*app_key).to_owned();
            crate::transport::sse::open(&shared, req, client_ip, &app_key).await
        }
        (&Method::POST, ["sse" | "poll", app_key, id]) => {
            let (app_key, id) = ((*app_key).to_owned(), (*id).to_owned());
            crate::transport::http_session::command(&shared, req, &app_key, &id).await
        }
        (&Method::POST, ["poll", app_key]) if shared.config.long_poll.enabled => {
            let app_key = (*app_key).to_owned();
            crate::transport::long_poll::open(&shared, req, client_ip, &app_key).await
        }
        (&Method::GET, ["poll", app_key, id]) => {
            crate::transport::long_poll::poll(&shared, &req, app_key, id).await
        }
        (&Method::DELETE, ["poll" | "sse", app_key, id]) => {
            crate::transport::long_poll::close(&shared, app_key, id)
        }
        (
            &Method::POST,
            ["pusher", "app", key, server, session, kind] | ["app", key, server, session, kind],
        ) if shared.config.pusher_http.enabled => {
            pusher_http(&shared, req, client_ip, key, server, session, kind).await
        }
        (_, ["api", rest @ ..]) => crate::api::handle(&shared, req, rest).await,
        (_, ["apps", rest @ ..]) => crate::pusher_api::handle(&shared, req, rest).await,
        _ => fail(ErrorCode::NotFound, format!("no route for {path}")),
    };
    Ok(with_cors(response, cors))
}

/// A pusher-js HTTP fallback request: a receive (`xhr_streaming`, `xhr`) or a send.
async fn pusher_http(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    ip: IpAddr,
    key: &str,
    server: &str,
    session: &str,
    kind: &str,
) -> Response<Body> {
    use crate::transport::pusher_http::{self, Kind};
    let Some(id) = pusher_http::session_path(server, session) else {
        return fail(ErrorCode::NotFound, "not a pusher-js session path");
    };
    match kind {
        "xhr_streaming" => pusher_http::receive(shared, req, ip, key, &id, Kind::Streaming).await,
        "xhr" => pusher_http::receive(shared, req, ip, key, &id, Kind::Polling).await,
        "xhr_send" => pusher_http::send(shared, req, ip, key, &id).await,
        _ => fail(ErrorCode::NotFound, format!("no route for {kind}")),
    }
}

/// The origin to allow on an SSE, long-polling or pusher-js HTTP request from a browser
/// page on another origin: the page's, if the app (named by the key in the path) allows it.
fn cors_origin(
    shared: &Shared,
    req: &Request<Incoming>,
    segments: &[&str],
) -> Option<http::HeaderValue> {
    let (["sse" | "poll", key]
    | ["sse" | "poll", key, _]
    | ["pusher", "app", key, _, _, _]
    | ["app", key, _, _, _]) = segments
    else {
        return None;
    };
    let origin = req.headers().get(http::header::ORIGIN)?;
    let app = shared.node.app_by_key(key)?;
    app.allows_origin(origin.to_str().ok()?)
        .then(|| origin.clone())
}

/// The answer to a CORS preflight.
fn preflight() -> Response<Body> {
    let mut resp = Response::new(crate::http::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    h.insert(
        http::header::ACCESS_CONTROL_ALLOW_METHODS,
        http::HeaderValue::from_static("GET, POST, DELETE"),
    );
    h.insert(
        http::header::ACCESS_CONTROL_ALLOW_HEADERS,
        http::HeaderValue::from_static("content-type, authorization, last-event-id"),
    );
    h.insert(
        http::header::ACCESS_CONTROL_MAX_AGE,
        http::HeaderValue::from_static("600"),
    );
    resp
}

fn with_cors(mut resp: Response<Body>, origin: Option<http::HeaderValue>) -> Response<Body> {
    if let Some(origin) = origin {
        let h = resp.headers_mut();
        h.insert(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.append(http::header::VARY, http::HeaderValue::from_static("origin"));
    }
    resp
}

/// Upgrade to a WebSocket session speaking `protocol`.
async fn websocket(
    shared: &Arc<Shared>,
    ip: IpAddr,
    mut req: Request<Incoming>,
    app_key: &str,
    protocol: Protocol,
) -> Response<Body> {
    let compression = shared
        .node
        .app_by_key(app_key)
        .is_some_and(|app| app.settings.compression.enabled);
    let response = match crate::transport::websocket::handshake(&req, compression) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let deflate = crate::transport::websocket::accepted_deflate(&response);
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
            // The app's backend proxies serve native clients (Pusher clients sign their own
            // subscriptions with the app's auth endpoint).
            let prepared = match protocol {
                Protocol::Native => {
                    shared
                        .app_backends
                        .prepare(
                            &shared.node,
                            app_key,
                            req.headers(),
                            ip,
                            Transport::WebSocket,
                            token.as_deref(),
                        )
                        .await
                }
                Protocol::Pusher => Ok((None, None)),
            };
            prepared
                .and_then(|(identity, backend_context)| {
                    shared.node.connect(ConnectRequest {
                        app_key,
                        token: token.as_deref(),
                        origin: header_str(&req, "origin"),
                        ip,
                        protocol,
                        transport: Transport::WebSocket,
                        transport_session: None,
                        deflate,
                        identity,
                        backend_context,
                    })
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
