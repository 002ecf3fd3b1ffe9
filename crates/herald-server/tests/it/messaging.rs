//! Subscribe, publish, receive; exclusion; direct sends; unsubscribe; bad input.

use std::time::Duration;

use serde_json::json;

use crate::harness::{Ended, TestServer};

#[tokio::test]
async fn connected_message_carries_socket_id_and_heartbeat_settings() {
    let server = TestServer::start().await;
    let mut c =
        crate::harness::Client::open(&server.ws_url(crate::harness::APP_KEY, None), &[]).await;
    let hello = c.recv().await;
    assert_eq!(hello.kind, "connected");
    let socket_id = hello.data["socket_id"].as_str().unwrap();
    let (a, b) = socket_id.split_once('.').unwrap();
    assert!(a.bytes().all(|c| c.is_ascii_digit()) && b.bytes().all(|c| c.is_ascii_digit()));
    assert_eq!(hello.data["activity_timeout"], 60);
    assert_eq!(hello.data["ping_interval"], 25);
    assert_eq!(hello.data["user_id"], serde_json::Value::Null);
    assert!(!hello.id.is_empty());
    assert!(hello.timestamp > 1_700_000_000_000);
}

#[tokio::test]
async fn publish_reaches_subscriber_with_exact_payload() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    c.subscribe_ok("news").await;
    let data = json!({"title": "héllo wörld ✓ 日本語 🎉", "n": 42, "nested": {"list": [1, "two", null, true]}, "escaped": "quote \" backslash \\ newline \n"});
    let receipt = server
        .publish("news", "article.published", data.clone())
        .await;
    let m = c.recv().await;
    assert_eq!(m.kind, "event");
    assert_eq!(m.channel.as_deref(), Some("news"));
    assert_eq!(m.event.as_deref(), Some("article.published"));
    assert_eq!(m.data, data);
    assert_eq!(m.id, receipt["id"].as_str().unwrap());
    assert_eq!(receipt["channels"], json!(["news"]));
}

#[tokio::test]
async fn near_limit_payload_is_delivered_and_one_byte_more_is_refused() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    c.subscribe_ok("big").await;
    let limit = 10 * 1024;
    // A JSON string of exactly `limit` bytes of text, quotes included.
    let s = "é".repeat((limit - 2) / 2);
    assert_eq!(serde_json::to_string(&s).unwrap().len(), limit);
    server.publish("big", "e", json!(s)).await;
    assert_eq!(c.recv().await.data, json!(s));
    let over = format!("{s}x");
    let (status, body) = server
        .api(
            "POST",
            "publish",
            Some(json!({"channel": "big", "event": "e", "data": over})),
        )
        .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], 302);
    assert_eq!(body["error"]["name"], "payload_too_large");
}

#[tokio::test]
async fn multi_channel_publish_and_socket_exclusion() {
    let server = TestServer::start().await;
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    a.subscribe_ok("one").await;
    b.subscribe_ok("two").await;
    b.subscribe_ok("one").await;
    let (status, body) = server
        .api(
            "POST",
            "publish",
            Some(json!({"channels": ["one", "two"], "event": "e", "data": 1})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(a.recv().await.channel.as_deref(), Some("one"));
    let mut got: Vec<String> = vec![
        b.recv().await.channel.unwrap(),
        b.recv().await.channel.unwrap(),
    ];
    got.sort();
    assert_eq!(got, ["one", "two"]);

    // Excluding a's socket: only b gets it.
    let (status, _) = server
        .api(
            "POST",
            "publish",
            Some(json!({"channel": "one", "event": "x", "data": 2, "exclude_socket": a.socket_id})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(b.recv().await.event.as_deref(), Some("x"));
    a.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn send_to_user_reaches_every_connection_and_send_to_socket_one() {
    let server = TestServer::start().await;
    let t = server.token(|c| c.sub = Some("ann".into()));
    let mut tab1 = server.connect_with(Some(&t)).await;
    let mut tab2 = server.connect_with(Some(&t)).await;
    let mut other = server
        .connect_with(Some(&server.token(|c| c.sub = Some("bob".into()))))
        .await;
    let (status, body) = server
        .api(
            "POST",
            "users/ann/events",
            Some(json!({"event": "notify", "data": {"n": 1}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for tab in [&mut tab1, &mut tab2] {
        let m = tab.recv().await;
        assert_eq!(m.kind, "event");
        assert_eq!(m.channel, None);
        assert_eq!(m.event.as_deref(), Some("notify"));
        assert_eq!(m.data, json!({"n": 1}));
    }
    other.expect_silence(Duration::from_millis(200)).await;

    let path = format!("sockets/{}/events", tab2.socket_id);
    let (status, _) = server
        .api("POST", &path, Some(json!({"event": "only-you"})))
        .await;
    assert_eq!(status, 200);
    assert_eq!(tab2.recv().await.event.as_deref(), Some("only-you"));
    tab1.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    c.subscribe_ok("news").await;
    c.send(json!({"type": "unsubscribe", "channel": "news", "ref": 9}))
        .await;
    let reply = c.recv().await;
    assert_eq!(reply.kind, "unsubscribe");
    assert_eq!(reply.reference, Some(json!(9)));
    server.publish("news", "e", json!(null)).await;
    c.expect_silence(Duration::from_millis(300)).await;
    // Unsubscribing again is an error.
    c.send(json!({"type": "unsubscribe", "channel": "news"}))
        .await;
    let err = c.recv().await;
    assert_eq!(err.kind, "error");
    assert_eq!(err.data["code"], 106);
}

#[tokio::test]
async fn ping_is_answered_with_pong_echoing_ref() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    c.send(json!({"type": "ping", "ref": "p1"})).await;
    let pong = c.recv().await;
    assert_eq!(pong.kind, "pong");
    assert_eq!(pong.reference, Some(json!("p1")));
}

#[tokio::test]
async fn bad_input_gets_errors_and_everyone_keeps_being_served() {
    let server = TestServer::start().await;
    let mut bad = server.connect().await;
    let mut good = server.connect().await;
    good.subscribe_ok("news").await;
    bad.subscribe_ok("news").await;

    bad.send_text("this is not json").await;
    let e = bad.recv().await;
    assert_eq!(
        (e.kind.as_str(), e.data["code"].as_u64()),
        ("error", Some(101))
    );
    bad.send(json!({"type": "teleport", "ref": 5})).await;
    let e = bad.recv().await;
    assert_eq!(e.data["code"], 102);
    assert_eq!(e.event.as_deref(), Some("unknown_type"));
    assert_eq!(e.reference, Some(json!(5)));
    bad.send(json!({"type": "subscribe"})).await;
    assert_eq!(bad.recv().await.data["code"], 104);
    bad.send(json!({"type": "subscribe", "channel": "bad channel!"}))
        .await;
    assert_eq!(bad.recv().await.data["code"], 103);
    bad.send(json!({"type": "subscribe", "channel": "news"}))
        .await;
    assert_eq!(bad.recv().await.data["code"], 105);

    // Both connections still work.
    server.publish("news", "still-here", json!(1)).await;
    assert_eq!(good.recv().await.event.as_deref(), Some("still-here"));
    assert_eq!(bad.recv().await.event.as_deref(), Some("still-here"));
}

#[tokio::test]
async fn binary_frames_close_the_connection_with_1003() {
    use futures_util::SinkExt;
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    let mut other = server.connect().await;
    other.subscribe_ok("news").await;
    c.ws.send(tokio_tungstenite::tungstenite::Message::binary(vec![
        1u8, 2, 3,
    ]))
    .await
    .unwrap();
    c.expect_close(1003).await;
    server.publish("news", "e", json!(1)).await;
    assert_eq!(other.recv().await.event.as_deref(), Some("e"));
}

#[tokio::test]
async fn client_events_reach_others_but_not_the_sender() {
    let server = TestServer::start().await;
    let t = |u: &str| {
        server.token(|c| {
            c.sub = Some(u.into());
            c.channels = vec!["private-chat.*".into()];
        })
    };
    let mut ann = server.connect_with(Some(&t("ann"))).await;
    let mut bob = server.connect_with(Some(&t("bob"))).await;
    ann.subscribe_ok("private-chat.1").await;
    bob.subscribe_ok("private-chat.1").await;
    ann.send(json!({"type": "event", "channel": "private-chat.1", "event": "client-typing", "data": {"on": true}})).await;
    let m = bob.recv().await;
    assert_eq!(m.event.as_deref(), Some("client-typing"));
    assert_eq!(m.data, json!({"on": true}));
    assert_eq!(m.user_id.as_deref(), Some("ann"));
    ann.expect_silence(Duration::from_millis(200)).await;

    // Not on public channels, not without the prefix, not unsubscribed.
    ann.subscribe_ok("lobby").await;
    ann.send(json!({"type": "event", "channel": "lobby", "event": "client-x", "data": 1}))
        .await;
    assert_eq!(ann.recv().await.data["code"], 107);
    ann.send(json!({"type": "event", "channel": "private-chat.1", "event": "typing", "data": 1}))
        .await;
    assert_eq!(ann.recv().await.data["code"], 108);
    ann.send(json!({"type": "event", "channel": "private-chat.2", "event": "client-x", "data": 1}))
        .await;
    assert_eq!(ann.recv().await.data["code"], 106);
}

#[tokio::test]
async fn client_events_are_refused_when_the_app_disables_them() {
    let server = TestServer::with(|c| c.apps[0].client_events = false).await;
    let t = server.token(|c| c.channels = vec!["private-*".into()]);
    let mut c = server.connect_with(Some(&t)).await;
    c.subscribe_ok("private-x").await;
    c.send(json!({"type": "event", "channel": "private-x", "event": "client-a", "data": 1}))
        .await;
    let e = c.recv().await;
    assert_eq!(e.data["code"], 107);
    assert_eq!(e.event.as_deref(), Some("client_events_disabled"));
}

#[tokio::test]
async fn client_close_is_answered() {
    use futures_util::SinkExt;
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    c.ws.send(tokio_tungstenite::tungstenite::Message::Close(None))
        .await
        .unwrap();
    match c.ended().await {
        Ended::Closed(code, _) => assert_eq!(code, 1000),
        Ended::Dropped => {}
    }
    // The server forgets the connection.
    for _ in 0..50 {
        if server.node.connection_count() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("connection still counted after close");
}
