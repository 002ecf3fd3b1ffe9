//! Certificates from an ACME CA (`[server.tls.acme]`), obtained and renewed by Herald with
//! the `instant-acme` client and the TLS-ALPN-01 challenge, answered on the TLS listener
//! itself (RFC 8737): port 80 is not needed.
//!
//! # Lifecycle
//! 1. At start, a certificate in `cache_dir` from an earlier run is served at once
//!    (validation loaded it). Without one the listener answers only the CA's validator.
//! 2. This task orders a certificate when there is none or it expires within
//!    `renew_before`: it creates (or restores) the account, puts a challenge certificate for
//!    each domain into the resolver, waits for the order, then writes `cert.pem` and
//!    `key.pem` (0600, written then renamed) and calls [`TlsState::reload`], the path a
//!    file renewal takes. Open connections keep their session; new handshakes get the new
//!    certificate.
//! 3. A failure is logged with the CA's problem document, recorded for `/status`, and
//!    retried with backoff (1 min doubling to 1 h). The old certificate keeps serving.
//!
//! Several nodes: give them one `cache_dir` on shared storage and enable ACME on one of
//! them; the others use `[server.tls]` with the cache's `cert.pem` and `key.pem` and pick up
//! each renewal by their file watch (docs/operations.md).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use herald_core::clock::unix_secs;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::AcmeConfig;
use crate::tls::TlsState;

/// The longest one order may take, from account to certificate.
const ORDER_TIMEOUT: Duration = Duration::from_secs(300);

/// The first retry after a failure; doubled each time, up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_secs(60);

/// The longest wait between failed attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(3_600);

/// The account credentials file in the cache.
const ACCOUNT_FILE: &str = "account.json";

/// Keep the certificate current until `cancel` fires.
pub async fn run(tls: Arc<TlsState>, config: AcmeConfig, cancel: CancellationToken) {
    let mut backoff = MIN_BACKOFF;
    let mut wait = Duration::ZERO;
    loop {
        tls.update_acme(|r| r.next_attempt_unix = Some(unix_secs() + wait.as_secs()));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = cancel.cancelled() => return,
        }
        if !due(&tls, &config) {
            wait = until_due(&tls, &config);
            continue;
        }
        let attempt = tokio::time::timeout(ORDER_TIMEOUT, obtain(&tls, &config)).await;
        let result = attempt.unwrap_or_else(|_| Err("the order did not complete in time".into()));
        for domain in &config.domains {
            tls.set_challenge(domain, None);
        }
        match result {
            Ok(expiry) => {
                info!(domains = ?config.domains, not_after = expiry, "ACME: certificate issued");
                tls.update_acme(|r| {
                    r.issued += 1;
                    r.last_error = None;
                    r.last_attempt_unix = Some(unix_secs());
                });
                backoff = MIN_BACKOFF;
                // At least one check interval between orders, even inside the window.
                wait = until_due(&tls, &config).max(config.check_interval);
            }
            Err(e) => {
                error!(error = %e, retry_in = ?backoff, "ACME: could not obtain a certificate; the current one keeps serving");
                tls.update_acme(|r| {
                    r.failures += 1;
                    r.last_error = Some(e.clone());
                    r.last_attempt_unix = Some(unix_secs());
                });
                wait = backoff.min(config.check_interval);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Whether the certificate is missing or expires within `renew_before`.
fn due(tls: &TlsState, config: &AcmeConfig) -> bool {
    match tls.not_after() {
        None => true,
        Some(t) => t.saturating_sub(unix_secs()) <= config.renew_before.as_secs(),
    }
}

/// How long until the next look: when the renewal window opens, or one check interval.
fn until_due(tls: &TlsState, config: &AcmeConfig) -> Duration {
    let Some(t) = tls.not_after() else {
        return Duration::ZERO;
    };
    let opens = t.saturating_sub(config.renew_before.as_secs());
    Duration::from_secs(opens.saturating_sub(unix_secs())).min(config.check_interval)
}

/// One order: account, challenges, certificate, files, reload. Returns the new `notAfter`.
async fn obtain(tls: &TlsState, config: &AcmeConfig) -> Result<u64, String> {
    let account = account(config).await?;
    let identifiers: Vec<Identifier> = config
        .domains
        .iter()
        .map(|d| Identifier::Dns(d.clone()))
        .collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(|e| chain("new order", &e))?;
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.map_err(|e| chain("authorization", &e))?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => return Err(format!("authorization is {other:?}")),
        }
        let mut challenge = authz
            .challenge(ChallengeType::TlsAlpn01)
            .ok_or("the CA offers no tls-alpn-01 challenge")?;
        let Identifier::Dns(domain) = challenge.identifier().identifier.clone() else {
            return Err("the CA asked about a non-DNS identifier".into());
        };
        let key = challenge_certificate(&domain, challenge.key_authorization().digest().as_ref())?;
        tls.set_challenge(&domain, Some(key));
        challenge
            .set_ready()
            .await
            .map_err(|e| chain(&format!("challenge for {domain}"), &e))?;
    }
    let retry = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .timeout(Duration::from_secs(90));
    let status = order
        .poll_ready(&retry)
        .await
        .map_err(|e| chain("order", &e))?;
    if status != OrderStatus::Ready {
        return Err(format!(
            "order is {status:?}: the CA could not validate the tls-alpn-01 challenge \
             (is the TLS listener reachable on port 443 for every domain?)"
        ));
    }
    let (csr, key_pem) = certificate_request(&config.domains)?;
    order
        .finalize_csr(&csr)
        .await
        .map_err(|e| chain("finalize", &e))?;
    let chain_pem = order
        .poll_certificate(&retry)
        .await
        .map_err(|e| chain("certificate", &e))?;
    let (cert_file, key_file) = tls.files();
    write_private(key_file, key_pem.as_bytes())?;
    write_private(cert_file, chain_pem.as_bytes())?;
    tls.reload()?;
    tls.not_after()
        .ok_or_else(|| "the issued certificate has no readable expiry".into())
}

/// The account from the cache, or a new one saved there.
async fn account(config: &AcmeConfig) -> Result<Account, String> {
    secure_dir(&config.cache_dir)?;
    let builder = || match &config.ca_file {
        Some(ca) => Account::builder_with_root(ca),
        None => Account::builder(),
    };
    let builder = builder().map_err(|e| format!("ACME client: {e}"))?;
    let path = config.cache_dir.join(ACCOUNT_FILE);
    if let Ok(saved) = std::fs::read(&path)
        && let Ok(credentials) = serde_json::from_slice::<AccountCredentials>(&saved)
    {
        return builder
            .from_credentials(credentials)
            .await
            .map_err(|e| chain(&format!("account at {}", config.directory_url()), &e));
    }
    let contact: Vec<String> = config
        .contact
        .iter()
        .map(|c| format!("mailto:{c}"))
        .collect();
    let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, credentials) = builder
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            config.directory_url().to_owned(),
            None,
        )
        .await
        .map_err(|e| chain(&format!("new account at {}", config.directory_url()), &e))?;
    let json = serde_json::to_vec(&credentials).map_err(|e| e.to_string())?;
    write_private(&path, &json)?;
    info!(directory = config.directory_url(), "ACME: account created");
    Ok(account)
}

/// The self-signed certificate that answers the TLS-ALPN-01 challenge for `domain`: the
/// domain as its only name, and the key authorization's SHA-256 in a critical
/// `acmeIdentifier` extension (RFC 8737, section 3).
fn challenge_certificate(domain: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()])
        .map_err(|e| format!("challenge certificate: {e}"))?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(|e| format!("challenge key: {e}"))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("challenge certificate: {e}"))?;
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| format!("challenge key: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

/// A new key and the CSR for `domains`: (CSR DER, key PEM).
fn certificate_request(domains: &[String]) -> Result<(Vec<u8>, String), String> {
    let params = rcgen::CertificateParams::new(domains.to_vec())
        .map_err(|e| format!("certificate request: {e}"))?;
    let key = rcgen::KeyPair::generate().map_err(|e| format!("certificate key: {e}"))?;
    let csr = params
        .serialize_request(&key)
        .map_err(|e| format!("certificate request: {e}"))?;
    Ok((csr.der().to_vec(), key.serialize_pem()))
}

/// `what: error: its cause: …`, so that a transport failure says why ("Connection refused"),
/// not only that it failed.
fn chain(what: &str, error: &dyn std::error::Error) -> String {
    let mut text = format!("{what}: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn secure_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| format!("ACME cache {}: {e}", dir.display()))
}

/// Write `bytes` to `path` readable by Herald's user only: a temporary file, then a rename,
/// so a reader (this node's reload, another node's file watch) never sees half a file.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}
