//! The WebSocket transport: the upgrade handshake and the one task that moves a connection's
//! bytes in both directions.
//!
//! The task owns the socket, and the [`herald_core::Session`] through [`Commands`]. It waits for any of
//! three things, and none of them waits for another:
//! - **a wake-up from the outbound queue**: it takes everything queued and writes it in one
//!   vectored write (frame headers built on the stack, payloads shared with every other
//!   subscriber), records latency for the publications in it, and repeats until the queue is
//!   empty;
//! - **bytes from the client** (while no command runs): decoded with
//!   `herald_protocol::websocket`; pings are answered, a close is echoed, and text messages
//!   are handed to the session as one command;
//! - **the end of a command**: the session comes back, and any further buffered messages
//!   are handed over.
//!
//! Writing never waits for command handling: a subscribe that waits on a backend delays
//! nothing already queued for the connection.
//!
//! An idle connection holds no buffer: reads go through a stack buffer and only the bytes of
//! an incomplete frame are kept, for at most `incomplete_message_timeout` (4202 after). A
//! write that stalls past `write_timeout` ends the connection as a slow consumer. When the
//! queue overflows during a write, the write stops at the end of the frame it is in, and the
//! client gets the 4101 close frame if its socket still takes bytes. Either way the session
//! is released (its channels, presence and connection slot) before the socket's last bytes
//! are attempted, so a slow client never lingers in the counts.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use herald_core::metrics::{LocalHistogram, Metrics};
use herald_core::{Node, OutItem, PushOutcome, SessionHandle};
use herald_protocol::CloseCode;
use herald_protocol::websocket::{
    Decoder, FrameHeader, Message, OpCode, Role, close_payload, encode_frame,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;
use tracing::debug;

use super::commands::Commands;

/// Transport settings, from the node limits.
#[derive(Debug, Clone, Copy)]
pub struct WsOptions {
    /// Largest message accepted from the client (1009 beyond).
    pub max_message_size: usize,
    /// A write making no progress for this long ends the connection (4101).
    pub write_timeout: Duration,
    /// A message the client began must be complete within this (4202 after).
    pub incomplete_message_timeout: Duration,
}

/// Most frames written by one vectored write (two slices each, under the usual IOV_MAX).
const FRAMES_PER_WRITE: usize = 128;
/// Size of the stack buffer reads go through.
const READ_CHUNK: usize = 8192;
/// How long the last bytes (a close frame) may take at least before the socket is dropped
/// (`write_timeout` when that is longer).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the connection has received and not yet handled.
struct Input {
    /// Turns bytes into messages; holds a fragmented message's first parts.
    decoder: Decoder,
    /// Bytes of an incomplete frame (empty, with no allocation, when there is none).
    bytes: BytesMut,
    /// Since when a frame or fragmented message has been incomplete.
    incomplete_since: Option<Instant>,
}

/// Serve one upgraded connection until it closes. `prefix` holds bytes the HTTP layer read
/// past the handshake (usually none).
///
/// The session comes inside its command runner ([`Commands::new`]), so its bytes are stored
/// once in the connection's task.
pub async fn serve<IO>(mut io: IO, prefix: Bytes, mut commands: Commands, opts: WsOptions)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let Some((handle, node)) = commands
        .idle()
        .map(|s| (s.handle().clone(), s.node().clone()))
    else {
        return;
    };
    // Copy the (rare) leftover bytes and drop `prefix`: it may pin hyper's whole read
    // buffer for the life of the connection.
    let mut input = Input {
        // A connection that negotiated permessage-deflate may send compressed messages
        // (inflated within `max_message_size`); its handle says so, as it tells the fan-out
        // to send it compressed publications.
        decoder: Decoder::new(Role::Server, opts.max_message_size)
            .with_deflate(handle.negotiated_deflate()),
        bytes: BytesMut::from(&prefix[..]),
        incomplete_since: None,
    };
    drop(prefix);
    let mut batch = VecDeque::new();
    // True once a close is queued: stop reading, finish writing.
    let mut closing =
        !input.bytes.is_empty() && dispatch(&mut input, &handle, &node, &mut commands, opts);
    let farewell = loop {
        tokio::select! {
            biased;
            () = handle.notified() => {
                // Let the fan-out that woke us queue more before we write: a yield costs
                // microseconds and turns many small writes into fewer large ones (measured:
                // publish API 45k -> 54k publishes/s with one busy subscriber).
                tokio::task::yield_now().await;
                // Boxed: the write path's state (write futures, a timeout) exists only while
                // writing; inline, it would sit in every idle connection. One allocation per
                // wake-up is noise next to the write syscall it accompanies.
                let drain = drain_queue(&mut io, &handle, &mut batch, node.metrics(), opts);
                match Box::pin(drain).await {
                    Drained::Open => {}
                    Drained::Closed(farewell) => break farewell,
                }
            }
            outcome = commands.finished(), if commands.is_busy() => {
                if let Err(code) = outcome {
                    handle.close(code);
                    closing = true;
                } else if !closing {
                    closing = dispatch(&mut input, &handle, &node, &mut commands, opts);
                }
            }
            read = read_some(&mut io, &mut input.bytes), if !closing && !commands.is_busy() => {
                match read {
                    Ok(0) | Err(_) => break None,
                    Ok(_) => {
                        closing = dispatch(&mut input, &handle, &node, &mut commands, opts);
                        if input.bytes.is_empty() {
                            // Release the buffer: an idle connection holds nothing.
                            input.bytes = BytesMut::new();
                        }
                    }
                }
            }
        }
    };
    // Release the session first (channels, presence, the connection's slot), then try the
    // socket's last bytes. Boxed: this runs once, at the end.
    Box::pin(async {
        commands.into_session().await.close().await;
        if let Some(bytes) = farewell {
            // As patient as any write: a slow reader still gets its 4101. The session is
            // already released, so waiting costs only the socket.
            let patience = opts.write_timeout.max(CLOSE_TIMEOUT);
            tokio::select! {
                _ = tokio::time::timeout(patience, write_last(&mut io, &bytes)) => {}
                () = aborted(&handle) => {}
            }
        }
    })
    .await;
}

/// Decode every complete message in `input`: answer pings, note pongs, start a close, and
/// hand text messages to the session as one command. Returns true if the connection is now
/// closing.
fn dispatch(
    input: &mut Input,
    handle: &SessionHandle,
    node: &Node,
    commands: &mut Commands,
    opts: WsOptions,
) -> bool {
    let mut texts = Vec::new();
    let closing = loop {
        match input.decoder.decode(&mut input.bytes) {
            Ok(None) => break false,
            Ok(Some(Message::Text(text))) => texts.push(text),
            Ok(Some(Message::Binary(_))) => {
                handle.touch(node.now_ms());
                handle.close(CloseCode::UnsupportedData);
                break true;
            }
            Ok(Some(Message::Ping(payload))) => {
                handle.touch(node.now_ms());
                let pong = OutItem::Pong(payload);
                if handle.push_control(pong, node.metrics()) == PushOutcome::SlowConsumer {
                    break true;
                }
            }
            Ok(Some(Message::Pong(_))) => handle.touch(node.now_ms()),
            Ok(Some(Message::Close(_))) => {
                handle.close(CloseCode::Normal);
                break true;
            }
            Err(violation) => {
                debug!(socket_id = %handle.socket_id, %violation, "websocket violation");
                handle.close(violation.code);
                break true;
            }
        }
    };
    if !texts.is_empty() {
        commands.handle_texts(texts);
    }
    closing || incomplete_for_too_long(input, handle, opts)
}

/// Whether a message the client began has stayed incomplete past its time (and if so, close
/// with 4202). Checked whenever bytes arrive: a client that sends nothing is closed by the
/// activity timeout instead.
fn incomplete_for_too_long(input: &mut Input, handle: &SessionHandle, opts: WsOptions) -> bool {
    if input.bytes.is_empty() && !input.decoder.in_message() {
        input.incomplete_since = None;
        return false;
    }
    let since = *input.incomplete_since.get_or_insert_with(Instant::now);
    if since.elapsed() < opts.incomplete_message_timeout {
        return false;
    }
    debug!(socket_id = %handle.socket_id, "message not completed in time");
    handle.close(CloseCode::IncompleteMessage);
    true
}

/// Whether the connection survives a drain, and if not, the last bytes to try.
enum Drained {
    /// Everything queued was written.
    Open,
    /// The connection ends; write these bytes (the rest of a frame, a close frame) if the
    /// socket takes them.
    Closed(Option<Vec<u8>>),
}

/// How writing one batch went.
enum Written {
    /// Everything up to the batch's close (if any) was written.
    All(Option<CloseCode>),
    /// The queue overflowed during the write, which stopped: these are the unwritten
    /// bytes of the frame it was in.
    Cut(Vec<u8>),
    /// No progress within `write_timeout`.
    TimedOut,
    /// The socket failed.
    Failed,
}

/// Write everything queued, repeatedly, until the queue is empty or the connection ends.
async fn drain_queue<IO>(
    io: &mut IO,
    handle: &SessionHandle,
    batch: &mut VecDeque<OutItem>,
    metrics: &Metrics,
    opts: WsOptions,
) -> Drained
where
    IO: AsyncWrite + Unpin,
{
    let close_frame = |code: CloseCode| {
        let (number, reason) = handle.protocol.close_frame(code);
        let mut frame = Vec::with_capacity(130);
        encode_frame(
            &mut frame,
            OpCode::Close,
            &close_payload(number, reason),
            None,
        );
        frame
    };
    loop {
        if handle.is_aborted() {
            return Drained::Closed(None);
        }
        // Pushes do not wake this task while it writes what it took: it looks again here.
        handle.take_batch_into(batch);
        if batch.is_empty() {
            // Drop the deque's storage so an idle connection holds nothing.
            *batch = VecDeque::new();
            return Drained::Open;
        }
        let written = write_batch(io, handle, batch, metrics, opts.write_timeout).await;
        batch.clear();
        match written {
            Written::All(None) => continue,
            Written::All(Some(code)) => return Drained::Closed(Some(close_frame(code))),
            Written::Cut(mut rest) => {
                debug!(socket_id = %handle.socket_id, "queue overflowed during a write: slow consumer");
                rest.extend_from_slice(&close_frame(CloseCode::SlowConsumer));
                return Drained::Closed(Some(rest));
            }
            Written::TimedOut => {
                // The client took nothing within write_timeout. Nothing more can be written
                // (not even a close frame, mid-frame), so drop the socket.
                handle.close_slow_consumer(metrics);
                debug!(socket_id = %handle.socket_id, "write timed out: slow consumer");
                return Drained::Closed(None);
            }
            Written::Failed => return Drained::Closed(None),
        }
    }
}

/// Write the items of `batch` in order, up to a `Close`, which is returned (not written).
async fn write_batch<IO>(
    io: &mut IO,
    handle: &SessionHandle,
    batch: &VecDeque<OutItem>,
    metrics: &Metrics,
    write_timeout: Duration,
) -> Written
where
    IO: AsyncWrite + Unpin,
{
    let now = Instant::now();
    let deadline = now + write_timeout;
    let mut latency = LocalHistogram::default();
    let mut delivered = 0u64;
    let mut close = None;
    let mut frames: Vec<(FrameHeader, &[u8])> =
        Vec::with_capacity(batch.len().min(FRAMES_PER_WRITE));
    for item in batch {
        let header = match item {
            OutItem::Message {
                bytes,
                compressed,
                published_at,
            } => {
                if let Some(at) = published_at {
                    latency.observe(now.saturating_duration_since(*at));
                }
                delivered += 1;
                if *compressed {
                    (
                        FrameHeader::compressed(OpCode::Text, bytes.len(), None),
                        &bytes[..],
                    )
                } else {
                    (
                        FrameHeader::new(OpCode::Text, bytes.len(), None),
                        &bytes[..],
                    )
                }
            }
            OutItem::Pong(p) => (FrameHeader::new(OpCode::Pong, p.len(), None), &p[..]),
            OutItem::Close(code) => {
                close = Some(*code);
                break;
            }
        };
        frames.push(header);
        if frames.len() == FRAMES_PER_WRITE {
            if let Some(stop) = write_frames(io, handle, &frames, deadline).await {
                return stop;
            }
            frames.clear();
        }
    }
    if !frames.is_empty()
        && let Some(stop) = write_frames(io, handle, &frames, deadline).await
    {
        return stop;
    }
    // A plain socket's flush is always ready; TLS may have bytes left to write.
    let flushed = match ready_now(io.flush()).await {
        Some(flushed) => Ok(flushed),
        None => tokio::time::timeout_at(deadline, io.flush()).await,
    };
    match flushed {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Written::Failed,
        Err(_) => return Written::TimedOut,
    }
    metrics
        .messages_delivered
        .fetch_add(delivered, std::sync::atomic::Ordering::Relaxed);
    Metrics::inc(&metrics.socket_writes);
    metrics.publish_to_write.merge(&latency);
    Written::All(close)
}

/// Write frames with vectored writes where the stream supports them (else one copy), by
/// `deadline`; stop at the end of the current frame if the queue overflows meanwhile.
/// `None` when all were written.
async fn write_frames<IO>(
    io: &mut IO,
    handle: &SessionHandle,
    frames: &[(FrameHeader, &[u8])],
    deadline: Instant,
) -> Option<Written>
where
    IO: AsyncWrite + Unpin,
{
    let owned;
    let mut slices: Vec<IoSlice<'_>> = if io.is_write_vectored() {
        let mut slices = Vec::with_capacity(frames.len() * 2);
        for (header, payload) in frames {
            slices.push(IoSlice::new(header.as_bytes()));
            if !payload.is_empty() {
                slices.push(IoSlice::new(payload));
            }
        }
        slices
    } else {
        let mut buf = Vec::new();
        for (header, payload) in frames {
            buf.extend_from_slice(header.as_bytes());
            buf.extend_from_slice(payload);
        }
        owned = buf;
        vec![IoSlice::new(&owned)]
    };
    let mut remaining = &mut slices[..];
    let mut written = 0usize;
    while !remaining.is_empty() {
        // Most writes complete at once: try before setting up the wait (a timer and the
        // queue's wake-up), which costs more than the rest of a small write.
        let result = match ready_now(io.write_vectored(remaining)).await {
            Some(result) => result,
            None => tokio::select! {
                biased;
                result = io.write_vectored(remaining) => result,
                // While a batch is written, producers wake the writer only to overflow its
                // queue, close or abort it (`take_batch_into`); a close waits for this write.
                () = handle.notified() => {
                    if handle.is_aborted() {
                        return Some(Written::Failed);
                    }
                    if handle.closing() == Some(CloseCode::SlowConsumer) {
                        return Some(Written::Cut(rest_of_frame(frames, written)));
                    }
                    continue;
                }
                () = tokio::time::sleep_until(deadline) => return Some(Written::TimedOut),
            },
        };
        match result {
            Ok(0) | Err(_) => return Some(Written::Failed),
            Ok(n) => {
                written += n;
                IoSlice::advance_slices(&mut remaining, n);
            }
        }
    }
    None
}

/// Poll `fut` once: its output if it is ready now, `None` if it would wait. (The pending
/// poll leaves this task's waker registered, which is harmless: the caller waits on the
/// same operation next.)
async fn ready_now<F: Future>(fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    poll_fn(|cx| {
        Poll::Ready(match fut.as_mut().poll(cx) {
            Poll::Ready(output) => Some(output),
            Poll::Pending => None,
        })
    })
    .await
}

/// The unwritten bytes of the frame in which the first `written` bytes of `frames` end
/// (empty at a frame boundary).
fn rest_of_frame(frames: &[(FrameHeader, &[u8])], written: usize) -> Vec<u8> {
    let mut start = 0;
    for (header, payload) in frames {
        let len = header.as_bytes().len() + payload.len();
        if written < start + len {
            let offset = written - start;
            if offset == 0 {
                return Vec::new();
            }
            let mut frame = Vec::with_capacity(len);
            frame.extend_from_slice(header.as_bytes());
            frame.extend_from_slice(payload);
            return frame.split_off(offset);
        }
        start += len;
    }
    Vec::new()
}

/// Complete when the connection is aborted (the shutdown grace period is over).
async fn aborted(handle: &SessionHandle) {
    while !handle.is_aborted() {
        handle.notified().await;
    }
}

/// Write the connection's last bytes and shut the write side down.
async fn write_last<IO>(io: &mut IO, bytes: &[u8]) -> io::Result<()>
where
    IO: AsyncWrite + Unpin,
{
    io.write_all(bytes).await?;
    io.flush().await?;
    io.shutdown().await
}

/// Write a close frame and shut the write side down.
async fn write_close<IO>(io: &mut IO, code: u16, reason: &str) -> io::Result<()>
where
    IO: AsyncWrite + Unpin,
{
    let mut frame = Vec::with_capacity(130);
    encode_frame(
        &mut frame,
        OpCode::Close,
        &close_payload(code, reason),
        None,
    );
    io.write_all(&frame).await?;
    io.flush().await?;
    io.shutdown().await
}

/// Read whatever is available into `input`, through a stack buffer.
async fn read_some<IO>(io: &mut IO, input: &mut BytesMut) -> io::Result<usize>
where
    IO: AsyncRead + Unpin,
{
    poll_fn(|cx| {
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut buf = ReadBuf::uninit(&mut chunk);
        ready!(Pin::new(&mut *io).poll_read(cx, &mut buf))?;
        input.extend_from_slice(buf.filled());
        Poll::Ready(Ok(buf.filled().len()))
    })
    .await
}

/// Tell a refused client why, then close with the refusal's code.
pub async fn refuse<IO>(mut io: IO, refused: crate::transport::Refused)
where
    IO: AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        if let Some(message) = &refused.message {
            let mut frame = Vec::new();
            encode_frame(&mut frame, OpCode::Text, message, None);
            io.write_all(&frame).await?;
        }
        write_close(&mut io, refused.code, &refused.reason).await
    })
    .await;
}

/// Check a WebSocket upgrade request (RFC 6455 §4.2.1) and build the 101 response,
/// accepting permessage-deflate (RFC 7692) when `deflate` allows it and the client offers
/// it; the response says whether it was accepted. On failure, the HTTP error response to
/// send instead (400, or 426 for a wrong version).
pub fn handshake<B>(
    req: &http::Request<B>,
    deflate: bool,
) -> Result<http::Response<crate::http::Body>, http::Response<crate::http::Body>> {
    use crate::http::{fail, header_has_token, header_str};
    use herald_protocol::ErrorCode;
    use http::{StatusCode, header};

    // RFC 6455 §4.1: the opening handshake is an HTTP/1.1 (or later) GET. Found by the
    // `http_request` fuzz target: an HTTP/1.0 request was upgraded.
    if req.version() < http::Version::HTTP_11 {
        return Err(fail(
            ErrorCode::InvalidRequest,
            "a WebSocket upgrade needs HTTP/1.1",
        ));
    }
    if !header_has_token(req, "upgrade", "websocket")
        || !header_has_token(req, "connection", "upgrade")
    {
        return Err(fail(
            ErrorCode::InvalidRequest,
            "this endpoint needs a WebSocket upgrade (Upgrade: websocket, Connection: Upgrade)",
        ));
    }
    if header_str(req, "sec-websocket-version") != Some("13") {
        let mut resp = fail(
            ErrorCode::InvalidRequest,
            "only WebSocket version 13 is supported",
        );
        *resp.status_mut() = StatusCode::UPGRADE_REQUIRED;
        resp.headers_mut().insert(
            "sec-websocket-version",
            http::HeaderValue::from_static("13"),
        );
        return Err(resp);
    }
    let Some(key) = header_str(req, "sec-websocket-key")
        .filter(|k| herald_protocol::websocket::is_valid_client_key(k))
    else {
        return Err(fail(
            ErrorCode::InvalidRequest,
            "missing or invalid Sec-WebSocket-Key",
        ));
    };
    let accept = herald_protocol::websocket::accept_key(key);
    let mut resp = http::Response::new(crate::http::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, http::HeaderValue::from_static("websocket"));
    h.insert(
        header::CONNECTION,
        http::HeaderValue::from_static("Upgrade"),
    );
    h.insert(
        "sec-websocket-accept",
        http::HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    let offers = req
        .headers()
        .get_all("sec-websocket-extensions")
        .iter()
        .filter_map(|v| v.to_str().ok());
    if deflate && herald_protocol::deflate::negotiate(offers) {
        h.insert(
            "sec-websocket-extensions",
            http::HeaderValue::from_static(herald_protocol::deflate::EXTENSION_RESPONSE),
        );
    }
    Ok(resp)
}

/// Whether a 101 response from [`handshake`] accepted permessage-deflate.
pub fn accepted_deflate(resp: &http::Response<crate::http::Body>) -> bool {
    resp.headers().contains_key("sec-websocket-extensions")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use herald_core::node::Backends;
    use herald_core::{AppSettings, ConnectRequest, Metrics, Node, NodeLimits, Protocol};

    use super::*;

    /// An idle connection costs about the size of its task's future, so keep it small.
    /// Measured at the time of writing: see the assertion message. 896 bytes until the
    /// session took one boxed pointer for what only some apps' connections carry (a
    /// subscribe proxy's context, a lifecycle record): 912 since, with the padding.
    #[tokio::test]
    async fn session_future_stays_within_its_memory_budget() {
        let node = Node::start(
            NodeLimits::default(),
            vec![AppSettings::development()],
            Backends::memory(1, 16),
            Arc::new(Metrics::new()),
        )
        .unwrap();
        let session = node
            .connect(ConnectRequest {
                app_key: "herald-dev-key",
                token: None,
                origin: None,
                ip: "127.0.0.1".parse().unwrap(),
                protocol: Protocol::Native,
                transport: herald_core::Transport::WebSocket,
                transport_session: None,
                deflate: true,
                identity: None,
                backend_context: None,
            })
            .unwrap();
        let (io, _peer) = tokio::io::duplex(64);
        let opts = WsOptions {
            max_message_size: 1024,
            write_timeout: Duration::from_secs(1),
            incomplete_message_timeout: Duration::from_secs(1),
        };
        let fut = serve(io, Bytes::new(), Commands::new(session), opts);
        let size = std::mem::size_of_val(&fut);
        eprintln!("serve future: {size} bytes");
        assert!(
            size <= 912,
            "the per-connection future grew to {size} bytes"
        );
    }
}
