//! A three-node cluster on one real Redis: every node a real server on loopback ports, all
//! sharing one key prefix. Publishes, presence, channel queries, webhooks, direct sends and
//! disconnects must be right for the cluster as a whole.
//!
//! Under `CI=true` an unreachable Redis fails these tests; elsewhere they are skipped with a
//! printed reason.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use herald_core::WebhookSettings;
use herald_server::config::{BrokerKind, Config};
use serde_json::{Value, json};

use crate::harness::{APP_ID, Client, TestServer, WAIT};
use crate::pusher::{collect_events, pusher_api, webhook_receiver};

/// The Redis the tests use.
pub fn redis_url() -> String {
    std::env::var("HERALD_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The `host:port` of [`redis_url`]: what the tests probe is what they connect to.
pub fn redis_addr() -> String {
    let url = redis_url();
    let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let host_port = rest.split('/').next().unwrap_or(rest);
    if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:6379")
    }
}

/// Whether the test Redis ([`redis_url`]) is up; fails under `CI=true` when it is not.
pub async fn redis_available() -> bool {
    service_available("Redis", &redis_addr()).await
}

/// Whether the service at `addr` is up; fails under `CI=true` when it is not.
pub async fn service_available(name: &str, addr: &str) -> bool {
    let up = matches!(
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    );
    if !up {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{name} is not reachable at {addr}, and CI=true: cluster tests must run");
        }
        eprintln!("SKIPPED: {name} is not reachable at {addr} (set CI=true to fail instead)");
    }
    up
}

/// A key prefix no other test run uses.
pub fn unique_prefix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "herald-it-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>()
    )
}

/// Point `config` at the test Redis under `prefix`, with fast liveness timing.
pub fn on_redis(config: &mut Config, prefix: &str) {
    config.broker.kind = BrokerKind::Redis;
    config.redis.url = herald_core::Secret::new(redis_url());
    config.redis.prefix = prefix.to_owned();
    config.cluster.heartbeat_interval = Duration::from_millis(200);
    config.cluster.node_ttl = Duration::from_secs(1);
}

/// Wait until the node's `/ready` says ready.
pub async fn wait_ready(server: &TestServer) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = server.admin_get("/ready").await;
        if status == 200 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node not ready: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Point `config` at NATS (fan-out) and the test Redis (state) under `prefix`.
pub fn on_nats(config: &mut Config, prefix: &str) {
    on_redis(config, prefix);
    config.broker.kind = BrokerKind::Nats;
    config.nats.prefix = prefix.to_owned();
}

async fn cluster_of_three(tweak: impl Fn(&mut Config) + Clone) -> Option<Vec<TestServer>> {
    cluster_on(BrokerKind::Redis, tweak).await
}

async fn cluster_on(
    kind: BrokerKind,
    tweak: impl Fn(&mut Config) + Clone,
) -> Option<Vec<TestServer>> {
    if !crate::cluster::redis_available().await {
        return None;
    }
    if kind == BrokerKind::Nats && !service_available("NATS", "127.0.0.1:4222").await {
        return None;
    }
    let prefix = unique_prefix();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let tweak = tweak.clone();
        let prefix = prefix.clone();
        let node = TestServer::with(move |c| {
            match kind {
                BrokerKind::Nats => on_nats(c, &prefix),
                _ => on_redis(c, &prefix),
            }
            tweak(c);
        })
        .await;
        wait_ready(&node).await;
        nodes.push(node);
    }
    Some(nodes)
}

fn presence_token(server: &TestServer, user: &str) -> String {
    server.token(|c| {
        c.sub = Some(user.into());
        c.channels = vec!["presence-*".into()];
        c.info = Some(json!({"name": user}));
    })
}

/// Wait for the next message that is not a ping or presence change.
async fn next_event(client: &mut Client) -> Value {
    loop {
        let m = client.recv_non_ping().await;
        if m.kind == "event" {
            return m.data;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_publish_on_one_node_reaches_every_node_in_order() {
    publish_reaches_every_node_in_order(BrokerKind::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_a_publish_on_one_node_reaches_every_node_in_order() {
    publish_reaches_every_node_in_order(BrokerKind::Nats).await;
}

async fn publish_reaches_every_node_in_order(kind: BrokerKind) {
    let Some(nodes) = cluster_on(kind, |_| {}).await else {
        return;
    };
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut on_a = a.connect().await;
    let mut on_b = b.connect().await;
    on_a.subscribe_ok("news").await;
    on_b.subscribe_ok("news").await;
    for n in 0..100 {
        c.publish("news", "n", json!({ "n": n })).await;
    }
    for client in [&mut on_a, &mut on_b] {
        for n in 0..100 {
            assert_eq!(
                next_event(client).await,
                json!({ "n": n }),
                "every node delivers every publication, in publish order"
            );
        }
    }
    // A node without local subscribers answers channel queries for the whole cluster
    // (counts are flushed every heartbeat).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = c.api("GET", "channels/news", None).await;
        assert_eq!(status, 200, "{body}");
        if body["subscribers"] == 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "cluster count: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, list) = c.api("GET", "channels", None).await;
    assert_eq!(
        list["channels"],
        json!([{"name": "news", "subscribers": 2}]),
        "{list}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_presence_webhooks_and_direct_sends_are_cluster_wide() {
    cluster_wide_presence_webhooks_and_sends(BrokerKind::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_presence_webhooks_and_direct_sends_are_cluster_wide() {
    cluster_wide_presence_webhooks_and_sends(BrokerKind::Nats).await;
}

async fn cluster_wide_presence_webhooks_and_sends(kind: BrokerKind) {
    let (hook_addr, mut hooks) = webhook_receiver(0).await;
    let Some(nodes) = cluster_on(kind, move |c| {
        c.apps[0].webhook_delay = Duration::ZERO;
        c.apps[0].webhooks = vec![WebhookSettings {
            url: format!("http://{hook_addr}/hook"),
            event_types: Vec::new(),
            channel_prefix: None,
            include_client_ip: false,
        }];
    })
    .await
    else {
        return;
    };

    // One member on each node.
    let mut members = Vec::new();
    for (node, user) in nodes.iter().zip(["ann", "bob", "cy"]) {
        let mut client = node.connect_with(Some(&presence_token(node, user))).await;
        client.subscribe_ok("presence-room").await;
        let sync = client.recv_non_ping().await;
        assert_eq!(sync.event.as_deref(), Some("sync"));
        members.push((client, sync.data));
    }
    let ids = |sync: &Value| -> Vec<String> {
        let mut ids: Vec<String> = sync["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["user_id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(
        ids(&members[2].1),
        ["ann", "bob", "cy"],
        "the last to join sees members of every node"
    );
    // Ann, on node A, hears bob (node B) and cy (node C) join.
    let mut joined = Vec::new();
    while joined.len() < 2 {
        let m = members[0].0.recv_non_ping().await;
        if m.event.as_deref() == Some("joined") {
            joined.push(m.data["user_id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(joined, ["bob", "cy"]);

    // Every node lists every member, natively and through the Pusher API.
    for node in &nodes {
        let (status, body) = node
            .api("GET", "channels/presence-room/presence", None)
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["members"].as_array().unwrap().len(), 3, "{body}");
        let (status, users) = pusher_api(
            node,
            "GET",
            "channels/presence-room/users",
            &[],
            None,
            crate::harness::SECRET,
        )
        .await;
        assert_eq!(status, 200, "{users}");
        let mut listed: Vec<_> = users["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["id"].as_str().unwrap().to_owned())
            .collect();
        listed.sort();
        assert_eq!(listed, ["ann", "bob", "cy"]);
    }

    // Send-to-user reaches dan's connections on two nodes; disconnect closes both.
    let dan = |node: &TestServer| node.token(|c| c.sub = Some("dan".into()));
    let mut dan_a = nodes[0].connect_with(Some(&dan(&nodes[0]))).await;
    let mut dan_b = nodes[1].connect_with(Some(&dan(&nodes[1]))).await;
    let (status, body) = nodes[2]
        .api(
            "POST",
            "users/dan/events",
            Some(json!({"event": "notify", "data": {"hi": 1}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for tab in [&mut dan_a, &mut dan_b] {
        let m = tab.recv_non_ping().await;
        assert_eq!(
            (m.event.as_deref(), &m.data),
            (Some("notify"), &json!({"hi": 1}))
        );
    }
    let (status, _) = nodes[2].api("POST", "users/dan/disconnect", None).await;
    assert_eq!(status, 200);
    dan_a.expect_close(4008).await;
    dan_b.expect_close(4008).await;

    // Everyone leaves.
    drop(members);

    // Each webhook once for the cluster, though three nodes saw the channel.
    let events = collect_events(&mut hooks, 7).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut events = events;
    while let Ok(Some((_, body))) =
        tokio::time::timeout(Duration::from_millis(100), hooks.recv()).await
    {
        let v: Value = serde_json::from_slice(&body).unwrap();
        events.extend(v["events"].as_array().unwrap().iter().cloned());
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for e in &events {
        let key = format!(
            "{} {}",
            e["name"].as_str().unwrap(),
            e["user_id"].as_str().unwrap_or("")
        );
        *counts.entry(key).or_default() += 1;
    }
    let expected: HashMap<String, usize> = [
        "channel_occupied ",
        "channel_vacated ",
        "member_added ann",
        "member_added bob",
        "member_added cy",
        "member_removed ann",
        "member_removed bob",
        "member_removed cy",
    ]
    .iter()
    .map(|k| ((*k).to_owned(), 1))
    .collect();
    assert_eq!(counts, expected, "each webhook fires once: {events:?}");
    let _ = APP_ID;
}

/// PUBLISH over a raw RESP connection, exactly as Laravel's Redis broadcaster does. Returns
/// how many subscribers Redis delivered it to.
pub async fn redis_publish(channel: &str, payload: &str) -> i64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(redis_addr())
        .await
        .expect("Redis");
    let cmd = format!(
        "*3\r\n$7\r\nPUBLISH\r\n${}\r\n{channel}\r\n${}\r\n{payload}\r\n",
        channel.len(),
        payload.len()
    );
    conn.write_all(cmd.as_bytes()).await.unwrap();
    let mut reply = [0u8; 64];
    let n = conn.read(&mut reply).await.unwrap();
    let text = std::str::from_utf8(&reply[..n]).unwrap();
    text.trim_start_matches(':')
        .trim()
        .parse()
        .expect("integer reply")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn laravel_redis_broadcasts_reach_native_and_pusher_clients_once() {
    let laravel_prefix = format!("{}_", unique_prefix().replace('-', "_"));
    let p = laravel_prefix.clone();
    let Some(nodes) = cluster_of_three(move |c| {
        c.laravel_ingest = vec![herald_server::config::LaravelIngestConfig {
            app: APP_ID.into(),
            url: None,
            prefix: p.clone(),
            channels: vec!["*".into()],
        }];
    })
    .await
    else {
        return;
    };
    let mut native = nodes[0].connect().await;
    native.subscribe_ok("orders").await;
    let mut pusher = crate::pusher::Pusher::connect(&nodes[1]).await;
    pusher.subscribe_ok("orders", None).await;
    let mut sender = nodes[2].connect().await;
    sender.subscribe_ok("orders").await;

    // Exactly one node holds the ingest lease and subscribes.
    let channel = format!("{laravel_prefix}orders");
    let payload = |n: u32| {
        json!({
            "event": "App\\Events\\OrderShipped",
            "data": {"order": {"id": n}, "socket": null},
            "socket": null,
        })
        .to_string()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut first_n = 0;
    loop {
        let receivers = redis_publish(&channel, &payload(first_n)).await;
        assert!(
            receivers <= 1,
            "only the lease holder ingests ({receivers})"
        );
        if receivers == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no node took the lease"
        );
        first_n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = next_event(&mut native).await;
    assert_eq!(got, json!({"order": {"id": first_n}, "socket": null}));
    let ev = pusher.recv_event().await;
    assert_eq!(ev["event"], "App\\Events\\OrderShipped");
    assert_eq!(ev["channel"], "orders");
    let data: Value = serde_json::from_str(ev["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["order"]["id"], first_n);
    assert_eq!(next_event(&mut sender).await["order"]["id"], first_n);

    // `socket` excludes the sender's own connection, on whichever node it is.
    let excluded = json!({
        "event": "App\\Events\\OrderShipped",
        "data": {"order": {"id": 999}},
        "socket": sender.socket_id,
    })
    .to_string();
    assert_eq!(redis_publish(&channel, &excluded).await, 1);
    assert_eq!(next_event(&mut native).await["order"]["id"], 999);
    let ev = pusher.recv_event().await;
    let data: Value = serde_json::from_str(ev["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["order"]["id"], 999);
    sender.expect_silence(Duration::from_millis(300)).await;
    // And nothing was delivered twice.
    native.expect_silence(Duration::from_millis(300)).await;
    pusher.expect_silence(Duration::from_millis(100)).await;
}
