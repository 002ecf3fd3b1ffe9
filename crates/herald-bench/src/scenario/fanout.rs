//! fanout: S subscribers of one channel, P publishes at rate R. Per-delivery latency, the time
//! from publish to the last delivery of each message, delivered messages per second and the
//! publish reply time.

use std::time::Duration;

use clap::Args;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::idle::round;
use crate::CommonArgs;
use crate::common::{latency_json, start_fleet, target};
use crate::histogram::Histogram;
use crate::publisher::Publisher;
use crate::target::unix_micros;
use crate::workers::ChannelPlan;

/// Options of the fanout scenario.
#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    /// Subscribers of the channel.
    #[arg(long, default_value_t = 10_000)]
    pub subscribers: usize,
    /// Messages to publish.
    #[arg(long, default_value_t = 20)]
    pub messages: usize,
    /// Publishes per second.
    #[arg(long, default_value_t = 4.0)]
    pub rate: f64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Publish through this address instead of `--addr` (another node of a cluster: the
    /// cross-node fan-out).
    #[arg(long)]
    pub publish_addr: Option<std::net::SocketAddr>,
}

/// Run it.
pub async fn run(c: CommonArgs, a: FanoutArgs) -> Result<Value, String> {
    let plan = ChannelPlan {
        prefix: "fanout-".into(),
        total: 1,
        per_connection: 1,
    };
    let channel = plan.name(0);
    let mut fleet = start_fleet(&c, a.subscribers, plan, a.messages, None).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Start counting wire bytes from here: the handshakes are not deliveries.
    fleet.report(true).await?;
    let payload_target = target(&c);
    let publish_to = CommonArgs {
        addr: a.publish_addr.unwrap_or(c.addr),
        ..c.clone()
    };
    let mut publisher = Publisher::connect(&target(&publish_to))
        .await
        .map_err(|e| format!("publisher: {e}"))?;
    let mut reply = Histogram::default();
    let mut sent_at = vec![0u64; a.messages];
    let mut ok = 0u64;
    let interval = Duration::from_secs_f64(1.0 / a.rate.max(0.001));
    let started = Instant::now();
    for (seq, sent) in sent_at.iter_mut().enumerate() {
        tokio::time::sleep_until(started + interval * seq as u32).await;
        let data = payload_target.payload(seq as u64, a.payload);
        *sent = unix_micros();
        let t0 = Instant::now();
        let status = publisher
            .publish(&[&channel], "bench", &data)
            .await
            .map_err(|e| format!("publish: {e}"))?;
        reply.record(t0.elapsed().as_micros() as u64);
        if status == 200 {
            ok += 1;
        }
    }
    let expected = ok * fleet.connected as u64;
    let (report, latency) = fleet.wait_for(expected, Duration::from_secs(5)).await?;
    // Publish-to-last-delivery per message; the first is discarded (cold caches, first use).
    let mut to_last: Vec<f64> = report
        .last_delivery
        .iter()
        .zip(&sent_at)
        .skip(1)
        .filter(|(last, _)| **last > 0)
        .map(|(last, sent)| last.saturating_sub(*sent) as f64 / 1000.0)
        .collect();
    to_last.sort_by(f64::total_cmp);
    let median = to_last.get(to_last.len() / 2).copied();
    let span = report.last_receive.saturating_sub(sent_at[0]) as f64 / 1e6;
    let result = json!({
        "scenario": "fanout",
        "subscribers": a.subscribers,
        "connected": fleet.connected,
        "failed": fleet.failed,
        "first_error": fleet.first_error,
        "messages": a.messages,
        "payload_bytes": a.payload,
        "messages_expected": expected,
        "messages_received": report.received,
        "lost": expected.saturating_sub(report.received),
        "delivery_latency": latency_json(&latency),
        "publish_to_last_delivery_ms": {
            "median": median.map(round),
            "min": to_last.first().copied().map(round),
            "max": to_last.last().copied().map(round),
            "samples": to_last.len(),
        },
        "delivered_per_sec": round(report.received as f64 / span.max(1e-9)),
        "deflate": c.deflate,
        "payload_kind": c.payload_kind,
        "wire_bytes_per_delivery": round(report.wire_bytes as f64 / (report.received as f64).max(1.0)),
        "publish_reply": latency_json(&reply),
    });
    fleet.shutdown().await;
    Ok(result)
}
