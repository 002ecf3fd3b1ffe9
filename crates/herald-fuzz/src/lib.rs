//! Fuzz targets for every decoder that reads bytes from the network.
//!
//! | Target | What it decodes |
//! |---|---|
//! | `websocket_frames` | RFC 6455 frames and fragmented messages (`herald_protocol::websocket`), fed in read-sized pieces |
//! | `websocket_differential` | the same bytes through Herald's decoder and `tungstenite`'s: the same messages, the same refusals |
//! | `native_request` | native-protocol client messages (also the bodies POSTed to SSE and long-poll sessions) |
//! | `pusher_request` | Pusher-protocol client messages |
//! | `http_request` | whole HTTP/1.1 requests, head and body framing (chunked included), through a real server's stack |
//! | `jwt` | connection and subscription tokens |
//! | `http_session_input` | an SSE `Last-Event-ID`, then a command body |
//! | `laravel_ingest` | a Laravel broadcast read from Redis |
//! | `cluster_envelope` | the frames and envelopes nodes exchange through the broker |
//!
//! Every target is a plain function of the input bytes: it must return (whatever the bytes)
//! and every invariant it checks must hold; a panic is a finding. `cargo test -p
//! herald-fuzz` replays the checked-in corpus (`corpus/<target>/`) and every former finding
//! (`regressions/<target>/`) through them; `scripts/fuzz` runs them under libFuzzer.

mod differential;
mod http;

use bytes::BytesMut;
use herald_protocol::websocket::{Decoder, Message, Role};

/// A fuzz target: a function of the input bytes.
pub type Target = fn(&[u8]);

/// Every target, by name.
pub const TARGETS: &[(&str, Target)] = &[
    ("websocket_frames", websocket_frames),
    ("websocket_differential", differential::run),
    ("native_request", native_request),
    ("pusher_request", pusher_request),
    ("http_request", http::run),
    ("jwt", jwt),
    ("http_session_input", http_session_input),
    ("laravel_ingest", laravel_ingest),
    ("cluster_envelope", cluster_envelope),
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// The largest message the WebSocket targets accept (the server's default limit).
const MAX_MESSAGE: usize = 32 * 1024;

/// The first byte picks the size of the pieces the rest arrives in (as socket reads cut
/// it); the decoder must give the same messages whatever the cut.
pub fn websocket_frames(data: &[u8]) {
    let Some((&cut, data)) = data.split_first() else {
        return;
    };
    // Without and with permessage-deflate: compressed frames (RSV1) are refused by one and
    // inflated, within the size bound, by the other.
    for deflate in [false, true] {
        let whole = decode_all(data, data.len().max(1), deflate);
        let pieces = decode_all(data, usize::from(cut).max(1), deflate);
        assert_eq!(
            whole, pieces,
            "the decoder depends on how reads cut the bytes"
        );
    }
}

/// Decode `data` fed in pieces of `piece` bytes: the messages, and whether it ended in a
/// violation. Checks what every message guarantees.
fn decode_all(data: &[u8], piece: usize, deflate: bool) -> (Vec<Message>, bool) {
    let mut decoder = Decoder::new(Role::Server, MAX_MESSAGE).with_deflate(deflate);
    let mut buf = BytesMut::new();
    let mut messages = Vec::new();
    for chunk in data.chunks(piece) {
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(message)) => {
                    check_message(&message);
                    messages.push(message);
                }
                Ok(None) => break,
                Err(violation) => {
                    let code = violation.code.code();
                    assert!(matches!(code, 1002 | 1007 | 1009), "close code {code}");
                    return (messages, true);
                }
            }
        }
    }
    (messages, false)
}

fn check_message(message: &Message) {
    match message {
        Message::Text(text) => {
            assert!(std::str::from_utf8(text).is_ok(), "text is not UTF-8");
            assert!(text.len() <= MAX_MESSAGE);
        }
        Message::Binary(data) => assert!(data.len() <= MAX_MESSAGE),
        Message::Ping(p) | Message::Pong(p) => assert!(p.len() <= 125),
        Message::Close(Some((_, reason))) => assert!(reason.len() <= 123),
        Message::Close(None) => {}
    }
}

/// A native client message: whatever the bytes, a request or a refusal with a catalogue code.
pub fn native_request(data: &[u8]) {
    if let Err(e) = herald_protocol::native::parse_client_message(data) {
        assert!(herald_protocol::ErrorCode::from_code(e.code.code()).is_some());
    }
}

/// A Pusher client message.
pub fn pusher_request(data: &[u8]) {
    let _ = herald_protocol::pusher::parse_client_message(data);
}

/// A token, verified as a connection token and as a subscription token of the development
/// app. Nothing the fuzzer makes can carry a valid signature; every path before it runs.
pub fn jwt(data: &[u8]) {
    use std::sync::OnceLock;
    static VERIFIER: OnceLock<herald_core::auth::TokenVerifier> = OnceLock::new();
    let verifier = VERIFIER.get_or_init(|| {
        let app = herald_core::AppSettings::development();
        herald_core::auth::TokenVerifier::new(&app.jwt, &app.secret).expect("HS256 verifier")
    });
    let token = String::from_utf8_lossy(data);
    assert!(
        verifier.connection(&token).is_err(),
        "a forged token verified"
    );
    assert!(
        verifier.subscription(&token).is_err(),
        "a forged token verified"
    );
}

/// An SSE `Last-Event-ID` (up to the first newline), then a command body.
pub fn http_session_input(data: &[u8]) {
    let (head, body) = split_line(data);
    let positions =
        herald_server::transport::http_session::parse_positions(&String::from_utf8_lossy(head));
    assert!(positions.len() <= herald_server::transport::MAX_RESUME_CHANNELS);
    let text = herald_server::transport::http_session::format_positions(&positions);
    assert_eq!(
        herald_server::transport::http_session::parse_positions(&text),
        positions,
        "positions do not survive their own format"
    );
    native_request(body);
}

/// A Laravel broadcast: the Redis channel (up to the first newline), then the payload.
pub fn laravel_ingest(data: &[u8]) {
    let (channel, payload) = split_line(data);
    let channel = String::from_utf8_lossy(channel);
    if let Ok(request) = herald_cluster::ingest::broadcast_request("laravel_", &channel, payload) {
        assert_eq!(request.channels.len(), 1);
        assert!(channel.starts_with("laravel_"));
    }
}

/// A frame from the broker: a publication (`P`), a control message (`C`), or a bare
/// envelope.
pub fn cluster_envelope(data: &[u8]) {
    use herald_cluster::envelope;
    match data.split_first() {
        Some((b'P', rest)) => {
            if let Some((offset, epoch, body)) = envelope::split_position(rest) {
                let position = offset.map(|offset| herald_core::publication::Position {
                    offset,
                    epoch: std::sync::Arc::from(epoch),
                });
                let _ = envelope::decode_publication(body, position);
            }
        }
        Some((b'C', rest)) => {
            let _ = envelope::decode_control(rest);
        }
        _ => {
            if let Ok(p) = envelope::decode_publication(data, None) {
                // What decodes re-encodes, and decodes to the same channel again.
                let again = envelope::encode_publication(&p);
                let back = envelope::decode_publication(&again, None).expect("round trip");
                assert_eq!(back.channel, p.channel);
            }
        }
    }
}

fn split_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}
