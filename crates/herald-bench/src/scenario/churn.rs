//! churn: connect, subscribe, receive one message, disconnect, C times. Cycles per second,
//! and the server's memory after the first 10,000 cycles and at the end (a leak check).

use std::time::Duration;

use clap::Args;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::idle::round;
use crate::CommonArgs;
use crate::common::{end_progress, latency_json, progress_line, server_rss, start_fleet};
use crate::workers::{ChannelPlan, ChurnSpec, Event};

/// Options of the churn scenario.
#[derive(Debug, Clone, Args)]
pub struct ChurnArgs {
    /// Cycles to run in total.
    #[arg(long, default_value_t = 200_000)]
    pub cycles: usize,
    /// Cycles in flight at once, over all workers.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// The cycle count after which the reference memory reading is taken.
    #[arg(long, default_value_t = 10_000)]
    pub reference_after: usize,
}

/// Run it.
pub async fn run(c: CommonArgs, a: ChurnArgs) -> Result<Value, String> {
    let rss_start = server_rss(&c).await;
    let plan = ChannelPlan {
        prefix: "churn-".into(),
        total: 1,
        per_connection: 1,
    };
    let workers = c.workers.unwrap_or(1).max(1);
    let churn = ChurnSpec {
        cycles: a.cycles,
        concurrency: (a.concurrency / workers).max(1),
        payload: 64,
    };
    let c2 = CommonArgs {
        workers: Some(workers),
        ..c.clone()
    };
    let started = Instant::now();
    let mut fleet = start_fleet(&c2, a.cycles, plan, 0, Some(churn)).await?;
    let n = fleet.workers.len();
    let mut done = vec![0usize; n];
    let mut rss_reference = None;
    let mut finished = vec![false; n];
    // Read progress until every worker has run its share.
    let share: Vec<usize> = crate::workers::plan_workers(a.cycles, Some(workers), &[])
        .iter()
        .map(|s| s.1)
        .collect();
    while finished.iter().any(|f| !f) {
        for (i, w) in fleet.workers.iter_mut().enumerate() {
            if finished[i] {
                continue;
            }
            let event = tokio::time::timeout(Duration::from_secs(2), w.next()).await;
            if let Ok(Ok(Event::ChurnProgress { cycles })) = event {
                done[i] = cycles;
            }
            let report = w
                .report(false)
                .await
                .map_err(|e| format!("worker {i}: {e}"))?;
            done[i] = report.cycles;
            if report.cycles + report.failed_cycles >= share[i] {
                finished[i] = true;
            }
        }
        let total: usize = done.iter().sum();
        if rss_reference.is_none() && total >= a.reference_after {
            rss_reference = server_rss(&c).await;
        }
        progress_line(&format!(
            "churn {total}/{} cycles, {:.0}/s",
            a.cycles,
            total as f64 / started.elapsed().as_secs_f64()
        ));
    }
    end_progress();
    let secs = started.elapsed().as_secs_f64();
    let (report, latency) = fleet.report(false).await?;
    // Let the server finish closing the last connections before the final reading.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_end = server_rss(&c).await;
    let growth = match (rss_reference, rss_end) {
        (Some(r), Some(e)) if r > 0 => Some(round((e as f64 - r as f64) / r as f64 * 100.0)),
        _ => None,
    };
    let result = json!({
        "scenario": "churn",
        "cycles_target": a.cycles,
        "cycles_ok": report.cycles,
        "cycles_failed": report.failed_cycles,
        "first_error": report.first_error,
        "secs": round(secs),
        "cycles_per_sec": round(report.cycles as f64 / secs),
        "messages_expected": report.cycles + report.failed_cycles,
        "messages_received": report.received,
        "delivery_latency": latency_json(&latency),
        "server_rss_start_bytes": rss_start,
        "server_rss_reference_bytes": rss_reference,
        "server_rss_end_bytes": rss_end,
        "rss_growth_after_reference_percent": growth,
    });
    fleet.shutdown().await;
    Ok(result)
}
