//! [`App`]: one tenant at runtime (settings, token verifier, hub, counters), and the
//! [`AppRegistry`] that finds apps by id (API paths) or key (client connections).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use herald_protocol::ErrorCode;
use parking_lot::Mutex;

use crate::auth::TokenVerifier;
use crate::history::HistoryPolicy;
use crate::hub::Hub;
use crate::ratelimit::{Rate, TokenBucket};
use crate::refusal::Refusal;
use crate::settings::AppSettings;
use crate::wire::{Protocol, Transport};

/// One app, running.
#[derive(Debug)]
pub struct App {
    /// The app's id, shared by its publications and connections.
    pub id: Arc<str>,
    /// The app's settings, as configured.
    pub settings: AppSettings,
    /// Verifies the app's connection and subscription tokens.
    pub verifier: TokenVerifier,
    /// The app's local subscriptions.
    pub hub: Hub,
    /// Connections the app holds on this node now.
    connections: AtomicU32,
    /// The same, by protocol and transport (indexed as [`Transport::COMBINATIONS`]), for
    /// `/metrics` and the admin views.
    by_transport: [AtomicU32; Transport::COMBINATIONS.len()],
    /// Publish-API rate limiter (absent when unlimited).
    publish_limiter: Option<Mutex<TokenBucket>>,
    /// The history rules, in order, as policies.
    history: Vec<(crate::pattern::Pattern, HistoryPolicy)>,
    /// Some webhook endpoint wants the connection lifecycle (`connection_opened`,
    /// `connection_closed`): only then are connections recorded and reported.
    pub lifecycle_webhooks: bool,
}

impl App {
    /// Build the runtime app. Fails if the token verifier cannot be built (bad public key).
    pub fn new(settings: AppSettings) -> Result<Self, String> {
        let verifier = TokenVerifier::new(&settings.jwt, &settings.secret)?;
        let publish_limiter = (settings.limits.publish_rate > 0).then(|| {
            Mutex::new(TokenBucket::new(Rate::per_second(
                settings.limits.publish_rate,
            )))
        });
        let history = settings
            .history
            .iter()
            .map(|r| {
                (
                    r.pattern.clone(),
                    HistoryPolicy {
                        size: r.size,
                        ttl: r.ttl,
                        dedupe_window: r.dedupe_window,
                    },
                )
            })
            .collect();
        let lifecycle_webhooks = settings
            .webhooks
            .iter()
            .any(crate::settings::WebhookSettings::wants_connection_events);
        Ok(Self {
            lifecycle_webhooks,
            history,
            id: Arc::from(settings.id.as_str()),
            settings,
            verifier,
            hub: Hub::new(),
            connections: AtomicU32::new(0),
            by_transport: Default::default(),
            publish_limiter,
        })
    }

    /// How `channel` keeps history: the first matching `[[apps.history]]` rule, if any.
    pub fn history_policy(&self, channel: &str) -> Option<&HistoryPolicy> {
        self.history
            .iter()
            .find(|(pattern, _)| pattern.matches(channel))
            .map(|(_, policy)| policy)
    }

    /// Whether a browser page from `origin` may connect.
    pub fn allows_origin(&self, origin: &str) -> bool {
        let allowed = &self.settings.allowed_origins;
        allowed.is_empty() || allowed.iter().any(|p| p.matches(origin))
    }

    /// Take one publish from the API rate limit, or refuse with the seconds to wait.
    pub fn take_publish_token(&self) -> Result<(), (Refusal, u64)> {
        let Some(limiter) = &self.publish_limiter else {
            return Ok(());
        };
        let mut bucket = limiter.lock();
        if bucket.try_take() {
            Ok(())
        } else {
            Err((
                Refusal::new(
                    ErrorCode::RateLimited,
                    format!(
                        "publish rate limit of {}/s exceeded",
                        self.settings.limits.publish_rate
                    ),
                ),
                bucket.retry_after_secs().max(1),
            ))
        }
    }

    /// Connections the app holds on this node.
    pub fn connections(&self) -> u32 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Connections the app holds on this node, by protocol and transport (every combination
    /// that exists, zeros included).
    pub fn connections_by_transport(&self) -> [(Protocol, Transport, u32); 5] {
        Transport::COMBINATIONS.map(|(protocol, transport)| {
            let n = self.by_transport[Transport::slot(protocol, transport)].load(Ordering::Relaxed);
            (protocol, transport, n)
        })
    }

    /// Count a connection admitted (`+1`) or gone (`-1`) on `protocol` and `transport`.
    pub(crate) fn count_transport(&self, protocol: Protocol, transport: Transport, admitted: bool) {
        let slot = &self.by_transport[Transport::slot(protocol, transport)];
        if admitted {
            slot.fetch_add(1, Ordering::Relaxed);
        } else {
            slot.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Count one more connection if under the app's limit.
    pub(crate) fn try_add_connection(&self) -> bool {
        let max = self.settings.limits.max_connections;
        let prev = self.connections.fetch_add(1, Ordering::AcqRel);
        if max > 0 && prev >= max {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Count one connection less.
    pub(crate) fn remove_connection(&self) {
        self.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Every app of the node.
#[derive(Debug, Default)]
pub struct AppRegistry {
    /// Apps by id.
    by_id: HashMap<String, Arc<App>>,
    /// Apps by key.
    by_key: HashMap<String, Arc<App>>,
    /// Apps in configuration order.
    list: Vec<Arc<App>>,
}

impl AppRegistry {
    /// Build the registry. Fails on a duplicate id or key, or an app that cannot be built.
    pub fn new(settings: Vec<AppSettings>) -> Result<Self, String> {
        let mut registry = Self::default();
        for (i, s) in settings.into_iter().enumerate() {
            if registry.by_id.contains_key(&s.id) {
                return Err(format!("apps[{i}].id: duplicate app id {:?}", s.id));
            }
            if registry.by_key.contains_key(&s.key) {
                return Err(format!("apps[{i}].key: duplicate app key {:?}", s.key));
            }
            let app = Arc::new(App::new(s).map_err(|e| format!("apps[{i}].jwt: {e}"))?);
            registry.by_id.insert(app.settings.id.clone(), app.clone());
            registry
                .by_key
                .insert(app.settings.key.clone(), app.clone());
            registry.list.push(app);
        }
        Ok(registry)
    }

    /// The app with this id.
    pub fn by_id(&self, id: &str) -> Option<&Arc<App>> {
        self.by_id.get(id)
    }

    /// The app with this key.
    pub fn by_key(&self, key: &str) -> Option<&Arc<App>> {
        self.by_key.get(key)
    }

    /// Every app, in configuration order.
    pub fn all(&self) -> &[Arc<App>] {
        &self.list
    }
}
