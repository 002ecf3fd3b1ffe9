//! [`Validated`]: a configuration that passed [`Config::validate`], with everything it refers
//! to read and parsed once: the TLS certificate and key, the Redis CA certificates, every
//! webhook URL. The server runs with these values and reads no configured file again to
//! start (a TLS renewal is read by the reloader, later). So every problem with a configured
//! file is reported before any port is bound, and a file that can be read only once (a pipe,
//! `/dev/stdin`, a shell's `<(…)`) works.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::Arc;

use rustls::sign::CertifiedKey;

use super::Config;
use crate::webhooks::WebhookTarget;

/// A checked configuration and the values read from what it names. Only
/// [`Config::validate`] makes one, so holding one proves validation passed.
#[derive(Debug, Clone)]
pub struct Validated {
    /// The configuration itself.
    config: Config,
    /// The TLS listener's certificate chain and key (`server.tls`), when configured.
    pub(crate) tls_key: Option<Arc<CertifiedKey>>,
    /// `redis.ca_file`'s certificates, for every `rediss://` connection of the node.
    pub(crate) redis_ca: Option<Vec<u8>>,
    /// Every app's webhook endpoints, parsed, by app id, in configuration order.
    pub(crate) webhooks: HashMap<String, Vec<WebhookTarget>>,
    /// `HERALD_*` environment variables that name no key path and were ignored (names
    /// only), for the one warning at start.
    pub(crate) ignored_env: Vec<String>,
}

impl Validated {
    pub(super) fn new(
        config: Config,
        tls_key: Option<Arc<CertifiedKey>>,
        redis_ca: Option<Vec<u8>>,
        webhooks: HashMap<String, Vec<WebhookTarget>>,
    ) -> Self {
        Self {
            config,
            tls_key,
            redis_ca,
            webhooks,
            ignored_env: Vec::new(),
        }
    }

    /// `HERALD_*` environment variables that were ignored because they name no key path
    /// (`HERALD_PORT` from a Kubernetes service link, say). Names only, never values.
    pub fn ignored_env(&self) -> &[String] {
        &self.ignored_env
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The CA certificates for a connection to `url`: `redis.ca_file`'s, for a `rediss://`
    /// URL only (a plain `[[laravel_ingest]]` Redis may sit beside a TLS one).
    pub fn redis_ca_for(&self, url: &str) -> Option<Vec<u8>> {
        self.redis_ca
            .clone()
            .filter(|_| url.starts_with("rediss://"))
    }
}

impl Deref for Validated {
    type Target = Config;

    fn deref(&self) -> &Config {
        &self.config
    }
}
