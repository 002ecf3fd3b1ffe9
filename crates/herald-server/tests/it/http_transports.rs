//! The SSE and long-polling transports, driven by a real HTTP client: delivery, commands,
//! heartbeats, resume, cursors, expiry, overflow, recovery under random disconnects, and one
//! channel shared by all three transports.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use herald_core::settings::HistoryRule;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rand::Rng;
use serde_json::{Value, json};
use tokio::net::TcpStream;

use crate::harness::{APP_KEY, TestServer, WAIT, http, token};

/// One SSE event (or comment) as read off the stream.
#[derive(Debug, Default, Clone)]
struct SseEvent {
    id: Option<String>,
    event: Option<String>,
    data: String,
    comment: Option<String>,
}

impl SseEvent {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {:?}", self.data))
    }
}

/// A streaming SSE reader over a real HTTP/1.1 connection.
struct SseClient {
    body: Incoming,
    buf: Vec<u8>,
    headers: http::HeaderMap,
    /// The session id from the `connected` message.
    session: String,
    /// The last `id:` seen, as a browser would keep it.
    last_event_id: Option<String>,
}

impl SseClient {
    async fn open(addr: SocketAddr, query: &str, last_event_id: Option<&str>) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = http::Request::builder()
            .uri(format!("/sse/{APP_KEY}?{query}"))
            .header("host", addr.to_string())
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = sender
            .send_request(req.body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let headers = resp.headers().clone();
        let mut c = Self {
            body: resp.into_body(),
            buf: Vec::new(),
            headers,
            session: String::new(),
            last_event_id: last_event_id.map(str::to_owned),
        };
        let hello = c.next_message().await;
        assert_eq!(hello["type"], "connected", "{hello}");
        c.session = hello["data"]["session"].as_str().unwrap().to_owned();
        assert_eq!(c.session.len(), 32);
        c
    }

    /// The next event or comment.
    async fn next_raw(&mut self) -> SseEvent {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8(block).unwrap();
                let mut ev = SseEvent::default();
                let mut data = Vec::new();
                for line in text.lines() {
                    if let Some(c) = line.strip_prefix(':') {
                        ev.comment = Some(c.trim().to_owned());
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data.push(d.to_owned());
                    } else if let Some(i) = line.strip_prefix("id: ") {
                        ev.id = Some(i.to_owned());
                        self.last_event_id = Some(i.to_owned());
                    } else if let Some(e) = line.strip_prefix("event: ") {
                        ev.event = Some(e.to_owned());
                    }
                }
                ev.data = data.join("\n");
                return ev;
            }
            let frame = tokio::time::timeout(WAIT, self.body.frame())
                .await
                .expect("timed out waiting for an SSE event")
                .expect("stream ended")
                .expect("stream error");
            if let Ok(data) = frame.into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }

    /// The next message (skipping comments and pings).
    async fn next_message(&mut self) -> Value {
        loop {
            let ev = self.next_raw().await;
            if ev.comment.is_none() && ev.event.is_none() {
                let v = ev.json();
                if v["type"] != "ping" {
                    return v;
                }
            }
        }
    }

    async fn command(&self, addr: SocketAddr, body: Value) {
        let (status, text, _) = http(
            addr,
            "POST",
            &format!("/sse/{APP_KEY}/{}", self.session),
            Some(body.to_string()),
            None,
        )
        .await;
        assert_eq!(status, 202, "{text}");
    }
}

/// A long-polling client.
struct PollClient {
    addr: SocketAddr,
    session: String,
    cursor: u64,
}

impl PollClient {
    async fn open(addr: SocketAddr, query: &str) -> Self {
        let (status, body, _) = http(
            addr,
            "POST",
            &format!("/poll/{APP_KEY}?{query}"),
            None,
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        Self {
            addr,
            session: v["session"].as_str().unwrap().to_owned(),
            cursor: 0,
        }
    }

    /// One poll at `cursor`: the whole answer.
    async fn poll_at(&self, cursor: u64) -> Value {
        let (status, body, _) = http(
            self.addr,
            "GET",
            &format!("/poll/{APP_KEY}/{}?cursor={cursor}", self.session),
            None,
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Poll and advance the cursor; the messages.
    async fn poll(&mut self) -> Vec<Value> {
        let v = self.poll_at(self.cursor).await;
        self.cursor = v["cursor"].as_u64().unwrap();
        v["messages"].as_array().unwrap().clone()
    }

    async fn command(&self, body: Value) {
        let (status, text, _) = http(
            self.addr,
            "POST",
            &format!("/poll/{APP_KEY}/{}", self.session),
            Some(body.to_string()),
            None,
        )
        .await;
        assert_eq!(status, 202, "{text}");
    }

    /// Poll until `n` events arrived (other messages are skipped).
    async fn events(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while out.len() < n {
            assert!(tokio::time::Instant::now() < deadline, "got {out:?}");
            out.extend(
                self.poll()
                    .await
                    .into_iter()
                    .filter(|m| m["type"] == "event"),
            );
        }
        out
    }
}

async fn server_with_history(tweak: impl FnOnce(&mut herald_server::config::Config)) -> TestServer {
    TestServer::with(|c| {
        c.apps[0].history = vec![HistoryRule::new("*")];
        c.long_poll.poll_timeout = Duration::from_millis(500);
        c.long_poll.session_timeout = Duration::from_secs(2);
        tweak(c);
    })
    .await
}

#[tokio::test]
async fn sse_delivers_takes_commands_and_sends_heartbeats() {
    let server = TestServer::with(|c| c.sse.heartbeat_interval = Duration::from_millis(300)).await;
    let mut sse = SseClient::open(server.addr, "channel=news", None).await;
    assert_eq!(sse.headers["content-type"], "text/event-stream");
    assert_eq!(sse.headers["x-accel-buffering"], "no");
    assert!(
        sse.headers["cache-control"]
            .to_str()
            .unwrap()
            .contains("no-cache")
    );
    let reply = sse.next_message().await;
    assert_eq!(
        (reply["type"].as_str(), reply["channel"].as_str()),
        (Some("subscribe"), Some("news"))
    );

    server
        .publish("news", "story", json!({"title": "hi"}))
        .await;
    let ev = sse.next_message().await;
    assert_eq!(
        (ev["event"].as_str(), &ev["data"]),
        (Some("story"), &json!({"title": "hi"}))
    );

    sse.command(
        server.addr,
        json!({"type": "subscribe", "channel": "sports", "ref": 1}),
    )
    .await;
    let reply = sse.next_message().await;
    assert_eq!(
        (reply["type"].as_str(), &reply["ref"]),
        (Some("subscribe"), &json!(1))
    );
    sse.command(
        server.addr,
        json!({"type": "unsubscribe", "channel": "news"}),
    )
    .await;
    assert_eq!(sse.next_message().await["type"], "unsubscribe");
    server.publish("news", "story", json!(1)).await;
    server.publish("sports", "goal", json!(2)).await;
    let ev = sse.next_message().await;
    assert_eq!(ev["event"], "goal", "unsubscribed from news: {ev}");

    // Heartbeat comments arrive on an idle stream.
    let mut saw_heartbeat = false;
    for _ in 0..5 {
        if sse.next_raw().await.comment.as_deref() == Some("heartbeat") {
            saw_heartbeat = true;
            break;
        }
    }
    assert!(saw_heartbeat);

    // Commands for an unknown session, or with a bad body, are refused clearly.
    let (status, body, _) = http(
        server.addr,
        "POST",
        &format!("/sse/{APP_KEY}/nope"),
        Some("{}".into()),
        None,
    )
    .await;
    assert_eq!(status, 404, "{body}");
    sse.command(server.addr, json!({"type": "subscribe"})).await;
    let err = sse.next_message().await;
    assert_eq!(err["type"], "error", "{err}");
}

#[tokio::test]
async fn sse_private_channels_need_a_token_and_resume_with_last_event_id() {
    let server = server_with_history(|_| {}).await;
    let mut refused = SseClient::open(server.addr, "channel=private-feed", None).await;
    let err = refused.next_message().await;
    assert_eq!(
        (err["type"].as_str(), err["data"]["code"].as_u64()),
        (Some("error"), Some(200)),
        "{err}"
    );
    drop(refused);
    let t = token(|c| c.channels = vec!["private-*".into()]);
    let mut sse = SseClient::open(
        server.addr,
        &format!("channel=private-feed&token={t}"),
        None,
    )
    .await;
    let reply = sse.next_message().await;
    assert_eq!(reply["type"], "subscribe", "{reply}");
    for n in 1..=3 {
        server.publish("private-feed", "n", json!({ "n": n })).await;
    }
    for n in 1..=3 {
        assert_eq!(sse.next_message().await["data"]["n"], n);
    }
    let last = sse.last_event_id.clone().expect("events carry ids");
    assert!(last.starts_with("private-feed:3:"), "{last}");
    drop(sse);
    for n in 4..=6 {
        server.publish("private-feed", "n", json!({ "n": n })).await;
    }
    // The browser reconnects to the same URL with Last-Event-ID.
    let mut sse = SseClient::open(
        server.addr,
        &format!("channel=private-feed&token={t}"),
        Some(&last),
    )
    .await;
    let reply = sse.next_message().await;
    assert_eq!(reply["data"]["recovered"], true, "{reply}");
    for n in 4..=6 {
        assert_eq!(sse.next_message().await["data"]["n"], n);
    }
}

#[tokio::test]
async fn long_poll_cursor_semantics_and_bursts() {
    let server = server_with_history(|_| {}).await;
    let mut lp = PollClient::open(server.addr, "channel=feed").await;
    let first = lp.poll().await;
    assert_eq!(first[0]["type"], "connected");
    assert_eq!(first[0]["data"]["session"], lp.session.as_str());
    assert_eq!(first[1]["type"], "subscribe");
    assert_eq!(lp.cursor, 2);

    // A burst between polls arrives complete and in order, in one answer.
    for n in 1..=50 {
        server.publish("feed", "n", json!({ "n": n })).await;
    }
    let answer = lp.poll_at(lp.cursor).await;
    let ns: Vec<u64> = answer["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, (1..=50).collect::<Vec<_>>());
    // The same cursor again (an answer lost on the way) gets the same messages.
    let again = lp.poll_at(lp.cursor).await;
    assert_eq!(again["messages"], answer["messages"]);
    lp.cursor = answer["cursor"].as_u64().unwrap();
    assert_eq!(lp.cursor, 52);

    // Nothing new: the poll waits for poll_timeout, then answers empty with the same cursor.
    let started = tokio::time::Instant::now();
    let empty = lp.poll_at(lp.cursor).await;
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(
        (
            empty["cursor"].as_u64(),
            empty["messages"].as_array().map(Vec::len)
        ),
        (Some(52), Some(0))
    );

    // A waiting poll answers as soon as something arrives.
    let addr = server.addr;
    let waiting = tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let v = lp.poll_at(lp.cursor).await;
        (v, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, _, _) = http(
        addr,
        "POST",
        "/api/app/publish",
        Some(json!({"channel":"feed","event":"n","data":{"n":51}}).to_string()),
        Some(crate::harness::SECRET),
    )
    .await;
    assert_eq!(status, 200);
    let (v, took) = waiting.await.unwrap();
    assert_eq!(v["messages"][0]["data"]["n"], 51);
    assert!(took < Duration::from_millis(450), "{took:?}");
}

#[tokio::test]
async fn long_poll_session_expiry_ends_presence() {
    let server = server_with_history(|_| {}).await;
    let t = token(|c| {
        c.sub = Some("ann".into());
        c.channels = vec!["presence-*".into()];
    });
    let mut lp = PollClient::open(server.addr, &format!("channel=presence-room&token={t}")).await;
    let msgs = lp.poll().await;
    assert!(msgs.iter().any(|m| m["type"] == "subscribe"), "{msgs:?}");
    let members = || async {
        server
            .api("GET", "channels/presence-room/presence", None)
            .await
            .1["count"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(members().await, 1);
    // Keep polling: the session lives past session_timeout.
    for _ in 0..6 {
        lp.poll().await;
    }
    assert_eq!(members().await, 1, "a polling client stays present");
    // Stop polling: within session_timeout (2 s) plus a tick the member is gone.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while members().await != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "member still present"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its polls now say why it ended, then the session is gone.
    let v = lp.poll_at(lp.cursor).await;
    assert_eq!(v["closed"]["code"], 4201, "{v}");
}

#[tokio::test]
async fn long_poll_overflow_asks_for_a_resync_and_nothing_is_lost() {
    let server = server_with_history(|c| c.long_poll.max_buffered_messages = 50).await;
    let mut lp = PollClient::open(server.addr, "channel=feed").await;
    let msgs = lp.poll().await;
    let subscribed = msgs.iter().find(|m| m["type"] == "subscribe").unwrap();
    let epoch = subscribed["data"]["epoch"].as_str().unwrap().to_owned();
    server.publish("feed", "n", json!({"n": 1})).await;
    let got = lp.events(1).await;
    assert_eq!(got[0]["offset"], 1);
    // Sixty publications while the client does not poll: more than the buffer holds.
    for n in 2..=61 {
        server.publish("feed", "n", json!({ "n": n })).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let v = lp.poll_at(lp.cursor).await;
    assert_eq!(v["resync"], json!(["feed"]), "{v}");
    lp.cursor = v["cursor"].as_u64().unwrap();
    // The client subscribes again from its last position and gets everything it missed.
    lp.command(
        json!({"type": "subscribe", "channel": "feed", "since": {"offset": 1, "epoch": epoch}}),
    )
    .await;
    // 60 missed: more than half the buffer may replay, so this recovery is refused…
    let refused = lp.poll().await;
    let reply = refused.iter().find(|m| m["type"] == "subscribe").unwrap();
    assert_eq!(
        (&reply["data"]["recovered"], &reply["data"]["reason"]),
        (&json!(false), &json!("too_many")),
        "{reply}"
    );
    // …and the client reloads from the history API instead, paging from its position.
    let (_, page) = server
        .api("GET", "channels/feed/history?since=1&limit=100", None)
        .await;
    let ns: Vec<u64> = page["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, (2..=61).collect::<Vec<_>>());
    // A gap that fits is replayed over long-polling.
    lp.command(json!({"type": "unsubscribe", "channel": "feed"}))
        .await;
    lp.poll().await;
    lp.command(
        json!({"type": "subscribe", "channel": "feed", "since": {"offset": 50, "epoch": epoch}}),
    )
    .await;
    let events = lp.events(11).await;
    let ns: Vec<u64> = events
        .iter()
        .map(|m| m["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, (51..=61).collect::<Vec<_>>());
    // DELETE ends the session.
    let (status, _, _) = http(
        server.addr,
        "DELETE",
        &format!("/poll/{APP_KEY}/{}", lp.session),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let v = lp.poll_at(lp.cursor).await;
    assert_eq!(v["closed"]["code"], 1000, "{v}");
}

/// Publish 1..=total on `channel` over one keep-alive connection.
async fn publish_numbers(addr: SocketAddr, channel: &'static str, total: u64) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    for n in 1..=total {
        let body = json!({"channel": channel, "event": "n", "data": {"n": n}}).to_string();
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("/api/{}/publish", crate::harness::APP_ID))
            .header("host", addr.to_string())
            .header(
                "authorization",
                format!("Bearer {}", crate::harness::SECRET),
            )
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        sender.ready().await.unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap();
        if n % 50 == 0 {
            tokio::task::yield_now().await;
        }
    }
}

#[tokio::test]
async fn five_thousand_publications_survive_random_disconnects_over_sse() {
    const TOTAL: u64 = 5000;
    let server = server_with_history(|_| {}).await;
    let mut sse = Some(SseClient::open(server.addr, "channel=stream", None).await);
    sse.as_mut().unwrap().next_message().await; // subscribed
    let mut last_id = sse.as_ref().unwrap().last_event_id.clone();
    let publisher = tokio::spawn(publish_numbers(server.addr, "stream", TOTAL));
    let mut received = Vec::with_capacity(TOTAL as usize);
    let mut disconnects = 0;
    let mut rng = rand::rng();
    while received.len() < TOTAL as usize {
        let mut c = match sse.take() {
            Some(c) => c,
            None => {
                let mut c =
                    SseClient::open(server.addr, "channel=stream", last_id.as_deref()).await;
                let reply = c.next_message().await;
                assert_eq!(reply["data"]["recovered"], true, "{reply}");
                c
            }
        };
        let budget = rng.random_range(100..900);
        for _ in 0..budget {
            if received.len() == TOTAL as usize {
                break;
            }
            let m = c.next_message().await;
            let n = m["data"]["n"].as_u64().unwrap();
            assert_eq!(
                n,
                received.len() as u64 + 1,
                "in order, nothing missing, no duplicate"
            );
            received.push(n);
        }
        last_id = c.last_event_id.clone();
        if received.len() < TOTAL as usize {
            disconnects += 1;
        }
        drop(c);
    }
    publisher.await.unwrap();
    assert!(disconnects >= 5, "only {disconnects} disconnects");
}

#[tokio::test]
async fn five_thousand_publications_survive_random_disconnects_over_long_polling() {
    const TOTAL: u64 = 5000;
    let server = server_with_history(|c| c.long_poll.max_buffered_messages = 10_000).await;
    let mut lp = PollClient::open(server.addr, "channel=stream").await;
    let msgs = lp.poll().await;
    let sub = msgs.iter().find(|m| m["type"] == "subscribe").unwrap();
    let mut position = (0u64, sub["data"]["epoch"].as_str().unwrap().to_owned());
    let publisher = tokio::spawn(publish_numbers(server.addr, "stream", TOTAL));
    let mut received = Vec::with_capacity(TOTAL as usize);
    let mut disconnects = 0;
    let mut rng = rand::rng();
    let mut current = Some(lp);
    while received.len() < TOTAL as usize {
        let mut lp = match current.take() {
            Some(lp) => lp,
            None => {
                // A new session (the old one is abandoned), recovering from the position.
                let lp = PollClient::open(server.addr, "").await;
                lp.command(json!({"type": "subscribe", "channel": "stream",
                    "since": {"offset": position.0, "epoch": position.1}}))
                    .await;
                lp
            }
        };
        let budget = rng.random_range(100..900);
        let mut taken = 0;
        'session: while taken < budget && received.len() < TOTAL as usize {
            for m in lp.poll().await {
                match m["type"].as_str() {
                    Some("subscribe") => assert_ne!(m["data"]["recovered"], false, "{m}"),
                    Some("event") => {
                        let n = m["data"]["n"].as_u64().unwrap();
                        assert_eq!(
                            n,
                            received.len() as u64 + 1,
                            "in order, nothing missing, no duplicate"
                        );
                        received.push(n);
                        position = (
                            m["offset"].as_u64().unwrap(),
                            m["epoch"].as_str().unwrap().to_owned(),
                        );
                        taken += 1;
                        if taken >= budget {
                            // Abandon the session mid-answer: the rest must come by recovery.
                            break 'session;
                        }
                    }
                    _ => {}
                }
            }
        }
        if received.len() < TOTAL as usize {
            disconnects += 1;
        }
    }
    publisher.await.unwrap();
    assert!(disconnects >= 5, "only {disconnects} disconnects");
}

#[tokio::test]
async fn websocket_sse_and_long_poll_subscribers_see_the_same_stream() {
    let server = server_with_history(|_| {}).await;
    let mut ws = server.connect().await;
    ws.subscribe_ok("mix").await;
    let mut sse = SseClient::open(server.addr, "channel=mix", None).await;
    sse.next_message().await;
    let mut lp = PollClient::open(server.addr, "channel=mix").await;
    lp.poll().await;
    let publisher = tokio::spawn(publish_numbers(server.addr, "mix", 300));
    let mut from_ws = Vec::new();
    while from_ws.len() < 300 {
        let m = ws.recv_non_ping().await;
        from_ws.push((m.offset.unwrap(), m.data["n"].as_u64().unwrap()));
    }
    let mut from_sse = Vec::new();
    while from_sse.len() < 300 {
        let m = sse.next_message().await;
        from_sse.push((
            m["offset"].as_u64().unwrap(),
            m["data"]["n"].as_u64().unwrap(),
        ));
    }
    let from_lp: Vec<(u64, u64)> = lp
        .events(300)
        .await
        .iter()
        .map(|m| {
            (
                m["offset"].as_u64().unwrap(),
                m["data"]["n"].as_u64().unwrap(),
            )
        })
        .collect();
    publisher.await.unwrap();
    let expected: Vec<(u64, u64)> = (1..=300).map(|n| (n, n)).collect();
    assert_eq!(from_ws, expected);
    assert_eq!(from_sse, expected);
    assert_eq!(from_lp, expected);
}

#[tokio::test]
async fn browsers_on_allowed_origins_get_cors_headers() {
    let server = TestServer::with(|c| {
        c.apps[0].allowed_origins =
            vec![herald_core::pattern::Pattern::new("https://*.example.com")];
    })
    .await;
    let preflight = |origin: &'static str| {
        let addr = server.addr;
        async move {
            let stream = TcpStream::connect(addr).await.unwrap();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            let req = http::Request::builder()
                .method("OPTIONS")
                .uri(format!("/poll/{APP_KEY}/abc"))
                .header("host", addr.to_string())
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .body(Full::new(Bytes::new()))
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            (resp.status().as_u16(), resp.headers().clone())
        }
    };
    let (status, headers) = preflight("https://app.example.com").await;
    assert_eq!(status, 204);
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert!(
        headers["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    let (_, headers) = preflight("https://evil.test").await;
    assert!(headers.get("access-control-allow-origin").is_none());
}

/// Issue 13, bug 7: an SSE stream's event ids kept a position for every channel it had ever
/// touched, and re-sent all of them on every id. Now a channel left is forgotten.
#[tokio::test]
async fn sse_event_ids_name_only_the_channels_still_subscribed() {
    let server = server_with_history(|_| {}).await;
    let mut sse = SseClient::open(server.addr, "channel=keep", None).await;
    assert_eq!(sse.next_message().await["type"], "subscribe");
    for i in 0..20 {
        let channel = format!("gone-{i}");
        sse.command(
            server.addr,
            json!({"type": "subscribe", "channel": channel}),
        )
        .await;
        assert_eq!(sse.next_message().await["type"], "subscribe");
        server.publish(&channel, "e", json!(i)).await;
        assert_eq!(sse.next_message().await["type"], "event");
        sse.command(
            server.addr,
            json!({"type": "unsubscribe", "channel": channel}),
        )
        .await;
        assert_eq!(sse.next_message().await["type"], "unsubscribe");
    }
    server.publish("keep", "e", json!("kept")).await;
    assert_eq!(sse.next_message().await["data"], "kept");
    let id = sse.last_event_id.clone().unwrap();
    assert!(id.starts_with("keep:1:"), "{id}");
    assert!(
        !id.contains('|'),
        "positions of channels left are still sent: {id}"
    );
}

#[tokio::test]
async fn a_command_post_may_carry_a_batch_handled_in_order() {
    let server = server_with_history(|_| {}).await;
    let mut poll = PollClient::open(server.addr, "").await;
    let connected = poll.poll().await;
    assert_eq!(connected[0]["type"], "connected");
    // One POST, three requests: replies come in request order.
    poll.command(json!([
        {"type": "subscribe", "channel": "a", "ref": 1},
        {"type": "subscribe", "channel": "b", "ref": 2},
        {"type": "unsubscribe", "channel": "a", "ref": 3},
    ]))
    .await;
    let mut replies = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while replies.len() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "got {replies:?}");
        replies.extend(poll.poll().await);
    }
    let refs: Vec<_> = replies
        .iter()
        .map(|r| (r["type"].clone(), r["ref"].clone()))
        .collect();
    assert_eq!(
        refs,
        vec![
            (json!("subscribe"), json!(1)),
            (json!("subscribe"), json!(2)),
            (json!("unsubscribe"), json!(3)),
        ]
    );

    // A malformed array, or one over the batch limit, is refused with a JSON error and
    // handles nothing.
    let path = format!("/poll/{APP_KEY}/{}", poll.session);
    let (status, body, _) = http(server.addr, "POST", &path, Some("[{]".into()), None).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid_json"), "{body}");
    let many: Vec<Value> = (0..101)
        .map(|i| json!({"type": "subscribe", "channel": format!("c{i}")}))
        .collect();
    let (status, body, _) = http(
        server.addr,
        "POST",
        &path,
        Some(Value::from(many).to_string()),
        None,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("too_many_channels"), "{body}");
    // Neither refused batch was handled (no reply comes; a poll waits out its timeout), and
    // the session goes on serving.
    assert_eq!(poll.poll().await, Vec::<Value>::new());
    poll.command(json!([{"type": "subscribe", "channel": "after", "ref": 4}]))
        .await;
    let reply = poll.poll().await;
    assert_eq!(
        (reply[0]["type"].as_str(), &reply[0]["ref"]),
        (Some("subscribe"), &json!(4)),
        "{reply:?}"
    );
}
