//! `[server.tls.acme]`: certificates obtained and renewed by Herald itself from an ACME CA
//! (Let's Encrypt by default), answered with the TLS-ALPN-01 challenge on the TLS listener,
//! so no port 80 is needed. See `crate::acme`.

use std::path::PathBuf;
use std::time::Duration;

use herald_core::settings::duration;
use serde::Deserialize;

/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// Let's Encrypt's staging directory (untrusted certificates, generous rate limits).
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// Automatic certificates.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcmeConfig {
    /// The names the certificate covers (no wildcards: TLS-ALPN-01 cannot prove them).
    pub domains: Vec<String>,
    /// E-mail addresses the CA may write to about the account (expiry, policy changes).
    pub contact: Vec<String>,
    /// The CA's directory URL (`"letsencrypt"`, `"letsencrypt-staging"` or a URL).
    pub directory: String,
    /// Where the account key and the certificate are kept (created 0700; files 0600). Shared
    /// by every node that serves these names.
    pub cache_dir: PathBuf,
    /// Renew once the certificate expires within this long.
    #[serde(deserialize_with = "duration")]
    pub renew_before: Duration,
    /// How often the expiry is looked at (and, after a success, the least time until the
    /// next order).
    #[serde(deserialize_with = "duration")]
    pub check_interval: Duration,
    /// PEM root the CA's own HTTPS API is verified against instead of the system's roots
    /// (a private or test CA such as Pebble).
    pub ca_file: Option<PathBuf>,
}

impl Default for AcmeConfig {
    fn default() -> Self {
        Self {
            domains: Vec::new(),
            contact: Vec::new(),
            directory: "letsencrypt".into(),
            cache_dir: PathBuf::from("herald-acme"),
            renew_before: Duration::from_secs(30 * 86_400),
            check_interval: Duration::from_secs(3_600),
            ca_file: None,
        }
    }
}

impl AcmeConfig {
    /// The directory URL, with the two names resolved.
    pub fn directory_url(&self) -> &str {
        match self.directory.as_str() {
            "letsencrypt" => LETS_ENCRYPT,
            "letsencrypt-staging" => LETS_ENCRYPT_STAGING,
            url => url,
        }
    }

    /// The certificate chain file in the cache.
    pub fn cert_file(&self) -> PathBuf {
        self.cache_dir.join("cert.pem")
    }

    /// The private key file in the cache.
    pub fn key_file(&self) -> PathBuf {
        self.cache_dir.join("key.pem")
    }

    /// What is wrong with this section.
    pub(super) fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let key = |k: &str| format!("server.tls.acme.{k}");
        if self.domains.is_empty() {
            problems.push((key("domains"), "name at least one domain".into()));
        }
        for d in &self.domains {
            let valid = !d.is_empty()
                && d.len() <= 253
                && d.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if !valid {
                problems.push((
                    key("domains"),
                    format!("{d:?} is not a DNS name (wildcards cannot be proved by TLS-ALPN-01)"),
                ));
            }
        }
        for c in &self.contact {
            if !c.contains('@') || c.contains(char::is_whitespace) {
                problems.push((key("contact"), format!("{c:?} is not an e-mail address")));
            }
        }
        if !self.directory_url().starts_with("https://") {
            problems.push((
                key("directory"),
                "\"letsencrypt\", \"letsencrypt-staging\" or an https:// URL".into(),
            ));
        }
        if self.check_interval < Duration::from_secs(1) {
            problems.push((key("check_interval"), "must be at least 1s".into()));
        }
        if let Some(ca) = &self.ca_file
            && let Err(e) = std::fs::read(ca)
        {
            problems.push((key("ca_file"), format!("cannot read {}: {e}", ca.display())));
        }
        problems
    }
}
