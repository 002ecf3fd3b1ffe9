//! idle: ramp to N subscribed connections; connect rate and server memory per connection.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde_json::{Value, json};

use crate::CommonArgs;
use crate::common::{paced_publish, server_rss, start_fleet, target};
use crate::workers::ChannelPlan;

/// Options of the idle scenario.
#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    /// Connections to open.
    #[arg(long, default_value_t = 15_000)]
    pub connections: usize,
    /// Channels they spread over (each connection subscribes to one).
    #[arg(long, default_value_t = 100)]
    pub channels: usize,
    /// Seconds to let the server settle before reading its memory.
    #[arg(long, default_value_t = 3.0)]
    pub settle_secs: f64,
}

/// Run it.
pub async fn run(c: CommonArgs, a: IdleArgs) -> Result<Value, String> {
    let before = server_rss(&c).await;
    let plan = ChannelPlan {
        prefix: "idle-".into(),
        total: a.channels.max(1),
        per_connection: 1,
    };
    let mut fleet = start_fleet(&c, a.connections, plan.clone(), 0, None).await?;
    tokio::time::sleep(Duration::from_secs_f64(a.settle_secs)).await;
    let after = server_rss(&c).await;
    // Prove every connection is alive: one message per channel reaches every connection.
    let channels: Vec<(String, u64)> = (0..plan.total)
        .map(|n| (plan.name(n), plan.subscribers(n, fleet.connected) as u64))
        .collect();
    let rate = (channels.len() as f64 * 4.0).max(50.0);
    let published = paced_publish(
        &target(&c),
        4,
        rate,
        channels.len() as f64 / rate + 0.05,
        Arc::new(channels),
        64,
        0,
    )
    .await?;
    let (report, _) = fleet
        .wait_for(published.expected, Duration::from_secs(5))
        .await?;
    let per_connection = match (before, after) {
        (Some(b), Some(a)) if fleet.connected > 0 => {
            Some((a.saturating_sub(b)) as f64 / fleet.connected as f64)
        }
        _ => None,
    };
    let result = json!({
        "scenario": "idle",
        "connections": a.connections,
        "connected": fleet.connected,
        "failed": fleet.failed,
        "first_error": fleet.first_error,
        "connect_secs": round(fleet.secs),
        "connect_rate_per_sec": round(fleet.connected as f64 / fleet.secs.max(1e-9)),
        "server_rss_before_bytes": before,
        "server_rss_after_bytes": after,
        "server_bytes_per_connection": per_connection.map(round),
        "messages_expected": published.expected,
        "messages_received": report.received,
        "open_at_end": report.open,
    });
    fleet.shutdown().await;
    Ok(result)
}

/// Round to 3 decimals for readable output.
pub fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
