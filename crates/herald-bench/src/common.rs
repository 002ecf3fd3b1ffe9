//! What scenarios share: building the target, starting workers with a progress line, paced
//! publishing, the server's memory, and the report table.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::CommonArgs;
use crate::histogram::Histogram;
use crate::publisher::Publisher;
use crate::target::Target;
use crate::workers::{ChannelPlan, ChurnSpec, Event, Report, Worker, WorkerSpec, plan_workers};

/// The target described by the common arguments.
pub fn target(c: &CommonArgs) -> Target {
    Target {
        protocol: c.protocol,
        transport: c.transport,
        addr: c.addr,
        app_id: c.app_id.clone(),
        app_key: c.app_key.clone(),
        secret: c.secret.clone(),
        deflate: c.deflate,
        payload_kind: c.payload_kind,
        inflate_every: c.inflate_every,
    }
}

/// Source addresses: `127.0.0.1`, `127.0.0.2`, … (all loopback on Linux).
pub fn source_ips(c: &CommonArgs, connections: usize) -> Vec<IpAddr> {
    let n = c
        .source_ips
        .unwrap_or_else(|| connections.div_ceil(20_000))
        .clamp(1, 250);
    (0..n)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + i as u8)))
        .collect()
}

/// Workers holding `connections` subscribed connections, all connected.
pub struct Fleet {
    /// The workers.
    pub workers: Vec<Worker>,
    /// Connections up.
    pub connected: usize,
    /// Connections that failed.
    pub failed: usize,
    /// Seconds from the first connect to the last subscription (slowest worker).
    pub secs: f64,
    /// The first failure, if any.
    pub first_error: Option<String>,
}

/// Start workers for `connections` connections subscribed according to `plan`, and wait
/// until every connection is up or failed, printing progress to stderr.
pub async fn start_fleet(
    c: &CommonArgs,
    connections: usize,
    plan: ChannelPlan,
    track_messages: usize,
    churn: Option<ChurnSpec>,
) -> Result<Fleet, String> {
    let ips = source_ips(c, connections);
    let split = plan_workers(connections, c.workers, &ips);
    let per_worker_inflight = (c.inflight / split.len()).max(1);
    let started = Instant::now();
    let mut workers = Vec::new();
    for (id, (first, count, ips)) in split.into_iter().enumerate() {
        let spec = WorkerSpec {
            id,
            target: target(c),
            connections: count,
            first_index: first,
            channels: plan.clone(),
            source_ips: ips,
            max_inflight: per_worker_inflight,
            track_messages,
            churn: churn.clone().map(|mut ch| {
                ch.cycles = count;
                ch
            }),
        };
        workers.push(
            Worker::spawn(&spec)
                .await
                .map_err(|e| format!("cannot start a worker: {e}"))?,
        );
    }
    let mut fleet = Fleet {
        workers,
        connected: 0,
        failed: 0,
        secs: 0.0,
        first_error: None,
    };
    if churn.is_some() {
        return Ok(fleet);
    }
    let n = fleet.workers.len();
    let mut progress = vec![(0usize, 0usize); n];
    let mut ready = vec![false; n];
    let mut spans = vec![0f64; n];
    while ready.iter().any(|r| !r) {
        for (i, w) in fleet.workers.iter_mut().enumerate() {
            if ready[i] {
                continue;
            }
            match w.next().await.map_err(|e| format!("worker {i}: {e}"))? {
                Event::Progress { connected, failed } => progress[i] = (connected, failed),
                Event::Ready {
                    connected,
                    failed,
                    first_error,
                    secs,
                } => {
                    progress[i] = (connected, failed);
                    spans[i] = secs;
                    ready[i] = true;
                    if fleet.first_error.is_none() {
                        fleet.first_error = first_error;
                    }
                }
                Event::Error { message } => return Err(format!("worker {i}: {message}")),
                _ => {}
            }
        }
        let (up, down): (usize, usize) =
            progress.iter().fold((0, 0), |a, p| (a.0 + p.0, a.1 + p.1));
        progress_line(&format!(
            "connecting {up}/{connections} (failed {down}) {:.1}s",
            started.elapsed().as_secs_f64()
        ));
    }
    // The connect phase: the slowest worker's span from its first connect to its last
    // subscription (process start-up and progress reporting excluded).
    let _ = started;
    fleet.secs = spans.iter().copied().fold(0.0, f64::max);
    fleet.connected = progress.iter().map(|p| p.0).sum();
    fleet.failed = progress.iter().map(|p| p.1).sum();
    end_progress();
    Ok(fleet)
}

impl Fleet {
    /// Reports from every worker, merged.
    pub async fn report(&mut self, reset: bool) -> Result<(Report, Histogram), String> {
        let mut reports = Vec::new();
        for (i, w) in self.workers.iter_mut().enumerate() {
            reports.push(
                w.report(reset)
                    .await
                    .map_err(|e| format!("worker {i}: {e}"))?,
            );
        }
        Ok(crate::workers::merge(&reports))
    }

    /// Poll until `expected` deliveries arrived or `patience` passed with no progress.
    pub async fn wait_for(
        &mut self,
        expected: u64,
        patience: Duration,
    ) -> Result<(Report, Histogram), String> {
        let mut last = (0u64, Instant::now());
        loop {
            let (report, hist) = self.report(false).await?;
            if report.received >= expected {
                return Ok((report, hist));
            }
            if report.received != last.0 {
                last = (report.received, Instant::now());
            } else if last.1.elapsed() > patience {
                return Ok((report, hist));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stop every worker.
    pub async fn shutdown(self) {
        for w in self.workers {
            w.exit().await;
        }
    }
}

/// Publishing results.
#[derive(Debug, Default)]
pub struct Published {
    /// Publishes answered 200.
    pub ok: u64,
    /// Publishes that failed (status or transport).
    pub failed: u64,
    /// Time from sending a publish to its reply, µs.
    pub reply: Histogram,
    /// Deliveries expected from the successful publishes.
    pub expected: u64,
    /// Seconds spent publishing.
    pub secs: f64,
}

/// Publish at `rate` per second for `secs` over `connections` keep-alive connections, to
/// channels chosen round-robin from `channels` (name, subscriber count); sequence numbers
/// start at `first_seq`.
///
/// Publication `i` is due at `start + i / rate` and is sent by connection `i mod
/// connections`, so the stream the server sees is evenly spaced (no bursts from
/// connections ticking in phase). A connection that falls behind sends as soon as it can.
pub async fn paced_publish(
    target: &Target,
    connections: usize,
    rate: f64,
    secs: f64,
    channels: Arc<Vec<(String, u64)>>,
    payload_size: usize,
    first_seq: u64,
) -> Result<Published, String> {
    let connections = connections.max(1);
    let total = (rate * secs).round().max(1.0) as u64;
    let start = Instant::now() + Duration::from_millis(20);
    let mut tasks = Vec::new();
    for k in 0..connections {
        let (target, channels) = (target.clone(), channels.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Published::default();
            let mut publisher = Publisher::connect(&target)
                .await
                .map_err(|e| format!("publisher: {e}"))?;
            let mut i = k as u64;
            while i < total {
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due).await;
                let seq = first_seq + i;
                let (name, subscribers) = &channels[(i as usize) % channels.len()];
                let data = target.payload(seq, payload_size);
                let t0 = Instant::now();
                match publisher.publish(&[name], "bench", &data).await {
                    Ok(200) => {
                        out.ok += 1;
                        out.expected += subscribers;
                    }
                    Ok(_) | Err(_) => out.failed += 1,
                }
                out.reply.record(t0.elapsed().as_micros() as u64);
                i += connections as u64;
            }
            Ok::<_, String>(out)
        }));
    }
    let mut total_out = Published::default();
    for t in tasks {
        let p = t.await.map_err(|e| e.to_string())??;
        total_out.ok += p.ok;
        total_out.failed += p.failed;
        total_out.expected += p.expected;
        total_out.reply.merge(&p.reply);
    }
    total_out.secs = start.elapsed().as_secs_f64();
    Ok(total_out)
}

/// The resident memory of process `pid`, bytes (from `/proc/PID/status`).
pub fn proc_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// `GET path` from `authority` on a fresh connection (HTTP/1.0, so the body ends with the
/// connection), as JSON; `None` on any failure or after 5 s.
pub async fn get_json(authority: &str, path: &str, bearer: Option<&str>) -> Option<Value> {
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(authority).await.ok()?;
        let auth = bearer
            .map(|b| format!("Authorization: Bearer {b}\r\n"))
            .unwrap_or_default();
        let req = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\n{auth}\r\n");
        stream.write_all(req.as_bytes()).await.ok()?;
        let mut body = Vec::new();
        stream.read_to_end(&mut body).await.ok()?;
        let text = String::from_utf8_lossy(&body);
        let start = text.find("\r\n\r\n")? + 4;
        serde_json::from_str(&text[start..]).ok()
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), fetch)
        .await
        .ok()?
}

/// Where the server's memory is read from.
pub async fn server_rss(c: &CommonArgs) -> Option<u64> {
    if let Some(pid) = c.server_pid {
        return proc_rss(pid);
    }
    let url = c.status_url.as_ref()?;
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let v = get_json(authority, &path, None).await?;
    v["memory_rss_bytes"].as_u64()
}

/// Overwrite the progress line on stderr.
pub fn progress_line(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "\r\x1b[2K{text}");
    let _ = err.flush();
}

/// Finish the progress line.
pub fn end_progress() {
    let _ = writeln!(std::io::stderr());
}

/// Latency percentiles in milliseconds, as JSON.
pub fn latency_json(h: &Histogram) -> Value {
    let ms = |us: u64| (us as f64 / 1000.0 * 1000.0).round() / 1000.0;
    json!({
        "count": h.count(),
        "p50_ms": ms(h.quantile(0.50)),
        "p90_ms": ms(h.quantile(0.90)),
        "p99_ms": ms(h.quantile(0.99)),
        "p999_ms": ms(h.quantile(0.999)),
        "max_ms": ms(h.max()),
        "mean_ms": ms(h.mean() as u64),
    })
}

/// Print a result as an indented key/value table.
pub fn print_table(label: &str, result: &Value) {
    println!(
        "{} — {}",
        result["scenario"].as_str().unwrap_or("result"),
        label
    );
    print_value("", result, 1);
}

fn print_value(key: &str, v: &Value, depth: usize) {
    let pad = "  ".repeat(depth);
    match v {
        Value::Object(map) => {
            if !key.is_empty() {
                println!("{pad}{key}:");
            }
            for (k, child) in map {
                if k == "scenario" {
                    continue;
                }
                print_value(k, child, if key.is_empty() { depth } else { depth + 1 });
            }
        }
        Value::Array(items) if items.iter().all(Value::is_object) && !items.is_empty() => {
            println!("{pad}{key}:");
            for (i, item) in items.iter().enumerate() {
                print_value(&format!("[{i}]"), item, depth + 1);
            }
        }
        other => println!("{pad}{key:<28} {other}"),
    }
}
