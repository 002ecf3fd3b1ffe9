//! The accept loop of a client-facing listener and the HTTP/1.1 serving of each connection.
//!
//! Per connection: the IP filter (unless the peer is a trusted proxy, whose clients are
//! checked per request), `TCP_NODELAY`, the TLS handshake under `handshake_timeout`, then
//! hyper serves requests with upgrades enabled. When shutdown starts, each connection is
//! told to finish its in-flight request and close.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::server::Shared;
use crate::tls::TlsState;

/// Accept connections until shutdown starts.
pub async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, tls: Option<Arc<TlsState>>) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = shared.shutdown.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => {
                backoff = Duration::from_millis(5);
                pair
            }
            Err(e) => {
                // Usually EMFILE/ENFILE: wait for descriptors to free up instead of spinning.
                warn!(error = %e, "accept failed; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let filter = &shared.ip_filter;
        if !filter.is_trusted_proxy(peer.ip()) && !filter.allows(peer.ip()) {
            debug!(%peer, "connection refused by the IP filter");
            continue;
        }
        let _ = stream.set_nodelay(true);
        let shared2 = shared.clone();
        let tls = tls.clone();
        shared.tracker.spawn(async move {
            match tls {
                None => serve_http(stream, peer, shared2).await,
                Some(tls) => {
                    let timeout = shared2.config.server.handshake_timeout;
                    match tokio::time::timeout(timeout, tls.acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => serve_http(stream, peer, shared2).await,
                        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

/// Serve HTTP/1.1 on one connection (with WebSocket upgrades).
///
/// When shutdown starts, a connection that has not sent its first request yet gets until
/// `handshake_timeout` to send it, and that request is served: a client whose connection was
/// accepted an instant before the listener stopped (a handover, a drain) is answered, not
/// dropped. Any other connection finishes its request in flight and closes.
pub(crate) async fn serve_http<IO>(io: IO, peer: SocketAddr, shared: Arc<Shared>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shutdown = shared.shutdown.clone();
    let hard_stop = shared.hard_stop.clone();
    let timeout = shared.config.server.handshake_timeout;
    // Counted until its first request begins (or the connection ends).
    let counted = shared.clone();
    let mut unserved = Some(counted.unserved.enter());
    let first_request = Arc::new(tokio::sync::Notify::new());
    let started = first_request.clone();
    let service = service_fn(move |req| {
        // Counted in flight before the connection stops counting as unserved, so that a
        // handover never sees both at zero while a request is on its way.
        let in_flight = crate::server::RequestGuard::new(shared.clone());
        started.notify_one();
        let shared = shared.clone();
        async move {
            let _in_flight = in_flight;
            crate::routes::handle(shared, peer, req).await
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let first = first_request.notified();
    tokio::pin!(first);
    let mut served = false;
    let result = loop {
        tokio::select! {
            result = conn.as_mut() => break Some(result),
            () = first.as_mut(), if !served => {
                served = true;
                drop(unserved.take());
            }
            () = shutdown.cancelled() => break None,
        }
    };
    if let Some(result) = result {
        if let Err(e) = result {
            debug!(%peer, error = %e, "http connection ended with an error");
        }
        return;
    }
    if !served {
        // Accepted just before the listener stopped: let its first request in.
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    debug!(%peer, error = %e, "http connection ended with an error");
                }
                return;
            }
            () = first => drop(unserved.take()),
            () = tokio::time::sleep(timeout) => {}
            () = hard_stop.cancelled() => return,
        }
    }
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        _ = conn.as_mut() => {}
        () = hard_stop.cancelled() => {}
    }
}
