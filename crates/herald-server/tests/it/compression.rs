//! permessage-deflate (RFC 7692) on `/ws/{key}` and `/app/{key}`, with a raw client that
//! reads the frames itself: which offers are accepted, which frames carry RSV1 and inflate
//! to the right message, compressed client messages, and a deflate bomb.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use herald_protocol::deflate;
use herald_protocol::websocket::{OpCode, encode_frame, encode_frame_compressed};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{APP_KEY, TestServer, WAIT};

/// One server frame as it was on the wire.
#[derive(Debug)]
struct WireFrame {
    rsv1: bool,
    opcode: u8,
    /// The payload as sent (compressed when `rsv1`).
    payload: Vec<u8>,
}

impl WireFrame {
    /// The message text: inflated when the frame is compressed.
    fn text(&self) -> String {
        let bytes = if self.rsv1 {
            deflate::inflate(&self.payload, 1 << 24)
                .expect("inflates")
                .to_vec()
        } else {
            self.payload.clone()
        };
        String::from_utf8(bytes).expect("utf-8")
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.text()).expect("JSON")
    }
}

/// A raw WebSocket client that keeps every frame's header bits.
struct RawClient {
    tcp: TcpStream,
    buf: BytesMut,
    /// The server's `Sec-WebSocket-Extensions` answer, if any.
    extensions: Option<String>,
}

impl RawClient {
    /// Upgrade on `path`, offering each of `offers` as one `Sec-WebSocket-Extensions` header.
    async fn open(server: &TestServer, path: &str, offers: &[&str]) -> Self {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
             sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n"
        );
        for offer in offers {
            request.push_str(&format!("sec-websocket-extensions: {offer}\r\n"));
        }
        request.push_str("\r\n");
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut buf = BytesMut::new();
        let end = loop {
            let n = tcp.read_buf(&mut buf).await.unwrap();
            assert!(n > 0, "closed during the handshake");
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        buf.advance(end + 4);
        let extensions = head.lines().find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("sec-websocket-extensions:")
                .map(|v| v.trim().to_owned())
        });
        Self {
            tcp,
            buf,
            extensions,
        }
    }

    /// The next frame.
    async fn frame(&mut self) -> WireFrame {
        loop {
            if let Some(frame) = self.parse() {
                return frame;
            }
            let n = tokio::time::timeout(WAIT, self.tcp.read_buf(&mut self.buf))
                .await
                .expect("timed out waiting for a frame")
                .unwrap();
            assert!(n > 0, "connection closed");
        }
    }

    /// The next data frame, skipping server pings.
    async fn message(&mut self) -> WireFrame {
        loop {
            let frame = self.frame().await;
            if frame.opcode == 1 {
                let text = frame.text();
                if text.contains("\"ping\"") || text.contains("pusher:ping") {
                    continue;
                }
                return frame;
            }
        }
    }

    /// Read until the close frame: its code.
    async fn close_code(&mut self) -> u16 {
        loop {
            let frame = self.frame().await;
            if frame.opcode == 8 {
                return u16::from_be_bytes([frame.payload[0], frame.payload[1]]);
            }
        }
    }

    fn parse(&mut self) -> Option<WireFrame> {
        let b = &self.buf;
        if b.len() < 2 {
            return None;
        }
        assert_eq!(b[1] & 0x80, 0, "server frames are not masked");
        let (len, head) = match b[1] & 0x7F {
            126 if b.len() >= 4 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() >= 10 => (
                u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                10,
            ),
            126 | 127 => return None,
            n => (usize::from(n), 2),
        };
        if b.len() < head + len {
            return None;
        }
        assert!(b[0] & 0x80 != 0, "the server sends whole messages");
        let frame = WireFrame {
            rsv1: b[0] & 0x40 != 0,
            opcode: b[0] & 0x0F,
            payload: b[head..head + len].to_vec(),
        };
        self.buf.advance(head + len);
        Some(frame)
    }

    async fn send_text(&mut self, text: &str, compressed: bool) {
        let mut frame = Vec::new();
        if compressed {
            encode_frame_compressed(
                &mut frame,
                OpCode::Text,
                text.as_bytes(),
                Some([7, 1, 3, 5]),
            );
        } else {
            encode_frame(
                &mut frame,
                OpCode::Text,
                text.as_bytes(),
                Some([7, 1, 3, 5]),
            );
        }
        self.tcp.write_all(&frame).await.unwrap();
    }
}

/// A device status of about 1.5 KB, as a fleet dashboard receives it.
fn device_status(i: u32) -> Value {
    let sensors: Vec<Value> = (0u32..12)
        .map(|s| {
            json!({"sensor": format!("temp-{s}"), "value": 20.0 + f64::from(s) * 0.37 + f64::from(i) * 0.01,
                   "unit": "celsius", "ok": s % 5 != 0, "sampled_at": 1_764_800_000_000u64 + u64::from(s)})
        })
        .collect();
    json!({"device_id": format!("dev-{i:04}"), "site": "warehouse-north", "firmware": "2.14.3-rc1",
           "battery": 0.82, "online": true, "sensors": sensors})
}

#[tokio::test]
async fn offers_are_accepted_or_declined_as_rfc_7692_says() {
    let server = TestServer::start().await;
    let accepted = deflate::EXTENSION_RESPONSE.to_ascii_lowercase();
    let cases: &[(&[&str], bool)] = &[
        (&[], false),
        (&["permessage-deflate"], true),
        // Chromium's and the `ws` package's offer.
        (&["permessage-deflate; client_max_window_bits"], true),
        (
            &["permessage-deflate; client_max_window_bits=10; server_no_context_takeover"],
            true,
        ),
        (&["permessage-deflate; client_no_context_takeover"], true),
        // The server shares one compressed frame with every subscriber: no smaller window.
        (&["permessage-deflate; server_max_window_bits=10"], false),
        (
            &["permessage-deflate; server_max_window_bits=10, permessage-deflate"],
            true,
        ),
        (
            &[
                "permessage-deflate; server_max_window_bits=10",
                "permessage-deflate",
            ],
            true,
        ),
        // Accepting it would mean echoing it; the answer is one fixed header.
        (&["permessage-deflate; server_max_window_bits=15"], false),
        (&["permessage-deflate; no_such_param"], false),
        (&["x-webkit-deflate-frame"], false),
    ];
    for path in [
        format!("/ws/{APP_KEY}"),
        format!("/app/{APP_KEY}?protocol=7"),
    ] {
        for (offers, accept) in cases {
            let client = RawClient::open(&server, &path, offers).await;
            assert_eq!(
                client.extensions.as_deref(),
                accept.then_some(accepted.as_str()),
                "{path} offering {offers:?}"
            );
        }
    }
    // An app with compression off never accepts.
    let off = TestServer::with(|c| c.apps[0].compression.enabled = false).await;
    let client = RawClient::open(&off, &format!("/ws/{APP_KEY}"), &["permessage-deflate"]).await;
    assert_eq!(client.extensions, None);
}

/// Large publications arrive compressed (RSV1) to clients that negotiated it and plain to
/// the others; small ones and replies arrive plain. Both protocols. Client messages may be
/// compressed too.
#[tokio::test]
async fn large_publications_arrive_compressed_and_inflate_to_the_message() {
    let server = TestServer::start().await;
    let mut native = RawClient::open(
        &server,
        &format!("/ws/{APP_KEY}"),
        &["permessage-deflate; client_max_window_bits"],
    )
    .await;
    let mut pusher = RawClient::open(
        &server,
        &format!("/app/{APP_KEY}?protocol=7"),
        &["permessage-deflate"],
    )
    .await;
    let mut plain = RawClient::open(&server, &format!("/ws/{APP_KEY}"), &[]).await;
    for c in [&mut native, &mut pusher, &mut plain] {
        let hello = c.message().await;
        assert!(!hello.rsv1, "short replies are not compressed");
    }
    // Subscribe with a compressed client frame, and with plain ones.
    native
        .send_text(
            &json!({"type": "subscribe", "channel": "fleet", "ref": 1}).to_string(),
            true,
        )
        .await;
    pusher
        .send_text(
            &json!({"event": "pusher:subscribe", "data": {"channel": "fleet"}}).to_string(),
            true,
        )
        .await;
    plain
        .send_text(
            &json!({"type": "subscribe", "channel": "fleet", "ref": 1}).to_string(),
            false,
        )
        .await;
    assert_eq!(native.message().await.json()["event"], "subscribed");
    assert_eq!(
        pusher.message().await.json()["event"],
        "pusher_internal:subscription_succeeded"
    );
    assert_eq!(plain.message().await.json()["event"], "subscribed");

    let status = device_status(7);
    server.publish("fleet", "status", status.clone()).await;
    let (n, p, u) = (
        native.message().await,
        pusher.message().await,
        plain.message().await,
    );
    assert!(n.rsv1 && p.rsv1, "large publications are compressed");
    assert!(!u.rsv1, "a client that did not negotiate gets plain frames");
    assert_eq!(n.json()["data"], status);
    assert_eq!(u.json()["data"], status);
    let pusher_data: Value = serde_json::from_str(p.json()["data"].as_str().unwrap()).unwrap();
    assert_eq!(pusher_data, status);
    assert!(
        n.payload.len() * 3 <= u.payload.len(),
        "a device status compresses at least 3x: {} -> {}",
        u.payload.len(),
        n.payload.len()
    );

    server.publish("fleet", "tiny", json!({"ok": true})).await;
    assert!(!native.message().await.rsv1, "below the threshold: plain");
    assert!(!pusher.message().await.rsv1);
}

/// A small compressed frame that inflates past `max_message_size` closes that connection
/// with 1009 at once; a bystander keeps receiving.
#[tokio::test]
async fn a_deflate_bomb_gets_1009_and_nobody_else_notices() {
    let server = TestServer::with(|c| c.limits.max_message_size = 64 * 1024).await;
    let mut bystander =
        RawClient::open(&server, &format!("/ws/{APP_KEY}"), &["permessage-deflate"]).await;
    bystander.message().await;
    bystander
        .send_text(
            &json!({"type": "subscribe", "channel": "news", "ref": 1}).to_string(),
            false,
        )
        .await;
    assert_eq!(bystander.message().await.json()["event"], "subscribed");

    let mut bomber =
        RawClient::open(&server, &format!("/ws/{APP_KEY}"), &["permessage-deflate"]).await;
    bomber.message().await;
    // 100 MB of spaces compress to about 100 KB; in one frame that is past the limit by
    // itself, so use 10 MB (about 10 KB on the wire).
    let bomb = " ".repeat(10 << 20);
    let mut frame = Vec::new();
    encode_frame_compressed(
        &mut frame,
        OpCode::Text,
        bomb.as_bytes(),
        Some([1, 2, 3, 4]),
    );
    assert!(
        frame.len() < 64 * 1024,
        "small on the wire: {} bytes",
        frame.len()
    );
    let started = tokio::time::Instant::now();
    bomber.tcp.write_all(&frame).await.unwrap();
    assert_eq!(bomber.close_code().await, 1009);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused at once"
    );

    server
        .publish("news", "after", json!({"still": "here"}))
        .await;
    assert_eq!(bystander.message().await.json()["event"], "after");
}
