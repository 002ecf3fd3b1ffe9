//! [`IdempotencyKeys`]: remembers the idempotency keys of recent publishes, so a backend that
//! retries a publish (after a timeout, say) does not deliver it twice.
//!
//! A key is claimed before the publish and completed with its receipt after; a repeat within
//! the app's window gets the first receipt back (or, while the first is still in flight, a
//! receipt with only the id). A failed publish releases its key so a retry can go through.
//! Keys are bounded per app: past `max_keys`, the oldest are forgotten first. This store is
//! node-local; with several nodes a retry that reaches another node is not recognised
//! (clustering documents this).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::cmd::publish::PublishReceipt;

/// The state of one key.
#[derive(Debug, Clone)]
enum KeyState {
    /// The first publish with this key is in flight; it has this message id.
    Pending(Arc<str>),
    /// The first publish with this key completed with this receipt.
    Done(Arc<PublishReceipt>),
}

#[derive(Debug, Default)]
struct AppKeys {
    /// Key → state and when it was claimed.
    keys: HashMap<Arc<str>, (KeyState, Instant)>,
    /// Keys in claim order, for expiry and the bound.
    order: VecDeque<(Arc<str>, Instant)>,
}

impl AppKeys {
    fn expire(&mut self, window: Duration, max_keys: usize, now: Instant) {
        while let Some((key, at)) = self.order.front() {
            let current = self.keys.get(key).is_some_and(|(_, t)| t == at);
            if !current {
                self.order.pop_front();
            } else if now.saturating_duration_since(*at) >= window || self.keys.len() > max_keys {
                self.keys.remove(key);
                self.order.pop_front();
            } else {
                break;
            }
        }
    }
}

/// What claiming a key found.
#[derive(Debug, Clone)]
pub enum Claim {
    /// The key is new: publish, then [`IdempotencyKeys::complete`] or
    /// [`IdempotencyKeys::release`].
    New,
    /// A publish with this key already completed with this receipt.
    Duplicate(Arc<PublishReceipt>),
    /// A publish with this key is in flight with this message id.
    InFlight(Arc<str>),
}

/// Recent idempotency keys of every app on this node.
#[derive(Debug, Default)]
pub struct IdempotencyKeys {
    apps: Mutex<HashMap<Arc<str>, AppKeys>>,
}

impl IdempotencyKeys {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Claim `key` for a publish with message id `id`.
    pub fn claim(
        &self,
        app_id: &Arc<str>,
        key: &str,
        id: &Arc<str>,
        window: Duration,
        max_keys: usize,
    ) -> Claim {
        let now = Instant::now();
        let mut apps = self.apps.lock();
        let app = apps.entry(app_id.clone()).or_default();
        app.expire(window, max_keys, now);
        if let Some((state, _)) = app.keys.get(key) {
            return match state {
                KeyState::Pending(id) => Claim::InFlight(id.clone()),
                KeyState::Done(receipt) => Claim::Duplicate(receipt.clone()),
            };
        }
        let key: Arc<str> = Arc::from(key);
        app.keys
            .insert(key.clone(), (KeyState::Pending(id.clone()), now));
        app.order.push_back((key, now));
        app.expire(window, max_keys, now);
        Claim::New
    }

    /// Record the receipt of the publish that claimed `key`.
    pub fn complete(&self, app_id: &str, key: &str, receipt: Arc<PublishReceipt>) {
        if let Some(app) = self.apps.lock().get_mut(app_id)
            && let Some((state, _)) = app.keys.get_mut(key)
        {
            *state = KeyState::Done(receipt);
        }
    }

    /// Forget `key` after its publish failed.
    pub fn release(&self, app_id: &str, key: &str) {
        if let Some(app) = self.apps.lock().get_mut(app_id) {
            app.keys.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt(id: &str) -> Arc<PublishReceipt> {
        Arc::new(PublishReceipt {
            id: Arc::from(id),
            channels: Vec::new(),
            duplicate: false,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn repeats_within_the_window_are_duplicates() {
        let keys = IdempotencyKeys::new();
        let app: Arc<str> = Arc::from("app");
        let w = Duration::from_secs(300);
        let id: Arc<str> = Arc::from("m-1");
        assert!(matches!(keys.claim(&app, "k", &id, w, 100), Claim::New));
        assert!(matches!(keys.claim(&app, "k", &id, w, 100), Claim::InFlight(i) if &*i == "m-1"));
        keys.complete("app", "k", receipt("m-1"));
        assert!(
            matches!(keys.claim(&app, "k", &id, w, 100), Claim::Duplicate(r) if &*r.id == "m-1")
        );
        tokio::time::advance(Duration::from_secs(301)).await;
        assert!(matches!(keys.claim(&app, "k", &id, w, 100), Claim::New));
    }

    #[tokio::test]
    async fn released_keys_can_be_retried_and_the_oldest_go_past_the_bound() {
        let keys = IdempotencyKeys::new();
        let app: Arc<str> = Arc::from("app");
        let w = Duration::from_secs(300);
        let id: Arc<str> = Arc::from("m");
        assert!(matches!(keys.claim(&app, "a", &id, w, 2), Claim::New));
        keys.release("app", "a");
        assert!(matches!(keys.claim(&app, "a", &id, w, 2), Claim::New));
        assert!(matches!(keys.claim(&app, "b", &id, w, 2), Claim::New));
        assert!(matches!(keys.claim(&app, "c", &id, w, 2), Claim::New));
        // "a" was the oldest of three with room for two.
        assert!(matches!(keys.claim(&app, "a", &id, w, 2), Claim::New));
        assert!(keys.apps.lock()["app"].keys.len() <= 2);
    }
}
