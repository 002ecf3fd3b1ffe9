//! The Pusher protocol v7 at the wire level: connection, channel types, client events,
//! sign-in, the signed HTTP API, webhooks, and interop with the native protocol.
//! (pusher-js, Laravel Echo and the Pusher SDKs themselves are driven by `tests/pusher`.)

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use herald_core::clock::unix_secs;
use herald_core::pusher_auth::{hex, sign};
use herald_core::{Secret, WebhookSettings};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use md5::{Digest, Md5};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::harness::{APP_ID, APP_KEY, SECRET, TestServer, WAIT, http};

/// A raw Pusher protocol client.
pub(crate) struct Pusher {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub(crate) socket_id: String,
}

impl Pusher {
    /// Connect to `/app/{key}?protocol=7` and read `pusher:connection_established`.
    pub(crate) async fn connect(server: &TestServer) -> Self {
        let mut p = Self::open(
            server,
            &format!("/app/{APP_KEY}?protocol=7&client=js&version=8.4.0"),
        )
        .await;
        let hello = p.recv().await;
        assert_eq!(hello["event"], "pusher:connection_established");
        let data: Value =
            serde_json::from_str(hello["data"].as_str().expect("data is a string")).unwrap();
        p.socket_id = data["socket_id"].as_str().unwrap().to_owned();
        p
    }

    async fn open(server: &TestServer, path: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}{path}", server.addr))
            .await
            .expect("websocket connect");
        Self {
            ws,
            socket_id: String::new(),
        }
    }

    pub(crate) async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::text(v.to_string()))
            .await
            .expect("send");
    }

    /// The next message, skipping the server's `pusher:ping`.
    pub(crate) async fn recv(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a message")
                .expect("stream ended")
                .expect("websocket error");
            match msg {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).expect("JSON");
                    if v["event"] != "pusher:ping" {
                        return v;
                    }
                }
                Message::Close(frame) => panic!("unexpected close: {frame:?}"),
                _ => {}
            }
        }
    }

    /// The next message that is not a `pusher_internal:subscription_count`.
    pub(crate) async fn recv_event(&mut self) -> Value {
        loop {
            let v = self.recv().await;
            if v["event"] != "pusher_internal:subscription_count" {
                return v;
            }
        }
    }

    pub(crate) async fn expect_silence(&mut self, d: Duration) {
        if let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(d, self.ws.next()).await {
            panic!("expected silence, got {t}");
        }
    }

    async fn expect_close(&mut self, code: u16) -> String {
        loop {
            let next = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for close");
            match next {
                Some(Ok(Message::Close(Some(CloseFrame { code: c, reason })))) => {
                    assert_eq!(u16::from(c), code, "close code (reason {reason:?})");
                    return reason.to_string();
                }
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => {
                    panic!("closed without code {code}")
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// `key:signature` for a private channel (or presence, with `channel_data`).
    fn auth(&self, channel: &str, channel_data: Option<&str>) -> String {
        let mut to_sign = format!("{}:{channel}", self.socket_id);
        if let Some(d) = channel_data {
            to_sign.push(':');
            to_sign.push_str(d);
        }
        format!("{APP_KEY}:{}", sign(&Secret::new(SECRET), &to_sign))
    }

    /// Subscribe (signing when needed) and return the reply.
    async fn subscribe(&mut self, channel: &str, channel_data: Option<&str>) -> Value {
        let mut data = json!({ "channel": channel });
        if channel.starts_with("private-") || channel.starts_with("presence-") {
            data["auth"] = json!(self.auth(channel, channel_data));
        }
        if let Some(d) = channel_data {
            data["channel_data"] = json!(d);
        }
        self.send(json!({"event": "pusher:subscribe", "data": data}))
            .await;
        self.recv_event().await
    }

    pub(crate) async fn subscribe_ok(
        &mut self,
        channel: &str,
        channel_data: Option<&str>,
    ) -> Value {
        let reply = self.subscribe(channel, channel_data).await;
        assert_eq!(
            reply["event"], "pusher_internal:subscription_succeeded",
            "{reply}"
        );
        assert_eq!(reply["channel"], channel);
        serde_json::from_str(reply["data"].as_str().expect("data is a string")).unwrap()
    }
}

/// A signed Pusher HTTP API request: `(status, body)`.
pub(crate) async fn pusher_api(
    server: &TestServer,
    method: &str,
    path: &str,
    query: &[(&str, &str)],
    body: Option<Value>,
    secret: &str,
) -> (u16, Value) {
    let body = body.map(|b| b.to_string());
    let uri = signed_uri(method, path, query, body.as_deref(), secret);
    let (status, text, _) = http(server.addr, method, &uri, body, None).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The signed URI of a Pusher HTTP API request to `/apps/{APP_ID}/{path}`.
pub(crate) fn signed_uri(
    method: &str,
    path: &str,
    query: &[(&str, &str)],
    body: Option<&str>,
    secret: &str,
) -> String {
    let full_path = format!("/apps/{APP_ID}/{path}");
    let timestamp = unix_secs().to_string();
    let mut params: Vec<(String, String)> = vec![
        ("auth_key".into(), APP_KEY.into()),
        ("auth_timestamp".into(), timestamp),
        ("auth_version".into(), "1.0".into()),
    ];
    if let Some(b) = &body {
        params.push(("body_md5".into(), hex(&Md5::digest(b.as_bytes()))));
    }
    params.extend(
        query
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    params.sort();
    let signed = params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let signature = sign(
        &Secret::new(secret),
        &format!("{method}\n{full_path}\n{signed}"),
    );
    format!("{full_path}?{signed}&auth_signature={signature}")
}

async fn trigger(server: &TestServer, body: Value) -> (u16, Value) {
    pusher_api(server, "POST", "events", &[], Some(body), SECRET).await
}

#[tokio::test]
async fn connection_established_ping_and_version_checks() {
    let server = TestServer::start().await;
    let mut p = Pusher::open(&server, &format!("/app/{APP_KEY}?protocol=7")).await;
    let hello = p.recv().await;
    assert_eq!(hello["event"], "pusher:connection_established");
    let data: Value =
        serde_json::from_str(hello["data"].as_str().expect("data is a JSON string")).unwrap();
    let socket_id = data["socket_id"].as_str().unwrap();
    let (a, b) = socket_id.split_once('.').unwrap();
    assert!(
        !a.is_empty() && !b.is_empty() && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit()),
        "{socket_id}"
    );
    assert!(data["activity_timeout"].as_u64().unwrap() > 0);

    p.send(json!({"event": "pusher:ping", "data": {}})).await;
    assert_eq!(p.recv().await["event"], "pusher:pong");

    for (query, code) in [
        ("", 4008),
        ("?protocol=x", 4006),
        ("?protocol=3", 4007),
        ("?protocol=8", 4007),
    ] {
        let mut p = Pusher::open(&server, &format!("/app/{APP_KEY}{query}")).await;
        let err = p.recv().await;
        assert_eq!(err["event"], "pusher:error", "{query}");
        assert_eq!(err["data"]["code"], code, "{err}");
        p.expect_close(code).await;
    }
    let mut p = Pusher::open(&server, "/app/no-such-key?protocol=7").await;
    assert_eq!(p.recv().await["data"]["code"], 4001);
    p.expect_close(4001).await;
}

#[tokio::test]
async fn disabled_app_is_refused_with_4003() {
    let server = TestServer::with(|c| c.apps[0].enabled = false).await;
    let mut p = Pusher::open(&server, &format!("/app/{APP_KEY}?protocol=7")).await;
    assert_eq!(p.recv().await["data"]["code"], 4003);
    p.expect_close(4003).await;
}

#[tokio::test]
async fn connection_limits_give_pusher_quota_and_capacity_codes() {
    // The app's own quota: 4004, which pusher-js does not retry.
    let server = TestServer::with(|c| c.apps[0].limits.max_connections = 1).await;
    let _first = Pusher::connect(&server).await;
    let mut p = Pusher::open(&server, &format!("/app/{APP_KEY}?protocol=7")).await;
    assert_eq!(p.recv().await["data"]["code"], 4004);
    p.expect_close(4004).await;
    // The node's capacity: 4100, which pusher-js retries after a delay.
    let server = TestServer::with(|c| c.limits.max_connections = 1).await;
    let _first = Pusher::connect(&server).await;
    let mut p = Pusher::open(&server, &format!("/app/{APP_KEY}?protocol=7")).await;
    assert_eq!(p.recv().await["data"]["code"], 4100);
    p.expect_close(4100).await;
}

#[tokio::test]
async fn public_and_private_channels_receive_double_encoded_events() {
    let server = TestServer::start().await;
    let mut p = Pusher::connect(&server).await;
    assert_eq!(p.subscribe_ok("orders", None).await, json!({}));
    p.subscribe_ok("private-orders", None).await;

    // Pusher SDKs send data as a string: it arrives as the same string.
    let (status, body) = trigger(
        &server,
        json!({"name": "shipped", "channel": "orders", "data": "{\"id\":7}"}),
    )
    .await;
    assert_eq!((status, body), (200, json!({})));
    let e = p.recv_event().await;
    assert_eq!(
        e,
        json!({"event": "shipped", "channel": "orders", "data": "{\"id\":7}"})
    );

    // The native API's JSON data reaches a Pusher client as its JSON text.
    server
        .publish("private-orders", "shipped", json!({"id": 8}))
        .await;
    let e = p.recv_event().await;
    assert_eq!(e["channel"], "private-orders");
    assert_eq!(
        serde_json::from_str::<Value>(e["data"].as_str().unwrap()).unwrap(),
        json!({"id": 8})
    );

    // Unsubscribed: nothing more arrives.
    p.send(json!({"event": "pusher:unsubscribe", "data": {"channel": "orders"}}))
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    trigger(
        &server,
        json!({"name": "x", "channel": "orders", "data": "1"}),
    )
    .await;
    p.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn bad_channel_auth_gives_subscription_error() {
    let server = TestServer::start().await;
    let mut p = Pusher::connect(&server).await;
    let forged = format!("{APP_KEY}:{}", "0".repeat(64));
    p.send(json!({"event": "pusher:subscribe", "data": {"channel": "private-x", "auth": forged}}))
        .await;
    let e = p.recv().await;
    assert_eq!(e["event"], "pusher:subscription_error");
    assert_eq!(e["channel"], "private-x");
    let data: Value = serde_json::from_str(e["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["type"], "AuthError");
    assert_eq!(data["status"], 401);

    // A signature for another socket is refused too; no auth at all as well.
    let other = Pusher::connect(&server).await;
    let stolen = other.auth("private-x", None);
    p.send(json!({"event": "pusher:subscribe", "data": {"channel": "private-x", "auth": stolen}}))
        .await;
    assert_eq!(p.recv().await["event"], "pusher:subscription_error");
    p.send(json!({"event": "pusher:subscribe", "data": {"channel": "private-x"}}))
        .await;
    assert_eq!(p.recv().await["event"], "pusher:subscription_error");
    // The connection is still usable.
    p.subscribe_ok("private-x", None).await;
}

#[tokio::test]
async fn presence_members_with_several_connections_per_user() {
    let server = TestServer::start().await;
    let ann_data = r#"{"user_id":1,"user_info":{"name":"Ann"}}"#;
    let bob_data = r#"{"user_id":"bob","user_info":{"name":"Bob"}}"#;
    let mut ann = Pusher::connect(&server).await;
    let sync = ann.subscribe_ok("presence-room", Some(ann_data)).await;
    assert_eq!(
        sync,
        json!({"presence": {"ids": ["1"], "hash": {"1": {"name": "Ann"}}, "count": 1}})
    );

    let mut bob1 = Pusher::connect(&server).await;
    let sync = bob1.subscribe_ok("presence-room", Some(bob_data)).await;
    assert_eq!(sync["presence"]["count"], 2);
    assert_eq!(sync["presence"]["hash"]["bob"], json!({"name": "Bob"}));
    let added = ann.recv_event().await;
    assert_eq!(added["event"], "pusher_internal:member_added");
    assert_eq!(
        serde_json::from_str::<Value>(added["data"].as_str().unwrap()).unwrap(),
        json!({"user_id": "bob", "user_info": {"name": "Bob"}})
    );

    // Bob's second tab: no second member_added, and the count stays 2.
    let mut bob2 = Pusher::connect(&server).await;
    assert_eq!(
        bob2.subscribe_ok("presence-room", Some(bob_data)).await["presence"]["count"],
        2
    );
    ann.expect_silence(Duration::from_millis(200)).await;
    let (_, users) = pusher_api(
        &server,
        "GET",
        "channels/presence-room/users",
        &[],
        None,
        SECRET,
    )
    .await;
    assert_eq!(users, json!({"users": [{"id": "1"}, {"id": "bob"}]}));

    // One tab closes: nothing; the last one closes: member_removed.
    drop(bob1);
    ann.expect_silence(Duration::from_millis(200)).await;
    bob2.send(json!({"event": "pusher:unsubscribe", "data": {"channel": "presence-room"}}))
        .await;
    let removed = ann.recv_event().await;
    assert_eq!(removed["event"], "pusher_internal:member_removed");
    assert_eq!(
        serde_json::from_str::<Value>(removed["data"].as_str().unwrap()).unwrap(),
        json!({"user_id": "bob"})
    );
}

#[tokio::test]
async fn presence_limits_members_and_user_info() {
    let server = TestServer::with(|c| {
        c.apps[0].limits.max_presence_members = 1;
        c.apps[0].limits.max_user_info_bytes = 16;
    })
    .await;
    let mut ann = Pusher::connect(&server).await;
    ann.subscribe_ok("presence-small", Some(r#"{"user_id":"ann"}"#))
        .await;
    let mut bob = Pusher::connect(&server).await;
    let e = bob
        .subscribe("presence-small", Some(r#"{"user_id":"bob"}"#))
        .await;
    assert_eq!(e["event"], "pusher:subscription_error", "{e}");
    let big = r#"{"user_id":"cy","user_info":{"bio":"a very long biography"}}"#;
    let e = bob.subscribe("presence-other", Some(big)).await;
    assert_eq!(e["event"], "pusher:subscription_error", "{e}");
}

#[tokio::test]
async fn client_events_are_relayed_not_echoed_and_rate_limited() {
    let server = TestServer::start().await;
    let mut ann = Pusher::connect(&server).await;
    let mut bob = Pusher::connect(&server).await;
    ann.subscribe_ok("presence-chat", Some(r#"{"user_id":"ann"}"#))
        .await;
    bob.subscribe_ok("presence-chat", Some(r#"{"user_id":"bob"}"#))
        .await;
    ann.recv_event().await; // member_added bob

    ann.send(json!({"event": "client-typing", "channel": "presence-chat", "data": {"on": true}}))
        .await;
    let e = bob.recv_event().await;
    assert_eq!(e["event"], "client-typing");
    assert_eq!(e["user_id"], "ann");
    assert_eq!(
        serde_json::from_str::<Value>(e["data"].as_str().unwrap()).unwrap(),
        json!({"on": true})
    );
    ann.expect_silence(Duration::from_millis(150)).await;

    // Public channels and channels not joined refuse client events.
    ann.subscribe_ok("public", None).await;
    ann.send(json!({"event": "client-x", "channel": "public", "data": {}}))
        .await;
    assert_eq!(ann.recv().await["event"], "pusher:error");
    ann.send(json!({"event": "client-x", "channel": "private-elsewhere", "data": {}}))
        .await;
    assert_eq!(ann.recv().await["event"], "pusher:error");

    // Over 10 per second: 4301, and the connection stays open.
    for _ in 0..15 {
        ann.send(json!({"event": "client-burst", "channel": "presence-chat", "data": {}}))
            .await;
    }
    let e = ann.recv().await;
    assert_eq!(e["event"], "pusher:error");
    assert_eq!(e["data"]["code"], 4301, "{e}");
    ann.send(json!({"event": "pusher:ping", "data": {}})).await;
    loop {
        if ann.recv().await["event"] == "pusher:pong" {
            break;
        }
    }
}

#[tokio::test]
async fn client_events_need_the_app_to_allow_them() {
    let server = TestServer::with(|c| c.apps[0].client_events = false).await;
    let mut p = Pusher::connect(&server).await;
    p.subscribe_ok("private-a", None).await;
    p.send(json!({"event": "client-x", "channel": "private-a", "data": {}}))
        .await;
    let e = p.recv().await;
    assert_eq!(e["event"], "pusher:error");
    assert!(
        e["data"]["message"]
            .as_str()
            .unwrap()
            .contains("client events"),
        "{e}"
    );
}

#[tokio::test]
async fn cache_channels_replay_the_last_event_or_say_miss() {
    let server = TestServer::start().await;
    let mut p = Pusher::connect(&server).await;
    p.subscribe_ok("cache-prices", None).await;
    assert_eq!(
        p.recv().await,
        json!({"event": "pusher:cache_miss", "channel": "cache-prices"})
    );

    trigger(
        &server,
        json!({"name": "price", "channel": "cache-prices", "data": "1"}),
    )
    .await;
    trigger(
        &server,
        json!({"name": "price", "channel": "cache-prices", "data": "2"}),
    )
    .await;
    let mut late = Pusher::connect(&server).await;
    late.subscribe_ok("cache-prices", None).await;
    assert_eq!(
        late.recv().await,
        json!({"event": "price", "channel": "cache-prices", "data": "2"})
    );

    let (status, info) = pusher_api(
        &server,
        "GET",
        "channels/cache-prices",
        &[("info", "subscription_count,cache")],
        None,
        SECRET,
    )
    .await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["occupied"], true);
    assert_eq!(info["subscription_count"], 2);
    assert_eq!(info["cache"]["event"], "price");
    assert_eq!(info["cache"]["data"], "2");
    assert!(info["cache"]["ttl"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn encrypted_channel_data_passes_through_untouched() {
    let server = TestServer::with(|c| c.apps[0].client_events = true).await;
    let mut p = Pusher::connect(&server).await;
    p.subscribe_ok("private-encrypted-vault", None).await;
    let sealed = r#"{"nonce":"4bXpHR+fH4H0GGnz3NjZ3ZkP9Gm/ZF3i","ciphertext":"q0vMIPX6dJzO2w=="}"#;
    trigger(
        &server,
        json!({"name": "secret", "channel": "private-encrypted-vault", "data": sealed}),
    )
    .await;
    assert_eq!(p.recv().await["data"], sealed);

    // Client events are not supported on encrypted channels (as in Pusher).
    p.send(json!({"event": "client-peek", "channel": "private-encrypted-vault", "data": {}}))
        .await;
    let refused = p.recv().await;
    assert_eq!(refused["event"], "pusher:error");
    assert!(
        refused["data"]["message"]
            .as_str()
            .unwrap()
            .contains("encrypted"),
        "{refused}"
    );
}

#[tokio::test]
async fn signin_and_send_to_user_and_terminate() {
    let server = TestServer::start().await;
    let mut p = Pusher::connect(&server).await;
    let user_data = r#"{"id":"42","user_info":{"name":"Zed"}}"#;

    let bad = format!("{APP_KEY}:{}", "f".repeat(64));
    p.send(json!({"event": "pusher:signin", "data": {"auth": bad, "user_data": user_data}}))
        .await;
    assert_eq!(p.recv().await["event"], "pusher:error");

    let sig = sign(
        &Secret::new(SECRET),
        &format!("{}::user::{user_data}", p.socket_id),
    );
    p.send(json!({"event": "pusher:signin", "data": {"auth": format!("{APP_KEY}:{sig}"), "user_data": user_data}})).await;
    let ok = p.recv().await;
    assert_eq!(ok["event"], "pusher:signin_success");
    assert_eq!(
        serde_json::from_str::<Value>(ok["data"].as_str().unwrap()).unwrap()["user_data"],
        user_data
    );

    // sendToUser: the SDKs trigger on "#server-to-user-<id>".
    let (status, _) = trigger(
        &server,
        json!({"name": "note", "channel": "#server-to-user-42", "data": "{\"x\":1}"}),
    )
    .await;
    assert_eq!(status, 200);
    let e = p.recv().await;
    assert_eq!(e["event"], "note");
    assert_eq!(e["channel"], "#server-to-user-42");
    assert_eq!(e["data"], "{\"x\":1}");

    let (status, body) = pusher_api(
        &server,
        "POST",
        "users/42/terminate_connections",
        &[],
        Some(json!({})),
        SECRET,
    )
    .await;
    assert_eq!((status, body), (200, json!({})));
    p.expect_close(4009).await;
}

#[tokio::test]
async fn unsigned_connections_are_closed_after_the_user_authentication_timeout() {
    let server = TestServer::with(|c| {
        c.apps[0].user_authentication_timeout = Some(Duration::from_millis(300))
    })
    .await;
    let mut p = Pusher::connect(&server).await;
    p.expect_close(4009).await;
}

#[tokio::test]
async fn http_api_signing_and_status_codes() {
    let server = TestServer::start().await;
    let body = json!({"name": "e", "channel": "c", "data": "{}"});
    let (status, err) = pusher_api(
        &server,
        "POST",
        "events",
        &[],
        Some(body.clone()),
        "wrong-secret",
    )
    .await;
    assert_eq!(status, 401, "{err}");
    assert!(err["error"].to_string().contains("signature"), "{err}");

    // An old timestamp is refused even with a valid signature.
    let path = format!("/apps/{APP_ID}/channels");
    let q = format!("auth_key={APP_KEY}&auth_timestamp=1353088179&auth_version=1.0");
    let sig = sign(&Secret::new(SECRET), &format!("GET\n{path}\n{q}"));
    let (status, _, _) = http(
        server.addr,
        "GET",
        &format!("{path}?{q}&auth_signature={sig}"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 401);

    let big = "x".repeat(10 * 1024 + 1);
    let (status, err) = trigger(&server, json!({"name": "e", "channel": "c", "data": big})).await;
    assert_eq!(status, 413, "{err}");
    let channels: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
    let (status, _) = trigger(
        &server,
        json!({"name": "e", "channels": channels, "data": "{}"}),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = trigger(&server, json!({"name": "e", "data": "{}"})).await;
    assert_eq!(status, 400);
    let batch: Vec<Value> = (0..11)
        .map(|_| json!({"name": "e", "channel": "c", "data": "{}"}))
        .collect();
    let (status, _) = pusher_api(
        &server,
        "POST",
        "batch_events",
        &[],
        Some(json!({"batch": batch})),
        SECRET,
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = pusher_api(&server, "GET", "channels/public/users", &[], None, SECRET).await;
    assert_eq!(status, 400);
    let (status, _, _) = http(server.addr, "GET", "/apps/nope/channels", None, None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn trigger_excludes_a_socket_and_reports_channel_info() {
    let server = TestServer::start().await;
    let mut a = Pusher::connect(&server).await;
    let mut b = Pusher::connect(&server).await;
    a.subscribe_ok("presence-team", Some(r#"{"user_id":"a"}"#))
        .await;
    b.subscribe_ok("presence-team", Some(r#"{"user_id":"b"}"#))
        .await;
    a.recv_event().await; // member_added

    let (status, body) = trigger(
        &server,
        json!({"name": "e", "channels": ["presence-team", "empty"], "data": "{}", "socket_id": a.socket_id, "info": "user_count,subscription_count"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        body["channels"]["presence-team"],
        json!({"user_count": 2, "subscription_count": 2})
    );
    assert_eq!(b.recv_event().await["event"], "e");
    a.expect_silence(Duration::from_millis(200)).await;

    let (status, body) = pusher_api(
        &server,
        "POST",
        "batch_events",
        &[],
        Some(json!({"batch": [
            {"name": "one", "channel": "presence-team", "data": "1", "info": "user_count"},
            {"name": "two", "channel": "presence-team", "data": "2", "socket_id": b.socket_id},
        ]})),
        SECRET,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["batch"][0], json!({"user_count": 2}));
    assert_eq!(a.recv_event().await["event"], "one");
    assert_eq!(a.recv_event().await["event"], "two");
    assert_eq!(b.recv_event().await["event"], "one");
    b.expect_silence(Duration::from_millis(200)).await;

    let (_, list) = pusher_api(
        &server,
        "GET",
        "channels",
        &[("filter_by_prefix", "presence-"), ("info", "user_count")],
        None,
        SECRET,
    )
    .await;
    assert_eq!(
        list,
        json!({"channels": {"presence-team": {"user_count": 2}}})
    );
    let (status, _) = pusher_api(
        &server,
        "GET",
        "channels",
        &[("info", "user_count")],
        None,
        SECRET,
    )
    .await;
    assert_eq!(status, 400, "user_count needs a presence- filter");
    let (_, info) = pusher_api(
        &server,
        "GET",
        "channels/nobody-here",
        &[("info", "subscription_count")],
        None,
        SECRET,
    )
    .await;
    assert_eq!(info["occupied"], false);
}

#[tokio::test]
async fn one_hub_two_protocols() {
    let server = TestServer::start().await;
    let mut pusher = Pusher::connect(&server).await;
    pusher
        .subscribe_ok(
            "presence-mixed",
            Some(r#"{"user_id":"p1","user_info":{"via":"pusher"}}"#),
        )
        .await;

    // A native client joins the same presence channel with a token.
    let token = server.token(|c| {
        c.sub = Some("n1".into());
        c.channels = vec!["presence-*".into(), "news".into()];
        c.info = Some(json!({"via": "native"}));
    });
    let mut native = server.connect_with(Some(&token)).await;
    native.subscribe_ok("presence-mixed").await;
    let sync = native.recv().await;
    assert_eq!(sync.data["count"], 2, "{sync:?}");
    let added = pusher.recv_event().await;
    assert_eq!(added["event"], "pusher_internal:member_added");
    assert_eq!(
        serde_json::from_str::<Value>(added["data"].as_str().unwrap()).unwrap(),
        json!({"user_id": "n1", "user_info": {"via": "native"}})
    );

    // Pusher API → native client: a data string holding JSON arrives as that JSON (what
    // Laravel broadcasts), any other string as a string.
    native.subscribe_ok("news").await;
    pusher.subscribe_ok("news", None).await;
    trigger(
        &server,
        json!({"name": "headline", "channel": "news", "data": "{\"t\":\"hi\"}"}),
    )
    .await;
    let got = native.recv_non_ping().await;
    assert_eq!(got.event.as_deref(), Some("headline"));
    assert_eq!(got.data, json!({"t": "hi"}));
    assert_eq!(pusher.recv_event().await["data"], "{\"t\":\"hi\"}");
    trigger(
        &server,
        json!({"name": "plain", "channel": "news", "data": "just text"}),
    )
    .await;
    assert_eq!(native.recv_non_ping().await.data, json!("just text"));
    assert_eq!(pusher.recv_event().await["data"], "just text");

    // Native API → Pusher client.
    server.publish("news", "update", json!({"n": 2})).await;
    let got = pusher.recv_event().await;
    assert_eq!(got["event"], "update");
    assert_eq!(
        serde_json::from_str::<Value>(got["data"].as_str().unwrap()).unwrap(),
        json!({"n": 2})
    );
    assert_eq!(native.recv_non_ping().await.data, json!({"n": 2}));

    // A Pusher client event reaches native subscribers too.
    pusher
        .send(
            json!({"event": "client-wave", "channel": "presence-mixed", "data": {"hand": "left"}}),
        )
        .await;
    let got = native.recv_non_ping().await;
    assert_eq!(got.event.as_deref(), Some("client-wave"));
    assert_eq!(got.data, json!({"hand": "left"}));

    drop(native);
    let removed = pusher.recv_event().await;
    assert_eq!(removed["event"], "pusher_internal:member_removed");
}

/// A local webhook receiver: every request's `(headers, body)`; answers 500 to the first
/// `fail_first` requests.
pub(crate) async fn webhook_receiver(
    fail_first: usize,
) -> (SocketAddr, mpsc::Receiver<(http::HeaderMap, Bytes)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Bounded like everything else; a test receives at most a few dozen requests.
    let (tx, rx) = mpsc::channel(1024);
    let failures = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(fail_first));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            let failures = failures.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let tx = tx.clone();
                    let failures = failures.clone();
                    async move {
                        let headers = req.headers().clone();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let fail = failures
                            .fetch_update(
                                std::sync::atomic::Ordering::SeqCst,
                                std::sync::atomic::Ordering::SeqCst,
                                |n| n.checked_sub(1),
                            )
                            .is_ok();
                        let _ = tx.send((headers, body)).await;
                        let status = if fail { 500 } else { 200 };
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::new()))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, rx)
}

/// Webhook events received until `want` events have arrived (or the wait ends).
pub(crate) async fn collect_events(
    rx: &mut mpsc::Receiver<(http::HeaderMap, Bytes)>,
    want: usize,
) -> Vec<Value> {
    let mut events = Vec::new();
    while events.len() < want {
        let (headers, body) = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("webhook in time")
            .unwrap();
        assert_eq!(headers["x-pusher-key"], APP_KEY);
        let expected = sign(&Secret::new(SECRET), std::str::from_utf8(&body).unwrap());
        assert_eq!(headers["x-pusher-signature"], expected.as_str());
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert!(v["time_ms"].as_u64().unwrap() > 1_600_000_000_000);
        events.extend(v["events"].as_array().unwrap().iter().cloned());
    }
    events
}

#[tokio::test]
async fn webhooks_are_signed_batched_and_debounced() {
    let (addr, mut rx) = webhook_receiver(0).await;
    let server = TestServer::with(|c| {
        c.apps[0].webhook_delay = Duration::from_millis(300);
        c.apps[0].webhooks = vec![WebhookSettings {
            url: format!("http://{addr}/hook"),
            event_types: Vec::new(),
            channel_prefix: None,
            include_client_ip: false,
        }];
    })
    .await;
    let mut a = Pusher::connect(&server).await;
    let mut b = Pusher::connect(&server).await;
    a.subscribe_ok("presence-hooks", Some(r#"{"user_id":"a"}"#))
        .await;
    b.subscribe_ok("presence-hooks", Some(r#"{"user_id":"b"}"#))
        .await;
    assert_eq!(
        a.recv_event().await["event"],
        "pusher_internal:member_added"
    );
    b.send(json!({"event": "client-hi", "channel": "presence-hooks", "data": {"x": 1}}))
        .await;
    a.subscribe_ok("cache-empty", None).await;

    let events = collect_events(&mut rx, 5).await;
    let find = |name: &str| {
        events
            .iter()
            .find(|e| e["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {events:?}"))
    };
    assert_eq!(find("channel_occupied")["channel"], "presence-hooks");
    let added: Vec<_> = events
        .iter()
        .filter(|e| e["name"] == "member_added")
        .map(|e| e["user_id"].clone())
        .collect();
    assert_eq!(added, [json!("a"), json!("b")]);
    let client = find("client_event");
    assert_eq!(client["event"], "client-hi");
    assert_eq!(client["user_id"], "b");
    assert_eq!(client["socket_id"], b.socket_id.as_str());
    assert_eq!(find("cache_miss")["channel"], "cache-empty");

    // b reloads its page within the delay: no member_removed/member_added flap.
    drop(b);
    let mut b = Pusher::connect(&server).await;
    b.subscribe_ok("presence-hooks", Some(r#"{"user_id":"b"}"#))
        .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    // Everyone leaves for good: member_removed for both, then channel_vacated.
    drop(a);
    drop(b);
    let events = collect_events(&mut rx, 4).await;
    let names: Vec<_> = events
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        names.iter().filter(|n| *n == "member_removed").count(),
        2,
        "{names:?}"
    );
    assert!(names.contains(&"channel_vacated".to_owned()), "{names:?}");
    assert!(
        !names.contains(&"member_added".to_owned()),
        "no flap: {names:?}"
    );
}

#[tokio::test]
async fn failed_webhooks_are_retried() {
    let (addr, mut rx) = webhook_receiver(1).await;
    let server = TestServer::with(|c| {
        c.apps[0].webhooks = vec![WebhookSettings {
            url: format!("http://{addr}/hook"),
            event_types: vec!["channel_occupied".into()],
            channel_prefix: None,
            include_client_ip: false,
        }];
    })
    .await;
    let mut p = Pusher::connect(&server).await;
    p.subscribe_ok("busy", None).await;
    let first = collect_events(&mut rx, 1).await;
    let again = collect_events(&mut rx, 1).await;
    assert_eq!(first, again, "the same events are sent again after a 500");
    assert_eq!(again[0]["name"], "channel_occupied");
    let (_, metrics) = server.admin_get("/metrics").await;
    assert!(
        metrics.contains("herald_webhooks_sent_total 1")
            || metrics.contains("herald_webhooks_sent_total{"),
        "{metrics}"
    );
}
