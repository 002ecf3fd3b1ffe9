//! Transports: they move bytes between a client and its [`herald_core::Session`], and
//! nothing else. Every protocol decision is the session's.
//!
//! # Memory per connection
//! A connection is one tokio task whose future holds all of its state, so the size of that
//! future is most of what an idle connection costs. rustc does not overlap the states of
//! different `.await`s well: a function awaiting three stream types inline costs the sum of
//! the three. So only the common path (plain TCP) is awaited inline; TLS, other streams and
//! refusals are boxed, which costs one allocation on their rarer paths.

pub mod websocket;

use bytes::Bytes;
use herald_core::{ConnectRefusal, Session};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// Run a WebSocket session (or its refusal) on an upgraded connection, on the concrete
/// stream type when it is a known one (so writes are vectored straight to the socket).
pub async fn run_websocket(
    upgraded: Upgraded,
    session: Result<Session, ConnectRefusal>,
    opts: websocket::WsOptions,
) {
    match (upgraded.downcast::<TokioIo<TcpStream>>(), session) {
        (Ok(parts), Ok(session)) => {
            websocket::serve(parts.io.into_inner(), parts.read_buf, session, opts).await;
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
    session: Result<Session, ConnectRefusal>,
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
    session: Result<Session, ConnectRefusal>,
    opts: websocket::WsOptions,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match session {
        Ok(session) => websocket::serve(io, prefix, session, opts).await,
        Err(refusal) => websocket::refuse(io, refusal).await,
    }
}
