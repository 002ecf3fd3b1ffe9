//! Native TLS (wss://, https://) with rustls, and certificate renewal without a restart.
//!
//! The acceptor resolves its certificate through [`ReloadableCert`] on every handshake, so
//! swapping the certificate is one pointer store: connections already open keep their
//! session, new handshakes get the new certificate. A reload happens on SIGHUP and when the
//! watcher sees either PEM file change (by modification time and size). A reload that fails
//! (a half-written file, a key that does not match) keeps the old certificate and logs why.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::TlsConfig;

/// Read and parse a PEM certificate chain and private key into a signing-ready key.
pub fn load_certified_key(cert_file: &Path, key_file: &Path) -> Result<Arc<CertifiedKey>, String> {
    let open = |p: &Path| {
        File::open(p)
            .map(BufReader::new)
            .map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let certs = rustls_pemfile::certs(&mut open(cert_file)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: invalid PEM: {e}", cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", cert_file.display()));
    }
    let key = rustls_pemfile::private_key(&mut open(key_file)?)
        .map_err(|e| format!("{}: invalid PEM: {e}", key_file.display()))?
        .ok_or_else(|| format!("{}: no private key found", key_file.display()))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{}: unsupported private key: {e}", key_file.display()))?;
    let certified = CertifiedKey::new(certs, signing_key);
    certified.keys_match().map_err(|e| {
        format!(
            "the key in {} does not match the certificate: {e}",
            key_file.display()
        )
    })?;
    Ok(Arc::new(certified))
}

/// The certificate in use, swappable at runtime.
#[derive(Debug)]
pub struct ReloadableCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

/// The TLS listener's state: the acceptor and where its certificate comes from.
pub struct TlsState {
    /// Accepts TLS connections with the current certificate.
    pub acceptor: TlsAcceptor,
    /// The swappable certificate.
    cert: Arc<ReloadableCert>,
    /// The certificate chain file.
    cert_file: PathBuf,
    /// The private key file.
    key_file: PathBuf,
    /// Modification stamps of the two files at the last (re)load.
    stamps: Mutex<Option<(FileStamp, FileStamp)>>,
}

impl std::fmt::Debug for TlsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsState")
            .field("cert_file", &self.cert_file)
            .finish_non_exhaustive()
    }
}

/// A file's modification time and size.
type FileStamp = (Option<SystemTime>, u64);

fn stamp(path: &Path) -> FileStamp {
    std::fs::metadata(path)
        .map(|m| (m.modified().ok(), m.len()))
        .unwrap_or((None, 0))
}

impl TlsState {
    /// Load the certificate and build the acceptor.
    /// The TLS state for `config`, serving `key` (read by validation) until a reload.
    pub fn new(config: &TlsConfig, key: Arc<CertifiedKey>) -> Result<Arc<Self>, String> {
        let cert = Arc::new(ReloadableCert {
            current: RwLock::new(key),
        });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(cert.clone());
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(Self {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            cert,
            stamps: Mutex::new(Some((stamp(&config.cert_file), stamp(&config.key_file)))),
            cert_file: config.cert_file.clone(),
            key_file: config.key_file.clone(),
        }))
    }

    /// Reload the certificate from its files; on failure keep the current one.
    pub fn reload(&self) -> Result<(), String> {
        let stamps = (stamp(&self.cert_file), stamp(&self.key_file));
        let key = load_certified_key(&self.cert_file, &self.key_file)?;
        *self.cert.current.write() = key;
        *self.stamps.lock() = Some(stamps);
        Ok(())
    }

    /// Reload when the files have changed since the last load.
    fn reload_if_changed(&self) {
        let now = (stamp(&self.cert_file), stamp(&self.key_file));
        if self.stamps.lock().as_ref() == Some(&now) {
            return;
        }
        match self.reload() {
            Ok(()) => info!(cert = %self.cert_file.display(), "TLS certificate reloaded"),
            Err(e) => {
                // Remember the stamps anyway so a broken file is reported once, not every tick.
                *self.stamps.lock() = Some(now);
                warn!(error = %e, "TLS certificate changed but could not be loaded; keeping the old one");
            }
        }
    }

    /// Check the files every `interval` until `cancel` fires.
    pub async fn watch(self: Arc<Self>, interval: Duration, cancel: CancellationToken) {
        if interval.is_zero() {
            return;
        }
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => self.reload_if_changed(),
                _ = cancel.cancelled() => return,
            }
        }
    }
}
