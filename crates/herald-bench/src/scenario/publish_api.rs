//! publish-api: closed-loop publishes over keep-alive connections for a while; publishes
//! per second, reply time, and delivery to a few subscribers.

use std::time::Duration;

use clap::Args;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::idle::round;
use crate::CommonArgs;
use crate::common::{latency_json, start_fleet, target};
use crate::histogram::Histogram;
use crate::publisher::Publisher;
use crate::target::payload;
use crate::workers::ChannelPlan;

/// Options of the publish-api scenario.
#[derive(Debug, Clone, Args)]
pub struct PublishApiArgs {
    /// Keep-alive publish connections, each sending back to back.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Seconds to publish for.
    #[arg(long, default_value_t = 10.0)]
    pub secs: f64,
    /// Subscribers of the channel (small fan-out).
    #[arg(long, default_value_t = 1)]
    pub subscribers: usize,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Publish through this address instead of `--addr` (another node of a cluster: every
    /// publication crosses the broker to reach the subscribers).
    #[arg(long)]
    pub publish_addr: Option<std::net::SocketAddr>,
}

/// Run it.
pub async fn run(c: CommonArgs, a: PublishApiArgs) -> Result<Value, String> {
    let plan = ChannelPlan {
        prefix: "api-".into(),
        total: 1,
        per_connection: 1,
    };
    let channel = plan.name(0);
    let mut fleet = start_fleet(&c, a.subscribers, plan, 0, None).await?;
    let publish_to = CommonArgs {
        addr: a.publish_addr.unwrap_or(c.addr),
        ..c.clone()
    };
    let deadline = Instant::now() + Duration::from_secs_f64(a.secs);
    let mut tasks = Vec::new();
    for k in 0..a.concurrency.max(1) {
        let (t, channel, size) = (target(&publish_to), channel.clone(), a.payload);
        tasks.push(tokio::spawn(async move {
            let mut p = Publisher::connect(&t)
                .await
                .map_err(|e| format!("publisher: {e}"))?;
            let (mut ok, mut failed, mut reply) = (0u64, 0u64, Histogram::default());
            let mut seq = k as u64;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                match p.publish(&[&channel], "bench", &payload(seq, size)).await {
                    Ok(200) => ok += 1,
                    _ => failed += 1,
                }
                reply.record(t0.elapsed().as_micros() as u64);
                seq += 1 << 20;
            }
            Ok::<_, String>((ok, failed, reply))
        }));
    }
    let started = Instant::now();
    let (mut ok, mut failed, mut reply) = (0u64, 0u64, Histogram::default());
    for t in tasks {
        let (o, f, r) = t.await.map_err(|e| e.to_string())??;
        ok += o;
        failed += f;
        reply.merge(&r);
    }
    let secs = started.elapsed().as_secs_f64().max(a.secs);
    let expected = ok * fleet.connected as u64;
    let (report, latency) = fleet.wait_for(expected, Duration::from_secs(5)).await?;
    let result = json!({
        "scenario": "publish-api",
        "concurrency": a.concurrency,
        "secs": round(secs),
        "publishes_ok": ok,
        "publishes_failed": failed,
        "publishes_per_sec": round(ok as f64 / secs),
        "publish_reply": latency_json(&reply),
        "subscribers": fleet.connected,
        "messages_expected": expected,
        "messages_received": report.received,
        "lost": expected.saturating_sub(report.received),
        // A subscriber that cannot keep up is disconnected by design (4101): say so.
        "subscribers_closed_by_server": report.closed_by_server,
        "delivery_latency": latency_json(&latency),
    });
    fleet.shutdown().await;
    Ok(result)
}
