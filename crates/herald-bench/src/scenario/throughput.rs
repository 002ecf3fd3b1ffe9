//! throughput: N connections each subscribed to K of M channels; the publish rate rises step
//! by step until latency or loss breaks the bound. The result is the highest step that kept
//! zero loss and p99 under the bound: the sustained delivery rate.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde_json::{Value, json};

use super::idle::round;
use crate::CommonArgs;
use crate::common::{
    end_progress, latency_json, paced_publish, progress_line, start_fleet, target,
};
use crate::workers::ChannelPlan;

/// Options of the throughput scenario.
#[derive(Debug, Clone, Args)]
pub struct ThroughputArgs {
    /// Connections.
    #[arg(long, default_value_t = 2_000)]
    pub connections: usize,
    /// Channels (M).
    #[arg(long, default_value_t = 10)]
    pub channels: usize,
    /// Channels per connection (K).
    #[arg(long, default_value_t = 5)]
    pub per_connection: usize,
    /// Publishes per second of the first step.
    #[arg(long, default_value_t = 200.0)]
    pub start_rate: f64,
    /// Each step multiplies the rate by this.
    #[arg(long, default_value_t = 1.5)]
    pub step_factor: f64,
    /// Seconds per step.
    #[arg(long, default_value_t = 5.0)]
    pub step_secs: f64,
    /// Most steps to run.
    #[arg(long, default_value_t = 10)]
    pub max_steps: usize,
    /// The p99 delivery latency bound, in milliseconds.
    #[arg(long, default_value_t = 100.0)]
    pub max_p99_ms: f64,
    /// Keep-alive publish connections.
    #[arg(long, default_value_t = 16)]
    pub publishers: usize,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
}

/// Run it.
pub async fn run(c: CommonArgs, a: ThroughputArgs) -> Result<Value, String> {
    let plan = ChannelPlan {
        prefix: "tp-".into(),
        total: a.channels.max(1),
        per_connection: a.per_connection.clamp(1, a.channels.max(1)),
    };
    let mut fleet = start_fleet(&c, a.connections, plan.clone(), 0, None).await?;
    let channels: Arc<Vec<(String, u64)>> = Arc::new(
        (0..plan.total)
            .map(|n| (plan.name(n), plan.subscribers(n, fleet.connected) as u64))
            .collect(),
    );
    let fan_out: f64 = channels.iter().map(|c| c.1 as f64).sum::<f64>() / channels.len() as f64;
    let mut steps = Vec::new();
    let mut best: Option<Value> = None;
    let mut rate = a.start_rate;
    let mut seq = 0u64;
    for step in 0..a.max_steps {
        progress_line(&format!(
            "step {step}: {rate:.0} publishes/s (≈{:.0} deliveries/s)",
            rate * fan_out
        ));
        fleet.report(true).await?;
        let published = paced_publish(
            &target(&c),
            a.publishers,
            rate,
            a.step_secs,
            channels.clone(),
            a.payload,
            seq,
        )
        .await?;
        seq += published.ok + published.failed + 1_000_000;
        let (report, latency) = fleet
            .wait_for(published.expected, Duration::from_secs(3))
            .await?;
        let span = (report.last_receive.saturating_sub(report.first_receive) as f64 / 1e6)
            .max(published.secs);
        let p99_ms = latency.quantile(0.99) as f64 / 1000.0;
        let lost = published.expected.saturating_sub(report.received);
        let result = json!({
            "step": step,
            "target_publishes_per_sec": round(rate),
            "publishes_ok": published.ok,
            "publishes_failed": published.failed,
            "messages_expected": published.expected,
            "messages_received": report.received,
            "lost": lost,
            "delivered_per_sec": round(report.received as f64 / span),
            "delivery_latency": latency_json(&latency),
            "publish_reply_p99_ms": published.reply.quantile(0.99) as f64 / 1000.0,
            "wire_bytes_per_delivery": round(report.wire_bytes as f64 / (report.received as f64).max(1.0)),
        });
        let ok = lost == 0 && published.failed == 0 && p99_ms <= a.max_p99_ms;
        steps.push(result.clone());
        if !ok {
            break;
        }
        best = Some(result);
        rate *= a.step_factor;
    }
    end_progress();
    let result = json!({
        "scenario": "throughput",
        "connections": a.connections,
        "connected": fleet.connected,
        "failed": fleet.failed,
        "first_error": fleet.first_error,
        "channels": a.channels,
        "per_connection": a.per_connection,
        "mean_subscribers_per_channel": round(fan_out),
        "max_p99_ms": a.max_p99_ms,
        "sustained": best.clone().map(|b| json!({
            "delivered_per_sec": b["delivered_per_sec"],
            "p99_ms": b["delivery_latency"]["p99_ms"],
            "publishes_per_sec": b["target_publishes_per_sec"],
            "messages_expected": b["messages_expected"],
            "messages_received": b["messages_received"],
            "wire_bytes_per_delivery": b["wire_bytes_per_delivery"],
        })),
        "deflate": c.deflate,
        "payload_kind": c.payload_kind,
        "steps": steps,
    });
    fleet.shutdown().await;
    Ok(result)
}
