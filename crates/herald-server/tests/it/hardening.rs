//! Regression tests for the defects found by outside review and probing (issue 13). Each
//! test drives a real server from outside and failed before its fix; the comment above each
//! names the defect it pins.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{APP_KEY, TestServer, http, token};
use crate::pusher::{Pusher, pusher_api, signed_uri};

/// Poll `check` every 50 ms until it holds, or fail after `within` with `what`.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `/status` as JSON.
async fn status(server: &TestServer) -> Value {
    let (code, body) = server.admin_get("/status").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Bug 1: a long-poll whose client hung up mid-wait kept the session open for ever (the
/// open-poll count was never decremented), holding its connection slot and presence.
#[tokio::test]
async fn long_poll_sessions_abandoned_mid_poll_expire() {
    let server = TestServer::with(|c| {
        c.long_poll.poll_timeout = Duration::from_secs(2);
        c.long_poll.session_timeout = Duration::from_secs(3);
    })
    .await;
    const SESSIONS: usize = 5;
    for i in 0..SESSIONS {
        let t = token(|c| {
            c.sub = Some(format!("user-{i}"));
            c.channels = vec!["presence-*".into()];
        });
        let (status, body, _) = http(
            server.addr,
            "POST",
            &format!("/poll/{APP_KEY}?channel=presence-room&token={t}"),
            None,
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let session = serde_json::from_str::<Value>(&body).unwrap()["session"]
            .as_str()
            .unwrap()
            .to_owned();
        // Take what is there (connected, subscribe), then start a poll that waits, and hang
        // up in the middle of it, as a closing tab does.
        let (_, body, _) = http(
            server.addr,
            "GET",
            &format!("/poll/{APP_KEY}/{session}?cursor=0"),
            None,
            None,
        )
        .await;
        let cursor = serde_json::from_str::<Value>(&body).unwrap()["cursor"]
            .as_u64()
            .unwrap();
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        let request =
            format!("GET /poll/{APP_KEY}/{session}?cursor={cursor} HTTP/1.1\r\nhost: x\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(tcp);
    }
    let (_, body) = server
        .api("GET", "channels/presence-room/presence", None)
        .await;
    assert_eq!(body["count"], SESSIONS, "{body}");
    // Each session ends after session_timeout (3 s) with no poll open.
    eventually(
        Duration::from_secs(8),
        "abandoned sessions still hold their connections",
        || async { server.node.connection_count() == 0 },
    )
    .await;
    let (_, body) = server
        .api("GET", "channels/presence-room/presence", None)
        .await;
    assert_eq!(body["count"], 0, "presence still held: {body}");
    // And once they have lingered a poll_timeout for a late poll to read why, they are gone.
    eventually(
        Duration::from_secs(5),
        "ended sessions still registered",
        || async { status(&server).await["http_sessions"] == 0 },
    )
    .await;
}

/// Bug 3: a publish naming one channel many times delivered one copy per mention.
#[tokio::test]
async fn a_channel_named_twice_in_one_publish_is_delivered_once() {
    let server = TestServer::start().await;
    let mut native = server.connect().await;
    native.subscribe_ok("a").await;
    let mut pusher = Pusher::connect(&server).await;
    pusher.subscribe_ok("a", None).await;

    let mut channels = vec!["a"; 99];
    channels.push("b");
    let (status, body) = server
        .api(
            "POST",
            "publish",
            Some(json!({"channels": channels, "event": "single", "data": 1})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["channels"].as_array().map(Vec::len), Some(2), "{body}");
    let events: Vec<_> = (0..10)
        .map(|i| json!({"channels": vec!["a"; 100], "event": "batched", "data": i}))
        .collect();
    let (status, body) = server
        .api("POST", "batch", Some(json!({"events": events})))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = pusher_api(
        &server,
        "POST",
        "events",
        &[],
        Some(json!({"name": "pushed", "channels": vec!["a"; 100], "data": "x"})),
        crate::harness::SECRET,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Then a marker: everything before it has been delivered.
    server.publish("a", "marker", json!(null)).await;

    let mut seen = Vec::new();
    loop {
        let m = native.recv_non_ping().await;
        let event = m.event.clone().unwrap_or_default();
        if event == "marker" {
            break;
        }
        seen.push(event);
    }
    let count = |name: &str| seen.iter().filter(|e| *e == name).count();
    assert_eq!(count("single"), 1, "{seen:?}");
    assert_eq!(count("batched"), 10, "{seen:?}");
    assert_eq!(count("pushed"), 1, "{seen:?}");
    assert_eq!(seen.len(), 12, "{seen:?}");
    let mut pushed = 0;
    loop {
        let m = pusher.recv().await;
        if m["event"] == "marker" {
            break;
        }
        pushed += 1;
    }
    assert_eq!(pushed, 12, "the Pusher client got duplicates");
}

/// Write a raw HTTP/1.1 request head (and `body`, if any) on a fresh connection.
async fn raw_request(server: &TestServer, head: &str, body: &[u8]) -> TcpStream {
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(body).await.unwrap();
    tcp
}

/// Read a response's status and body, failing if it does not come within `within`.
async fn read_response(tcp: &mut TcpStream, within: Duration) -> (u16, String) {
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            let n = tcp.read(&mut chunk).await.unwrap_or(0);
            buf.extend_from_slice(&chunk[..n]);
            if n == 0 {
                break;
            }
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + length {
                    break;
                }
            }
        }
    };
    tokio::time::timeout(within, read)
        .await
        .expect("no response in time");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

/// Bug 2: the Pusher API read a whole body before checking who sent it, and no body read
/// had a time limit, so unauthenticated connections could hold memory for ever.
#[tokio::test]
async fn request_bodies_are_authenticated_first_and_bounded_in_time_and_memory() {
    let server = TestServer::with(|c| {
        c.server.max_body_bytes = 64 * 1024;
        c.server.body_timeout = Duration::from_secs(1);
        c.server.max_body_memory = 150 * 1024;
    })
    .await;
    let declared = 60_000;
    let head = |uri: &str, auth: &str| {
        format!(
            "POST {uri} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             content-length: {declared}\r\n{auth}\r\n"
        )
    };
    // Unauthenticated: answered at once, before a byte of the body is sent.
    let forged = signed_uri("POST", "events", &[], Some("{}"), "not-the-secret");
    let mut tcp = raw_request(&server, &head(&forged, ""), b"").await;
    let (status, body) = read_response(&mut tcp, Duration::from_millis(500)).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("\"code\":203"), "{body}");
    let wrong_key = "/apps/app/events?auth_key=nope&auth_timestamp=1&auth_version=1.0";
    let mut tcp = raw_request(&server, &head(wrong_key, ""), b"").await;
    assert_eq!(
        read_response(&mut tcp, Duration::from_millis(500)).await.0,
        401
    );
    let native = "/api/app/publish";
    let mut tcp = raw_request(
        &server,
        &head(native, "authorization: Bearer wrong\r\n"),
        b"",
    )
    .await;
    assert_eq!(
        read_response(&mut tcp, Duration::from_millis(500)).await.0,
        401
    );

    // Authenticated but never finished: 408 after body_timeout, on both APIs.
    let body = "x".repeat(declared);
    let signed = signed_uri("POST", "events", &[], Some(&body), crate::harness::SECRET);
    let bearer = format!("authorization: Bearer {}\r\n", crate::harness::SECRET);
    let mut held = Vec::new();
    for (uri, auth) in [(signed.as_str(), ""), (native, bearer.as_str())] {
        held.push(raw_request(&server, &head(uri, auth), b"{\"na").await);
    }
    // Both hold 60 KB of the 150 KB for bodies: a third request is refused at once (503).
    let mut third = raw_request(&server, &head(native, &bearer), b"").await;
    let (status, text) = read_response(&mut third, Duration::from_millis(500)).await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("\"name\":\"overloaded\""), "{text}");
    let started = tokio::time::Instant::now();
    for tcp in &mut held {
        let (status, text) = read_response(tcp, Duration::from_secs(3)).await;
        assert_eq!(status, 408, "{text}");
        assert!(text.contains("\"name\":\"request_timeout\""), "{text}");
    }
    assert!(started.elapsed() < Duration::from_millis(1500));
    // Their memory is given back: a request that fits is served.
    let (status, body) = server
        .api(
            "POST",
            "publish",
            Some(json!({"channel": "c", "event": "e", "data": 1})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

/// Bug 9: a token's `nbf` was ignored, and its `sub` had no length limit.
#[tokio::test]
async fn tokens_before_their_nbf_or_with_an_oversized_sub_are_refused() {
    let server = TestServer::start().await;
    let now = herald_core::clock::unix_secs();
    let early = token(|c| c.nbf = Some(now + 120));
    server
        .expect_refused(APP_KEY, Some(&early), 204, 4004)
        .await;
    // Within the leeway (default 5 s) a slightly early token is fine, as a late one is.
    let skewed = token(|c| c.nbf = Some(now + 2));
    server.connect_with(Some(&skewed)).await;
    let long = token(|c| c.sub = Some("u".repeat(129)));
    server.expect_refused(APP_KEY, Some(&long), 204, 4004).await;
    let longest = token(|c| c.sub = Some("u".repeat(128)));
    server.connect_with(Some(&longest)).await;
}
