//! restart: a zero-downtime restart under load (Herald's SIGUSR2 handover). S subscribers on
//! history channels receive a steady stream of publications, each published on a new
//! connection; a connector opens new WebSocket connections all the time. After
//! `--before-secs` the server is told to restart (`--restart-command`, by default
//! `kill -USR2 {pid}`); subscribers closed by the old process reconnect at once and
//! resubscribe from their position. The result: connection attempts refused, publications
//! lost, duplicated or out of order (all must be 0), how long the handover took, and the
//! delivery latency during it against the steady state before it, in the same run.
//!
//! Native protocol, WebSocket only: recovery by position is the native protocol's.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Args;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use super::idle::round;
use crate::CommonArgs;
use crate::common::{end_progress, get_json, latency_json, progress_line, source_ips, target};
use crate::histogram::Histogram;
use crate::target::{Target, payload, unix_micros};
use crate::wsclient::{WsClient, tcp_connect};

/// Options of the restart scenario.
#[derive(Debug, Clone, Args)]
pub struct RestartArgs {
    /// Subscribers, spread over `--channels` channels (each must keep history).
    #[arg(long, default_value_t = 10_000)]
    pub subscribers: usize,
    /// Channels.
    #[arg(long, default_value_t = 100)]
    pub channels: usize,
    /// Publishes per second over all channels, each on a new connection.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// New WebSocket connections per second from the connector.
    #[arg(long, default_value_t = 100.0)]
    pub connect_rate: f64,
    /// Steady load before the restart (the baseline).
    #[arg(long, default_value_t = 5.0)]
    pub before_secs: f64,
    /// Load after the old process has exited.
    #[arg(long, default_value_t = 5.0)]
    pub after_secs: f64,
    /// The restart, run with `sh -c`; `{pid}` is the serving process (from `--status-url`).
    #[arg(long, default_value = "kill -USR2 {pid}")]
    pub restart_command: String,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
}

/// What went wrong, over every client.
#[derive(Default)]
struct Faults {
    /// Connection attempts that failed: TCP refused or reset, no upgrade, no `connected`, a
    /// publish without an answer.
    refused: AtomicU64,
    /// Publishes answered other than 200.
    publish_errors: AtomicU64,
    /// Deliveries of a sequence number already delivered to that subscriber.
    duplicated: AtomicU64,
    /// Sequence numbers a subscriber skipped.
    lost: AtomicU64,
    /// Resubscriptions with a position, and those answered `recovered: true`.
    resubscribed: AtomicU64,
    recovered: AtomicU64,
    /// Connections the connector completed.
    connected: AtomicU64,
    /// The first failure, for the report.
    first_error: Mutex<Option<String>>,
}

impl Faults {
    fn refuse(&self, what: String) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        self.first_error.lock().get_or_insert(what);
    }
}

/// Delivery latencies by when the publication was sent: before the restart command, during
/// the handover (until the old process is gone), after it.
#[derive(Default)]
struct Latencies {
    before: Histogram,
    during: Histogram,
    after: Histogram,
}

/// The phase boundaries, µs since the Unix epoch (0: not yet).
#[derive(Default)]
struct Phases {
    restart_sent: AtomicU64,
    old_gone: AtomicU64,
}

impl Phases {
    fn record(&self, latencies: &Mutex<Latencies>, sent: u64, latency: u64) {
        let restart = self.restart_sent.load(Ordering::Relaxed);
        let gone = self.old_gone.load(Ordering::Relaxed);
        let mut l = latencies.lock();
        if restart == 0 || sent < restart {
            l.before.record(latency);
        } else if gone == 0 || sent < gone {
            l.during.record(latency);
        } else {
            l.after.record(latency);
        }
    }
}

/// Everything the tasks share.
struct Shared {
    target: Target,
    faults: Faults,
    phases: Phases,
    latencies: Mutex<Latencies>,
    subscribed: AtomicU64,
    /// The last sequence number of every channel, once publishing has stopped.
    last: watch::Receiver<u64>,
}

/// Run it.
pub async fn run(c: CommonArgs, a: RestartArgs) -> Result<Value, String> {
    let status_url = c
        .status_url
        .clone()
        .ok_or("restart needs --status-url (Herald's admin /status), to follow the handover")?;
    let (authority, path) = split_url(&status_url)?;
    let old_pid = serving_pid(&authority, &path)
        .await
        .ok_or("no pid in the status URL's answer")?;
    let (last_tx, last_rx) = watch::channel(u64::MAX);
    let shared = Arc::new(Shared {
        target: target(&c),
        faults: Faults::default(),
        phases: Phases::default(),
        latencies: Mutex::new(Latencies::default()),
        subscribed: AtomicU64::new(0),
        last: last_rx,
    });
    let ips = source_ips(&c, a.subscribers * 2);
    let subscribers: Vec<_> = (0..a.subscribers)
        .map(|i| {
            let ip = ips[i % ips.len()];
            tokio::spawn(subscriber(shared.clone(), ip, i % a.channels))
        })
        .collect();
    let connect_started = Instant::now();
    while shared.subscribed.load(Ordering::Relaxed) < a.subscribers as u64 {
        if connect_started.elapsed() > Duration::from_secs(120) {
            return Err("subscribers did not all subscribe within 120 s".into());
        }
        progress_line(&format!(
            "subscribed {}/{}",
            shared.subscribed.load(Ordering::Relaxed),
            a.subscribers
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    end_progress();

    let (stop_tx, stop_rx) = watch::channel(false);
    let publishing = tokio::spawn(publisher(
        shared.clone(),
        a.clone(),
        c.addr,
        stop_rx.clone(),
    ));
    let connecting = tokio::spawn(connector(shared.clone(), a.connect_rate, ips[0], stop_rx));
    tokio::time::sleep(Duration::from_secs_f64(a.before_secs)).await;

    let command = a.restart_command.replace("{pid}", &old_pid.to_string());
    eprintln!("restart: {command}");
    shared
        .phases
        .restart_sent
        .store(unix_micros(), Ordering::Relaxed);
    let status = tokio::process::Command::new("sh")
        .args(["-c", &command])
        .status()
        .await
        .map_err(|e| format!("{command}: {e}"))?;
    if !status.success() {
        return Err(format!("{command}: {status}"));
    }
    let new_pid = wait_for_handover(&authority, &path, old_pid).await?;
    let handover_ms =
        (unix_micros() - shared.phases.restart_sent.load(Ordering::Relaxed)) as f64 / 1000.0;
    shared
        .phases
        .old_gone
        .store(unix_micros(), Ordering::Relaxed);
    eprintln!("restart: pid {old_pid} handed over to {new_pid} and exited in {handover_ms:.0} ms");
    tokio::time::sleep(Duration::from_secs_f64(a.after_secs)).await;
    stop_tx.send_replace(true);
    let rounds = publishing.await.map_err(|e| e.to_string())??;
    let _ = connecting.await;
    last_tx.send_replace(rounds);
    let deadline = Instant::now() + Duration::from_secs(60);
    for s in subscribers {
        let left = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, s).await.is_err() {
            return Err("subscribers did not all get the last publication within 60 s".into());
        }
    }

    let f = &shared.faults;
    let l = shared.latencies.lock();
    let p99 = |h: &Histogram| h.quantile(0.99) as f64 / 1000.0;
    let delivered = l.before.count() + l.during.count() + l.after.count();
    let expected = rounds * a.subscribers as u64;
    Ok(json!({
        "scenario": "restart",
        "subscribers": a.subscribers,
        "channels": a.channels,
        "publications_per_channel": rounds,
        "messages_expected": expected,
        "messages_received": delivered,
        "refused_attempts": f.refused.load(Ordering::Relaxed),
        "publish_errors": f.publish_errors.load(Ordering::Relaxed),
        "lost": f.lost.load(Ordering::Relaxed),
        "duplicated": f.duplicated.load(Ordering::Relaxed),
        "resubscribed": f.resubscribed.load(Ordering::Relaxed),
        "recovered": f.recovered.load(Ordering::Relaxed),
        "connector_connections": f.connected.load(Ordering::Relaxed),
        "first_error": f.first_error.lock().clone(),
        "handover_ms": round(handover_ms),
        "delivery_latency_before": latency_json(&l.before),
        "delivery_latency_during": latency_json(&l.during),
        "delivery_latency_after": latency_json(&l.after),
        "during_p99_over_before_p99": round(p99(&l.during) / p99(&l.before).max(0.001)),
    }))
}

/// `(host:port, /path)` of an `http://` URL.
fn split_url(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: not an http:// URL"))?;
    Ok(rest
        .split_once('/')
        .map_or((rest.to_owned(), "/".to_owned()), |(a, p)| {
            (a.to_owned(), format!("/{p}"))
        }))
}

async fn serving_pid(authority: &str, path: &str) -> Option<u32> {
    let v = get_json(authority, path, None).await?;
    v["pid"].as_u64().and_then(|p| u32::try_from(p).ok())
}

/// Wait until another process serves and `old` has exited: the new pid.
async fn wait_for_handover(authority: &str, path: &str, old: u32) -> Result<u32, String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut new = None;
    loop {
        if new.is_none() {
            new = serving_pid(authority, path).await.filter(|&p| p != old);
        }
        if let Some(new) = new
            && !alive(old)
        {
            return Ok(new);
        }
        if Instant::now() > deadline {
            return Err(format!("no handover from pid {old} within 120 s"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether `pid` runs (a zombie waiting for its parent counts as gone).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// One subscriber of `feed-{channel}`: reconnects at once when closed, resubscribes from its
/// position, checks every sequence number, and returns once it has the last one.
async fn subscriber(shared: Arc<Shared>, ip: IpAddr, channel: usize) {
    let name = format!("restart-{channel}");
    let mut last = shared.last.clone();
    let mut next_seq = 1u64;
    let mut position: Option<(u64, String)> = None;
    let mut first = true;
    loop {
        let mut ws = match WsClient::connect(
            shared.target.addr,
            Some(ip),
            0,
            &shared.target.ws_path(),
            false,
        )
        .await
        {
            Ok(ws) => ws,
            Err(e) => {
                shared.faults.refuse(format!("subscriber connect: {e}"));
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        match ws.next_text().await {
            Ok(Some(t)) if memchr::memmem::find(&t, br#""type":"connected""#).is_some() => {}
            other => {
                shared
                    .faults
                    .refuse(format!("subscriber: no `connected` but {other:?}"));
                continue;
            }
        }
        let mut request = json!({"type": "subscribe", "channel": name});
        if let Some((offset, epoch)) = &position {
            request["since"] = json!({"offset": offset, "epoch": epoch});
        }
        if ws.send_text(&request.to_string()).await.is_err() {
            continue;
        }
        loop {
            if next_seq > *last.borrow() {
                return;
            }
            let text = tokio::select! {
                t = ws.next_text() => t,
                _ = last.changed() => continue,
            };
            let Ok(Some(text)) = text else { break };
            let Ok(m) = serde_json::from_slice::<Value>(&text) else {
                continue;
            };
            match m["type"].as_str() {
                Some("event") => {
                    let (Some(seq), Some(sent)) =
                        (m["data"]["hb_seq"].as_u64(), m["data"]["hb_t"].as_u64())
                    else {
                        continue;
                    };
                    let faults = &shared.faults;
                    if seq < next_seq {
                        faults.duplicated.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    faults.lost.fetch_add(seq - next_seq, Ordering::Relaxed);
                    next_seq = seq + 1;
                    shared.phases.record(
                        &shared.latencies,
                        sent,
                        unix_micros().saturating_sub(sent),
                    );
                    if let (Some(offset), Some(epoch)) = (m["offset"].as_u64(), m["epoch"].as_str())
                    {
                        position = Some((offset, epoch.to_owned()));
                    }
                }
                Some("subscribe") => {
                    if first {
                        first = false;
                        shared.subscribed.fetch_add(1, Ordering::Relaxed);
                    } else {
                        shared.faults.resubscribed.fetch_add(1, Ordering::Relaxed);
                        if m["data"]["recovered"] == true {
                            shared.faults.recovered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Some("ping") => {
                    let _ = ws.send_text(shared.target.pong_message()).await;
                }
                _ => {}
            }
        }
    }
}

/// POST one publication on a new connection: its status.
async fn publish_once(
    addr: SocketAddr,
    target: &Target,
    channel: &str,
    data: &str,
) -> std::io::Result<u16> {
    let (path, body, bearer) = target.publish_request(&[channel], "bench", data);
    let mut stream = tcp_connect(addr, None).await?;
    let auth = bearer
        .map(|b| format!("Authorization: Bearer {b}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&body).await?;
    let mut reply = Vec::with_capacity(512);
    stream.read_to_end(&mut reply).await?;
    let line = reply.split(|b| *b == b'\r').next().unwrap_or_default();
    std::str::from_utf8(line)
        .ok()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no HTTP status in the reply"))
}

/// Publish to every channel in turn at `rate`, sequence numbers per channel, until `stop`
/// (after a whole round): the number of rounds.
async fn publisher(
    shared: Arc<Shared>,
    a: RestartArgs,
    addr: SocketAddr,
    stop: watch::Receiver<bool>,
) -> Result<u64, String> {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / a.rate.max(0.1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut round = 0;
    while !*stop.borrow() {
        round += 1;
        for channel in 0..a.channels {
            tick.tick().await;
            let name = format!("restart-{channel}");
            let data = payload(round, a.payload);
            loop {
                match publish_once(addr, &shared.target, &name, &data).await {
                    Ok(200) => break,
                    Ok(status) => {
                        shared.faults.publish_errors.fetch_add(1, Ordering::Relaxed);
                        return Err(format!("publish answered {status}"));
                    }
                    // Counted, and retried so that the stream has no gap.
                    Err(e) => shared.faults.refuse(format!("publish: {e}")),
                }
            }
        }
    }
    Ok(round)
}

/// Open a WebSocket, wait for `connected`, drop it; `rate` times a second until `stop`.
async fn connector(shared: Arc<Shared>, rate: f64, ip: IpAddr, stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.1)));
    while !*stop.borrow() {
        tick.tick().await;
        let shared = shared.clone();
        tokio::spawn(async move {
            let t = &shared.target;
            match WsClient::connect(t.addr, Some(ip), 0, &t.ws_path(), false).await {
                Ok(mut ws) => match ws.next_text().await {
                    Ok(Some(text))
                        if memchr::memmem::find(&text, br#""type":"connected""#).is_some() =>
                    {
                        shared.faults.connected.fetch_add(1, Ordering::Relaxed);
                    }
                    other => shared
                        .faults
                        .refuse(format!("connector: no `connected` but {other:?}")),
                },
                Err(e) => shared.faults.refuse(format!("connector: {e}")),
            }
        });
    }
}
