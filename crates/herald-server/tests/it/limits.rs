//! Every limit: connections (node, per IP), subscriptions, frame size, client-event rate,
//! inbound rate, slow consumers, activity timeout.

use std::time::Duration;

use serde_json::json;

use crate::harness::{APP_KEY, TestServer};

#[tokio::test]
async fn per_ip_connection_cap() {
    let server = TestServer::with(|c| c.limits.max_connections_per_ip = 2).await;
    let _a = server.connect().await;
    let _b = server.connect().await;
    server.expect_refused(APP_KEY, None, 303, 4100).await;
    // Closing one frees a slot.
    drop(_a);
    for _ in 0..50 {
        if server.node.connection_count() < 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _c = server.connect().await;
}

#[tokio::test]
async fn node_and_app_connection_caps() {
    let server = TestServer::with(|c| c.limits.max_connections = 1).await;
    let _a = server.connect().await;
    server.expect_refused(APP_KEY, None, 303, 4100).await;
    let server = TestServer::with(|c| c.apps[0].limits.max_connections = 1).await;
    let _a = server.connect().await;
    server.expect_refused(APP_KEY, None, 303, 4103).await;
}

#[tokio::test]
async fn subscription_cap() {
    let server = TestServer::with(|c| c.apps[0].limits.max_subscriptions_per_connection = 2).await;
    let mut c = server.connect().await;
    c.subscribe_ok("a").await;
    c.subscribe_ok("b").await;
    let e = c.subscribe("c").await;
    assert_eq!(e.data["code"], 300);
    assert_eq!(e.event.as_deref(), Some("too_many_subscriptions"));
}

#[tokio::test]
async fn oversized_frame_closes_only_that_connection_with_1009() {
    let server = TestServer::with(|c| c.limits.max_message_size = 1024).await;
    let mut big = server.connect().await;
    let mut other = server.connect().await;
    other.subscribe_ok("news").await;
    big.send(json!({"type": "ping", "pad": "x".repeat(2000)}))
        .await;
    big.expect_close(1009).await;
    server.publish("news", "e", json!(1)).await;
    assert_eq!(other.recv().await.event.as_deref(), Some("e"));
}

#[tokio::test]
async fn client_event_rate_limit() {
    let server = TestServer::with(|c| c.apps[0].limits.client_event_rate = 5).await;
    let t = server.token(|c| c.channels = vec!["private-*".into()]);
    let mut sender = server.connect_with(Some(&t)).await;
    let mut receiver = server.connect_with(Some(&t)).await;
    sender.subscribe_ok("private-x").await;
    receiver.subscribe_ok("private-x").await;
    for i in 0..10 {
        sender
            .send(json!({"type": "event", "channel": "private-x", "event": "client-n", "data": i}))
            .await;
    }
    // Exactly the five over the rate are refused (and nothing else is said to the sender)...
    for _ in 0..5 {
        let e = sender.recv_non_ping().await;
        assert_eq!(e.kind, "error", "{e:?}");
        assert_eq!(e.data["code"], 301, "{e:?}");
    }
    sender.expect_silence(Duration::from_millis(200)).await;
    // ...and exactly the first five within it are relayed, in order.
    for i in 0..5 {
        assert_eq!(receiver.recv_non_ping().await.data, json!(i));
    }
    receiver.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn inbound_flood_closes_with_4102() {
    let server = TestServer::with(|c| c.limits.max_client_messages_per_second = 10).await;
    let mut c = server.connect().await;
    for _ in 0..50 {
        c.send(json!({"type": "ping"})).await;
    }
    c.expect_close(4102).await;
}

#[tokio::test]
async fn slow_consumer_is_disconnected_while_a_healthy_client_keeps_receiving() {
    let server = TestServer::with(|c| {
        // Room for a few 80 KB publish bursts, far less than what a stalled client causes.
        c.limits.max_queue_bytes = 256 * 1024;
        c.limits.max_queue_messages = 1000;
    })
    .await;
    let mut slow = server.connect().await;
    let mut healthy = server.connect().await;
    slow.subscribe_ok("firehose").await;
    healthy.subscribe_ok("firehose").await;

    // The slow client stops reading. Publish ~16 MB: far more than the socket buffers and
    // the 256 KiB queue hold.
    let payload = "x".repeat(8 * 1024);
    let total = 2000;
    let reader = tokio::spawn(async move {
        for i in 0..total {
            let m = healthy.recv().await;
            assert_eq!(m.data["i"], i, "healthy client gets every message in order");
        }
        healthy
    });
    for batch in 0..total / 10 {
        let events: Vec<_> = (0..10)
            .map(|j| json!({"channel": "firehose", "event": "e", "data": {"i": batch * 10 + j, "pad": payload}}))
            .collect();
        let (status, body) = server
            .api("POST", "batch", Some(json!({"events": events})))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let _healthy = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("healthy reader finished")
        .unwrap();

    // The slow client, once it reads, finds the close 4101 after what was already in flight.
    let reason = slow.expect_close(4101).await;
    assert_eq!(reason, "slow consumer");
    let (_, metrics) = server.admin_get("/metrics").await;
    assert!(
        metrics.contains("herald_slow_consumer_disconnects_total 1\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn silent_clients_are_pinged_then_closed_and_answering_ones_stay() {
    let server = TestServer::with(|c| {
        c.limits.ping_interval = Duration::from_millis(300);
        c.limits.activity_timeout = Duration::from_millis(1200);
    })
    .await;
    let mut silent = server.connect().await;
    let mut alive = server.connect().await;
    let ping = silent.recv().await;
    assert_eq!(ping.kind, "ping");
    let answer = async {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(2500);
        while tokio::time::Instant::now() < deadline {
            if let Ok(m) = tokio::time::timeout(Duration::from_millis(100), alive.recv()).await {
                assert_eq!(m.kind, "ping");
                alive.send(json!({"type": "pong"})).await;
            }
        }
        alive
    };
    let (mut alive, reason) = tokio::join!(answer, silent.expect_close(4201));
    assert_eq!(reason, "activity timeout");
    // The answering client is still served.
    alive.send(json!({"type": "ping", "ref": 1})).await;
    assert_eq!(alive.recv_non_ping().await.kind, "pong");
}
