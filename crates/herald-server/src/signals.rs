//! Process signals: SIGTERM/SIGINT start a graceful shutdown; SIGHUP reloads the TLS
//! certificate; SIGUSR2 hands over to a new process (`crate::handover`).

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

/// A request for every SIGUSR2, from now on. Installed before the server runs, so that the
/// signal never falls to its default action (which ends the process).
pub fn handover_requests() -> std::io::Result<tokio::sync::mpsc::Receiver<()>> {
    let mut usr2 = signal(SignalKind::user_defined2())?;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        while usr2.recv().await.is_some() {
            info!("SIGUSR2 received: handing over to a new process");
            // One at a time: a request while one is pending adds nothing.
            let _ = tx.try_send(());
        }
    });
    Ok(rx)
}
