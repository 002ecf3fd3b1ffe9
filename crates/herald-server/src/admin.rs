//! The admin listener: liveness, readiness, status and Prometheus metrics, on their own port
//! so they can stay private and keep answering while the client listeners drain.
//!
//! | Path | Answer |
//! |---|---|
//! | `/health` | 200 `{"status":"ok"}` while the process runs |
//! | `/ready` | 200 `{"status":"ready"}`, or 503 with the reason (draining, broker degraded) |
//! | `/status` | JSON: uptime, connections, channels, subscriptions, messages, memory, stored history, SSE/long-poll sessions, apps |
//! | `/metrics` | Prometheus text format |

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use herald_core::broker::BrokerHealth;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::http::{Body, fail, full, json};
use crate::server::Shared;

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
            let service = service_fn(move |req| route(shared.clone(), req));
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

async fn route(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if req.method() != Method::GET {
        return Ok(fail(
            herald_protocol::ErrorCode::MethodNotAllowed,
            "admin endpoints answer GET only",
        ));
    }
    let node = &shared.node;
    let response = match req.uri().path() {
        "/health" => json(StatusCode::OK, &json!({"status": "ok"})),
        "/ready" => match node.is_ready() {
            Ok(()) => json(StatusCode::OK, &json!({"status": "ready"})),
            Err(reason) => json(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "not_ready", "reason": reason}),
            ),
        },
        "/status" => {
            let s = node.status();
            let (broker_name, health) = s.broker;
            let broker = match health {
                BrokerHealth::Healthy => json!({"name": broker_name, "healthy": true}),
                BrokerHealth::Degraded(why) => {
                    json!({"name": broker_name, "healthy": false, "reason": why})
                }
            };
            let (state_name, state_health) = s.cluster;
            let cluster = match state_health {
                BrokerHealth::Healthy => json!({"state": state_name, "healthy": true}),
                BrokerHealth::Degraded(why) => {
                    json!({"state": state_name, "healthy": false, "reason": why})
                }
            };
            let apps: Vec<_> = node
                .apps()
                .iter()
                .map(|a| json!({"id": &*a.id, "connections": a.connections()}))
                .collect();
            let history = match node.history_stats(None).await {
                Ok(h) => {
                    json!({"streams": h.streams, "publications": h.publications, "bytes": h.bytes})
                }
                Err(e) => json!({"error": e.to_string()}),
            };
            json(
                StatusCode::OK,
                &json!({
                    "version": env!("CARGO_PKG_VERSION"),
                    "uptime_seconds": shared.started.elapsed().as_secs(),
                    "connections": s.connections,
                    "channels": s.channels,
                    "subscriptions": s.subscriptions,
                    "messages_in": s.messages_in,
                    "messages_out": s.messages_out,
                    "messages_published": s.messages_published,
                    "memory_rss_bytes": rss_bytes(),
                    "draining": s.draining,
                    "broker": broker,
                    "cluster": cluster,
                    "history": history,
                    "http_sessions": shared.http_sessions.len(),
                    "tls": tls_status(&shared),
                    "pid": std::process::id(),
                    "apps": apps,
                }),
            )
        }
        "/metrics" => {
            let mut text = String::with_capacity(4096);
            let uptime = shared.started.elapsed().as_secs_f64();
            let rss = rss_bytes().unwrap_or(0) as f64;
            let mut tls_gauges = Vec::new();
            if let Some(tls) = &shared.tls {
                if let Some(t) = tls.not_after() {
                    tls_gauges.push((
                        "herald_tls_certificate_expiry_seconds",
                        "Seconds until the TLS certificate expires (negative once it has).",
                        t as f64 - herald_core::clock::unix_secs() as f64,
                    ));
                }
                if let Some(report) = tls.acme_report() {
                    tls_gauges.push((
                        "herald_acme_last_attempt_failed",
                        "1 when the last ACME order failed (the current certificate keeps serving).",
                        if report.last_error.is_some() { 1.0 } else { 0.0 },
                    ));
                }
            }
            node.metrics().render_prometheus(
                &mut text,
                &[
                    (
                        "herald_uptime_seconds",
                        "Seconds since the server started.",
                        uptime,
                    ),
                    (
                        "herald_memory_rss_bytes",
                        "Resident set size of the process.",
                        rss,
                    ),
                    (
                        "herald_ready",
                        "1 when the node accepts traffic, 0 when draining or degraded.",
                        if node.is_ready().is_ok() { 1.0 } else { 0.0 },
                    ),
                    (
                        "herald_broker_healthy",
                        "1 when the broker link is up (and resubscribed), 0 while degraded.",
                        if node.broker_health() == BrokerHealth::Healthy {
                            1.0
                        } else {
                            0.0
                        },
                    ),
                    (
                        "herald_cluster_state_healthy",
                        "1 when the shared cluster state (presence, occupancy, heartbeats) is reachable.",
                        if node.cluster_health() == BrokerHealth::Healthy {
                            1.0
                        } else {
                            0.0
                        },
                    ),
                ]
                .into_iter()
                .chain(tls_gauges)
                .collect::<Vec<_>>(),
            );
            let mut resp = Response::new(full(text));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        _ => fail(
            herald_protocol::ErrorCode::NotFound,
            "admin endpoints: /health /ready /status /metrics",
        ),
    };
    Ok(response)
}

/// The process's resident set size, from `/proc/self/status` (Linux).
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The admin listener's address, for logs.
pub fn describe(addr: SocketAddr) -> String {
    format!("http://{addr} (/health /ready /status /metrics)")
}

/// The TLS listener's certificate and, when Herald obtains it, the ACME client's state.
fn tls_status(shared: &Shared) -> serde_json::Value {
    let Some(tls) = &shared.tls else {
        return serde_json::Value::Null;
    };
    let now = herald_core::clock::unix_secs() as i64;
    json!({
        "certificate": tls.not_after().map(|t| json!({
            "not_after_unix": t,
            "expires_in_seconds": t as i64 - now,
        })),
        "acme": tls.acme_report(),
    })
}
