//! pusher-js's HTTP fallback transports, `xhr_streaming` and `xhr_polling`: the Pusher
//! protocol for browsers whose WebSockets are blocked (a proxy that drops the upgrade, a
//! network that filters it), so Laravel Echo falls back with configuration alone.
//!
//! pusher-js speaks a SockJS-derived protocol under `{httpPath}/app/{key}` (`httpPath` is
//! `/pusher` by default; the bare `/app/{key}/…` form is served too). The client picks the
//! session's path, `/{server}/{session}` (0–999 and 8 characters of `[0-9a-v]`), and POSTs:
//!
//! | Path | What |
//! |---|---|
//! | `…/{server}/{session}/xhr_streaming?protocol=7…` | the receive stream: never ends |
//! | `…/{server}/{session}/xhr?protocol=7…` | one poll: ends with its first frame |
//! | `…/{server}/{session}/xhr_send` | the client's messages: a JSON array of strings |
//!
//! The receive side carries newline-terminated frames: `o` (the session opened, exactly once
//! per session), `a["<message>",…]` (Pusher messages, each as a JSON string), `h` (heartbeat)
//! and `c[code,"reason"]` (the session closed). The first receive request of an unknown
//! session opens it; later ones continue it (a poll after a poll; a new stream after
//! pusher-js rotated the old one, which it does once it has read 256 KiB).
//!
//! A session is one [`herald_core::Session`] driven by one task, like a WebSocket connection:
//! the same hub, presence, limits, client events, sign-in, webhooks and metrics.
//! - Messages wait in the session's outbound queue (bounded by the node's `max_queue_bytes`
//!   and `max_queue_messages`; past them the session is cut as a slow consumer) until a
//!   receive request is open, so a session between two polls holds nothing extra.
//! - A stream stops taking frames once 256 KiB have gone down it: pusher-js then opens a new
//!   one, and whatever would have been in flight when it aborted the old one waits instead.
//! - `h` goes down a stream, and answers a poll that had nothing, every `heartbeat_interval`;
//!   on a stream pusher-js answers each `h` with an empty send, which proves it alive.
//! - With no receive request open for `session_timeout` the session ends (4201): pusher-js
//!   never says goodbye on these transports.
//! - A session is bound to the client address that opened it; a request for it from
//!   elsewhere is answered as if it did not exist. The path is the client's choice and only
//!   about 50 bits, so this is what keeps a guessed path from reading someone's stream.
//!
//! Each request carries `Content-Type: application/json`, so a page on another origin sends
//! a CORS preflight first; both are answered for the app's `allowed_origins` (see `routes`).

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use herald_core::metrics::{LocalHistogram, Metrics};
use herald_core::{ConnectRequest, OutItem, Protocol, Session};
use herald_protocol::{CloseCode, ErrorCode};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Refused;
use super::commands::Commands;
use super::http_session::{Chunk, HttpSession, MAX_BATCH, send_chunk};
use crate::http::{Body, fail, header_str, query_param};
use crate::server::Shared;

/// pusher-js rotates a stream once it has read this many characters of it
/// (`MAX_BUFFER_LENGTH` in `http_request.ts`); the server stops writing to it there.
const STREAM_LIMIT: usize = 256 * 1024;

/// Frames that may wait between the session task and a response body.
const BODY_QUEUE: usize = 8;

/// Receive requests that may wait for the session task to take them over.
const RECEIVE_QUEUE: usize = 2;

/// Client sends that may wait for the session task. pusher-js POSTs each message on its own,
/// all at once (Echo subscribing to every channel of a page at connect), so this is larger
/// than the native transports' queue; the session's client-message rate limit still applies.
const SEND_QUEUE: usize = MAX_BATCH;

/// Which receive transport a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `xhr_streaming`: one response carries every frame, and never ends.
    Streaming,
    /// `xhr`: each response carries one frame and ends; the client polls again at once.
    Polling,
}

/// A receive request handed to the session's task: where its frames go.
#[derive(Debug)]
pub struct Receive {
    /// Streaming or polling.
    kind: Kind,
    /// The response body.
    body: mpsc::Sender<Chunk>,
}

/// The parts of a Pusher HTTP session the request handlers need.
#[derive(Debug)]
pub struct PusherHttpSession {
    /// The client address the session was opened from; requests from any other are refused.
    ip: IpAddr,
    /// Receive requests for the session's task.
    receives: mpsc::Sender<Receive>,
    /// Set when the session has ended: its `c` frame, for receive requests that come late.
    closed: OnceLock<Bytes>,
}

/// The session path a request names: `{server}/{session}`, validated (pusher-js makes
/// `0`–`999` and 8 base-32 characters; a little more is allowed).
pub fn session_path(server: &str, session: &str) -> Option<String> {
    let server_ok = (1..=3).contains(&server.len()) && server.bytes().all(|b| b.is_ascii_digit());
    let session_ok = (1..=32).contains(&session.len())
        && session
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase());
    (server_ok && session_ok).then(|| format!("{server}/{session}"))
}

/// `POST …/{server}/{session}/xhr_streaming` or `…/xhr`: open the session, or continue it.
pub async fn receive(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    ip: IpAddr,
    app_key: &str,
    id: &str,
    kind: Kind,
) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Chunk>(BODY_QUEUE);
    let receive = Receive { kind, body: tx };
    match shared.http_sessions.get(id, app_key) {
        Some(existing) => {
            let Some(pusher) = existing.pusher.as_ref().filter(|p| p.ip == ip) else {
                return no_session();
            };
            existing.handle.touch(shared.node.now_ms());
            if let Some(close) = pusher.closed.get() {
                return frames(close.clone());
            }
            match pusher.receives.try_send(receive) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return fail(
                        ErrorCode::RateLimited,
                        "too many receive requests at once for this session",
                    );
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return no_session(),
            }
        }
        None => {
            let session = match connect(shared, &req, ip, app_key, id) {
                Ok(session) => session,
                Err(refused) => return frames(refusal_frames(&refused)),
            };
            let (receives, receive_rx) = mpsc::channel(RECEIVE_QUEUE);
            let (commands, command_rx) = mpsc::channel(SEND_QUEUE);
            let state = Arc::new(PusherHttpSession {
                ip,
                receives,
                closed: OnceLock::new(),
            });
            shared.http_sessions.insert(
                id,
                Arc::new(HttpSession {
                    app_key: app_key.into(),
                    commands,
                    handle: session.handle().clone(),
                    poll: None,
                    pusher: Some(state.clone()),
                }),
            );
            let shared2 = shared.clone();
            let id = id.to_owned();
            shared.tracker.spawn(async move {
                let inbox = Inbox {
                    commands: command_rx,
                    receives: receive_rx,
                };
                let close = run(&shared2, session, inbox, receive).await;
                let _ = state.closed.set(close);
                // Keep the ended session a while, so a late receive learns why it ended
                // instead of opening a new one.
                tokio::select! {
                    () = tokio::time::sleep(shared2.config.pusher_http.session_timeout) => {}
                    () = shared2.shutdown.cancelled() => {}
                }
                shared2.http_sessions.remove(&id);
            });
        }
    }
    stream_response(rx)
}

/// `POST …/{server}/{session}/xhr_send`: the client's messages, a JSON array of strings each
/// holding one Pusher message (`[]` is pusher-js's heartbeat). Answered before they are
/// handled (204); their replies go down the receive side.
pub async fn send(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    ip: IpAddr,
    app_key: &str,
    id: &str,
) -> Response<Body> {
    let Some(session) = shared
        .http_sessions
        .get(id, app_key)
        .filter(|s| s.pusher.as_ref().is_some_and(|p| p.ip == ip))
    else {
        return no_session();
    };
    let max_message = shared.config.limits.max_message_size;
    // Each message arrives escaped inside a JSON string: allow for the escapes.
    let body = match shared.bodies.read(req, max_message * 2 + 64).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let messages: Vec<String> = match serde_json::from_slice(&body) {
        Ok(m) => m,
        Err(_) => {
            return fail(
                ErrorCode::InvalidJson,
                "the body must be a JSON array of strings, each one Pusher message",
            );
        }
    };
    if messages.len() > MAX_BATCH {
        return fail(
            ErrorCode::TooManyChannels,
            format!("at most {MAX_BATCH} messages in one send"),
        );
    }
    if messages.iter().any(|m| m.len() > max_message) {
        return fail(
            ErrorCode::PayloadTooLarge,
            format!("a message is larger than {max_message} bytes"),
        );
    }
    session.handle.touch(shared.node.now_ms());
    if messages.is_empty() {
        return no_content();
    }
    let batch = messages.into_iter().map(Bytes::from).collect();
    match session.commands.try_send(batch) {
        Ok(()) => no_content(),
        Err(mpsc::error::TrySendError::Full(_)) => fail(
            ErrorCode::RateLimited,
            "too many messages in flight for this session; slow down",
        ),
        Err(mpsc::error::TrySendError::Closed(_)) => no_session(),
    }
}

/// Admit a Pusher session: the protocol version from the receive URL, then the same checks
/// as a WebSocket (app, origin, limits).
fn connect(
    shared: &Arc<Shared>,
    req: &Request<Incoming>,
    ip: IpAddr,
    app_key: &str,
    id: &str,
) -> Result<Session, Refused> {
    let version = query_param(req, "protocol");
    if let Err(v) = herald_protocol::pusher::check_version(version.as_deref()) {
        return Err(Refused::raw(Protocol::Pusher, v.close_code(), v.reason()));
    }
    shared
        .node
        .connect(ConnectRequest {
            app_key,
            token: None,
            origin: header_str(req, "origin"),
            ip,
            protocol: Protocol::Pusher,
            transport: herald_core::Transport::Http,
            transport_session: Some(id),
            deflate: false,
            identity: None,
            backend_context: None,
        })
        .map_err(|r| {
            tracing::debug!(%ip, code = %r.refusal.code, "pusher http session refused");
            Refused::from_refusal(Protocol::Pusher, &r)
        })
}

/// What reaches the session task from request handlers.
struct Inbox {
    /// Client messages, one batch per send.
    commands: mpsc::Receiver<Vec<Bytes>>,
    /// Receive requests taking over from the current one.
    receives: mpsc::Receiver<Receive>,
}

/// The receive request being served, and how much of its budget is used.
struct Current {
    /// Where frames go.
    receive: Receive,
    /// Bytes written to it (streams stop at [`STREAM_LIMIT`]).
    written: usize,
    /// When it was taken over, or last written to: heartbeats are due from here.
    since: Instant,
}

impl Current {
    fn new(receive: Receive) -> Self {
        Self {
            receive,
            written: 0,
            since: Instant::now(),
        }
    }

    /// Whether frames may go down it now.
    fn open(&self) -> bool {
        !self.receive.body.is_closed() && self.written <= STREAM_LIMIT
    }
}

/// Drive one session until it ends; returns its `c` frame.
async fn run(shared: &Arc<Shared>, session: Session, mut inbox: Inbox, first: Receive) -> Bytes {
    let handle = session.handle().clone();
    let node = session.node().clone();
    let config = &shared.config.pusher_http;
    let mut running = Commands::new(session);
    let mut current = Some(Current::new(first));
    // The `o` frame goes first down the first receive request, once.
    let mut pending_open = Some(open_frame(config.hostname.as_deref()));
    // Since when no receive request could take frames.
    let mut detached_since = Instant::now();
    let mut batch = std::collections::VecDeque::new();
    let ended: CloseCode = 'serve: loop {
        if handle.is_aborted() {
            break 'serve CloseCode::GoingAway;
        }
        if let Some(cur) = current.as_mut().filter(|c| c.open()) {
            handle.take_into(&mut batch);
            let (mut out, closed) = encode(&mut batch, node.metrics());
            if let Some(open) = pending_open.take() {
                out.splice(0..0, open);
            }
            if !out.is_empty() {
                let polling = cur.receive.kind == Kind::Polling;
                cur.written += out.len();
                cur.since = Instant::now();
                if let Err(code) = send_chunk(&cur.receive.body, out, shared, &handle).await {
                    if code == CloseCode::SlowConsumer {
                        handle.close_slow_consumer(node.metrics());
                        break 'serve code;
                    }
                    current = None;
                } else if polling {
                    // A poll carries one frame and ends; the client polls again at once.
                    current = None;
                }
                if current.as_ref().is_none_or(|c| !c.open()) {
                    detached_since = Instant::now();
                }
            }
            if let Some(code) = closed {
                break 'serve code;
            }
        }
        let deadline = match current.as_ref().filter(|c| c.open()) {
            Some(cur) => cur.since + config.heartbeat_interval,
            None => detached_since + config.session_timeout,
        };
        let writable = current.as_ref().is_some_and(Current::open);
        tokio::select! {
            () = handle.notified() => {
                // Nothing is taken while no request can carry it; but a close (an overflow,
                // a terminate) ends the session now, not when the client comes back.
                if !writable && let Some(code) = handle.closing() {
                    break 'serve code;
                }
            }
            () = closed(current.as_ref()), if writable => {
                current = None;
                detached_since = Instant::now();
            }
            outcome = running.finished(), if running.is_busy() => {
                if let Err(code) = outcome {
                    handle.close(code);
                }
            }
            command = inbox.commands.recv(), if !running.is_busy() => match command {
                Some(texts) => running.handle_texts(texts),
                None => break 'serve CloseCode::Normal,
            },
            receive = inbox.receives.recv() => match receive {
                // The new request takes over; the old one's response ends (pusher-js has
                // already let go of it).
                Some(receive) => current = Some(Current::new(receive)),
                None => break 'serve CloseCode::Normal,
            },
            () = tokio::time::sleep_until(deadline) => {
                if !writable {
                    break 'serve CloseCode::ActivityTimeout;
                }
                if let Some(cur) = current.as_mut() {
                    let polling = cur.receive.kind == Kind::Polling;
                    cur.written += 2;
                    cur.since = Instant::now();
                    let sent = send_chunk(&cur.receive.body, b"h\n".to_vec(), shared, &handle).await;
                    if sent.is_err() || polling {
                        current = None;
                    }
                    if current.as_ref().is_none_or(|c| !c.open()) {
                        detached_since = Instant::now();
                    }
                }
            }
        }
    };
    let (code, reason) = Protocol::Pusher.close_frame(ended);
    let close = Bytes::from(close_frame(code, reason));
    if let Some(cur) = current.filter(Current::open) {
        let mut out = pending_open.map(|o| o.to_vec()).unwrap_or_default();
        out.extend_from_slice(&close);
        let _ = send_chunk(&cur.receive.body, out, shared, &handle).await;
    }
    tracing::debug!(socket_id = %handle.socket_id, code, "pusher http session ended");
    Box::pin(async { running.into_session().await.close().await }).await;
    close
}

/// Resolves when the current receive request's client has gone.
async fn closed(current: Option<&Current>) {
    match current {
        Some(cur) => cur.receive.body.closed().await,
        None => std::future::pending().await,
    }
}

/// Turn queued items into frames: one `a[…]` with every message, then a `c` frame if the
/// batch closes the session. Records latency and deliveries.
fn encode(
    batch: &mut std::collections::VecDeque<OutItem>,
    metrics: &Metrics,
) -> (Vec<u8>, Option<CloseCode>) {
    let mut out = Vec::new();
    let mut delivered = 0u64;
    let mut latency = LocalHistogram::default();
    let now = Instant::now();
    let mut closed = None;
    while let Some(item) = batch.pop_front() {
        match item {
            // Never compressed: only WebSockets negotiate permessage-deflate.
            OutItem::Message {
                bytes,
                published_at,
                ..
            } => {
                if let Some(at) = published_at {
                    latency.observe(now.saturating_duration_since(at));
                }
                out.push(if delivered == 0 { b'a' } else { b',' });
                if delivered == 0 {
                    out.push(b'[');
                }
                write_ascii_string(&mut out, &bytes);
                delivered += 1;
            }
            OutItem::Pong(_) => {}
            OutItem::Close(code) => {
                closed = Some(code);
                break;
            }
        }
    }
    batch.clear();
    if delivered > 0 {
        out.extend_from_slice(b"]\n");
        Metrics::inc(&metrics.socket_writes);
    }
    if let Some(code) = closed {
        let (number, reason) = Protocol::Pusher.close_frame(code);
        out.extend_from_slice(&close_frame(number, reason));
    }
    metrics
        .messages_delivered
        .fetch_add(delivered, std::sync::atomic::Ordering::Relaxed);
    metrics.publish_to_write.merge(&latency);
    (out, closed)
}

/// Append `text` as a JSON string literal in plain ASCII: everything outside it is written
/// as `\uXXXX`, so the byte count is the character count pusher-js measures its 256 KiB in.
fn write_ascii_string(out: &mut Vec<u8>, text: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let unit = |out: &mut Vec<u8>, u: u16| {
        out.extend_from_slice(b"\\u");
        for shift in [12, 8, 4, 0] {
            out.push(HEX[usize::from((u >> shift) & 0xF)]);
        }
    };
    out.push(b'"');
    for c in String::from_utf8_lossy(text).chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            ' '..='~' => out.push(c as u8),
            _ => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    unit(out, *u);
                }
            }
        }
    }
    out.push(b'"');
}

/// The `o` frame, naming the host later requests should go to when one is configured.
fn open_frame(hostname: Option<&str>) -> Vec<u8> {
    match hostname {
        Some(host) => format!("o{}\n", json!({ "hostname": host })).into_bytes(),
        None => b"o\n".to_vec(),
    }
}

/// A `c[code,"reason"]` frame.
fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    format!("c{}\n", json!([code, reason])).into_bytes()
}

/// The frames refusing a session, as a WebSocket refusal would go: opened, the
/// `pusher:error`, closed with its code.
fn refusal_frames(refused: &Refused) -> Bytes {
    let mut out = b"o\n".to_vec();
    if let Some(message) = &refused.message {
        out.extend_from_slice(b"a[");
        write_ascii_string(&mut out, message);
        out.extend_from_slice(b"]\n");
    }
    out.extend_from_slice(&close_frame(refused.code, &refused.reason));
    Bytes::from(out)
}

/// A complete receive response holding `frames`.
fn frames(frames: Bytes) -> Response<Body> {
    with_receive_headers(Response::new(crate::http::full(frames)))
}

/// The streaming response fed by the session task through `rx`.
fn stream_response(rx: mpsc::Receiver<Chunk>) -> Response<Body> {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    with_receive_headers(Response::new(StreamBody::new(stream).boxed()))
}

fn with_receive_headers(mut resp: Response<Body>) -> Response<Body> {
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/javascript; charset=UTF-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache, no-transform"),
    );
    // nginx would otherwise buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

fn no_content() -> Response<Body> {
    let mut resp = Response::new(crate::http::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp
}

fn no_session() -> Response<Body> {
    fail(
        ErrorCode::NotFound,
        "no such session: it ended or expired; open a new one",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_ascii_with_escapes() {
        let mut out = Vec::new();
        write_ascii_string(&mut out, "a\"b\\c\nd é😀\u{1}".as_bytes());
        let text = String::from_utf8(out).unwrap();
        assert!(text.is_ascii());
        let back: String = serde_json::from_str(&text).unwrap();
        assert_eq!(back, "a\"b\\c\nd é😀\u{1}");
    }

    #[test]
    fn session_paths_are_validated() {
        assert_eq!(
            session_path("123", "abcd0v9z").as_deref(),
            Some("123/abcd0v9z")
        );
        assert!(session_path("1234", "abcd").is_none());
        assert!(session_path("1", "").is_none());
        assert!(session_path("1", "ABC").is_none());
        assert!(session_path("x", "abc").is_none());
    }

    #[test]
    fn frames_are_well_formed() {
        assert_eq!(open_frame(None), b"o\n");
        assert_eq!(
            open_frame(Some("n1.example.com")),
            br#"o{"hostname":"n1.example.com"}
"#
        );
        assert_eq!(
            close_frame(4201, "Pong reply not received"),
            b"c[4201,\"Pong reply not received\"]\n"
        );
    }
}
