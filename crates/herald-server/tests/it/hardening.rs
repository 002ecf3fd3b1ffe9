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

/// A raw WebSocket client over TCP, for what a library client would not do: unfinished
/// fragments, ping floods, reading at a chosen pace.
struct RawWs {
    tcp: TcpStream,
    /// Bytes read and not yet decoded.
    buf: bytes::BytesMut,
    /// Decodes the server's (unmasked) frames.
    decoder: herald_protocol::websocket::Decoder,
}

impl RawWs {
    /// Open `/ws/{APP_KEY}`, with a small socket receive buffer when `rcvbuf` is given, and
    /// read the `connected` message.
    async fn connect(server: &TestServer, rcvbuf: Option<u32>) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(size) = rcvbuf {
            socket.set_recv_buffer_size(size).unwrap();
        }
        let mut tcp = socket.connect(server.addr).await.unwrap();
        let request = format!(
            "GET /ws/{APP_KEY} HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
             sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut buf = bytes::BytesMut::new();
        let end = loop {
            let mut chunk = [0u8; 1024];
            let n = tcp.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
        };
        assert!(
            buf.starts_with(b"HTTP/1.1 101"),
            "{:?}",
            String::from_utf8_lossy(&buf)
        );
        let _ = buf.split_to(end + 4);
        let mut ws = Self {
            tcp,
            buf,
            decoder: herald_protocol::websocket::Decoder::new(
                herald_protocol::websocket::Role::Client,
                1 << 24,
            ),
        };
        let hello = ws.next(WAIT_RAW).await.expect("connected");
        assert!(matches!(hello, WsMessage::Text(_)), "{hello:?}");
        ws
    }

    /// A masked client frame; `fin: false` makes it a non-final fragment.
    fn frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut out = vec![if fin { 0x80 | opcode } else { opcode }];
        assert!(payload.len() < 126);
        out.push(0x80 | payload.len() as u8);
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.unwrap();
    }

    /// Send a text message as one frame.
    async fn send_text(&mut self, text: &str) {
        let mut frame = Vec::new();
        herald_protocol::websocket::encode_frame(
            &mut frame,
            herald_protocol::websocket::OpCode::Text,
            text.as_bytes(),
            Some([9, 8, 7, 6]),
        );
        self.send(&frame).await;
    }

    /// The next message, or `None` at the end of the stream or after `within`.
    async fn next(&mut self, within: Duration) -> Option<WsMessage> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Ok(Some(m)) = self.decoder.decode(&mut self.buf) {
                return Some(m);
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.tcp.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    /// Read until a close frame (its code) or the end of the stream (`None`).
    async fn close_code(&mut self, within: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await? {
                WsMessage::Close(frame) => return frame.map(|(code, _)| code),
                _ => continue,
            }
        }
    }
}

use herald_protocol::websocket::Message as WsMessage;

const WAIT_RAW: Duration = Duration::from_secs(5);

/// The value of an unlabelled counter in `/metrics`.
async fn counter(server: &TestServer, name: &str) -> u64 {
    let (_, text) = server.admin_get("/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

/// Bug 6: a slow consumer was counted twice (queue overflow, then write timeout), stayed in
/// the connection count until its write timed out, and got no close frame. Now the write
/// stops at the end of the frame it is in, the session is released at once, and the client,
/// which still reads (slowly), gets 4101.
#[tokio::test]
async fn a_slow_consumer_is_counted_once_released_at_once_and_told_4101() {
    let server = TestServer::with(|c| {
        c.limits.max_queue_bytes = 64 * 1024;
        c.limits.write_timeout = Duration::from_millis(250);
    })
    .await;
    let mut slow = RawWs::connect(&server, Some(4096)).await;
    slow.send_text(r#"{"type":"subscribe","channel":"firehose"}"#)
        .await;
    assert!(slow.next(WAIT_RAW).await.is_some(), "subscribe reply");
    // From now on the client reads 4 KB every 200 ms (20 KB/s, 5 KB per write_timeout):
    // a 10 KB write cannot finish in time. Once the queue has overflowed and any write has
    // had time to time out, it reads at full speed: what is still on its way reaches it.
    let fast = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let go_fast = fast.clone();
    let reader = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut chunk = [0u8; 4096];
        while tokio::time::Instant::now() < deadline {
            loop {
                match slow.decoder.decode(&mut slow.buf) {
                    Ok(Some(WsMessage::Close(frame))) => return frame.map(|(code, _)| code),
                    Ok(Some(_)) => continue,
                    Ok(None) => break,
                    Err(_) => return None,
                }
            }
            match tokio::time::timeout(Duration::from_secs(5), slow.tcp.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => slow.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
            if !fast.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        None
    });
    let pad = "x".repeat(1000);
    let mut overflowed = None;
    for i in 0..2000 {
        let events: Vec<_> = (0..10)
            .map(|j| json!({"channel": "firehose", "event": "e", "data": {"i": i * 10 + j, "pad": pad}}))
            .collect();
        let (status, body) = server
            .api("POST", "batch", Some(json!({"events": events})))
            .await;
        assert_eq!(status, 200, "{body}");
        if counter(&server, "herald_slow_consumer_disconnects_total").await > 0 {
            overflowed = Some(tokio::time::Instant::now());
            break;
        }
    }
    let overflowed = overflowed.expect("the queue overflowed");
    // Released at once: its channels and its place in the counts.
    eventually(
        Duration::from_millis(150),
        "the slow consumer still counts as connected",
        || async { server.node.connection_count() == 0 },
    )
    .await;
    // Counted once, also once its write has long timed out.
    tokio::time::sleep_until(overflowed + Duration::from_millis(600)).await;
    go_fast.store(true, std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep_until(overflowed + Duration::from_secs(1)).await;
    assert_eq!(
        counter(&server, "herald_slow_consumer_disconnects_total").await,
        1
    );
    let code = reader.await.unwrap();
    assert_eq!(code, Some(4101), "the slow reader gets the close frame");
}

/// Bug 7: pongs bypassed the queue's bounds. A burst of pings larger than the queue now
/// makes a slow consumer like any other output would.
#[tokio::test]
async fn pongs_count_against_the_outbound_queue_bounds() {
    let server = TestServer::with(|c| c.limits.max_queue_messages = 10).await;
    let mut ws = RawWs::connect(&server, None).await;
    let ping = RawWs::frame(0x9, true, &[b'p'; 100]);
    let burst: Vec<u8> = std::iter::repeat_n(ping, 50).flatten().collect();
    ws.send(&burst).await;
    assert_eq!(ws.close_code(WAIT_RAW).await, Some(4101));
    let mut healthy = server.connect().await;
    healthy.send(json!({"type": "ping", "ref": 1})).await;
    assert_eq!(healthy.recv_non_ping().await.kind, "pong");
}

/// Bug 7: an unfinished fragmented message, kept alive by pings, held its bytes for ever.
#[tokio::test]
async fn an_unfinished_message_kept_alive_by_pings_is_closed_in_time() {
    let server =
        TestServer::with(|c| c.limits.incomplete_message_timeout = Duration::from_secs(1)).await;
    let mut ws = RawWs::connect(&server, None).await;
    let started = tokio::time::Instant::now();
    ws.send(&RawWs::frame(0x1, false, br#"{"type":"subscribe","#))
        .await;
    let code = loop {
        assert!(started.elapsed() < Duration::from_secs(4), "still open");
        ws.send(&RawWs::frame(0x9, true, b"alive")).await;
        if let Some(WsMessage::Close(frame)) = ws.next(Duration::from_millis(200)).await {
            break frame.map(|(c, _)| c);
        }
    };
    assert_eq!(code, Some(4202));
    assert!(started.elapsed() >= Duration::from_millis(900));
}

/// Found by the `http_request` fuzz target: an HTTP/1.0 request was upgraded to a WebSocket
/// (RFC 6455 asks for HTTP/1.1 or later), answered with `HTTP/1.0 101`.
#[tokio::test]
async fn a_websocket_upgrade_over_http_1_0_is_refused() {
    let server = TestServer::start().await;
    let head = |version: &str| {
        format!(
            "GET /ws/herald-dev-key {version}\r\nHost: x\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        )
    };
    let mut old = raw_request(&server, &head("HTTP/1.0"), b"").await;
    let (status, body) = read_response(&mut old, Duration::from_secs(3)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("HTTP/1.1"), "{body}");
    let mut current = raw_request(&server, &head("HTTP/1.1"), b"").await;
    let mut buf = [0u8; 12];
    current.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"HTTP/1.1 101");
}

/// Bug 7: the admin listener had no header timeout: a connection that sent nothing stayed.
#[tokio::test]
async fn the_admin_listener_closes_connections_that_send_no_request() {
    let server =
        TestServer::with(|c| c.server.handshake_timeout = Duration::from_millis(300)).await;
    let mut idle = TcpStream::connect(server.admin).await.unwrap();
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(3), idle.read(&mut buf)).await;
    assert!(
        read.is_ok(),
        "the admin listener kept a silent connection open"
    );
}

/// Bug 4: a presence subscribe joined presence before the broker subscribe; when that
/// failed, the clean-up reported `member_removed` (and published `left`) for a member whose
/// `joined` was never announced. Here the fan-out bus (NATS) is unreachable while the
/// presence state (Redis) works.
#[tokio::test]
async fn a_failed_presence_subscribe_announces_no_phantom_leave() {
    if !crate::cluster::redis_available().await {
        return;
    }
    let (hook, mut hooks) = crate::pusher::webhook_receiver(0).await;
    // Nothing listens there: every connection attempt is refused at once.
    let dead = std::net::TcpListener::bind("127.0.0.77:0").unwrap();
    let dead_url = format!("nats://{}", dead.local_addr().unwrap());
    drop(dead);
    let prefix = crate::cluster::unique_prefix();
    let server = TestServer::with(|c| {
        crate::cluster::on_nats(c, &prefix);
        c.nats.url = herald_core::Secret::new(dead_url);
        c.nats.timeout = Duration::from_millis(300);
        c.apps[0].webhook_delay = Duration::from_millis(100);
        c.apps[0].webhooks = vec![herald_core::WebhookSettings {
            url: format!("http://{hook}/hook"),
            event_types: Vec::new(),
            channel_prefix: None,
            include_client_ip: false,
        }];
    })
    .await;
    // The presence state is up (the bus never will be).
    eventually(WAIT_RAW, "the cluster state never came up", || async {
        status(&server).await["cluster"]["healthy"] == true
    })
    .await;
    let t = token(|c| {
        c.sub = Some("ann".into());
        c.channels = vec!["presence-*".into()];
    });
    let mut client = server.connect_with(Some(&t)).await;
    let reply = client.subscribe("presence-room").await;
    assert_eq!(reply.kind, "error", "{reply:?}");
    assert_eq!(reply.data["code"], 100, "{reply:?}");
    let why = reply.data["message"].as_str().unwrap_or_default();
    assert!(
        why.contains("broker"),
        "presence itself failed, not the broker: {why}"
    );
    // The rollback left presence: the member is gone, and nobody was told anything.
    eventually(
        Duration::from_secs(2),
        "the member is still present",
        || async {
            let (_, body) = server
                .api("GET", "channels/presence-room/presence", None)
                .await;
            body["count"] == 0
        },
    )
    .await;
    match tokio::time::timeout(Duration::from_millis(1500), hooks.recv()).await {
        Err(_) => {}
        Ok(got) => panic!("a webhook for a member never announced: {got:?}"),
    }
}

/// A TCP proxy to `target` whose answers can be slowed down: each chunk from the target
/// waits the current delay (ms) before it is passed on. A backend that turns slow.
async fn slow_proxy(
    target: String,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let delay = std::sync::Arc::new(AtomicU64::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let d = delay.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(upstream) = TcpStream::connect(&target).await else {
                continue;
            };
            let d = d.clone();
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut ur, mut uw) = upstream.into_split();
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut uw).await;
                });
                let mut chunk = vec![0u8; 16 * 1024];
                loop {
                    let n = match ur.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let ms = d.load(Ordering::Relaxed);
                    if ms > 0 {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                    if cw.write_all(&chunk[..n]).await.is_err() {
                        break;
                    }
                }
                up.abort();
            });
        }
    });
    (addr, delay)
}

/// Bug 5: a connection's writes waited behind its commands: while a subscribe waited on a
/// slow backend, nothing was delivered to that connection. Here the cluster state (Redis)
/// turns slow, answering after 1.5 s; publications still flow over NATS.
#[tokio::test]
async fn deliveries_continue_while_a_command_waits_on_a_backend() {
    if !crate::cluster::redis_available().await
        || !crate::cluster::service_available("NATS", "127.0.0.1:4222").await
    {
        return;
    }
    let (proxy, delay) = slow_proxy(crate::cluster::redis_addr()).await;
    let prefix = crate::cluster::unique_prefix();
    let server = TestServer::with(|c| {
        crate::cluster::on_nats(c, &prefix);
        c.redis.url = herald_core::Secret::new(format!("redis://{proxy}"));
        c.redis.timeout = Duration::from_secs(5);
        c.cluster.heartbeat_interval = Duration::from_secs(1);
        c.cluster.node_ttl = Duration::from_secs(10);
    })
    .await;
    crate::cluster::wait_ready(&server).await;
    let mut client = server.connect().await;
    client.subscribe_ok("live").await;
    delay.store(1500, std::sync::atomic::Ordering::Relaxed);
    // This subscribe waits 1.5 s on the cluster state...
    client
        .send(json!({"type": "subscribe", "channel": "other", "ref": "slow"}))
        .await;
    let started = tokio::time::Instant::now();
    let publisher = {
        let addr = server.addr;
        tokio::spawn(async move {
            for n in 0..10 {
                let body = json!({"channel": "live", "event": "tick", "data": n}).to_string();
                let path = format!("/api/{}/publish", crate::harness::APP_ID);
                let (status, text, _) = http(
                    addr,
                    "POST",
                    &path,
                    Some(body),
                    Some(crate::harness::SECRET),
                )
                .await;
                assert_eq!(status, 200, "{text}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // ...and meanwhile the publications on "live" keep arriving, as they are published.
    let mut ticks = Vec::new();
    let answered = loop {
        let m = client.recv_non_ping().await;
        if m.reference == Some(json!("slow")) {
            break started.elapsed();
        }
        if m.event.as_deref() == Some("tick") {
            ticks.push(started.elapsed());
        }
    };
    delay.store(0, std::sync::atomic::Ordering::Relaxed);
    assert!(
        answered >= Duration::from_millis(1200),
        "the subscribe was not slow: {answered:?}"
    );
    let early = ticks
        .iter()
        .filter(|t| **t < Duration::from_millis(900))
        .count();
    assert!(
        early >= 5,
        "publications waited for the subscribe: arrived at {ticks:?}, reply at {answered:?}"
    );
    publisher.await.unwrap();
}

/// Bug 8: when the shutdown grace period ended, the connections still open were logged as
/// closing and left open. A client that does not read (its socket full) is one.
#[tokio::test]
async fn at_the_end_of_the_grace_period_the_remaining_connections_are_closed() {
    let mut server = TestServer::with(|c| {
        c.server.shutdown_grace_period = Duration::from_secs(1);
        c.limits.write_timeout = Duration::from_secs(60);
        c.limits.max_queue_bytes = 8 * 1024 * 1024;
    })
    .await;
    let mut stuck = RawWs::connect(&server, Some(4096)).await;
    stuck
        .send_text(r#"{"type":"subscribe","channel":"firehose"}"#)
        .await;
    assert!(stuck.next(WAIT_RAW).await.is_some());
    let pad = "x".repeat(8 * 1024);
    for i in 0..40 {
        let events: Vec<_> = (0..10)
            .map(|j| json!({"channel": "firehose", "event": "e", "data": {"i": i * 10 + j, "pad": pad}}))
            .collect();
        server
            .api("POST", "batch", Some(json!({"events": events})))
            .await;
    }
    assert_eq!(server.node.connection_count(), 1);
    let started = tokio::time::Instant::now();
    server.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        server.node.connection_count(),
        0,
        "a connection outlived the grace period"
    );
    // The socket itself is gone: reading reaches its end.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 65536];
        loop {
            match stuck.tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the server never closed the socket");
}
