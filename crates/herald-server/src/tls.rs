//! Native TLS (wss://, https://) with rustls, and certificate renewal without a restart.
//!
//! The acceptor resolves its certificate through [`ReloadableCert`] on every handshake, so
//! swapping the certificate is one pointer store: connections already open keep their
//! session, new handshakes get the new certificate. A reload happens on SIGHUP and when the
//! watcher sees either PEM file change (by modification time and size). A reload that fails
//! (a half-written file, a key that does not match) keeps the old certificate and logs why.
//!
//! With `[server.tls.acme]` the files live in the ACME cache and are written by
//! [`crate::acme`], which then calls the same reload; the resolver also answers the CA's
//! TLS-ALPN-01 challenges. The current certificate's expiry is kept for `/status` and
//! `/metrics` either way.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// ALPN protocol of the TLS-ALPN-01 challenge (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The certificate in use, swappable at runtime, and the ACME challenge certificates.
#[derive(Debug, Default)]
pub struct ReloadableCert {
    /// What every handshake gets; `None` until an ACME certificate is first issued.
    current: RwLock<Option<Arc<CertifiedKey>>>,
    /// TLS-ALPN-01 challenge certificates by domain, while an order is being validated.
    challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let acme = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if acme {
            // Only the CA's validator asks for acme-tls/1; it gets the challenge or nothing.
            let name = hello.server_name()?;
            return self.challenges.read().get(name).cloned();
        }
        self.current.read().clone()
    }
}

/// What Herald's own ACME client reports, for `/status`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct AcmeReport {
    /// The last attempt failed with this (the CA's problem document, or the transport's).
    pub last_error: Option<String>,
    /// When the last attempt ended (seconds since the Unix epoch).
    pub last_attempt_unix: Option<u64>,
    /// When the next attempt is due (seconds since the Unix epoch).
    pub next_attempt_unix: Option<u64>,
    /// Certificates obtained since start.
    pub issued: u64,
    /// Attempts that failed since start.
    pub failures: u64,
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
    /// The current certificate's `notAfter` (seconds since the Unix epoch; 0: none).
    not_after: AtomicU64,
    /// The ACME client's state, when it runs.
    acme: Option<Mutex<AcmeReport>>,
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

/// The leaf certificate's `notAfter`, seconds since the Unix epoch.
pub fn not_after(key: &CertifiedKey) -> Option<u64> {
    let leaf = key.cert.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    u64::try_from(cert.validity().not_after.timestamp()).ok()
}

impl TlsState {
    /// The TLS state for `config`, serving `key` (read by validation) until a reload. With
    /// ACME, `key` may be `None` (nothing issued yet) and the listener also answers
    /// TLS-ALPN-01 challenges.
    pub fn new(config: &TlsConfig, key: Option<Arc<CertifiedKey>>) -> Result<Arc<Self>, String> {
        let expiry = key.as_deref().and_then(not_after).unwrap_or(0);
        let cert = Arc::new(ReloadableCert {
            current: RwLock::new(key),
            challenges: RwLock::default(),
        });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(cert.clone());
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        if config.acme.is_some() {
            server.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
        }
        Ok(Arc::new(Self {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            cert,
            stamps: Mutex::new(Some((stamp(&config.cert_file), stamp(&config.key_file)))),
            cert_file: config.cert_file.clone(),
            key_file: config.key_file.clone(),
            not_after: AtomicU64::new(expiry),
            acme: config
                .acme
                .as_ref()
                .map(|_| Mutex::new(AcmeReport::default())),
        }))
    }

    /// Reload the certificate from its files; on failure keep the current one.
    pub fn reload(&self) -> Result<(), String> {
        let stamps = (stamp(&self.cert_file), stamp(&self.key_file));
        let key = load_certified_key(&self.cert_file, &self.key_file)?;
        self.not_after
            .store(not_after(&key).unwrap_or(0), Ordering::Relaxed);
        *self.cert.current.write() = Some(key);
        *self.stamps.lock() = Some(stamps);
        Ok(())
    }

    /// The certificate's `notAfter` (seconds since the Unix epoch), when one is served.
    pub fn not_after(&self) -> Option<u64> {
        Some(self.not_after.load(Ordering::Relaxed)).filter(|&t| t > 0)
    }

    /// Where the certificate and key files are (written by ACME, read by `reload`).
    pub fn files(&self) -> (&Path, &Path) {
        (&self.cert_file, &self.key_file)
    }

    /// Serve `key` to the CA's TLS-ALPN-01 validator for `domain` (or stop, with `None`).
    pub fn set_challenge(&self, domain: &str, key: Option<Arc<CertifiedKey>>) {
        let mut challenges = self.cert.challenges.write();
        match key {
            Some(key) => challenges.insert(domain.to_owned(), key),
            None => challenges.remove(domain),
        };
    }

    /// The ACME client's report, when it runs.
    pub fn acme_report(&self) -> Option<AcmeReport> {
        self.acme.as_ref().map(|r| r.lock().clone())
    }

    /// Update the ACME client's report.
    pub fn update_acme(&self, f: impl FnOnce(&mut AcmeReport)) {
        if let Some(r) = &self.acme {
            f(&mut r.lock());
        }
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
