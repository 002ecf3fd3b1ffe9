//! Channel history, recovery after reconnect, the history API, idempotent and deduplicated
//! publishes, over real sockets.

use std::time::Duration;

use herald_core::settings::HistoryRule;
use rand::Rng;
use serde_json::{Value, json};

use crate::harness::{APP_KEY, Client, TestServer, WAIT};

/// A server whose channels matching `pattern` keep history of `size` for `ttl`.
async fn server_with_history(pattern: &str, size: usize, ttl: Duration) -> TestServer {
    let pattern = pattern.to_owned();
    TestServer::with(move |c| {
        let mut rule = HistoryRule::new(&pattern);
        rule.size = size;
        rule.ttl = ttl;
        c.apps[0].history = vec![rule];
    })
    .await
}

/// The next event's `(offset, epoch, data.n)`.
async fn next_event(c: &mut Client) -> (u64, String, u64) {
    let m = c.recv_non_ping().await;
    assert_eq!(m.kind, "event", "{m:?}");
    (
        m.offset.expect("offset"),
        m.epoch.clone().expect("epoch"),
        m.data["n"].as_u64().expect("n"),
    )
}

#[tokio::test]
async fn publishes_get_offsets_and_the_history_api_filters_and_clears() {
    let server = server_with_history("feed.*", 5, Duration::from_secs(300)).await;
    let mut epoch = String::new();
    for n in 1..=7u64 {
        let reply = server.publish("feed.a", "tick", json!({ "n": n })).await;
        let pos = &reply["positions"]["feed.a"];
        assert_eq!(pos["offset"], n, "{reply}");
        if n == 1 {
            epoch = pos["epoch"].as_str().unwrap().to_owned();
        }
        assert_eq!(pos["epoch"], epoch.as_str());
    }
    // Channels without a rule have no positions in the reply.
    let plain = server.publish("other", "tick", json!({})).await;
    assert!(plain.get("positions").is_none(), "{plain}");

    let offsets = |body: &Value| -> Vec<u64> {
        body["publications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["offset"].as_u64().unwrap())
            .collect()
    };
    let (status, body) = server.api("GET", "channels/feed.a/history", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        offsets(&body),
        vec![3, 4, 5, 6, 7],
        "size 5 keeps the newest five"
    );
    assert_eq!(
        (body["offset"].as_u64(), body["first_offset"].as_u64()),
        (Some(7), Some(3))
    );
    assert_eq!(body["publications"][0]["data"], json!({"n": 3}));
    assert_eq!(body["publications"][0]["event"], "tick");

    let (_, body) = server
        .api("GET", "channels/feed.a/history?since=4&limit=2", None)
        .await;
    assert_eq!(offsets(&body), vec![5, 6]);
    assert_eq!(body["truncated"], true);
    let (_, body) = server
        .api("GET", "channels/feed.a/history?until=4", None)
        .await;
    assert_eq!(offsets(&body), vec![3, 4]);
    let ts = body["publications"][1]["timestamp"].as_u64().unwrap();
    let (_, body) = server
        .api(
            "GET",
            &format!("channels/feed.a/history?since_time={ts}"),
            None,
        )
        .await;
    assert!(offsets(&body).starts_with(&[4]) || offsets(&body).starts_with(&[3]));
    assert_eq!(
        server
            .api("GET", "channels/feed.a/history?limit=5000", None)
            .await
            .0,
        400
    );
    assert_eq!(
        server.api("GET", "channels/other/history", None).await.0,
        404
    );

    let (_, stats) = server.api("GET", "stats", None).await;
    assert_eq!(stats["history"]["streams"], 1, "{stats}");
    assert_eq!(stats["history"]["publications"], 5, "{stats}");

    let (status, body) = server.api("DELETE", "channels/feed.a/history", None).await;
    assert_eq!((status, body), (200, json!({"cleared": true})));
    let reply = server.publish("feed.a", "tick", json!({"n": 8})).await;
    let pos = &reply["positions"]["feed.a"];
    assert_eq!(pos["offset"], 1, "a cleared stream starts again");
    assert_ne!(pos["epoch"], epoch.as_str(), "with a new epoch");
}

#[tokio::test]
async fn a_reconnecting_client_gets_exactly_what_it_missed() {
    let server = server_with_history("feed", 100, Duration::from_secs(300)).await;
    let mut c = server.connect().await;
    let reply = c.subscribe("feed").await;
    assert_eq!(reply.data["offset"], 0, "{reply:?}");
    let epoch = reply.data["epoch"].as_str().unwrap().to_owned();
    for n in 1..=3 {
        server.publish("feed", "tick", json!({ "n": n })).await;
    }
    for n in 1..=3 {
        assert_eq!(next_event(&mut c).await, (n, epoch.clone(), n));
    }
    drop(c);
    for n in 4..=6 {
        server.publish("feed", "tick", json!({ "n": n })).await;
    }
    let mut c = server.connect().await;
    let reply = c
        .subscribe_with(json!({"type": "subscribe", "channel": "feed",
            "since": {"offset": 3, "epoch": epoch}}))
        .await;
    assert_eq!(reply.kind, "subscribe", "{reply:?}");
    assert_eq!(
        reply.data,
        json!({"offset": 6, "epoch": epoch, "recovered": true, "replayed": 3})
    );
    for n in 4..=6 {
        assert_eq!(next_event(&mut c).await, (n, epoch.clone(), n));
    }
    server.publish("feed", "tick", json!({"n": 7})).await;
    assert_eq!(next_event(&mut c).await, (7, epoch.clone(), 7));
    c.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn unrecoverable_gaps_are_reported_not_papered_over() {
    let server = TestServer::with(|c| {
        let mut small = HistoryRule::new("small");
        small.size = 3;
        let mut short = HistoryRule::new("short");
        short.ttl = Duration::from_millis(700);
        c.apps[0].history = vec![small, short, HistoryRule::new("*")];
        c.apps[0].limits.max_recovery_publications = 2;
    })
    .await;
    let mut c = server.connect().await;
    let position = |reply: &herald_protocol::native::ServerMessage| {
        (
            reply.data["offset"].as_u64().unwrap(),
            reply.data["epoch"].as_str().unwrap().to_owned(),
        )
    };
    let recover = |channel: &str, offset: u64, epoch: &str| json!({"type": "subscribe", "channel": channel, "since": {"offset": offset, "epoch": epoch}});

    // Beyond the size: offsets 1..=2 of 10 are gone.
    let (_, epoch) = position(&c.subscribe("small").await);
    c.send(json!({"type": "unsubscribe", "channel": "small"}))
        .await;
    c.recv_non_ping().await;
    for n in 1..=10 {
        server.publish("small", "tick", json!({ "n": n })).await;
    }
    let reply = c.subscribe_with(recover("small", 1, &epoch)).await;
    assert_eq!(reply.data["recovered"], false, "{reply:?}");
    assert_eq!(reply.data["reason"], "too_old");
    assert_eq!(
        reply.data["offset"], 10,
        "the client learns where the stream is now"
    );
    // Nothing replayed; live publications continue.
    server.publish("small", "tick", json!({"n": 11})).await;
    assert_eq!(next_event(&mut c).await.0, 11);

    // More than max_recovery_publications missed.
    let (_, epoch) = position(&c.subscribe("many").await);
    c.send(json!({"type": "unsubscribe", "channel": "many"}))
        .await;
    c.recv_non_ping().await;
    for n in 1..=3 {
        server.publish("many", "tick", json!({ "n": n })).await;
    }
    let reply = c.subscribe_with(recover("many", 0, &epoch)).await;
    assert_eq!(
        (&reply.data["recovered"], &reply.data["reason"]),
        (&json!(false), &json!("too_many"))
    );
    c.send(json!({"type": "unsubscribe", "channel": "many"}))
        .await;
    c.recv_non_ping().await;
    // Within the cap it works.
    let reply = c.subscribe_with(recover("many", 1, &epoch)).await;
    assert_eq!(reply.data["recovered"], true, "{reply:?}");
    assert_eq!(next_event(&mut c).await.2, 2);
    assert_eq!(next_event(&mut c).await.2, 3);

    // A position from another stream.
    let reply = c.subscribe_with(recover("other", 4, "not-an-epoch")).await;
    assert_eq!(reply.data["reason"], "epoch_changed", "{reply:?}");

    // Beyond the TTL: the stream expired, its successor has a new epoch.
    server.publish("short", "tick", json!({"n": 1})).await;
    let (_, body) = server.api("GET", "channels/short/history", None).await;
    let epoch = body["epoch"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(900)).await;
    server.publish("short", "tick", json!({"n": 2})).await;
    let reply = c.subscribe_with(recover("short", 1, &epoch)).await;
    assert_eq!(reply.data["recovered"], false, "{reply:?}");
    assert_eq!(reply.data["reason"], "epoch_changed");
}

#[tokio::test]
async fn five_thousand_publications_survive_random_disconnects_over_websocket() {
    const TOTAL: u64 = 5000;
    let server = server_with_history("stream", 1000, Duration::from_secs(300)).await;
    // Subscribed before the first publication, so everything from 1 on is expected.
    let mut first = server.connect().await;
    let reply = first.subscribe("stream").await;
    let mut position = Some((0, reply.data["epoch"].as_str().unwrap().to_owned()));
    let mut first = Some(first);
    let addr = server.addr;
    let publisher = tokio::spawn(async move {
        // One keep-alive connection, as a backend would use.
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        for n in 1..=TOTAL {
            let body = json!({"channel": "stream", "event": "n", "data": {"n": n}}).to_string();
            let req = http::Request::builder()
                .method("POST")
                .uri(format!("/api/{}/publish", crate::harness::APP_ID))
                .header("host", addr.to_string())
                .header(
                    "authorization",
                    format!("Bearer {}", crate::harness::SECRET),
                )
                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                .unwrap();
            sender.ready().await.unwrap();
            let resp = sender.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap();
            if n % 50 == 0 {
                tokio::task::yield_now().await;
            }
        }
    });

    let mut received: Vec<u64> = Vec::with_capacity(TOTAL as usize);
    let mut disconnects = 0;
    let mut rng = rand::rng();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while received.len() < TOTAL as usize {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stuck at {}",
            received.len()
        );
        let mut c = match first.take() {
            Some(c) => c,
            None => {
                let mut c = server.connect().await;
                let (offset, epoch) = position.as_ref().unwrap();
                let reply = c
                    .subscribe_with(json!({"type": "subscribe", "channel": "stream",
                        "since": {"offset": offset, "epoch": epoch}}))
                    .await;
                assert_eq!(reply.kind, "subscribe", "{reply:?}");
                assert_eq!(reply.data["recovered"], true, "{reply:?}");
                c
            }
        };
        // Read a random number of messages, then cut the connection without a word.
        let budget = rng.random_range(100..900);
        for _ in 0..budget {
            if received.len() == TOTAL as usize {
                break;
            }
            let (offset, epoch, n) = next_event(&mut c).await;
            let expected = received.len() as u64 + 1;
            assert_eq!(n, expected, "in order, nothing missing, no duplicate");
            assert_eq!(offset, n);
            received.push(n);
            position = Some((offset, epoch));
        }
        if received.len() < TOTAL as usize {
            disconnects += 1;
        }
        drop(c);
    }
    publisher.await.unwrap();
    assert_eq!(received, (1..=TOTAL).collect::<Vec<_>>());
    assert!(disconnects >= 5, "only {disconnects} disconnects");
    let _ = (APP_KEY, WAIT);
}

#[tokio::test]
async fn idempotency_keys_and_unchanged_payloads_are_not_delivered_twice() {
    let server = TestServer::with(|c| {
        let mut devices = HistoryRule::new("device.*");
        devices.dedupe_window = Some(Duration::from_secs(60));
        c.apps[0].history = vec![devices, HistoryRule::new("*")];
    })
    .await;
    let mut c = server.connect().await;
    c.subscribe_ok("orders").await;
    c.subscribe_ok("device.7").await;

    let publish = json!({"channel": "orders", "event": "created", "data": {"n": 1},
        "idempotency_key": "order-1"});
    let (_, first) = server.api("POST", "publish", Some(publish.clone())).await;
    let (status, again) = server.api("POST", "publish", Some(publish)).await;
    assert_eq!(status, 200);
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["positions"], first["positions"]);
    assert_eq!(next_event(&mut c).await.2, 1);

    let state =
        |on: bool| json!({"channel": "device.7", "event": "state", "data": {"n": u64::from(on)}});
    let (_, r1) = server.api("POST", "publish", Some(state(true))).await;
    let (_, r2) = server.api("POST", "publish", Some(state(true))).await;
    assert!(r1.get("unchanged").is_none(), "{r1}");
    assert_eq!(r2["unchanged"], json!(["device.7"]), "{r2}");
    assert_eq!(r2["positions"], r1["positions"]);
    let (_, r3) = server.api("POST", "publish", Some(state(false))).await;
    assert!(r3.get("unchanged").is_none(), "{r3}");
    assert_eq!(next_event(&mut c).await.2, 1);
    assert_eq!(next_event(&mut c).await.2, 0);
    c.expect_silence(Duration::from_millis(200)).await;
}
