//! A JSON Web Key Set an app's tokens are verified with (`apps.jwt.jwks_url`): keys by
//! `kid`, replaced whenever the server fetches the set again (`jwks_refresh`, and on an
//! unknown `kid` at most once per `jwks_min_interval`). The core never fetches: it
//! asks ([`KeySet::wanted`]) when a token names a `kid` it does not hold, and the server's
//! fetcher (which limits how often it fetches) answers with [`KeySet::replace`].

use std::collections::HashMap;
use std::time::Duration;

use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::JwkSet;
use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;

/// What `/status` says about a key set.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct KeySetStatus {
    /// Keys held now.
    pub keys: usize,
    /// When the set was last fetched successfully (seconds since the Unix epoch).
    pub fetched_at_unix: Option<u64>,
    /// Why the last fetch failed, while it keeps failing (the keys held stay in use).
    pub last_error: Option<String>,
    /// Fetches so far (successful or not).
    pub fetches: u64,
}

/// One app's keys.
#[derive(Default)]
pub struct KeySet {
    /// Keys by `kid`.
    keys: RwLock<HashMap<String, DecodingKey>>,
    /// Wakes the fetcher: a token named an unknown `kid`.
    wanted: Notify,
    /// Wakes those waiting for a fetch to end.
    fetched: Notify,
    /// For `/status`.
    status: Mutex<KeySetStatus>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("keys", &self.keys.read().len())
            .finish_non_exhaustive()
    }
}

impl KeySet {
    /// The key with this `kid`.
    pub fn get(&self, kid: &str) -> Option<DecodingKey> {
        self.keys.read().get(kid).cloned()
    }

    /// Ask the fetcher for a fresh set (a token named a `kid` not held).
    pub fn want(&self) {
        self.wanted.notify_one();
    }

    /// Resolves when a fresh set is wanted (for the fetcher).
    pub async fn wanted(&self) {
        self.wanted.notified().await;
    }

    /// Wait, at most `timeout`, until `kid` is held, asking for a fetch if it is not.
    pub async fn ensure(&self, kid: &str, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let fetched = self.fetched.notified();
            if self.keys.read().contains_key(kid) {
                return;
            }
            self.want();
            if tokio::time::timeout_at(deadline, fetched).await.is_err() {
                return;
            }
        }
    }

    /// Take the fetched set `jwks` (a JSON Web Key Set document): every key it holds that
    /// has a `kid` and is usable for verification. Returns how many. A set that does not
    /// parse changes nothing.
    pub fn replace(&self, jwks: &[u8], now_unix: u64) -> Result<usize, String> {
        let result = serde_json::from_slice::<JwkSet>(jwks)
            .map_err(|e| format!("not a JSON Web Key Set: {e}"))
            .map(|set| {
                set.keys
                    .iter()
                    .filter_map(|jwk| {
                        let kid = jwk.common.key_id.clone()?;
                        DecodingKey::from_jwk(jwk).ok().map(|key| (kid, key))
                    })
                    .collect::<HashMap<_, _>>()
            });
        let mut status = self.status.lock();
        status.fetches += 1;
        let outcome = match result {
            Ok(keys) => {
                let n = keys.len();
                *self.keys.write() = keys;
                status.keys = n;
                status.fetched_at_unix = Some(now_unix);
                status.last_error = None;
                Ok(n)
            }
            Err(e) => {
                status.last_error = Some(e.clone());
                Err(e)
            }
        };
        drop(status);
        self.fetched.notify_waiters();
        outcome
    }

    /// A fetch failed: keep the keys, say why.
    pub fn failed(&self, why: String) {
        let mut status = self.status.lock();
        status.fetches += 1;
        status.last_error = Some(why);
        drop(status);
        self.fetched.notify_waiters();
    }

    /// What `/status` shows.
    pub fn status(&self) -> KeySetStatus {
        self.status.lock().clone()
    }
}
