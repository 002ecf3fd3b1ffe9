//! soak: a long run of mixed load, to show that nothing grows and everything is given back.
//!
//! `--clients` simulated clients (see `soak/clients.rs`) connect over WebSocket, SSE and
//! long-polling in turn, subscribe to public and presence channels, receive for a random
//! lifetime and leave, some by hanging up mid-poll or mid-stream; a publisher publishes at
//! `--publish-rate` throughout. Every `--sample-secs` the server's RSS and open descriptors
//! (from `/proc/PID`), its connections and HTTP sessions (admin `/status`) and the presence
//! members of the soak's presence channels (the API) are sampled. After `--warmup-secs` the
//! first sample is the reference: RSS and descriptors must stay within 10 % of it. When the
//! load stops, connections, HTTP sessions and presence must all return to zero within
//! `--drain-secs` (abandoned long-poll sessions end after the server's
//! `long_poll.session_timeout`: run the server with a short one).

mod clients;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use std::time::Duration;

use clap::Args;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::idle::round;
use crate::CommonArgs;
use crate::common::{end_progress, get_json, paced_publish, proc_rss, progress_line, target};
use clients::{Ctx, PRESENCE_CHANNELS};

/// Options of the soak scenario.
#[derive(Debug, Clone, Args)]
pub struct SoakArgs {
    /// Length of the load, seconds.
    #[arg(long, default_value_t = 1800)]
    pub secs: u64,
    /// Seconds of load before the reference sample.
    #[arg(long, default_value_t = 120)]
    pub warmup_secs: u64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10)]
    pub sample_secs: u64,
    /// Simulated clients at once (each a connection at a time).
    #[arg(long, default_value_t = 300)]
    pub clients: usize,
    /// Public channels (`soak-0` …).
    #[arg(long, default_value_t = 20)]
    pub channels: usize,
    /// Publishes per second, spread over the public channels.
    #[arg(long, default_value_t = 200.0)]
    pub publish_rate: f64,
    /// Fraction of cycles that also join a presence channel.
    #[arg(long, default_value_t = 0.3)]
    pub presence_share: f64,
    /// Fraction of SSE and long-poll cycles that end by hanging up mid-request.
    #[arg(long, default_value_t = 0.3)]
    pub abandon_share: f64,
    /// Shortest and longest lifetime of a cycle, seconds.
    #[arg(long, default_value_t = 5)]
    pub min_life_secs: u64,
    /// See `--min-life-secs`.
    #[arg(long, default_value_t = 60)]
    pub max_life_secs: u64,
    /// After the load: how long the counts have to return to zero.
    #[arg(long, default_value_t = 90)]
    pub drain_secs: u64,
    /// The server's admin listener.
    #[arg(long, default_value = "127.0.0.1:9601")]
    pub admin: SocketAddr,
}

/// One sample of the server.
#[derive(Debug, Clone, Default)]
struct Sample {
    /// Seconds since the start of the load.
    at: f64,
    /// Resident memory, bytes.
    rss: Option<u64>,
    /// Open file descriptors.
    fds: Option<u64>,
    /// Realtime connections (admin `/status`).
    connections: Option<u64>,
    /// SSE and long-poll sessions (admin `/status`).
    http_sessions: Option<u64>,
    /// Presence members over the soak's presence channels.
    presence: Option<u64>,
}

impl Sample {
    fn json(&self) -> Value {
        json!([
            round(self.at),
            self.rss,
            self.fds,
            self.connections,
            self.http_sessions,
            self.presence
        ])
    }

    fn drained(&self) -> bool {
        self.connections == Some(0) && self.http_sessions == Some(0) && self.presence == Some(0)
    }
}

/// Run it.
pub async fn run(c: CommonArgs, a: SoakArgs) -> Result<Value, String> {
    let target = target(&c);
    let started = Instant::now();
    let ctx = Arc::new(Ctx {
        target: target.clone(),
        deadline: started + Duration::from_secs(a.secs),
        channels: a.channels.max(1),
        presence_share: a.presence_share.clamp(0.0, 1.0),
        abandon_share: a.abandon_share.clamp(0.0, 1.0),
        lifetime: (
            Duration::from_secs(a.min_life_secs.max(1)),
            Duration::from_secs(a.max_life_secs.max(a.min_life_secs.max(1))),
        ),
        cycles: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
        abandoned: AtomicU64::new(0),
        received: AtomicU64::new(0),
        errors: Mutex::new(BTreeMap::new()),
    });
    let channels: Vec<(String, u64)> = (0..ctx.channels)
        .map(|i| (format!("soak-{i}"), 0))
        .collect();
    let publisher = {
        let target = target.clone();
        let (rate, secs) = (a.publish_rate, a.secs as f64);
        tokio::spawn(async move {
            paced_publish(&target, 2, rate, secs, Arc::new(channels), 64, 0).await
        })
    };
    let clients: Vec<_> = (0..a.clients)
        .map(|i| tokio::spawn(clients::client(i, ctx.clone())))
        .collect();
    let mut samples = Vec::new();
    loop {
        // Samples are taken under load only: one at the deadline would catch the clients
        // leaving, which is the drain's to measure.
        let wait = Duration::from_secs(a.sample_secs.max(1));
        let left = ctx.deadline.saturating_duration_since(Instant::now());
        if left <= wait {
            tokio::time::sleep(left).await;
            break;
        }
        tokio::time::sleep(wait).await;
        let s = sample(&c, &a, started).await;
        progress(&ctx, &s);
        samples.push(s);
    }
    end_progress();
    for client in clients {
        let _ = client.await;
    }
    let published = publisher.await.map_err(|e| e.to_string())??;
    let stopped = Instant::now();
    let mut drain = Vec::new();
    let mut drained_after = None;
    while stopped.elapsed() < Duration::from_secs(a.drain_secs) {
        let s = sample(&c, &a, started).await;
        let done = s.drained();
        drain.push(s);
        if done {
            drained_after = Some(round(stopped.elapsed().as_secs_f64()));
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(report(&a, &ctx, &samples, &drain, drained_after, published))
}

fn progress(ctx: &Ctx, s: &Sample) {
    let cycles: u64 = ctx.cycles.iter().map(|n| n.load(Ordering::Relaxed)).sum();
    progress_line(&format!(
        "soak {:.0}s: rss {} MB, fds {}, connections {}, http sessions {}, presence {}, cycles {cycles}",
        s.at,
        s.rss.map_or(0, |b| b >> 20),
        s.fds.unwrap_or(0),
        s.connections.unwrap_or(0),
        s.http_sessions.unwrap_or(0),
        s.presence.unwrap_or(0),
    ));
}

/// Read everything a sample holds.
async fn sample(c: &CommonArgs, a: &SoakArgs, started: Instant) -> Sample {
    let status = get_json(&a.admin.to_string(), "/status", None).await;
    let mut presence = Some(0u64);
    for i in 0..PRESENCE_CHANNELS {
        let path = format!("/api/{}/channels/presence-soak-{i}/presence", c.app_id);
        let count = get_json(&c.addr.to_string(), &path, Some(&c.secret))
            .await
            .and_then(|v| v["count"].as_u64());
        presence = presence.zip(count).map(|(a, b)| a + b);
    }
    let pid = c.server_pid;
    Sample {
        at: started.elapsed().as_secs_f64(),
        rss: pid.and_then(proc_rss),
        fds: pid.and_then(|p| {
            std::fs::read_dir(format!("/proc/{p}/fd"))
                .ok()
                .map(|d| d.count() as u64)
        }),
        connections: status.as_ref().and_then(|v| v["connections"].as_u64()),
        http_sessions: status.as_ref().and_then(|v| v["http_sessions"].as_u64()),
        presence,
    }
}

/// The largest deviation of `pick` from the reference, in percent, over `samples`.
fn deviation(
    reference: Option<u64>,
    samples: &[Sample],
    pick: fn(&Sample) -> Option<u64>,
) -> Option<f64> {
    let r = reference.filter(|r| *r > 0)? as f64;
    samples
        .iter()
        .filter_map(pick)
        .map(|v| ((v as f64 - r) / r * 100.0).abs())
        .fold(None, |m: Option<f64>, d| Some(m.map_or(d, |m| m.max(d))))
        .map(round)
}

fn report(
    a: &SoakArgs,
    ctx: &Ctx,
    samples: &[Sample],
    drain: &[Sample],
    drained_after: Option<f64>,
    published: crate::common::Published,
) -> Value {
    let after: Vec<Sample> = samples
        .iter()
        .filter(|s| s.at >= a.warmup_secs as f64)
        .cloned()
        .collect();
    let reference = after.first().cloned().unwrap_or_default();
    let rss_dev = deviation(reference.rss, &after, |s| s.rss);
    let fds_dev = deviation(reference.fds, &after, |s| s.fds);
    let flat = |d: Option<f64>| d.is_some_and(|d| d <= 10.0);
    let cycles: Vec<u64> = ctx
        .cycles
        .iter()
        .map(|n| n.load(Ordering::Relaxed))
        .collect();
    let last = drain.last().cloned().unwrap_or_default();
    let errors = ctx.errors.lock().clone();
    json!({
        "scenario": "soak",
        "secs": a.secs,
        "clients": a.clients,
        "cycles": {"ws": cycles[0], "sse": cycles[1], "long_poll": cycles[2]},
        "abandoned_mid_request": ctx.abandoned.load(Ordering::Relaxed),
        "messages_received": ctx.received.load(Ordering::Relaxed),
        "publishes_ok": published.ok,
        "publishes_failed": published.failed,
        "failed_cycles": errors,
        "reference": {"at_secs": round(reference.at), "rss_bytes": reference.rss, "fds": reference.fds},
        "rss_max_deviation_percent": rss_dev,
        "fds_max_deviation_percent": fds_dev,
        "rss_range_bytes": [after.iter().filter_map(|s| s.rss).min(), after.iter().filter_map(|s| s.rss).max()],
        "fds_range": [after.iter().filter_map(|s| s.fds).min(), after.iter().filter_map(|s| s.fds).max()],
        "drained_after_secs": drained_after,
        "after_drain": {"connections": last.connections, "http_sessions": last.http_sessions, "presence": last.presence, "rss_bytes": last.rss, "fds": last.fds},
        "samples_columns": ["secs", "rss_bytes", "fds", "connections", "http_sessions", "presence"],
        "samples": samples.iter().map(Sample::json).collect::<Vec<_>>(),
        "pass": flat(rss_dev) && flat(fds_dev) && drained_after.is_some(),
    })
}
