//! This node's report: the summary every node's admin UI shows of it. Each node writes its
//! own to the cluster state every [`REPORT_INTERVAL`] (`Node::report`), and the overview
//! reads them all (`Node::node_reports`), so one node's UI shows the whole cluster without
//! nodes talking to each other.

use std::sync::Arc;
use std::time::Duration;

use herald_core::broker::BrokerHealth;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::server::Shared;

/// How often the report is refreshed.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// This node's report now.
pub fn local(shared: &Shared) -> Value {
    let node = &shared.node;
    let s = node.status();
    let health = |h: &BrokerHealth| match h {
        BrokerHealth::Healthy => (true, Value::Null),
        BrokerHealth::Degraded(why) => (false, Value::String(why.clone())),
    };
    let (broker_healthy, broker_reason) = health(&s.broker.1);
    let ready = node.is_ready();
    let by_app: Vec<Value> = node
        .apps()
        .iter()
        .flat_map(|app| {
            app.connections_by_transport()
                .into_iter()
                .filter(|(_, _, n)| *n > 0)
                .map(|(protocol, transport, n)| {
                    json!({
                        "app": &*app.id,
                        "protocol": protocol.name(),
                        "transport": transport.name(),
                        "connections": n,
                    })
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let m = node.metrics();
    let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    json!({
        "id": &*shared.node_id,
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "uptime_seconds": shared.started.elapsed().as_secs(),
        "ready": ready.is_ok(),
        "reason": ready.err(),
        "broker": {"name": s.broker.0, "healthy": broker_healthy, "reason": broker_reason},
        "connections": s.connections,
        "by_app": by_app,
        "counters": {
            "messages_in": s.messages_in,
            "messages_out": s.messages_out,
            "messages_dropped": get(&m.messages_dropped),
            "messages_published": s.messages_published,
            "slow_consumer_disconnects": get(&m.slow_consumer_disconnects),
        },
        "reported_at_ms": herald_core::clock::unix_ms(),
    })
}

/// Write this node's report to the cluster state until `stop` fires.
pub async fn run_reporter(shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(REPORT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let report = local(&shared).to_string();
        shared.node.report(Arc::from(report));
    }
}

/// Every node's report, this one's fresh, each marked `"self"` or not.
pub async fn cluster(shared: &Shared) -> Vec<Value> {
    let mut own = local(shared);
    own["self"] = Value::Bool(true);
    let mut nodes = vec![own];
    if let Ok(Some(reports)) = shared.node.node_reports().await {
        for report in reports {
            let Ok(mut value) = serde_json::from_str::<Value>(&report) else {
                continue;
            };
            if value["id"].as_str() == Some(&*shared.node_id) {
                continue;
            }
            value["self"] = Value::Bool(false);
            nodes.push(value);
        }
    }
    nodes.sort_by(|a, b| {
        a["id"]
            .as_str()
            .unwrap_or_default()
            .cmp(b["id"].as_str().unwrap_or_default())
    });
    nodes
}
