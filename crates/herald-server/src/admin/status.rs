//! `/status` (JSON) and `/metrics` (Prometheus text format).
//!
//! Metric names follow Prometheus conventions: base units (`_seconds`, `_bytes`), `_total`
//! on counters, and labels with bounded values only: an app id (configured), a protocol and
//! a transport. Never a channel name, a user id or an address.

use std::fmt::Write as _;

use herald_core::broker::BrokerHealth;
use http::{HeaderValue, Response, header};
use serde_json::{Value, json};

use crate::http::{Body, full};
use crate::server::Shared;

/// The `/status` document.
pub async fn status(shared: &Shared) -> Value {
    let node = &shared.node;
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
        .map(|a| {
            let mut app = json!({"id": &*a.id, "connections": a.connections()});
            if let Some(set) = a.verifier.key_set() {
                app["jwks"] = json!(set.status());
            }
            app
        })
        .collect();
    let history = match node.history_stats(None).await {
        Ok(h) => json!({"streams": h.streams, "publications": h.publications, "bytes": h.bytes}),
        Err(e) => json!({"error": e.to_string()}),
    };
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "node_id": &*shared.node_id,
        "pid": std::process::id(),
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
        "tls": tls_status(shared),
        "apps": apps,
    })
}

/// The `/metrics` answer.
pub async fn metrics(shared: &Shared) -> Response<Body> {
    let node = &shared.node;
    let mut text = String::with_capacity(8192);
    let healthy = |h: BrokerHealth| if h == BrokerHealth::Healthy { 1.0 } else { 0.0 };
    let mut gauges = vec![
        (
            "herald_uptime_seconds",
            "Seconds since the server started.",
            shared.started.elapsed().as_secs_f64(),
        ),
        (
            "herald_memory_rss_bytes",
            "Resident set size of the process.",
            rss_bytes().unwrap_or(0) as f64,
        ),
        (
            "herald_ready",
            "1 when the node accepts traffic, 0 when draining or degraded.",
            if node.is_ready().is_ok() { 1.0 } else { 0.0 },
        ),
        (
            "herald_broker_healthy",
            "1 when the broker link is up (and resubscribed), 0 while degraded.",
            healthy(node.broker_health()),
        ),
        (
            "herald_cluster_state_healthy",
            "1 when the shared cluster state (presence, occupancy, heartbeats) is reachable.",
            healthy(node.cluster_health()),
        ),
        (
            "herald_cluster_nodes",
            "Live nodes this node sees in the cluster (1 on a single node).",
            match node.node_reports().await {
                Ok(Some(reports)) => reports.len().max(1) as f64,
                _ => 1.0,
            },
        ),
    ];
    if let Ok(h) = node.history_stats(None).await {
        gauges.extend([
            (
                "herald_history_streams",
                "Channel streams with stored history.",
                h.streams as f64,
            ),
            (
                "herald_history_publications",
                "Publications stored in history.",
                h.publications as f64,
            ),
            (
                "herald_history_bytes",
                "Bytes of stored history (payloads).",
                h.bytes as f64,
            ),
        ]);
    }
    if let Some((open, max)) = open_files() {
        gauges.extend([
            ("process_open_fds", "Open file descriptors.", open as f64),
            (
                "process_max_fds",
                "The limit on open file descriptors (soft).",
                max as f64,
            ),
        ]);
    }
    if let Some(tls) = &shared.tls {
        if let Some(t) = tls.not_after() {
            gauges.push((
                "herald_tls_certificate_expiry_seconds",
                "Seconds until the TLS certificate expires (negative once it has).",
                t as f64 - herald_core::clock::unix_secs() as f64,
            ));
        }
        if let Some(report) = tls.acme_report() {
            gauges.push((
                "herald_acme_last_attempt_failed",
                "1 when the last ACME order failed (the current certificate keeps serving).",
                if report.last_error.is_some() {
                    1.0
                } else {
                    0.0
                },
            ));
        }
    }
    node.metrics().render_prometheus(&mut text, &gauges);
    render_labelled(shared, &mut text);
    shared.app_backends.render_metrics(&mut text);
    let mut resp = Response::new(full(text));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// The metrics with labels: connections by app, protocol and transport, and the build.
fn render_labelled(shared: &Shared, out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP herald_app_connections Realtime connections open now, by app, protocol and transport.\n\
         # TYPE herald_app_connections gauge"
    );
    for app in shared.node.apps() {
        for (protocol, transport, n) in app.connections_by_transport() {
            let _ = writeln!(
                out,
                "herald_app_connections{{app=\"{}\",protocol=\"{}\",transport=\"{}\"}} {n}",
                label_value(&app.id),
                protocol.name(),
                transport.name()
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP herald_build_info The running version (always 1).\n\
         # TYPE herald_build_info gauge\n\
         herald_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
}

/// A label value escaped as the text format requires.
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The process's resident set size, from `/proc/self/status` (Linux).
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Open descriptors and the soft limit, from `/proc/self` (Linux).
fn open_files() -> Option<(usize, u64)> {
    let open = std::fs::read_dir("/proc/self/fd").ok()?.count();
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?;
    let max = soft.parse().unwrap_or(u64::MAX);
    Some((open, max))
}

/// The TLS listener's certificate and, when Herald obtains it, the ACME client's state.
fn tls_status(shared: &Shared) -> Value {
    let Some(tls) = &shared.tls else {
        return Value::Null;
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
