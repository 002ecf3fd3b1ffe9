//! Process signals: SIGTERM/SIGINT start a graceful shutdown; SIGHUP reloads the TLS
//! certificate.

use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::tls::TlsState;

/// Complete when SIGTERM or SIGINT arrives.
pub async fn shutdown() {
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
}

/// Reload the TLS certificate on every SIGHUP, forever.
pub async fn reload_on_hangup(tls: Option<Arc<TlsState>>) {
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        match &tls {
            Some(tls) => match tls.reload() {
                Ok(()) => info!("SIGHUP: TLS certificate reloaded"),
                Err(e) => {
                    warn!(error = %e, "SIGHUP: TLS reload failed; keeping the old certificate")
                }
            },
            None => info!("SIGHUP received; nothing to reload (no TLS configured)"),
        }
    }
}
