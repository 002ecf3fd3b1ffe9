//! The admin UI's server side: the credential and the security headers, the JSON API over
//! real connections, the live tail (a tap, not a subscriber), every node of a Redis cluster
//! in one node's overview, and the metrics the dashboard and the alerts read.

use std::time::Duration;

use base64::Engine;
use herald_core::settings::HistoryRule;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::cluster::{on_redis, redis_available, unique_prefix, wait_ready};
use crate::harness::{APP_ID, TestServer, WAIT, http_with};

const TOKEN: &str = "admin-token-0123456789";

async fn server_with_ui(tweak: impl FnOnce(&mut herald_server::config::Config)) -> TestServer {
    TestServer::with(|c| {
        c.admin.token = Some(herald_core::Secret::new(TOKEN));
        c.apps[0].history = vec![HistoryRule::new("feed")];
        tweak(c);
    })
    .await
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// GET on the admin listener with the credential: `(status, JSON)`.
async fn get(server: &TestServer, path: &str) -> (u16, Value) {
    let auth = format!("Bearer {TOKEN}");
    let (status, body, _) =
        http_with(server.admin, "GET", path, None, &[("authorization", &auth)]).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// POST on the admin listener as the UI does it.
async fn post(server: &TestServer, path: &str, body: Value) -> (u16, Value) {
    let auth = basic("admin", TOKEN);
    let (status, body, _) = http_with(
        server.admin,
        "POST",
        path,
        Some(body.to_string()),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
            ("x-herald-admin", "1"),
        ],
    )
    .await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_needs_the_credential_and_every_answer_is_locked_down() {
    let server = server_with_ui(|c| c.admin.protect_metrics = true).await;
    let admin = server.admin;
    // Without the credential, or with a wrong one: 401 and the Basic challenge.
    for auth in [
        None,
        Some(basic("admin", "wrong-token-wrong-token")),
        Some("Bearer nope".into()),
    ] {
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        for path in ["/ui", "/ui/app.js", "/ui/api/overview", "/metrics"] {
            let (status, body, h) = http_with(admin, "GET", path, None, &headers).await;
            assert_eq!(status, 401, "{path} with {auth:?}: {body}");
            assert!(
                h["www-authenticate"]
                    .to_str()
                    .unwrap()
                    .starts_with("Basic realm=\"Herald admin\""),
                "{path}"
            );
        }
    }
    // Health and readiness stay open; /status too unless protected.
    for path in ["/health", "/ready", "/status"] {
        assert_eq!(
            http_with(admin, "GET", path, None, &[]).await.0,
            200,
            "{path}"
        );
    }
    // Basic with any user name, or Bearer.
    for auth in [basic("anyone", TOKEN), format!("Bearer {TOKEN}")] {
        let (status, body, h) =
            http_with(admin, "GET", "/ui", None, &[("authorization", &auth)]).await;
        assert_eq!(status, 200);
        assert!(
            body.contains("<html")
                || body.contains("<!doctype html")
                || body.contains("<!DOCTYPE html")
        );
        assert_eq!(h["content-type"], "text/html; charset=utf-8");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
            "{csp}"
        );
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
            "{csp}"
        );
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["cache-control"], "no-store");
        assert_eq!(
            http_with(admin, "GET", "/metrics", None, &[("authorization", &auth)])
                .await
                .0,
            200
        );
    }
    for asset in [
        "/ui/app.js",
        "/ui/app.css",
        "/ui/vendor/uplot/uPlot.iife.min.js",
        "/ui/vendor/uplot/uPlot.min.css",
    ] {
        let auth = format!("Bearer {TOKEN}");
        let (status, body, _) =
            http_with(admin, "GET", asset, None, &[("authorization", &auth)]).await;
        assert_eq!(status, 200, "{asset}");
        assert!(body.len() > 100, "{asset}");
    }
    // A POST without the UI's header is refused even with the credential (CSRF).
    let auth = basic("admin", TOKEN);
    let (status, _, _) = http_with(
        admin,
        "POST",
        "/ui/api/publish",
        Some(json!({"app": APP_ID, "channel": "news", "event": "e", "data": {}}).to_string()),
        &[("authorization", &auth), ("content-type", "text/plain")],
    )
    .await;
    assert_eq!(status, 403);

    // Without admin.token the UI is off.
    let plain = TestServer::start().await;
    let (status, body, _) = http_with(plain.admin, "GET", "/ui", None, &[]).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("admin.token"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_shows_channels_members_history_and_users_and_acts_on_them() {
    let server = server_with_ui(|_| {}).await;
    let ann = server.token(|c| {
        c.sub = Some("ann".into());
        c.channels = vec!["presence-room".into()];
        c.info = Some(json!({"name": "<b>Ann</b>"}));
    });
    let mut member = server.connect_with(Some(&ann)).await;
    member.subscribe_ok("presence-room").await;
    let mut reader = server.connect().await;
    reader.subscribe_ok("feed").await;
    for n in 1..=3 {
        server.publish("feed", "tick", json!({"n": n})).await;
    }

    let (status, list) = get(&server, &format!("/ui/api/channels?app={APP_ID}")).await;
    assert_eq!(status, 200, "{list}");
    let names: Vec<(&str, u64)> = list["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap(),
                c["subscribers"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(names, vec![("feed", 1), ("presence-room", 1)]);
    let (_, feed) = get(
        &server,
        &format!("/ui/api/channels?app={APP_ID}&prefix=pres"),
    )
    .await;
    assert_eq!(feed["channels"].as_array().unwrap().len(), 1);

    let (status, room) = get(
        &server,
        &format!("/ui/api/channel?app={APP_ID}&channel=presence-room"),
    )
    .await;
    assert_eq!(status, 200, "{room}");
    assert_eq!(
        room["presence"],
        json!([{"user_id": "ann", "user_info": {"name": "<b>Ann</b>"}}])
    );
    assert_eq!(room["history"], Value::Null);
    let (_, feed) = get(
        &server,
        &format!("/ui/api/channel?app={APP_ID}&channel=feed"),
    )
    .await;
    let ns: Vec<u64> = feed["history"]["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, vec![1, 2, 3], "{feed}");
    assert_eq!(feed["history"]["offset"], 3);

    let (_, conns) = get(&server, &format!("/ui/api/connections?app={APP_ID}")).await;
    assert_eq!(conns["connections"], 2, "{conns}");
    assert!(
        conns["by_transport"]
            .as_array()
            .unwrap()
            .contains(&json!({"protocol": "native", "transport": "websocket", "connections": 2})),
        "{conns}"
    );
    assert_eq!(
        conns["top_ips"],
        json!([{"ip": "127.0.0.1", "connections": 2}])
    );
    let (_, ann_conns) = get(&server, &format!("/ui/api/user?app={APP_ID}&user=ann")).await;
    let list = ann_conns["connections"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{ann_conns}");
    assert_eq!(list[0]["socket_id"], member.socket_id.as_str());
    assert_eq!(list[0]["transport"], "websocket");

    // Publish from the UI: delivered like any publish.
    let (status, receipt) = post(
        &server,
        "/ui/api/publish",
        json!({"app": APP_ID, "channel": "feed", "event": "from-ui", "data": {"n": 4}}),
    )
    .await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(receipt["positions"]["feed"]["offset"], 4);
    for _ in 1..=3 {
        reader.recv_non_ping().await;
    }
    let event = reader.recv_non_ping().await;
    assert_eq!(
        (event.event.as_deref(), &event.data["n"]),
        (Some("from-ui"), &json!(4))
    );

    // Disconnect a user from the UI: their connection closes, the other stays.
    let (status, _) = post(
        &server,
        "/ui/api/disconnect",
        json!({"app": APP_ID, "user": "ann"}),
    )
    .await;
    assert_eq!(status, 200);
    member.expect_close(4008).await;
    let (_, conns) = get(&server, &format!("/ui/api/connections?app={APP_ID}")).await;
    assert_eq!(conns["connections"], 1);
    let (status, _) = get(&server, "/ui/api/channels?app=nope").await;
    assert_eq!(status, 404);
}

/// Read SSE events from the tail until `ok` accepts one's data.
async fn next_tail_event(lines: &mut tokio::io::Lines<BufReader<TcpStream>>) -> Value {
    let deadline = Instant::now() + WAIT;
    let mut event = String::new();
    loop {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .expect("a tail event in time")
            .unwrap()
            .expect("the stream stays open");
        if let Some(name) = line.strip_prefix("event: ") {
            event = name.to_owned();
        } else if let Some(data) = line.strip_prefix("data: ")
            && event == "publication"
        {
            return serde_json::from_str(data).unwrap();
        }
    }
}

/// Open `/ui/api/tail` on `admin` and skip the response head.
async fn open_tail(
    admin: std::net::SocketAddr,
    channel: &str,
) -> tokio::io::Lines<BufReader<TcpStream>> {
    let mut stream = TcpStream::connect(admin).await.unwrap();
    stream
        .write_all(
            format!(
                "GET /ui/api/tail?app={APP_ID}&channel={channel} HTTP/1.1\r\nHost: x\r\n\
                 Authorization: Bearer {TOKEN}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut lines = BufReader::new(stream).lines();
    let status = lines.next_line().await.unwrap().unwrap();
    assert!(status.contains(" 200 "), "{status}");
    while !lines.next_line().await.unwrap().unwrap().is_empty() {}
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tail_follows_a_channel_across_nodes_without_subscribing_to_it() {
    if !redis_available().await {
        return;
    }
    let prefix = unique_prefix();
    let p = prefix.clone();
    let a = server_with_ui(move |c| on_redis(c, &p)).await;
    let p = prefix.clone();
    let b = server_with_ui(move |c| on_redis(c, &p)).await;
    wait_ready(&a).await;
    wait_ready(&b).await;

    // Tapped on node A; nobody subscribes anywhere; published through node B.
    let mut tail = open_tail(a.admin, "quiet").await;
    let deadline = Instant::now() + WAIT;
    let first = loop {
        b.publish("quiet", "e", json!({"n": 1})).await;
        match tokio::time::timeout(Duration::from_millis(300), next_tail_event(&mut tail)).await {
            Ok(event) => break event,
            Err(_) => assert!(
                Instant::now() < deadline,
                "the tap receives through the broker"
            ),
        }
    };
    assert_eq!(
        (&first["channel"], &first["event"]),
        (&json!("quiet"), &json!("e"))
    );
    // The tap is not a subscriber: the channel is not occupied.
    let (_, list) = get(&a, &format!("/ui/api/channels?app={APP_ID}")).await;
    assert_eq!(list["channels"], json!([]), "{list}");

    // A subscriber joins and leaves node A: the tap keeps its broker subscription.
    let mut c = a.connect().await;
    c.subscribe_ok("quiet").await;
    c.send(json!({"type": "unsubscribe", "channel": "quiet", "id": 9}))
        .await;
    c.recv_non_ping().await;
    let deadline = Instant::now() + WAIT;
    loop {
        b.publish("quiet", "after-leave", json!({"n": 2})).await;
        let e = next_tail_event(&mut tail).await;
        if e["event"] == "after-leave" {
            break;
        }
        assert!(Instant::now() < deadline);
    }

    // A payload is passed on as JSON text, never interpreted.
    b.publish(
        "quiet",
        "x",
        json!({"html": "<img src=x onerror=alert(1)>"}),
    )
    .await;
    loop {
        let e = next_tail_event(&mut tail).await;
        if e["event"] == "x" {
            assert_eq!(e["data"]["html"], "<img src=x onerror=alert(1)>");
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_nodes_overview_shows_every_node_of_the_cluster() {
    if !redis_available().await {
        return;
    }
    let prefix = unique_prefix();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let p = prefix.clone();
        nodes.push(server_with_ui(move |c| on_redis(c, &p)).await);
    }
    let mut clients = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        wait_ready(node).await;
        for _ in 0..=i {
            let mut c = node.connect().await;
            c.subscribe_ok("news").await;
            clients.push(c);
        }
    }
    let mut ids = Vec::new();
    for node in &nodes {
        let (_, s) = node.admin_get("/status").await;
        let s: Value = serde_json::from_str(&s).unwrap();
        ids.push((
            s["node_id"].as_str().unwrap().to_owned(),
            s["connections"].as_u64().unwrap(),
        ));
    }
    ids.sort();
    let deadline = Instant::now() + WAIT * 2;
    loop {
        let (status, overview) = get(&nodes[0], "/ui/api/overview").await;
        assert_eq!(status, 200);
        let mut seen: Vec<(String, u64)> = overview["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n["id"].as_str().unwrap().to_owned(),
                    n["connections"].as_u64().unwrap(),
                )
            })
            .collect();
        seen.sort();
        if seen == ids {
            let own: Vec<&Value> = overview["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| n["self"] == true)
                .collect();
            assert_eq!(own.len(), 1);
            assert_eq!(overview["apps"], json!([APP_ID]));
            assert!(overview["latency"]["buckets"].as_array().unwrap().len() > 10);
            break;
        }
        assert!(Instant::now() < deadline, "{seen:?} != {ids:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, metrics) = nodes[0].admin_get("/metrics").await;
    assert!(metrics.contains("herald_cluster_nodes 3\n"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_the_conventions_the_dashboard_relies_on() {
    let server = server_with_ui(|_| {}).await;
    let mut c = server.connect().await;
    c.subscribe_ok("feed").await;
    server.publish("feed", "tick", json!({"n": 1})).await;
    c.recv_non_ping().await;
    let (_, text) = server.admin_get("/metrics").await;
    for line in [
        "herald_app_connections{app=\"app\",protocol=\"native\",transport=\"websocket\"} 1\n",
        "herald_app_connections{app=\"app\",protocol=\"pusher\",transport=\"http\"} 0\n",
        &format!(
            "herald_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        ),
        "herald_cluster_nodes 1\n",
        "herald_history_streams 1\n",
        "herald_history_publications 1\n",
        "herald_webhook_queue_depth 0\n",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert!(text.contains("\nprocess_open_fds ") && text.contains("\nprocess_max_fds "));
    // Every series: a herald_ or process_ name, counters end in _total, and the only labels
    // are the bounded ones.
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name = line.split(['{', ' ']).next().unwrap();
        assert!(
            name.starts_with("herald_") || name.starts_with("process_"),
            "{line}"
        );
        if let Some(labels) = line
            .split_once('{')
            .map(|(_, l)| l.split_once('}').unwrap().0)
        {
            for label in labels.split(',') {
                let key = label.split('=').next().unwrap();
                assert!(
                    ["app", "protocol", "transport", "version", "le"].contains(&key),
                    "{line}"
                );
            }
        }
    }
    for counter in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let (name, kind) = counter.split_once(' ').unwrap();
        assert_eq!(kind == "counter", name.ends_with("_total"), "{counter}");
    }
}
