//! The Server-Sent Events transport: `GET /sse/{app_key}?channel=…&token=…` opens a stream
//! of native-protocol messages; the client sends commands with
//! `POST /sse/{app_key}/{session}` (the session id comes in the `connected` message).
//!
//! - Every message is one SSE event: `data:` lines holding the JSON message.
//! - When a channel's position changes (a publication on a channel with history, or a
//!   `subscribed` reply on one), the event carries `id:` with the positions of every such
//!   channel of the stream (`channel:offset:epoch|…`). The browser sends the last one back as
//!   `Last-Event-ID` when it reconnects, and the channels named in the URL are subscribed
//!   with recovery from there. Clients that cannot set headers pass `last_event_id=` instead.
//! - A comment line (`: heartbeat`) every `sse.heartbeat_interval` keeps proxies from closing
//!   an idle stream; responses carry `Cache-Control: no-cache` and `X-Accel-Buffering: no`.
//! - When the session ends, a last event `event: close` carries `{"code","reason"}` (the
//!   WebSocket close code and its advice), then the stream ends.
//!
//! The task writes through a small bounded channel to the response body; a client that does
//! not read within `write_timeout` is a slow consumer (4101), like on a WebSocket.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use herald_core::metrics::{LocalHistogram, Metrics};
use herald_core::{OutItem, Session};
use herald_protocol::CloseCode;
use herald_protocol::native::{StreamChange, StreamPosition, stream_change};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use super::commands::Commands;
use super::http_session::{
    self, Chunk, HttpSession, close_notice, format_positions, parse_positions, update_position,
};
use crate::http::{Body, header_str, query_param};
use crate::server::Shared;

/// Chunks that may wait between the session task and the socket.
const BODY_QUEUE: usize = 8;

/// `GET /sse/{app_key}`: open a stream.
pub async fn open(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    ip: IpAddr,
    app_key: &str,
) -> Response<Body> {
    let id = http_session::HttpSessions::new_id();
    let session =
        match http_session::connect(shared, &req, ip, app_key, &id, herald_core::Transport::Sse)
            .await
        {
            Ok(s) => s,
            Err(r) => return r,
        };
    let channels = http_session::requested_channels(&req);
    let resume = header_str(&req, "last-event-id")
        .map(str::to_owned)
        .or_else(|| query_param(&req, "last_event_id"))
        .map(|t| parse_positions(&t))
        .unwrap_or_default();
    let (commands, command_rx) = http_session::command_queue();
    shared.http_sessions.insert(
        &id,
        Arc::new(HttpSession {
            app_key: app_key.into(),
            commands,
            handle: session.handle().clone(),
            poll: None,
            pusher: None,
        }),
    );
    let (tx, rx) = mpsc::channel::<Chunk>(BODY_QUEUE);
    let shared2 = shared.clone();
    shared.tracker.spawn(async move {
        run(&shared2, session, command_rx, tx, channels, resume).await;
        shared2.http_sessions.remove(&id);
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let mut resp = Response::new(StreamBody::new(stream).boxed());
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// Append one SSE event holding `json` (split into `data:` lines at any line break, which
/// JSON allows only as whitespace), with `id` if given.
fn write_event(out: &mut Vec<u8>, id: Option<&str>, event: Option<&str>, json: &[u8]) {
    if let Some(event) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(event.as_bytes());
        out.push(b'\n');
    }
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    for line in json.split(|b| *b == b'\n' || *b == b'\r') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.push(b'\n');
}

async fn run(
    shared: &Arc<Shared>,
    session: Session,
    mut commands: mpsc::Receiver<Vec<Bytes>>,
    tx: mpsc::Sender<Chunk>,
    channels: Vec<String>,
    resume: Vec<(String, StreamPosition)>,
) {
    let handle = session.handle().clone();
    let node = session.node().clone();
    let mut positions: Vec<(String, StreamPosition)> = Vec::new();
    let mut batch = VecDeque::new();
    let mut heartbeat = tokio::time::interval_at(
        Instant::now() + shared.config.sse.heartbeat_interval,
        shared.config.sse.heartbeat_interval,
    );
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The connected message goes out while the initial subscriptions are handled: like every
    // command, they run beside the writer.
    let mut running = Commands::new(session);
    running.run(move |mut session| async move {
        let outcome = http_session::subscribe_initial(&mut session, &channels, &resume).await;
        (session, outcome)
    });
    let mut ended: Option<CloseCode> = None;
    'serve: loop {
        if handle.is_aborted() {
            break 'serve;
        }
        handle.take_into(&mut batch);
        if !batch.is_empty() {
            let (out, closed) = events(&mut batch, &mut positions, node.metrics());
            ended = closed;
            if !out.is_empty() {
                if let Err(code) = http_session::send_chunk(&tx, out, shared, &handle).await {
                    if code == CloseCode::SlowConsumer {
                        handle.close_slow_consumer(node.metrics());
                    }
                    ended.get_or_insert(code);
                    break 'serve;
                }
                // The client is reading: it is alive, whatever it sends.
                handle.touch(node.now_ms());
            }
            if ended.is_some() {
                break 'serve;
            }
        }
        tokio::select! {
            () = handle.notified() => {}
            outcome = running.finished(), if running.is_busy() => {
                if let Err(code) = outcome {
                    handle.close(code);
                }
            }
            command = commands.recv(), if !running.is_busy() => match command {
                Some(texts) => running.handle_texts(texts),
                None => break 'serve,
            },
            () = tx.closed() => break 'serve,
            _ = heartbeat.tick() => {
                if let Err(code) = http_session::send_chunk(&tx, b": heartbeat\n\n".to_vec(), shared, &handle).await {
                    ended = Some(code);
                    break 'serve;
                }
                handle.touch(node.now_ms());
            }
        }
    }
    if let Some(code) = ended {
        tracing::debug!(socket_id = %handle.socket_id, %code, "sse stream ended");
    }
    Box::pin(async { running.into_session().await.close().await }).await;
}

/// Turn the queued items into SSE text: one event per message (with `id:` when a channel's
/// position changed), and a last `close` event. Returns the text and the close code, if the
/// batch ends the stream. Records latency and deliveries.
fn events(
    batch: &mut VecDeque<OutItem>,
    positions: &mut Vec<(String, StreamPosition)>,
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
                let changed = match stream_change(&bytes) {
                    Some(StreamChange::Position(channel, pos)) => {
                        update_position(positions, channel, pos)
                    }
                    Some(StreamChange::Left(channel)) => {
                        let before = positions.len();
                        positions.retain(|(c, _)| *c != channel);
                        positions.len() != before
                    }
                    None => false,
                };
                let id = changed.then(|| format_positions(positions));
                write_event(&mut out, id.as_deref(), None, &bytes);
                delivered += 1;
            }
            OutItem::Pong(_) => {}
            OutItem::Close(code) => {
                write_event(&mut out, None, Some("close"), &close_notice(code));
                closed = Some(code);
                break;
            }
        }
    }
    batch.clear();
    metrics
        .messages_delivered
        .fetch_add(delivered, std::sync::atomic::Ordering::Relaxed);
    if delivered > 0 {
        Metrics::inc(&metrics.socket_writes);
    }
    metrics.publish_to_write.merge(&latency);
    (out, closed)
}
