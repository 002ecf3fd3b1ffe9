//! What the HTTP transports (SSE, long-polling and pusher-js's `xhr_*`) share: the registry of their sessions,
//! the command path (client messages POSTed with the session id), and positions in the form
//! SSE uses for `Last-Event-ID`.
//!
//! An HTTP session is one [`Session`] driven by one task, like a WebSocket connection. Its id
//! is 128 random bits: knowing it is what entitles a request to act for the session, so it is
//! unguessable, announced only to the client (in `connected`), and never logged.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use herald_core::{ConnectRequest, Protocol, Session};
use herald_protocol::native::StreamPosition;
use herald_protocol::{ChannelName, ErrorCode};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::mpsc;

use crate::http::{Body, bearer, error, fail, header_str, json as json_response};
use crate::server::Shared;

/// Command POSTs one session may have waiting for its task; more answer 429.
const COMMAND_QUEUE: usize = 16;

/// Requests one command POST may carry as a JSON array. A client batches what it has to
/// send (every subscribe of a reconnect, say) into one POST; the body size limit
/// (`max_message_size`) bounds the batch as well.
pub const MAX_BATCH: usize = 100;

/// A live HTTP session, as the request handlers see it.
#[derive(Debug)]
pub struct HttpSession {
    /// The app key the session was opened with; commands must name the same.
    pub app_key: Box<str>,
    /// Client messages for the session's task, one batch per POST, handled in order.
    pub commands: mpsc::Sender<Vec<Bytes>>,
    /// The session's handle, to end it (`DELETE`).
    pub handle: Arc<herald_core::SessionHandle>,
    /// Long-polling sessions: the buffer polls read from.
    pub poll: Option<Arc<super::long_poll::PollState>>,
    /// pusher-js HTTP sessions: their receive requests and owner.
    pub pusher: Option<Arc<super::pusher_http::PusherHttpSession>>,
}

/// Every HTTP session of this node, by id.
#[derive(Debug, Default)]
pub struct HttpSessions {
    map: Mutex<HashMap<Box<str>, Arc<HttpSession>>>,
}

impl HttpSessions {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// A fresh, unguessable session id.
    pub fn new_id() -> String {
        format!("{:032x}", rand::random::<u128>())
    }

    /// Register a session.
    pub fn insert(&self, id: &str, session: Arc<HttpSession>) {
        self.map.lock().insert(id.into(), session);
    }

    /// Look a session up, checking it belongs to `app_key`.
    pub fn get(&self, id: &str, app_key: &str) -> Option<Arc<HttpSession>> {
        self.map
            .lock()
            .get(id)
            .filter(|s| &*s.app_key == app_key)
            .cloned()
    }

    /// Forget a session (its task has ended).
    pub fn remove(&self, id: &str) {
        self.map.lock().remove(id);
    }

    /// Sessions registered now.
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A new command queue.
pub fn command_queue() -> (mpsc::Sender<Vec<Bytes>>, mpsc::Receiver<Vec<Bytes>>) {
    mpsc::channel(COMMAND_QUEUE)
}

/// Admit a native-protocol session for an HTTP transport: the same checks as a WebSocket
/// (app, origin, token from `?token=` or `Authorization: Bearer`, limits).
pub async fn connect(
    shared: &Arc<Shared>,
    req: &Request<Incoming>,
    ip: IpAddr,
    app_key: &str,
    session_id: &str,
    transport: herald_core::Transport,
) -> Result<Session, Response<Body>> {
    let token = crate::http::query_param(req, "token").or_else(|| bearer(req).map(str::to_owned));
    let (identity, backend_context) = shared
        .app_backends
        .prepare(
            &shared.node,
            app_key,
            req.headers(),
            ip,
            transport,
            token.as_deref(),
        )
        .await
        .map_err(|r| error(&r.refusal))?;
    shared
        .node
        .connect(ConnectRequest {
            app_key,
            token: token.as_deref(),
            origin: header_str(req, "origin"),
            ip,
            protocol: Protocol::Native,
            transport,
            transport_session: Some(session_id),
            deflate: false,
            identity,
            backend_context,
        })
        .map_err(|r| error(&r.refusal))
}

/// The channels a request names with repeated `channel=` parameters.
pub fn requested_channels<B>(req: &Request<B>) -> Vec<String> {
    req.uri()
        .query()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .filter(|(k, _)| k == "channel")
                .map(|(_, v)| v.into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Subscribe `session` to `channels`, recovering each from `positions` when it is there, as
/// if the client had sent the subscribe requests itself. Returns a close code if the session
/// must end.
pub async fn subscribe_initial(
    session: &mut Session,
    channels: &[String],
    positions: &[(String, StreamPosition)],
) -> Result<(), herald_protocol::CloseCode> {
    for channel in channels {
        let mut request = json!({"type": "subscribe", "channel": channel});
        if let Some((_, pos)) = positions.iter().find(|(c, _)| c == channel) {
            request["since"] = json!({"offset": pos.offset, "epoch": pos.epoch});
        }
        Box::pin(session.handle_text(request.to_string().as_bytes())).await?;
    }
    Ok(())
}

/// `POST /{sse|poll}/{app_key}/{session}`: hand a client message, or a JSON array of up to
/// [`MAX_BATCH`] of them, to the session's task, which handles them in order. Replies
/// arrive on the stream (SSE) or in the next poll (long-polling).
pub async fn command(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    app_key: &str,
    id: &str,
) -> Response<Body> {
    let Some(session) = shared.http_sessions.get(id, app_key) else {
        return fail(
            ErrorCode::NotFound,
            "no such session: it ended or expired; open a new one",
        );
    };
    let body = match shared
        .bodies
        .read(req, shared.config.limits.max_message_size)
        .await
    {
        Ok(b) => b,
        Err(r) => return r,
    };
    let batch = match split_batch(body.into_bytes()) {
        Ok(batch) => batch,
        Err(refusal) => return refusal,
    };
    match session.commands.try_send(batch) {
        Ok(()) => json_response(StatusCode::ACCEPTED, &json!({})),
        Err(mpsc::error::TrySendError::Full(_)) => fail(
            ErrorCode::RateLimited,
            "too many commands in flight for this session; wait for their replies",
        ),
        Err(mpsc::error::TrySendError::Closed(_)) => {
            fail(ErrorCode::NotFound, "the session has ended")
        }
    }
}

/// The requests of one command POST: the body itself, or each element of a JSON array.
/// Elements are passed on as their raw text (slices of the body, not copies), so each is
/// validated like a WebSocket message. The whole array is parsed before anything is queued:
/// a malformed or too long batch is refused and none of it is handled.
fn split_batch(body: Bytes) -> Result<Vec<Bytes>, Response<Body>> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'[') {
        return Ok(vec![body]);
    }
    let items: Vec<&serde_json::value::RawValue> = serde_json::from_slice(&body).map_err(|_| {
        fail(
            ErrorCode::InvalidJson,
            "the body is not a JSON array of requests",
        )
    })?;
    if items.len() > MAX_BATCH {
        return Err(fail(
            ErrorCode::TooManyChannels,
            format!("at most {MAX_BATCH} requests in one batch"),
        ));
    }
    Ok(items
        .iter()
        .map(|raw| body.slice_ref(raw.get().as_bytes()))
        .collect())
}

/// Positions in `Last-Event-ID` form: `channel:offset:epoch`, joined by `|`. Neither
/// separator can occur in a channel name or an epoch.
pub fn format_positions(positions: &[(String, StreamPosition)]) -> String {
    let mut out = String::new();
    for (i, (channel, pos)) in positions.iter().enumerate() {
        if i > 0 {
            out.push('|');
        }
        out.push_str(channel);
        out.push(':');
        out.push_str(&pos.offset.to_string());
        out.push(':');
        out.push_str(&pos.epoch);
    }
    out
}

/// Parse [`format_positions`] output; malformed entries are skipped (the channel is then
/// subscribed without recovery).
pub fn parse_positions(text: &str) -> Vec<(String, StreamPosition)> {
    text.split('|')
        .filter_map(|entry| {
            let mut parts = entry.splitn(3, ':');
            let channel = parts.next()?;
            let offset = parts.next()?.parse().ok()?;
            let epoch = parts.next()?;
            ChannelName::new(channel).ok()?;
            (!epoch.is_empty()).then(|| {
                (
                    channel.to_owned(),
                    StreamPosition {
                        offset,
                        epoch: epoch.to_owned(),
                    },
                )
            })
        })
        .take(super::MAX_RESUME_CHANNELS)
        .collect()
}

/// Record `position` for `channel` in `positions`. Returns whether anything changed. At most
/// [`super::MAX_RESUME_CHANNELS`] channels are kept (a connection holds fewer subscriptions
/// than that; positions of channels it left are removed by the caller).
pub fn update_position(
    positions: &mut Vec<(String, StreamPosition)>,
    channel: String,
    position: StreamPosition,
) -> bool {
    let full = positions.len() >= super::MAX_RESUME_CHANNELS;
    match positions.iter_mut().find(|(c, _)| *c == channel) {
        Some((_, p)) if *p == position => false,
        Some((_, p)) => {
            *p = position;
            true
        }
        None if full => false,
        None => {
            positions.push((channel, position));
            true
        }
    }
}

/// A piece of a streaming response body.
pub type Chunk = Result<hyper::body::Frame<Bytes>, std::convert::Infallible>;

/// Send one chunk, or give up after `write_timeout` (slow consumer), when the client has
/// gone (the body was dropped), or when the server aborts the connection.
pub async fn send_chunk(
    tx: &mpsc::Sender<Chunk>,
    chunk: Vec<u8>,
    shared: &Shared,
    handle: &herald_core::SessionHandle,
) -> Result<(), herald_protocol::CloseCode> {
    use herald_protocol::CloseCode;
    let timeout = shared.config.limits.write_timeout;
    let sent = tokio::time::timeout(
        timeout,
        tx.send(Ok(hyper::body::Frame::data(Bytes::from(chunk)))),
    );
    let aborted = async {
        while !handle.is_aborted() {
            handle.notified().await;
        }
    };
    // Biased: the send is usually ready at once, and then the abort watch is never polled
    // (polling it first would register with the queue's wake-up, on every send).
    tokio::select! {
        biased;
        sent = sent => match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(CloseCode::Normal),
            Err(_) => Err(CloseCode::SlowConsumer),
        },
        () = aborted => Err(CloseCode::GoingAway),
    }
}

/// The close notice an HTTP transport sends when its session ends: the code and reason a
/// WebSocket client would get in its close frame.
pub fn close_notice(code: herald_protocol::CloseCode) -> Vec<u8> {
    serde_json::to_vec(&json!({"code": code.code(), "reason": code.reason()}))
        .expect("JSON serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_bad_entries_are_skipped() {
        let positions = vec![
            (
                "orders.1".to_owned(),
                StreamPosition {
                    offset: 12,
                    epoch: "ab12".into(),
                },
            ),
            (
                "a=b,c;d@e".to_owned(),
                StreamPosition {
                    offset: 0,
                    epoch: "ff".into(),
                },
            ),
        ];
        let text = format_positions(&positions);
        assert_eq!(text, "orders.1:12:ab12|a=b,c;d@e:0:ff");
        assert_eq!(parse_positions(&text), positions);
        assert_eq!(
            parse_positions("x:notanumber:e|ok:1:e|bad name:1:e|y:2:").len(),
            1
        );
    }
}
