//! pusher-js's HTTP fallback transports (`xhr_streaming`, `xhr_polling`) at the wire level,
//! driven by a raw client that does what pusher-js 8.6 does: it picks the session path,
//! POSTs receive requests and reads newline-terminated frames, sends JSON arrays of strings,
//! and rotates a stream after 256 KiB. (pusher-js and Echo themselves, in Chromium through
//! nginx, are driven by `tests/pusher`.)

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};

use crate::harness::{APP_KEY, TestServer, WAIT};
use crate::pusher::Pusher;

/// pusher-js rotates its stream once it has read this much.
const ROTATE_AT: usize = 256 * 1024;

/// One HTTP request from `from` (a loopback source address), with pusher-js's headers.
async fn post(
    addr: SocketAddr,
    from: IpAddr,
    path: &str,
    body: &str,
    origin: Option<&str>,
) -> http::Response<Incoming> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let stream: TcpStream = socket.connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method("POST")
        .uri(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json");
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    sender.send_request(req).await.expect("request")
}

async fn text(resp: http::Response<Incoming>) -> (u16, String) {
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// The Pusher messages of an `a[…]` frame.
fn messages(frame: &str) -> Vec<Value> {
    assert!(frame.starts_with('a'), "not a message frame: {frame:?}");
    let strings: Vec<String> = serde_json::from_str(&frame[1..]).expect("a JSON array");
    strings
        .iter()
        .map(|s| serde_json::from_str(s).expect("each element is a JSON message"))
        .collect()
}

/// A pusher-js HTTP session, as the client sees it.
struct Xhr {
    addr: SocketAddr,
    from: IpAddr,
    /// `/pusher/app/{key}/{server}/{session}`.
    base: String,
    socket_id: String,
    /// The stream being read (streaming sessions).
    stream: Option<Stream>,
    /// Messages received and not yet taken.
    inbox: std::collections::VecDeque<Value>,
    /// Frames other than `a` seen, in order (`o`, `h`, `c[…]`).
    others: Vec<String>,
    streaming: bool,
    /// Streams opened over the session's life.
    streams_opened: usize,
}

/// A receive stream and what has been read of it.
struct Stream {
    /// The response body still to read (`None` for a poll, read whole).
    body: Option<Incoming>,
    buf: Vec<u8>,
    /// Bytes of `buf` consumed as whole lines.
    read: usize,
}

impl Xhr {
    fn base(key: &str) -> String {
        let session: String = (0..8)
            .map(|_| char::from_digit(rand::random_range(0..32), 32).unwrap())
            .collect();
        format!(
            "/pusher/app/{key}/{}/{session}",
            rand::random_range(0..1000)
        )
    }

    /// Open a session on `xhr_streaming` (or `xhr` polling) and read `connection_established`.
    async fn open(server: &TestServer, streaming: bool) -> Self {
        Self::open_from(server, streaming, "127.0.0.1".parse().unwrap()).await
    }

    async fn open_from(server: &TestServer, streaming: bool, from: IpAddr) -> Self {
        let mut x = Self {
            addr: server.addr,
            from,
            base: Self::base(APP_KEY),
            socket_id: String::new(),
            stream: None,
            inbox: Default::default(),
            others: Vec::new(),
            streaming,
            streams_opened: 0,
        };
        let hello = x.recv().await;
        assert_eq!(hello["event"], "pusher:connection_established", "{hello}");
        assert_eq!(x.others.first().map(String::as_str), Some("o"));
        let data: Value = serde_json::from_str(hello["data"].as_str().unwrap()).unwrap();
        assert!(data["activity_timeout"].as_u64().unwrap() > 0);
        x.socket_id = data["socket_id"].as_str().unwrap().to_owned();
        x
    }

    fn receive_path(&self) -> String {
        let kind = if self.streaming {
            "xhr_streaming"
        } else {
            "xhr"
        };
        format!(
            "{}/{kind}?protocol=7&client=js&version=8.6.0&t=1&n=1",
            self.base
        )
    }

    /// POST to `xhr_send`; returns the status and body.
    async fn send_raw(&self, body: &str) -> (u16, String) {
        let path = format!("{}/xhr_send?t=1&n=2", self.base);
        text(post(self.addr, self.from, &path, body, None).await).await
    }

    /// Send Pusher messages, as pusher-js does (one array per POST).
    async fn send(&self, message: Value) {
        let body = json!([message.to_string()]).to_string();
        let (status, body) = self.send_raw(&body).await;
        assert_eq!(status, 204, "{body}");
    }

    /// The next frame line of the receive side (opening a stream or a poll as needed).
    async fn next_frame(&mut self) -> String {
        if !self.streaming {
            // A poll: one response, all its lines.
            loop {
                if let Some(stream) = &mut self.stream
                    && let Some(line) = stream.line()
                {
                    return line;
                }
                self.stream = None;
                let resp = post(self.addr, self.from, &self.receive_path(), "", None).await;
                let (status, body) = text(resp).await;
                assert_eq!(status, 200, "{body}");
                self.stream = Some(Stream {
                    body: None,
                    buf: body.into_bytes(),
                    read: 0,
                });
            }
        }
        loop {
            if self.stream.is_none() {
                let resp = post(self.addr, self.from, &self.receive_path(), "", None).await;
                assert_eq!(resp.status(), 200);
                assert_eq!(
                    resp.headers()["x-accel-buffering"],
                    "no",
                    "nginx must not buffer the stream"
                );
                self.streams_opened += 1;
                self.stream = Some(Stream {
                    body: Some(resp.into_body()),
                    buf: Vec::new(),
                    read: 0,
                });
            }
            let stream = self.stream.as_mut().unwrap();
            if let Some(line) = stream.line() {
                // pusher-js: everything read, at a line boundary, past 256 KiB: rotate.
                if stream.read == stream.buf.len() && stream.buf.len() > ROTATE_AT {
                    self.stream = None;
                }
                return line;
            }
            let body = stream.body.as_mut().expect("a stream has a body");
            let frame = tokio::time::timeout(WAIT, body.frame())
                .await
                .expect("timed out waiting for a frame")
                .expect("the stream ended")
                .expect("stream error");
            if let Ok(data) = frame.into_data() {
                stream.buf.extend_from_slice(&data);
            }
        }
    }

    /// The next Pusher message, skipping `pusher:ping` (answered, as pusher-js does) and
    /// subscription counts.
    async fn recv(&mut self) -> Value {
        loop {
            if let Some(m) = self.inbox.pop_front() {
                if m["event"] == "pusher:ping" {
                    self.send(json!({"event": "pusher:pong", "data": {}})).await;
                    continue;
                }
                if m["event"] == "pusher_internal:subscription_count" {
                    continue;
                }
                return m;
            }
            let frame = self.next_frame().await;
            if frame.starts_with('a') {
                self.inbox.extend(messages(&frame));
            } else {
                assert!(
                    !frame.starts_with('c'),
                    "the session closed: {frame} (after {:?})",
                    self.others
                );
                self.others.push(frame);
            }
        }
    }

    /// Read until the session's `c` frame; returns its code.
    async fn closed(&mut self) -> u64 {
        loop {
            let frame = self.next_frame().await;
            if let Some(rest) = frame.strip_prefix('c') {
                let v: Value = serde_json::from_str(rest).unwrap();
                return v[0].as_u64().unwrap();
            }
        }
    }

    async fn subscribe(&mut self, channel: &str, auth: Option<String>) -> Value {
        let mut data = json!({ "channel": channel });
        if let Some(a) = auth {
            data["auth"] = json!(a);
        }
        self.send(json!({"event": "pusher:subscribe", "data": data}))
            .await;
        let reply = self.recv().await;
        assert_eq!(
            reply["event"], "pusher_internal:subscription_succeeded",
            "{reply}"
        );
        reply
    }
}

impl Stream {
    /// The next complete line, if `buf` holds one.
    fn line(&mut self) -> Option<String> {
        let rest = &self.buf[self.read..];
        let end = rest.iter().position(|b| *b == b'\n')?;
        let line = String::from_utf8(rest[..end].to_vec()).unwrap();
        self.read += end + 1;
        Some(line)
    }
}

/// A Pusher event's data, which travels as a JSON string.
fn data_of(event: &Value) -> Value {
    serde_json::from_str(event["data"].as_str().expect("data is a string")).unwrap()
}

fn loopback() -> IpAddr {
    "127.0.0.1".parse().unwrap()
}

/// `key:signature` for a private channel, as an auth endpoint signs it.
fn auth(socket_id: &str, channel: &str) -> String {
    use herald_core::pusher_auth::sign;
    let secret = herald_core::Secret::new(crate::harness::SECRET);
    format!(
        "{APP_KEY}:{}",
        sign(&secret, &format!("{socket_id}:{channel}"))
    )
}

async fn http_sessions(server: &TestServer) -> u64 {
    let (status, body) = server.admin_get("/status").await;
    assert_eq!(status, 200);
    serde_json::from_str::<Value>(&body).unwrap()["http_sessions"]
        .as_u64()
        .unwrap()
}

/// Both transports carry a whole Pusher session: connection, public events from the API,
/// and client events on a private channel to and from a WebSocket client.
#[tokio::test]
async fn streaming_and_polling_sessions_work_like_websockets() {
    let server = TestServer::start().await;
    for streaming in [true, false] {
        let mut x = Xhr::open(&server, streaming).await;
        x.subscribe("news", None).await;
        server
            .publish("news", "headline", json!({"title": "é😀 \"quoted\""}))
            .await;
        let event = x.recv().await;
        assert_eq!(event["event"], "headline", "{event}");
        assert_eq!(event["channel"], "news");
        let data: Value = serde_json::from_str(event["data"].as_str().unwrap()).unwrap();
        assert_eq!(data["title"], "é😀 \"quoted\"");

        let mut ws = Pusher::connect(&server).await;
        ws.subscribe_ok("private-chat", None).await;
        let channel_auth = auth(&x.socket_id, "private-chat");
        x.subscribe("private-chat", Some(channel_auth)).await;
        x.send(
            json!({"event": "client-typing", "channel": "private-chat", "data": {"from": "xhr"}}),
        )
        .await;
        let got = ws.recv_event().await;
        assert_eq!(got["event"], "client-typing", "{got}");
        assert_eq!(data_of(&got)["from"], "xhr");
        ws.send(
            json!({"event": "client-typing", "channel": "private-chat", "data": {"from": "ws"}}),
        )
        .await;
        let got = x.recv().await;
        assert_eq!(got["event"], "client-typing", "{got}");
        assert_eq!(data_of(&got)["from"], "ws");
        // pusher-js's heartbeat is an empty send.
        assert_eq!(x.send_raw("[]").await.0, 204);
    }
}

/// A stream stops at 256 KiB; pusher-js opens the next one on the same session, which
/// gets no second `o` and loses nothing.
#[tokio::test]
async fn stream_rotation_loses_nothing() {
    let server = TestServer::start().await;
    let mut x = Xhr::open(&server, true).await;
    x.subscribe("bulk", None).await;
    let filler = "x".repeat(2000);
    for i in 0..300 {
        server
            .publish("bulk", "item", json!({"i": i, "filler": filler}))
            .await;
    }
    for i in 0..300 {
        let event = x.recv().await;
        let data: Value = serde_json::from_str(event["data"].as_str().unwrap()).unwrap();
        assert_eq!(data["i"], i, "in order, none missing");
    }
    assert!(
        x.streams_opened >= 2,
        "rotated: {} streams",
        x.streams_opened
    );
    assert_eq!(x.others.iter().filter(|f| *f == "o").count(), 1);
}

/// A poll with nothing to carry is answered with `h` after `heartbeat_interval`; so is an
/// idle stream.
#[tokio::test]
async fn idle_receive_requests_get_heartbeats() {
    let server = TestServer::with(|c| {
        c.pusher_http.heartbeat_interval = Duration::from_millis(300);
    })
    .await;
    for streaming in [true, false] {
        let mut x = Xhr::open(&server, streaming).await;
        let started = tokio::time::Instant::now();
        let frame = x.next_frame().await;
        assert_eq!(frame, "h");
        assert!(started.elapsed() >= Duration::from_millis(250));
    }
}

/// Bad input on the fallback endpoints gets a clear status and touches nobody else.
#[tokio::test]
async fn bad_input_gets_clear_answers() {
    let server = TestServer::with(|c| c.limits.max_message_size = 4096).await;
    let mut x = Xhr::open(&server, true).await;
    let addr = server.addr;
    let lo = loopback();
    // Unknown session.
    let (status, body) = text(
        post(
            addr,
            lo,
            &format!("{}/xhr_send", Xhr::base(APP_KEY)),
            "[]",
            None,
        )
        .await,
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("\"code\""), "a JSON error body: {body}");
    // Not a session path.
    let (status, _) = text(
        post(
            addr,
            lo,
            &format!("/pusher/app/{APP_KEY}/1234/ABC/xhr"),
            "",
            None,
        )
        .await,
    )
    .await;
    assert_eq!(status, 404);
    // Malformed, wrong shape, too many, too big.
    for (body, want) in [
        ("{not json", 400),
        (r#"[1, 2]"#, 400),
        (r#"{"event":"pusher:ping"}"#, 400),
    ] {
        assert_eq!(x.send_raw(body).await.0, want, "{body}");
    }
    let many = serde_json::to_string(&vec!["{}"; 101]).unwrap();
    assert_eq!(x.send_raw(&many).await.0, 400);
    let big = json!([format!(
        "{{\"event\":\"x\",\"data\":\"{}\"}}",
        "y".repeat(5000)
    )])
    .to_string();
    assert_eq!(x.send_raw(&big).await.0, 413);
    let huge = "[\"".to_owned() + &"z".repeat(20_000) + "\"]";
    assert_eq!(x.send_raw(&huge).await.0, 413);
    // A well-formed message that is not a Pusher message is the session's business: it
    // answers with pusher:error, like on a WebSocket, and the session lives on.
    x.send(json!({"no": "event"})).await;
    let reply = x.recv().await;
    assert_eq!(reply["event"], "pusher:error", "{reply}");
    x.subscribe("still-here", None).await;

    // The same session path from another address is somebody else: not found.
    let other: IpAddr = "127.0.0.2".parse().unwrap();
    let (status, _) =
        text(post(addr, other, &format!("{}/xhr_send", x.base), "[]", None).await).await;
    assert_eq!(status, 404);
    let (status, _) =
        text(post(addr, other, &format!("{}/xhr?protocol=7", x.base), "", None).await).await;
    assert_eq!(status, 404);

    // An unknown app and a wrong protocol version are refused as on a WebSocket: the
    // pusher:error, then the close frame with its code.
    let base = Xhr::base("no-such-key");
    let (status, body) = text(
        post(
            addr,
            lo,
            &format!("{base}/xhr_streaming?protocol=7"),
            "",
            None,
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines[0], "o");
    assert_eq!(messages(lines[1])[0]["event"], "pusher:error");
    assert!(lines[2].starts_with("c[4001,"), "{body}");
    let base = Xhr::base(APP_KEY);
    let (_, body) = text(post(addr, lo, &format!("{base}/xhr?protocol=3"), "", None).await).await;
    assert!(
        body.lines().last().unwrap().starts_with("c[4007,"),
        "{body}"
    );
}

/// Sessions nobody reads expire, abandoned streams included, and their presence ends; the
/// count of HTTP sessions returns to zero.
#[tokio::test]
async fn abandoned_sessions_expire_and_leave() {
    let server = TestServer::with(|c| {
        c.pusher_http.session_timeout = Duration::from_millis(500);
    })
    .await;
    let mut watcher = Pusher::connect(&server).await;
    let mut x = Xhr::open(&server, true).await;
    let mut y = Xhr::open(&server, false).await;
    x.subscribe("room", None).await;
    y.subscribe("room", None).await;
    assert_eq!(http_sessions(&server).await, 2);
    watcher.subscribe_ok("room", None).await;
    // Both clients go away: the stream's connection drops, the poller stops polling.
    drop(x);
    drop(y);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let sessions = http_sessions(&server).await;
        let connections = server.node.status().connections;
        if sessions == 0 && connections == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{sessions} sessions, {connections} connections left"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A flood of sends ends that session only; a session whose queue overflows while nobody
/// polls is cut as a slow consumer, and its next poll says so.
#[tokio::test]
async fn floods_and_slow_consumers_end_only_their_session() {
    let server = TestServer::with(|c| {
        c.limits.max_client_messages_per_second = 5;
        c.limits.max_queue_messages = 50;
    })
    .await;
    let mut bystander = Xhr::open(&server, true).await;
    bystander.subscribe("feed", None).await;

    let mut flooder = Xhr::open(&server, true).await;
    for _ in 0..40 {
        let _ = flooder
            .send_raw(&json!([json!({"event": "pusher:ping", "data": {}}).to_string()]).to_string())
            .await;
    }
    let code = flooder.closed().await;
    assert!((4000..5000).contains(&code), "closed with {code}");

    let mut sleeper = Xhr::open(&server, false).await;
    sleeper.subscribe("feed", None).await;
    for i in 0..80 {
        server.publish("feed", "tick", json!({"i": i})).await;
    }
    for i in 0..80 {
        let event = bystander.recv().await;
        let data: Value = serde_json::from_str(event["data"].as_str().unwrap()).unwrap();
        assert_eq!(data["i"], i);
    }
    let code = sleeper.closed().await;
    assert_eq!(
        code / 100,
        41,
        "a slow consumer reconnects after a backoff: {code}"
    );
}

/// A page on an allowed origin gets its CORS preflight and its answers.
#[tokio::test]
async fn cors_for_allowed_origins() {
    let server = TestServer::with(|c| {
        c.apps[0].allowed_origins = vec![herald_core::pattern::Pattern::new("https://app.example")];
    })
    .await;
    let base = Xhr::base(APP_KEY);
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method("OPTIONS")
        .uri(format!("{base}/xhr_streaming?protocol=7"))
        .header("host", server.addr.to_string())
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert!(
        resp.headers()["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );

    let resp = post(
        server.addr,
        loopback(),
        &format!("{base}/xhr?protocol=7"),
        "",
        Some("https://app.example"),
    )
    .await;
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let (_, body) = text(resp).await;
    assert!(body.starts_with("o\n"), "{body}");
    // Another origin is refused by the app, as on a WebSocket.
    let resp = post(
        server.addr,
        loopback(),
        &format!("{}/xhr?protocol=7", Xhr::base(APP_KEY)),
        "",
        Some("https://evil.example"),
    )
    .await;
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    let (_, body) = text(resp).await;
    assert!(
        body.lines().last().unwrap().starts_with("c[4009,"),
        "{body}"
    );
}
