//! Zero-downtime restart under load, on the real binary: SIGUSR2 (what `systemctl reload
//! herald` sends) starts a new process that takes the listening sockets over while the old
//! one drains (docs/operations.md, "Zero-downtime restart").
//!
//! While 2,000 subscribers on history channels receive a steady stream of publications and
//! a connector opens new connections all the time, the restart refuses no connection
//! attempt, and every subscriber ends with every publication exactly once, in order,
//! recovered across the restart: on one node with the disk history, and on Redis.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{APP_ID, APP_KEY, HeraldProcess, SECRET};

/// Subscribers, spread over [`CHANNELS`] channels.
const SUBSCRIBERS: usize = 2_000;
/// History channels.
const CHANNELS: usize = 20;
/// Publications per second, over all channels.
const PUBLISH_RATE: u64 = 100;
/// New connections per second from the connector.
const CONNECT_RATE: u64 = 50;

/// Microseconds since the Unix epoch.
fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// What the load saw go wrong, and the deliveries' latencies.
#[derive(Default)]
struct Tally {
    /// Connection attempts that failed (refused, reset, no handshake), by anyone.
    refused: AtomicU64,
    /// Publishes not answered 200.
    failed_publishes: AtomicU64,
    /// Connections the connector opened.
    connected: AtomicU64,
}

/// One subscriber's record.
struct Received {
    channel: usize,
    /// `data.n` of every event, in arrival order.
    ns: Vec<u64>,
    /// `(sent µs, latency µs)` of every event.
    latencies: Vec<(u64, u64)>,
    /// Resubscriptions, each with `since`.
    resubscribed: u32,
    /// Resubscriptions answered `recovered: true`.
    recovered: u32,
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn next_json(ws: &mut Ws) -> Option<Value> {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).expect("JSON from the server");
                if v["type"] != "ping" {
                    return Some(v);
                }
            }
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => return None,
            Ok(Some(Ok(_))) => {}
            Err(_) => panic!("a subscriber heard nothing for 20 s"),
        }
    }
}

/// A subscriber that reconnects at once when closed and resubscribes from its position.
/// Returns when it has `last` of `last_n`.
async fn subscriber(
    url: String,
    channel: usize,
    tally: Arc<Tally>,
    subscribed: Arc<AtomicU64>,
    mut last_n: watch::Receiver<u64>,
) -> Received {
    let name = format!("feed-{channel}");
    let mut me = Received {
        channel,
        ns: Vec::new(),
        latencies: Vec::new(),
        resubscribed: 0,
        recovered: 0,
    };
    let mut position: Option<(u64, String)> = None;
    loop {
        let mut ws = match tokio_tungstenite::connect_async(&url).await {
            Ok((ws, _)) => ws,
            Err(e) => {
                tally.refused.fetch_add(1, Ordering::Relaxed);
                eprintln!("subscriber connect failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(hello) = next_json(&mut ws).await else {
            tally.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        assert_eq!(hello["type"], "connected", "{hello}");
        let mut request = json!({"type": "subscribe", "channel": name, "id": 1});
        if let Some((offset, epoch)) = &position {
            request["since"] = json!({"offset": offset, "epoch": epoch});
        }
        ws.send(Message::text(request.to_string())).await.unwrap();
        let reply = next_json(&mut ws).await.expect("a subscribe reply");
        assert_eq!(reply["type"], "subscribe", "{reply}");
        if position.is_some() {
            me.resubscribed += 1;
            me.recovered += u32::from(reply["data"]["recovered"] == true);
        } else {
            subscribed.fetch_add(1, Ordering::Relaxed);
        }
        loop {
            if me.ns.last().is_some_and(|&n| n >= *last_n.borrow()) {
                return me;
            }
            let message = tokio::select! {
                m = next_json(&mut ws) => m,
                _ = last_n.changed() => continue,
            };
            let Some(m) = message else { break };
            if m["type"] != "event" {
                continue;
            }
            let n = m["data"]["n"].as_u64().expect("n");
            let sent = m["data"]["t"].as_u64().expect("t");
            me.ns.push(n);
            me.latencies.push((sent, now_us().saturating_sub(sent)));
            position = Some((
                m["offset"].as_u64().expect("offset"),
                m["epoch"].as_str().expect("epoch").to_owned(),
            ));
        }
    }
}

/// POST a publication on a new connection (each one a connection attempt): its status.
async fn publish(addr: &str, channel: usize, n: u64) -> Result<(u16, String), std::io::Error> {
    let body = json!({"channel": format!("feed-{channel}"), "event": "tick",
        "data": {"n": n, "t": now_us()}})
    .to_string();
    let mut stream = TcpStream::connect(addr).await?;
    let head = format!(
        "POST /api/{APP_ID}/publish HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {SECRET}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await?;
    let reply = String::from_utf8_lossy(&reply);
    let status = reply
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {reply:?}")))?;
    Ok((status, reply.into_owned()))
}

/// Publish `feed-{i % CHANNELS}` round-robin at [`PUBLISH_RATE`] until `stop`; the number of
/// rounds (the last `n` of every channel).
async fn publisher(addr: String, tally: Arc<Tally>, stop: watch::Receiver<bool>) -> u64 {
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / PUBLISH_RATE));
    let mut round = 0;
    loop {
        round += 1;
        for channel in 0..CHANNELS {
            tick.tick().await;
            loop {
                match publish(&addr, channel, round).await {
                    Ok((200, _)) => break,
                    Ok((_, reply)) => {
                        tally.failed_publishes.fetch_add(1, Ordering::Relaxed);
                        panic!("publish answered {reply}");
                    }
                    Err(e) => {
                        // Counted, and retried so that the stream stays whole.
                        tally.refused.fetch_add(1, Ordering::Relaxed);
                        eprintln!("publish failed: {e}");
                    }
                }
            }
        }
        if *stop.borrow() {
            return round;
        }
    }
}

/// Open a WebSocket, wait for `connected`, close; [`CONNECT_RATE`] times a second.
async fn connector(url: String, tally: Arc<Tally>, stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / CONNECT_RATE));
    while !*stop.borrow() {
        tick.tick().await;
        let url = url.clone();
        let tally = tally.clone();
        tokio::spawn(async move {
            match tokio_tungstenite::connect_async(&url).await {
                Ok((mut ws, _)) => match next_json(&mut ws).await {
                    Some(m) if m["type"] == "connected" => {
                        tally.connected.fetch_add(1, Ordering::Relaxed);
                        let _ = ws.close(None).await;
                    }
                    other => {
                        tally.refused.fetch_add(1, Ordering::Relaxed);
                        eprintln!("connector: no `connected` but {other:?}");
                    }
                },
                Err(e) => {
                    tally.refused.fetch_add(1, Ordering::Relaxed);
                    eprintln!("connector: {e}");
                }
            }
        });
    }
}

/// Kills the process that took over when the test ends, however it ends.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .status();
    }
}

/// A child process killed and reaped when the test ends.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// The whole run against a node started with `config_body` (the `[[apps]]` section added).
async fn restart_under_load(what: &str, config_body: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("herald.toml");
    std::fs::write(
        &config,
        format!(
            r#"{config_body}
[server]
drain_window = "2s"
shutdown_grace_period = "10s"
[limits]
max_connections_per_ip = 100000
[[apps]]
id = "{APP_ID}"
key = "{APP_KEY}"
secret = "{SECRET}"
[[apps.history]]
pattern = "feed-*"
size = 10000
"#
        ),
    )
    .unwrap();
    let mut old = HeraldProcess::spawn_logged(&config, &dir.path().join("herald.log")).await;
    let old_pid = old.child.id();
    let url = format!("ws://{}/ws/{APP_KEY}", old.addr);
    let tally = Arc::new(Tally::default());
    let subscribed = Arc::new(AtomicU64::new(0));
    let (last_tx, last_rx) = watch::channel(u64::MAX);
    let subscribers: Vec<_> = (0..SUBSCRIBERS)
        .map(|i| {
            tokio::spawn(subscriber(
                url.clone(),
                i % CHANNELS,
                tally.clone(),
                subscribed.clone(),
                last_rx.clone(),
            ))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while subscribed.load(Ordering::Relaxed) < SUBSCRIBERS as u64 {
        assert!(
            Instant::now() < deadline,
            "subscribers did not all subscribe"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let publishing = tokio::spawn(publisher(old.addr.clone(), tally.clone(), stop_rx.clone()));
    let connecting = tokio::spawn(connector(url.clone(), tally.clone(), stop_rx));
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The documented procedure: SIGUSR2 to the running process.
    let handover_started = now_us();
    let status = std::process::Command::new("kill")
        .args(["-USR2", &old_pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let new_pid = loop {
        let (code, status) = old.admin_json("/status").await;
        if code == 200
            && status["pid"]
                .as_u64()
                .is_some_and(|p| p != u64::from(old_pid))
        {
            break status["pid"].as_u64().unwrap() as u32;
        }
        assert!(
            Instant::now() < deadline,
            "no new process:\n{}",
            old.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let _new = KillOnDrop(new_pid);
    let exit = loop {
        if let Some(status) = old.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the old process did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let handover_ended = now_us();
    assert!(exit.success(), "the old process exits cleanly: {exit}");

    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_tx.send(true).unwrap();
    let rounds = publishing.await.unwrap();
    connecting.await.unwrap();
    last_tx.send(rounds).unwrap();
    let mut received = Vec::with_capacity(SUBSCRIBERS);
    for s in subscribers {
        received.push(
            tokio::time::timeout(Duration::from_secs(60), s)
                .await
                .expect("every subscriber gets the last publication")
                .unwrap(),
        );
    }

    let expected: Vec<u64> = (1..=rounds).collect();
    let mut during = Vec::new();
    let mut resubscribed = 0;
    for r in &received {
        assert_eq!(
            r.ns, expected,
            "{what}: subscriber on feed-{} got every publication exactly once, in order",
            r.channel
        );
        assert!(r.resubscribed >= 1, "{what}: every subscriber was moved");
        assert_eq!(
            r.recovered, r.resubscribed,
            "{what}: every resubscription recovered"
        );
        resubscribed += r.resubscribed;
        during.extend(
            r.latencies
                .iter()
                .filter(|(sent, _)| (handover_started..=handover_ended).contains(sent))
                .map(|(_, latency)| *latency),
        );
    }
    during.sort_unstable();
    let refused = tally.refused.load(Ordering::Relaxed);
    eprintln!(
        "{what}: {SUBSCRIBERS} subscribers, {rounds} publications per channel, {} connector \
         connections, {resubscribed} resubscriptions; handover {:.0} ms (signal to old exit); \
         delivery during it: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} deliveries; \
         refused attempts {refused}",
        tally.connected.load(Ordering::Relaxed),
        (handover_ended - handover_started) as f64 / 1000.0,
        percentile(&during, 0.5),
        percentile(&during, 0.99),
        percentile(&during, 1.0),
        during.len(),
    );
    assert_eq!(refused, 0, "{what}: no connection attempt was refused");
    assert_eq!(tally.failed_publishes.load(Ordering::Relaxed), 0);
    assert!(tally.connected.load(Ordering::Relaxed) > 0);
    assert!(
        !during.is_empty(),
        "publications were delivered during the handover"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_under_load_refuses_nothing_and_loses_nothing_with_disk_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    restart_under_load(
        "disk",
        &format!(
            "[history]\nstore = \"disk\"\npath = \"{}\"\n",
            dir.path().join("store").display()
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_under_load_refuses_nothing_and_loses_nothing_on_redis() {
    if !crate::cluster::redis_available().await {
        return;
    }
    let prefix = crate::cluster::unique_prefix();
    restart_under_load(
        "redis",
        &format!(
            "[broker]\nkind = \"redis\"\n[redis]\nurl = \"{}\"\nprefix = \"{prefix}\"\n",
            crate::cluster::redis_url()
        ),
    )
    .await;
}

/// `systemd-socket-activate` (from the systemd package) holds the listening socket and
/// starts Herald on the first connection, as a `.socket` unit does; Herald serves on the
/// socket it inherits (that first connection included), and hands it over on SIGUSR2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_activated_herald_serves_the_inherited_socket_and_hands_it_over() {
    if !crate::harness::tool_available("systemd-socket-activate", "--help", "systemd") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("herald.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ndrain_window = \"1s\"\n[[apps]]\nid = \"{APP_ID}\"\nkey = \"{APP_KEY}\"\nsecret = \"{SECRET}\"\n"
        ),
    )
    .unwrap();
    let (port, admin) = (crate::harness::free_port(), crate::harness::free_port());
    let log = dir.path().join("herald.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Reaped(
        std::process::Command::new("systemd-socket-activate")
            .args(["-l", &format!("127.0.0.1:{port}")])
            .arg(env!("CARGO_BIN_EXE_herald"))
            .args(["serve", "--config"])
            .arg(&config)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .stdout(std::process::Stdio::from(out.try_clone().unwrap()))
            .stderr(std::process::Stdio::from(out))
            .spawn()
            .expect("systemd-socket-activate"),
    );
    let url = format!("ws://127.0.0.1:{port}/ws/{APP_KEY}");
    let deadline = Instant::now() + Duration::from_secs(10);
    // The socket is there before Herald is.
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "systemd-socket-activate did not listen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // This connection starts Herald, and Herald answers it on the inherited socket.
    let (mut first, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("the first connection is served");
    assert_eq!(next_json(&mut first).await.unwrap()["type"], "connected");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("listening on an inherited socket") && text.contains("server.listen"),
        "{text}"
    );

    // The socket-activated process hands the socket over like any other.
    let status = std::process::Command::new("kill")
        .args(["-USR2", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let admin_addr: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let new_pid = loop {
        let (_, body, _) = crate::harness::http(admin_addr, "GET", "/status", None, None).await;
        let status: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if let Some(pid) = status["pid"]
            .as_u64()
            .filter(|&p| p != u64::from(child.0.id()))
        {
            break pid as u32;
        }
        assert!(Instant::now() < deadline, "no new process");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let _new = KillOnDrop(new_pid);
    // The first connection is asked to reconnect; a new one reaches the new process.
    match tokio::time::timeout(Duration::from_secs(10), first.next()).await {
        Ok(Some(Ok(Message::Close(Some(frame))))) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected a 1001 close, got {other:?}"),
    }
    let (mut second, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("reconnect");
    assert_eq!(next_json(&mut second).await.unwrap()["type"], "connected");
}

/// A new process that cannot start (here: the configuration was edited into an invalid one)
/// changes nothing: the running process logs why and keeps serving, its clients connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_handover_leaves_the_running_process_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("herald.toml");
    let valid =
        format!("[[apps]]\nid = \"{APP_ID}\"\nkey = \"{APP_KEY}\"\nsecret = \"{SECRET}\"\n");
    std::fs::write(&config, &valid).unwrap();
    let node = HeraldProcess::spawn_logged(&config, &dir.path().join("herald.log")).await;
    let url = format!("ws://{}/ws/{APP_KEY}", node.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    assert_eq!(next_json(&mut ws).await.unwrap()["type"], "connected");
    ws.send(Message::text(
        json!({"type": "subscribe", "channel": "news"}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut ws).await.unwrap()["type"], "subscribe");

    std::fs::write(&config, format!("{valid}[limits]\nmax_conections = 5\n")).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-USR2", &node.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !node
        .log_text()
        .contains("handover failed; this process keeps serving")
    {
        assert!(
            Instant::now() < deadline,
            "no failure logged:\n{}",
            node.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = node.log_text();
    assert!(
        log.contains("max_conections"),
        "the new process said why:\n{log}"
    );
    assert!(log.contains("exit status: 64"), "{log}");

    let (code, status) = node.admin_json("/status").await;
    assert_eq!(
        (code, status["pid"].as_u64()),
        (200, Some(u64::from(node.child.id())))
    );
    assert_eq!(node.admin_json("/ready").await.0, 200, "still ready");
    assert_eq!(node.publish("news", "still", json!({"n": 1})).await.0, 200);
    let event = next_json(&mut ws)
        .await
        .expect("the open connection still receives");
    assert_eq!(event["data"]["n"], 1, "{event}");
    let (mut fresh, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    assert_eq!(next_json(&mut fresh).await.unwrap()["type"], "connected");
}
