//! The WebSocket transport: the upgrade handshake and the one task that moves a connection's
//! bytes in both directions.
//!
//! The task owns the socket and the [`Session`]. It waits for either of two things:
//! - **bytes from the client**: decoded into messages with `herald_protocol::websocket`, text
//!   messages go to [`Session::handle_text`], pings are answered, a close is echoed;
//! - **a wake-up from the outbound queue**: it takes everything queued and writes it in one
//!   vectored write (frame headers built on the stack, payloads shared with every other
//!   subscriber), records latency for the publications in it, and repeats until the queue is
//!   empty.
//!
//! An idle connection holds no buffer: reads go through a stack buffer and only the bytes of
//! an incomplete frame are kept. A write that stalls past `write_timeout`, or a queue that
//! overflows while a write is stalled, ends the connection as a slow consumer (4101).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use herald_core::metrics::{LocalHistogram, Metrics};
use herald_core::{OutItem, Session, SessionHandle};
use herald_protocol::CloseCode;
use herald_protocol::websocket::{
    Decoder, FrameHeader, Message, OpCode, Role, close_payload, encode_frame,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;
use tracing::debug;

/// Transport settings, from the node limits.
#[derive(Debug, Clone, Copy)]
pub struct WsOptions {
    /// Largest message accepted from the client (1009 beyond).
    pub max_message_size: usize,
    /// A write making no progress for this long ends the connection (4101).
    pub write_timeout: Duration,
}

/// Most frames written by one vectored write (two slices each, under the usual IOV_MAX).
const FRAMES_PER_WRITE: usize = 128;
/// Size of the stack buffer reads go through.
const READ_CHUNK: usize = 8192;
/// How long a close frame may take to write before the socket is just dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Serve one upgraded connection until it closes. `prefix` holds bytes the HTTP layer read
/// past the handshake (usually none).
pub async fn serve<IO>(mut io: IO, prefix: Bytes, mut session: Session, opts: WsOptions)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let handle = session.handle().clone();
    let metrics = session.node().metrics.clone();
    let mut decoder = Decoder::new(Role::Server, opts.max_message_size);
    // Copy the (rare) leftover bytes and drop `prefix`: it may pin hyper's whole read
    // buffer for the life of the connection.
    let mut input = BytesMut::from(&prefix[..]);
    drop(prefix);
    let mut batch = VecDeque::new();
    // True once a close is queued: stop reading, finish writing.
    let mut closing = false;

    if !input.is_empty() {
        closing = process_input(&mut session, &mut decoder, &mut input, &handle).await;
    }
    loop {
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
                let drain = drain_queue(&mut io, &handle, &session, &mut batch, &metrics, opts);
                match Box::pin(drain).await {
                    Drained::Open => {}
                    Drained::Closed => break,
                }
            }
            read = read_some(&mut io, &mut input), if !closing => {
                match read {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        closing = process_input(&mut session, &mut decoder, &mut input, &handle).await;
                        if input.is_empty() {
                            // Release the buffer: an idle connection holds nothing.
                            input = BytesMut::new();
                        }
                    }
                }
            }
        }
    }
    // Boxed for the same reason as requests: it runs once, at the end.
    Box::pin(session.close()).await;
}

/// Decode and handle every complete message in `input`. Returns true if the connection
/// is now closing.
async fn process_input(
    session: &mut Session,
    decoder: &mut Decoder,
    input: &mut BytesMut,
    handle: &SessionHandle,
) -> bool {
    loop {
        match decoder.decode(input) {
            Ok(None) => return false,
            Ok(Some(Message::Text(text))) => {
                // Boxed: a request's state (a subscribe awaits presence and the broker) is
                // large and short-lived; inline, every idle connection would carry its size.
                if let Err(code) = Box::pin(session.handle_text(&text)).await {
                    handle.close(code);
                    return true;
                }
            }
            Ok(Some(Message::Binary(_))) => {
                session.touch();
                handle.close(CloseCode::UnsupportedData);
                return true;
            }
            Ok(Some(Message::Ping(payload))) => {
                session.touch();
                handle.push_control(OutItem::Pong(payload));
            }
            Ok(Some(Message::Pong(_))) => session.touch(),
            Ok(Some(Message::Close(_))) => {
                handle.close(CloseCode::Normal);
                return true;
            }
            Err(violation) => {
                debug!(socket_id = %handle.socket_id, %violation, "websocket violation");
                handle.close(violation.code);
                return true;
            }
        }
    }
}

/// Whether the connection survives a drain.
enum Drained {
    Open,
    Closed,
}

/// Write everything queued, repeatedly, until the queue is empty or a close was written.
async fn drain_queue<IO>(
    io: &mut IO,
    handle: &SessionHandle,
    session: &Session,
    batch: &mut VecDeque<OutItem>,
    metrics: &Metrics,
    opts: WsOptions,
) -> Drained
where
    IO: AsyncWrite + Unpin,
{
    loop {
        handle.take_into(batch);
        if batch.is_empty() {
            // Drop the deque's storage so an idle connection holds nothing.
            *batch = VecDeque::new();
            return Drained::Open;
        }
        // If the queue overflows during this write, the producers have already discarded it
        // and queued a close (4101), which is written as soon as this batch is out.
        let written =
            tokio::time::timeout(opts.write_timeout, write_batch(io, batch, session, metrics))
                .await;
        let Ok(close) = written else {
            // The client has not taken this batch within write_timeout. Nothing more can be
            // written (not even a close frame, mid-frame), so drop the socket.
            Metrics::inc(&metrics.slow_consumer_disconnects);
            debug!(socket_id = %handle.socket_id, "write timed out: slow consumer");
            return Drained::Closed;
        };
        batch.clear();
        match close {
            Ok(None) => continue,
            Ok(Some(code)) => {
                let (number, reason) = session.handle().protocol.close_frame(code);
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, write_close(io, number, reason)).await;
                return Drained::Closed;
            }
            Err(_) => return Drained::Closed,
        }
    }
}

/// Write the items of `batch` in order, up to a `Close`, which is returned (not written).
async fn write_batch<IO>(
    io: &mut IO,
    batch: &VecDeque<OutItem>,
    session: &Session,
    metrics: &Metrics,
) -> io::Result<Option<CloseCode>>
where
    IO: AsyncWrite + Unpin,
{
    let now = Instant::now();
    let mut latency = LocalHistogram::default();
    let mut delivered = 0u64;
    let mut close = None;
    // Frames whose payload is produced here (pings) live in this vector during the write.
    let mut owned: Vec<Bytes> = Vec::new();
    let mut frames: Vec<(FrameHeader, &[u8])> =
        Vec::with_capacity(batch.len().min(FRAMES_PER_WRITE));
    for item in batch {
        match item {
            OutItem::Message {
                bytes: _,
                published_at,
            } => {
                if let Some(at) = published_at {
                    latency.observe(now.saturating_duration_since(*at));
                }
                delivered += 1;
            }
            OutItem::Ping => owned.push(session.encode_ping()),
            OutItem::Pong(_) => {}
            OutItem::Close(code) => {
                close = Some(*code);
                break;
            }
        }
    }
    let mut owned_iter = owned.iter();
    for item in batch {
        let (opcode, payload): (OpCode, &[u8]) = match item {
            OutItem::Message { bytes, .. } => (OpCode::Text, bytes),
            OutItem::Ping => match owned_iter.next() {
                Some(b) => (OpCode::Text, b),
                None => continue,
            },
            OutItem::Pong(p) => (OpCode::Pong, p),
            OutItem::Close(_) => break,
        };
        frames.push((FrameHeader::new(opcode, payload.len(), None), payload));
        if frames.len() == FRAMES_PER_WRITE {
            write_frames(io, &frames).await?;
            frames.clear();
        }
    }
    if !frames.is_empty() {
        write_frames(io, &frames).await?;
    }
    io.flush().await?;
    metrics
        .messages_delivered
        .fetch_add(delivered, std::sync::atomic::Ordering::Relaxed);
    Metrics::inc(&metrics.socket_writes);
    metrics.publish_to_write.merge(&latency);
    Ok(close)
}

/// Write frames with one vectored write where the stream supports it, else one copy.
async fn write_frames<IO>(io: &mut IO, frames: &[(FrameHeader, &[u8])]) -> io::Result<()>
where
    IO: AsyncWrite + Unpin,
{
    if io.is_write_vectored() {
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(frames.len() * 2);
        for (header, payload) in frames {
            slices.push(IoSlice::new(header.as_bytes()));
            if !payload.is_empty() {
                slices.push(IoSlice::new(payload));
            }
        }
        let mut slices = &mut slices[..];
        while !slices.is_empty() {
            let n = io.write_vectored(slices).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut slices, n);
        }
        Ok(())
    } else {
        let total: usize = frames
            .iter()
            .map(|(h, p)| h.as_bytes().len() + p.len())
            .sum();
        let mut buf = Vec::with_capacity(total);
        for (header, payload) in frames {
            buf.extend_from_slice(header.as_bytes());
            buf.extend_from_slice(payload);
        }
        io.write_all(&buf).await
    }
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

/// Check a WebSocket upgrade request (RFC 6455 §4.2.1) and build the 101 response.
/// On failure, the HTTP error response to send instead (400, or 426 for a wrong version).
pub fn handshake<B>(
    req: &http::Request<B>,
) -> Result<http::Response<crate::http::Body>, http::Response<crate::http::Body>> {
    use crate::http::{fail, header_has_token, header_str};
    use herald_protocol::ErrorCode;
    use http::{StatusCode, header};

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
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use herald_core::node::Backends;
    use herald_core::{AppSettings, ConnectRequest, Metrics, Node, NodeLimits, Protocol};

    use super::*;

    /// An idle connection costs about the size of its task's future, so keep it small.
    /// Measured at the time of writing: see the assertion message.
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
                transport_session: None,
            })
            .unwrap();
        let (io, _peer) = tokio::io::duplex(64);
        let opts = WsOptions {
            max_message_size: 1024,
            write_timeout: Duration::from_secs(1),
        };
        let fut = serve(io, Bytes::new(), session, opts);
        let size = std::mem::size_of_val(&fut);
        eprintln!("serve future: {size} bytes");
        assert!(
            size <= 900,
            "the per-connection future grew to {size} bytes"
        );
    }
}
