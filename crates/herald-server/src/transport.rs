//! Transports: they move bytes between a client and its [`herald_core::Session`], and
//! nothing else. Every protocol decision is the session's.
//!
//! # Memory per connection
//! A connection is one tokio task whose future holds all of its state, so the size of that
//! future is most of what an idle connection costs. rustc does not overlap the states of
//! different `.await`s well: a function awaiting three stream types inline costs the sum of
//! the three. So only the common path (plain TCP) is awaited inline; TLS, other streams and
//! refusals are boxed, which costs one allocation on their rarer paths.

pub mod commands;
pub mod http_session;
pub mod long_poll;
pub mod pusher_http;
pub mod sse;
pub mod websocket;

/// Most channels an SSE `Last-Event-ID` (or `last_event_id`) may name.
pub const MAX_RESUME_CHANNELS: usize = 200;

/// A refused connection, ready for the wire: an optional message explaining why, then a
/// close frame with the code the client's protocol uses.
#[derive(Debug, Clone)]
pub struct Refused {
    /// A protocol message sent before closing (a native `error`, a `pusher:error`).
    pub message: Option<Vec<u8>>,
    /// The close code.
    pub code: u16,
    /// The close reason.
    pub reason: String,
}

impl Refused {
    /// A refusal of the core (unknown app, limits, token…), in `protocol`'s terms.
    pub fn from_refusal(protocol: Protocol, r: &ConnectRefusal) -> Self {
        let (code, reason) = protocol.close_frame(r.close);
        let message = match protocol {
            Protocol::Native => {
                let data = serde_json::to_vec(&herald_protocol::native::ErrorData::new(
                    r.refusal.code,
                    r.refusal.message.clone(),
                ))
                .expect("ErrorData serialises");
                let mut env = herald_protocol::native::Envelope::new(
                    "0",
                    herald_protocol::native::MessageType::Error,
                    herald_core::clock::unix_ms(),
                );
                env.event = Some(r.refusal.code.name());
                env.data = &data;
                env.to_vec()
            }
            Protocol::Pusher => pusher_error(code, &r.refusal.message),
        };
        Self {
            message: Some(message),
            code,
            reason: reason.to_owned(),
        }
    }

    /// A refusal with an explicit close code (a Pusher protocol-version error).
    pub fn raw(protocol: Protocol, code: u16, reason: &str) -> Self {
        let message = match protocol {
            Protocol::Pusher => Some(pusher_error(code, reason)),
            Protocol::Native => None,
        };
        Self {
            message,
            code,
            reason: reason.to_owned(),
        }
    }
}

fn pusher_error(code: u16, message: &str) -> Vec<u8> {
    let data = serde_json::json!({"message": message, "code": code});
    let mut out = br#"{"event":"pusher:error","data":"#.to_vec();
    out.extend_from_slice(data.to_string().as_bytes());
    out.push(b'}');
    out
}

use bytes::Bytes;
use herald_core::{ConnectRefusal, Protocol, Session};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// Run a WebSocket session (or its refusal) on an upgraded connection, on the concrete
/// stream type when it is a known one (so writes are vectored straight to the socket).
pub async fn run_websocket(
    upgraded: Upgraded,
    session: Result<Session, Refused>,
    opts: websocket::WsOptions,
) {
    match (upgraded.downcast::<TokioIo<TcpStream>>(), session) {
        (Ok(parts), Ok(session)) => {
            let commands = commands::Commands::new(session);
            websocket::serve(parts.io.into_inner(), parts.read_buf, commands, opts).await;
        }
        (Ok(parts), Err(refusal)) => {
            Box::pin(websocket::refuse(parts.io.into_inner(), refusal)).await;
        }
        (Err(upgraded), session) => Box::pin(run_other(upgraded, session, opts)).await,
    }
}

/// The TLS and unknown-stream paths.
async fn run_other(
    upgraded: Upgraded,
    session: Result<Session, Refused>,
    opts: websocket::WsOptions,
) {
    match upgraded.downcast::<TokioIo<TlsStream<TcpStream>>>() {
        Ok(parts) => dispatch(parts.io.into_inner(), parts.read_buf, session, opts).await,
        Err(upgraded) => dispatch(TokioIo::new(upgraded), Bytes::new(), session, opts).await,
    }
}

async fn dispatch<IO>(
    io: IO,
    prefix: Bytes,
    session: Result<Session, Refused>,
    opts: websocket::WsOptions,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match session {
        Ok(session) => websocket::serve(io, prefix, commands::Commands::new(session), opts).await,
        Err(refusal) => websocket::refuse(io, refusal).await,
    }
}
