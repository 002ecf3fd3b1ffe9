//! The HTTP long-polling transport, for networks where neither WebSockets nor streaming
//! responses get through.
//!
//! | Method | Path | What |
//! |---|---|---|
//! | POST | `/poll/{app_key}?channel=…&token=…` | open a session: `{"session":"…"}` |
//! | GET | `/poll/{app_key}/{session}?cursor=N` | messages after `N`, waiting up to `poll_timeout` |
//! | POST | `/poll/{app_key}/{session}` | a client message (subscribe, unsubscribe, event, …) |
//! | DELETE | `/poll/{app_key}/{session}` | end the session |
//!
//! Every message the session produces gets the next sequence number and stays buffered until
//! a poll with a `cursor` at or above it acknowledges it, so a poll whose answer was lost is
//! simply repeated with the same cursor. A poll answers at once when something is newer than
//! its cursor, else waits. The buffer is bounded (`max_buffered_messages`, and the node's
//! `max_queue_bytes`): when it overflows, the buffer is dropped, the session's channels are
//! unsubscribed, and the next poll says `"resync": [channels]`: the client subscribes to them
//! again with `since` (its last positions) and recovers what was dropped from history.
//!
//! A session lives while polls come: with no poll open for `session_timeout` it ends (4201),
//! which also ends its presence.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use herald_core::{OutItem, Session};
use herald_protocol::{CloseCode, ErrorCode};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use super::commands::Commands;
use super::http_session::{self, HttpSession, parse_positions};
use crate::http::{Body, fail, json as json_response, query_param};
use crate::server::Shared;

/// What polls read: the session's buffered messages and state.
#[derive(Debug)]
pub struct PollState {
    inner: Mutex<PollInner>,
    /// Wakes waiting polls when something is added.
    notify: Notify,
}

#[derive(Debug)]
struct PollInner {
    /// Messages not yet acknowledged, oldest first, with their sequence numbers.
    messages: VecDeque<(u64, Bytes)>,
    /// Their total size.
    bytes: usize,
    /// The sequence number of the newest message (0 before the first).
    last_seq: u64,
    /// Channels unsubscribed by an overflow, reported by the next poll.
    resync: Option<Vec<String>>,
    /// Why the session ended, once it has.
    closed: Option<CloseCode>,
    /// Polls waiting now.
    open_polls: u32,
    /// When the last poll ended (or the session opened).
    last_poll: Instant,
    /// Bumped by every poll; a waiting poll that sees a newer one answers at once.
    generation: u64,
}

impl PollState {
    fn new() -> Self {
        Self {
            inner: Mutex::new(PollInner {
                messages: VecDeque::new(),
                bytes: 0,
                last_seq: 0,
                resync: None,
                closed: None,
                open_polls: 0,
                last_poll: Instant::now(),
                generation: 0,
            }),
            notify: Notify::new(),
        }
    }
}

/// `POST /poll/{app_key}`: open a session.
pub async fn open(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    ip: IpAddr,
    app_key: &str,
) -> Response<Body> {
    let id = http_session::HttpSessions::new_id();
    let session = match http_session::connect(
        shared,
        &req,
        ip,
        app_key,
        &id,
        herald_core::Transport::LongPoll,
    )
    .await
    {
        Ok(s) => s,
        Err(r) => return r,
    };
    let channels = http_session::requested_channels(&req);
    let resume = query_param(&req, "last_event_id")
        .map(|t| parse_positions(&t))
        .unwrap_or_default();
    let (commands, command_rx) = http_session::command_queue();
    let state = Arc::new(PollState::new());
    shared.http_sessions.insert(
        &id,
        Arc::new(HttpSession {
            app_key: app_key.into(),
            commands,
            handle: session.handle().clone(),
            poll: Some(state.clone()),
            pusher: None,
        }),
    );
    let shared2 = shared.clone();
    let id2 = id.clone();
    shared.tracker.spawn(async move {
        run(&shared2, session, command_rx, state, channels, resume).await;
        // Keep the ended session long enough for a poll to read why it ended.
        let linger = shared2.config.long_poll.poll_timeout;
        tokio::select! {
            () = tokio::time::sleep(linger) => {}
            () = shared2.shutdown.cancelled() => {}
        }
        shared2.http_sessions.remove(&id2);
    });
    json_response(StatusCode::OK, &json!({ "session": id }))
}

/// `GET /poll/{app_key}/{session}?cursor=N`.
pub async fn poll(
    shared: &Arc<Shared>,
    req: &Request<Incoming>,
    app_key: &str,
    id: &str,
) -> Response<Body> {
    let Some(state) = shared
        .http_sessions
        .get(id, app_key)
        .and_then(|s| s.poll.clone())
    else {
        return fail(
            ErrorCode::NotFound,
            "no such session: it ended or expired; open a new one",
        );
    };
    let cursor = match query_param(req, "cursor").map(|c| c.parse::<u64>()) {
        None => 0,
        Some(Ok(c)) => c,
        Some(Err(_)) => {
            return fail(
                ErrorCode::InvalidRequest,
                "cursor must be a non-negative integer",
            );
        }
    };
    let generation = {
        let mut inner = state.inner.lock();
        // Everything up to the cursor has been received: forget it.
        while inner
            .messages
            .front()
            .is_some_and(|(seq, _)| *seq <= cursor)
        {
            let (_, bytes) = inner.messages.pop_front().expect("checked");
            inner.bytes -= bytes.len();
        }
        inner.generation += 1;
        inner.open_polls += 1;
        inner.generation
    };
    // From here the poll counts as open until it ends, however it ends: a client that hangs
    // up mid-wait cancels this future, and the guard still closes the count.
    let _open = OpenPoll(&state);
    // Wake an older poll of this session, which then answers at once.
    state.notify.notify_waiters();
    let deadline = Instant::now() + shared.config.long_poll.poll_timeout;
    loop {
        let notified = state.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let has_news = {
            let inner = state.inner.lock();
            inner.last_seq > cursor
                || inner.resync.is_some()
                || inner.closed.is_some()
                || inner.generation != generation
        };
        if has_news {
            break answer(&state, cursor);
        }
        tokio::select! {
            () = &mut notified => {}
            () = tokio::time::sleep_until(deadline) => break answer(&state, cursor),
            () = shared.shutdown.cancelled() => break answer(&state, cursor),
        }
    }
}

/// One poll's place in `open_polls`, given back on drop (so also when the poll's future is
/// cancelled because its client went away): the session then expires `session_timeout`
/// after its last poll ended, as it must.
struct OpenPoll<'a>(&'a PollState);

impl Drop for OpenPoll<'_> {
    fn drop(&mut self) {
        let mut inner = self.0.inner.lock();
        inner.open_polls -= 1;
        inner.last_poll = Instant::now();
    }
}

/// The answer to a poll at `cursor`: `{"cursor":…,"messages":[…]}` plus `resync` or `closed`.
fn answer(state: &PollState, cursor: u64) -> Response<Body> {
    let mut inner = state.inner.lock();
    let mut out = Vec::with_capacity(64 + inner.bytes);
    out.extend_from_slice(b"{\"cursor\":");
    herald_protocol::json::write_u64(&mut out, inner.last_seq.max(cursor));
    out.extend_from_slice(b",\"messages\":[");
    let mut first = true;
    for (seq, bytes) in &inner.messages {
        if *seq > cursor {
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(bytes);
        }
    }
    out.push(b']');
    if let Some(channels) = inner.resync.take() {
        out.extend_from_slice(b",\"resync\":");
        out.extend_from_slice(&serde_json::to_vec(&channels).expect("JSON serialises"));
    }
    if let Some(code) = inner.closed {
        out.extend_from_slice(b",\"closed\":");
        out.extend_from_slice(&http_session::close_notice(code));
    }
    out.push(b'}');
    drop(inner);
    let mut resp = Response::new(crate::http::full(out));
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    resp
}

/// `DELETE /poll/{app_key}/{session}`.
pub fn close(shared: &Arc<Shared>, app_key: &str, id: &str) -> Response<Body> {
    match shared.http_sessions.get(id, app_key) {
        Some(session) => {
            session.handle.close(CloseCode::Normal);
            json_response(StatusCode::OK, &json!({}))
        }
        None => fail(ErrorCode::NotFound, "no such session"),
    }
}

/// Drive one long-polling session until it ends.
async fn run(
    shared: &Arc<Shared>,
    mut session: Session,
    mut commands: mpsc::Receiver<Vec<Bytes>>,
    state: Arc<PollState>,
    channels: Vec<String>,
    resume: Vec<(String, herald_protocol::native::StreamPosition)>,
) {
    let handle = session.handle().clone();
    let node = session.node().clone();
    let session_timeout = shared.config.long_poll.session_timeout;
    let bounds = (
        shared.config.long_poll.max_buffered_messages,
        shared.config.limits.max_queue_bytes,
    );
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut batch = VecDeque::new();
    // A replay must fit in half the buffer, or it would overflow it and ask for a resync
    // that replays again.
    session.limit_recovery(bounds.0 / 2, bounds.1 / 2);
    // Like every command, the initial subscriptions run beside the writer.
    let mut running = Commands::new(session);
    running.run(move |mut session| async move {
        let outcome = http_session::subscribe_initial(&mut session, &channels, &resume).await;
        (session, outcome)
    });
    // Set when the buffer overflowed: the resync runs as soon as no command does.
    let mut resync_due = false;
    let ended = 'serve: loop {
        if handle.is_aborted() {
            break 'serve CloseCode::GoingAway;
        }
        handle.take_into(&mut batch);
        if !batch.is_empty() {
            let buffered = buffer(&state, &mut batch, bounds, node.metrics());
            resync_due |= buffered.overflowed;
            state.notify.notify_waiters();
            if let Some(code) = buffered.closed {
                break 'serve code;
            }
        }
        if resync_due && !running.is_busy() {
            resync_due = false;
            let state = state.clone();
            running.run(move |session| resync(session, state));
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
                None => break 'serve CloseCode::Normal,
            },
            _ = tick.tick() => {
                let (open, idle) = {
                    let inner = state.inner.lock();
                    (inner.open_polls, inner.last_poll.elapsed())
                };
                if open == 0 && idle > session_timeout {
                    handle.close(CloseCode::ActivityTimeout);
                } else {
                    // A client that keeps polling is alive, whatever it sends.
                    handle.touch(node.now_ms());
                }
            }
        }
    };
    state.inner.lock().closed.get_or_insert(ended);
    state.notify.notify_waiters();
    Box::pin(async { running.into_session().await.close().await }).await;
}

/// What moving a batch into the poll buffer did.
struct Buffered {
    /// The buffer overflowed: what the client had not taken was dropped.
    overflowed: bool,
    /// The batch ended the session with this code.
    closed: Option<CloseCode>,
}

/// Move the queued items into the poll buffer, within its bounds (`max_messages`,
/// `max_bytes`); on overflow drop what the client has not taken (it recovers it).
fn buffer(
    state: &PollState,
    batch: &mut VecDeque<OutItem>,
    (max_messages, max_bytes): (usize, usize),
    metrics: &herald_core::Metrics,
) -> Buffered {
    let mut overflowed = false;
    let mut closed = None;
    let mut delivered = 0u64;
    let mut inner = state.inner.lock();
    while let Some(item) = batch.pop_front() {
        match item {
            OutItem::Message { bytes, .. } => {
                if overflowed {
                    continue;
                }
                if inner.messages.len() >= max_messages || inner.bytes + bytes.len() > max_bytes {
                    inner.messages.clear();
                    inner.bytes = 0;
                    overflowed = true;
                    continue;
                }
                inner.last_seq += 1;
                inner.bytes += bytes.len();
                let seq = inner.last_seq;
                inner.messages.push_back((seq, bytes));
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
    if let Some(code) = closed {
        inner.closed = Some(code);
    }
    drop(inner);
    metrics
        .messages_delivered
        .fetch_add(delivered, std::sync::atomic::Ordering::Relaxed);
    Buffered { overflowed, closed }
}

/// After an overflow: unsubscribe every channel (their unsubscribe replies follow in the
/// buffer) and tell the next poll to resync them, so the client subscribes again with
/// `since` and recovers what was dropped from history.
async fn resync(mut session: Session, state: Arc<PollState>) -> (Session, Result<(), CloseCode>) {
    let dropped: Vec<String> = session
        .channels()
        .into_iter()
        .map(|c| c.as_str().to_owned())
        .collect();
    for channel in &dropped {
        let _ = session.unsubscribe(channel).await;
    }
    state.inner.lock().resync = Some(dropped);
    state.notify.notify_waiters();
    (session, Ok(()))
}
