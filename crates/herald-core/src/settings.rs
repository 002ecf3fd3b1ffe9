//! The settings the core runs with: per app ([`AppSettings`]) and per node ([`NodeLimits`]).
//!
//! These are configuration types: they derive `Deserialize` so the server's config loader can
//! read them straight from TOML, and every default lives in their `Default` impls, in this
//! one file. The core itself never reads files or the environment; it is handed these values.
//! `validate` methods return every problem, each naming its key, so the loader can report
//! them all before any port is bound.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::pattern::Pattern;
use crate::secret::Secret;

mod backend;

pub use backend::{NEVER_FORWARDED, ProxySettings, TokenExpiry};

/// One app (tenant): its credentials, options and limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSettings {
    /// The app id, used in HTTP API paths (`/api/{id}/…`, `/apps/{id}/…`).
    pub id: String,
    /// The public app key, used by clients to connect (`/ws/{key}`, `/app/{key}`).
    pub key: String,
    /// The app secret: signs HS256 tokens and Pusher signatures, authenticates the API.
    pub secret: Secret,
    /// A disabled app refuses connections (4003) and API calls (403).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Browser origins allowed to connect (`*` wildcards). Empty or `["*"]` allows any.
    #[serde(default)]
    pub allowed_origins: Vec<Pattern>,
    /// Whether clients may send client events on private and presence channels.
    #[serde(default)]
    pub client_events: bool,
    /// Refuse connections that present no connection token.
    #[serde(default)]
    pub require_token: bool,
    /// How connection and subscription tokens are verified.
    #[serde(default)]
    pub jwt: JwtSettings,
    /// Extra role/permission requirements per channel pattern.
    #[serde(default)]
    pub channel_rules: Vec<ChannelRule>,
    /// This app's limits.
    #[serde(default)]
    pub limits: AppLimits,
    /// HTTP endpoints notified of channel, presence, client-event and cache-miss events.
    #[serde(default)]
    pub webhooks: Vec<WebhookSettings>,
    /// `channel_vacated` and `member_removed` webhooks wait this long and are dropped (with
    /// the matching `channel_occupied`/`member_added`) if the channel or user comes back in
    /// the meantime, so a page reload does not produce a flap.
    #[serde(default = "default_webhook_delay", deserialize_with = "duration")]
    pub webhook_delay: Duration,
    /// Pusher clients must sign in (or subscribe to a private or presence channel) within
    /// this time, or are disconnected with 4009. Unset: no such requirement.
    #[serde(default, deserialize_with = "optional_duration")]
    pub user_authentication_timeout: Option<Duration>,
    /// Send Pusher `pusher_internal:subscription_count` events to subscribers of public and
    /// private channels with at most 100 subscribers when their count changes.
    #[serde(default)]
    pub subscription_count: bool,
    /// Which channels keep a history stream, and how much: the first matching rule applies;
    /// channels matching none keep no history.
    #[serde(default)]
    pub history: Vec<HistoryRule>,
    /// A publish repeating an idempotency key seen within this window is acknowledged as a
    /// duplicate and not delivered again.
    #[serde(default = "default_idempotency_window", deserialize_with = "duration")]
    pub idempotency_window: Duration,
    /// permessage-deflate for this app's WebSocket clients.
    #[serde(default)]
    pub compression: CompressionSettings,
    /// Ask the app's backend who a native connection is when it brings no token: the
    /// answer is the connection's identity, as a token's claims would be.
    #[serde(default)]
    pub connect_proxy: Option<ProxySettings>,
    /// Ask the app's backend (Laravel's `/broadcasting/auth`) about private and presence
    /// channels no token grants a native connection.
    #[serde(default)]
    pub subscribe_proxy: Option<ProxySettings>,
    /// What happens when a connection's token expires while it is open.
    #[serde(default)]
    pub token_expiry: TokenExpiry,
}

/// permessage-deflate (RFC 7692) on `/app/{key}` and `/ws/{key}`.
///
/// A publication is compressed once per protocol and the bytes are shared by every
/// compressing subscriber; nothing is kept per connection (see `herald_protocol::deflate`).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompressionSettings {
    /// Accept the extension when a client offers it (browsers and the `ws` package do).
    pub enabled: bool,
    /// Messages shorter than this many bytes go uncompressed: below a few hundred bytes
    /// deflate saves little and costs a compression for each publication.
    pub threshold: usize,
}

impl Default for CompressionSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            threshold: 256,
        }
    }
}

fn default_idempotency_window() -> Duration {
    Duration::from_secs(5 * 60)
}

/// Channels matching `pattern` keep a bounded history stream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryRule {
    /// Channels this rule applies to (`*` wildcards).
    pub pattern: Pattern,
    /// Most publications kept per channel (0: none kept, offsets and dedupe only).
    #[serde(default = "default_history_size")]
    pub size: usize,
    /// Publications older than this are dropped.
    #[serde(default = "default_history_ttl", deserialize_with = "duration")]
    pub ttl: Duration,
    /// Drop a publication whose event and data equal the previous one's on the channel
    /// within this window ("hash-based change detection" for pollers). Unset: off.
    #[serde(default, deserialize_with = "optional_duration")]
    pub dedupe_window: Option<Duration>,
}

fn default_history_size() -> usize {
    1000
}

fn default_history_ttl() -> Duration {
    Duration::from_secs(300)
}

impl HistoryRule {
    /// A rule for `pattern` with the default size and TTL.
    pub fn new(pattern: &str) -> Self {
        Self {
            pattern: Pattern::new(pattern),
            size: default_history_size(),
            ttl: default_history_ttl(),
            dedupe_window: None,
        }
    }
}

fn default_webhook_delay() -> Duration {
    Duration::from_secs(3)
}

/// One webhook endpoint of an app.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// Where to POST (http or https).
    pub url: String,
    /// Event types to send: `channel_occupied`, `channel_vacated`, `member_added`,
    /// `member_removed`, `client_event`, `cache_miss`, and the connection lifecycle's
    /// `connection_opened` and `connection_closed`. Empty: all of them but the connection
    /// lifecycle, which is sent only to endpoints that list it.
    #[serde(default)]
    pub event_types: Vec<String>,
    /// Only events on channels starting with this prefix (connection events have no
    /// channel and ignore it).
    #[serde(default)]
    pub channel_prefix: Option<String>,
    /// Put the client's IP address in connection events. Off by default: an address is
    /// personal data.
    #[serde(default)]
    pub include_client_ip: bool,
}

impl WebhookSettings {
    /// Whether this endpoint wants the connection lifecycle events.
    pub fn wants_connection_events(&self) -> bool {
        self.event_types
            .iter()
            .any(|t| t == "connection_opened" || t == "connection_closed")
    }
}

/// The webhook event types.
pub const WEBHOOK_EVENT_TYPES: &[&str] = &[
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
    "cache_miss",
    "connection_opened",
    "connection_closed",
];

fn yes() -> bool {
    true
}

impl AppSettings {
    /// The development app `herald serve` runs with when no app is configured.
    /// Its credentials are public, documented, and for development only.
    pub fn development() -> Self {
        Self {
            id: "herald-dev".into(),
            key: "herald-dev-key".into(),
            secret: Secret::new("herald-dev-secret"),
            enabled: true,
            allowed_origins: Vec::new(),
            client_events: true,
            require_token: false,
            jwt: JwtSettings::default(),
            channel_rules: Vec::new(),
            limits: AppLimits::default(),
            webhooks: Vec::new(),
            webhook_delay: default_webhook_delay(),
            user_authentication_timeout: None,
            subscription_count: false,
            // Every channel keeps history, so recovery works out of the box in development.
            history: vec![HistoryRule::new("*")],
            idempotency_window: default_idempotency_window(),
            compression: CompressionSettings::default(),
            connect_proxy: None,
            subscribe_proxy: None,
            token_expiry: TokenExpiry::default(),
        }
    }

    /// Every problem with these settings, as `(key, message)`; `prefix` is this app's key path
    /// in the config (such as `apps[0]`).
    pub fn validate(&self, prefix: &str) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut bad = |key: &str, msg: &str| problems.push((format!("{prefix}.{key}"), msg.into()));
        let safe = |s: &str| {
            !s.is_empty()
                && s.len() <= 128
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        if !safe(&self.id) {
            bad("id", "must be 1-128 characters from [A-Za-z0-9-_.]");
        }
        if !safe(&self.key) {
            bad("key", "must be 1-128 characters from [A-Za-z0-9-_.]");
        }
        if self.secret.expose().len() < 8 {
            bad("secret", "must be at least 8 characters");
        }
        match self.jwt.algorithm {
            JwtAlgorithm::Hs256 => {}
            JwtAlgorithm::Rs256 | JwtAlgorithm::Es256 => {
                let keys = [
                    self.jwt.public_key_file.is_some() || self.jwt.public_key.is_some(),
                    self.jwt.jwks_url.is_some(),
                ];
                if keys == [false, false] {
                    bad(
                        "jwt.public_key_file",
                        "RS256 and ES256 need a public key (public_key_file or public_key) or a jwks_url",
                    );
                }
                if keys == [true, true] {
                    bad(
                        "jwt.jwks_url",
                        "give either a public key or a jwks_url, not both",
                    );
                }
            }
        }
        if let Some(url) = &self.jwt.jwks_url {
            if self.jwt.algorithm == JwtAlgorithm::Hs256 {
                bad("jwt.jwks_url", "a key set is for RS256 or ES256");
            }
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bad("jwt.jwks_url", "must be an http:// or https:// URL");
            }
            if self.jwt.jwks_refresh < Duration::from_secs(10) {
                bad("jwt.jwks_refresh", "must be at least 10s");
            }
            if self.jwt.jwks_min_interval < Duration::from_secs(1) {
                bad("jwt.jwks_min_interval", "must be at least 1s");
            }
        }
        let mut proxies = Vec::new();
        if let Some(p) = &self.connect_proxy {
            proxies.extend(p.problems(&format!("{prefix}.connect_proxy")));
        }
        if let Some(p) = &self.subscribe_proxy {
            proxies.extend(p.problems(&format!("{prefix}.subscribe_proxy")));
        }
        if self.token_expiry.enforce && self.token_expiry.grace.is_zero() {
            bad("token_expiry.grace", "must be more than 0");
        }
        for (i, rule) in self.channel_rules.iter().enumerate() {
            if rule.roles.is_empty() && rule.permissions.is_empty() {
                bad(
                    &format!("channel_rules[{i}]"),
                    "a rule needs at least one role or permission",
                );
            }
        }
        for (i, hook) in self.webhooks.iter().enumerate() {
            if !(hook.url.starts_with("http://") || hook.url.starts_with("https://")) {
                bad(
                    &format!("webhooks[{i}].url"),
                    "must be an http:// or https:// URL",
                );
            }
            for t in &hook.event_types {
                if !WEBHOOK_EVENT_TYPES.contains(&t.as_str()) {
                    bad(
                        &format!("webhooks[{i}].event_types"),
                        &format!(
                            "unknown event type {t:?}; known: {}",
                            WEBHOOK_EVENT_TYPES.join(", ")
                        ),
                    );
                }
            }
        }
        for (i, rule) in self.history.iter().enumerate() {
            if rule.ttl.is_zero() {
                bad(&format!("history[{i}].ttl"), "must be more than 0");
            }
            if rule.size > 100_000 {
                bad(&format!("history[{i}].size"), "must be at most 100000");
            }
        }
        let l = &self.limits;
        if l.max_subscriptions_per_connection == 0 {
            bad(
                "limits.max_subscriptions_per_connection",
                "must be at least 1",
            );
        }
        if l.max_payload_bytes == 0 {
            bad("limits.max_payload_bytes", "must be at least 1");
        }
        if l.max_channels_per_publish == 0 {
            bad("limits.max_channels_per_publish", "must be at least 1");
        }
        if l.max_batch_events == 0 {
            bad("limits.max_batch_events", "must be at least 1");
        }
        if l.max_presence_members == 0 {
            bad("limits.max_presence_members", "must be at least 1");
        }
        problems.extend(proxies);
        problems
    }
}

/// The signing algorithm of an app's tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with the app secret.
    #[default]
    #[serde(rename = "HS256")]
    Hs256,
    /// RSA PKCS#1 v1.5 with SHA-256, verified with a configured public key.
    #[serde(rename = "RS256")]
    Rs256,
    /// ECDSA P-256 with SHA-256, verified with a configured public key.
    #[serde(rename = "ES256")]
    Es256,
}

/// How an app's tokens are verified.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtSettings {
    /// The one accepted algorithm (tokens signed otherwise are refused).
    pub algorithm: JwtAlgorithm,
    /// PEM file with the public key, for RS256 and ES256.
    pub public_key_file: Option<String>,
    /// The PEM text itself, as an alternative to `public_key_file` (filled in by the loader).
    pub public_key: Option<String>,
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// Required `aud`, if set.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp`.
    #[serde(deserialize_with = "duration")]
    pub leeway: Duration,
    /// A JSON Web Key Set to verify RS256/ES256 tokens with, instead of one public key: keys
    /// are picked by the token's `kid`, refetched every `jwks_refresh` and when a token names
    /// an unknown `kid` (at most every 10 s), so a key rotation needs no restart.
    pub jwks_url: Option<String>,
    /// How often the key set is refetched.
    #[serde(deserialize_with = "duration")]
    pub jwks_refresh: Duration,
    /// The least time between two fetches of the key set: tokens naming unknown `kid`s,
    /// however many, cause at most one fetch per this interval.
    #[serde(deserialize_with = "duration")]
    pub jwks_min_interval: Duration,
}

impl Default for JwtSettings {
    fn default() -> Self {
        Self {
            algorithm: JwtAlgorithm::Hs256,
            public_key_file: None,
            public_key: None,
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(5),
            jwks_url: None,
            jwks_refresh: Duration::from_secs(3600),
            jwks_min_interval: Duration::from_secs(10),
        }
    }
}

/// A rule: subscribing to channels matching `pattern` needs one of `roles` (if any are
/// listed) and all of `permissions` (if any are listed), from the connection token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelRule {
    /// The channel pattern the rule applies to (`*` wildcards).
    pub pattern: Pattern,
    /// At least one of these roles is required (ignored when empty).
    #[serde(default)]
    pub roles: Vec<String>,
    /// All of these permissions are required (ignored when empty).
    #[serde(default)]
    pub permissions: Vec<String>,
}

/// Per-app limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppLimits {
    /// Connections this app may hold on this node (0: no app-specific limit).
    pub max_connections: u32,
    /// Channels one connection may be subscribed to at once.
    pub max_subscriptions_per_connection: u32,
    /// Largest event `data`, in bytes of JSON text (publish API and client events).
    pub max_payload_bytes: usize,
    /// Channels one publish may name.
    pub max_channels_per_publish: usize,
    /// Events one batch publish may hold.
    pub max_batch_events: usize,
    /// Client events one connection may send per second (bursts of the same size).
    pub client_event_rate: u32,
    /// Publishes per second the HTTP API accepts for this app (0: unlimited).
    pub publish_rate: u32,
    /// Members a presence channel may hold.
    pub max_presence_members: usize,
    /// Largest presence `info`, in bytes of JSON text.
    pub max_user_info_bytes: usize,
    /// How long a cache channel keeps its last event.
    #[serde(deserialize_with = "duration")]
    pub cache_ttl: Duration,
    /// Cache channels whose last event is kept at once (the oldest is forgotten first).
    pub max_cached_channels: usize,
    /// Publications one recovery may replay; a larger gap is reported as not recovered.
    pub max_recovery_publications: usize,
    /// Idempotency keys remembered at once (the oldest are forgotten first).
    pub max_idempotency_keys: usize,
}

impl Default for AppLimits {
    fn default() -> Self {
        Self {
            max_connections: 0,
            max_subscriptions_per_connection: 100,
            max_payload_bytes: 10 * 1024,
            max_channels_per_publish: 100,
            max_batch_events: 10,
            client_event_rate: 10,
            publish_rate: 100_000,
            max_presence_members: 100,
            max_user_info_bytes: 1024,
            cache_ttl: Duration::from_secs(30 * 60),
            max_cached_channels: 10_000,
            max_recovery_publications: 1000,
            max_idempotency_keys: 100_000,
        }
    }
}

/// Node-wide limits and connection timing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeLimits {
    /// Realtime connections this node accepts in total.
    pub max_connections: u32,
    /// Realtime connections one client IP may hold on this node (0: unlimited).
    pub max_connections_per_ip: u32,
    /// Largest message a client may send, in bytes; larger closes the connection with 1009.
    pub max_message_size: usize,
    /// Bytes of messages queued for one connection before it is a slow consumer (4101).
    pub max_queue_bytes: usize,
    /// Messages queued for one connection before it is a slow consumer (4101).
    pub max_queue_messages: usize,
    /// A connection that sends nothing for this long is closed (4201).
    #[serde(deserialize_with = "duration")]
    pub activity_timeout: Duration,
    /// An idle connection is pinged after this long, so a live client always answers in time.
    #[serde(deserialize_with = "duration")]
    pub ping_interval: Duration,
    /// A socket write that makes no progress for this long marks a slow consumer (4101).
    #[serde(deserialize_with = "duration")]
    pub write_timeout: Duration,
    /// Messages per second one connection may send (any type, bursts of twice that);
    /// beyond it the connection is closed with 4102.
    pub max_client_messages_per_second: u32,
    /// A message the client has begun (a partial frame, or a fragmented message) must be
    /// complete within this, or the connection is closed with 4202: what it has sent so far
    /// is held in memory, and pings must not keep it there for ever.
    #[serde(deserialize_with = "duration")]
    pub incomplete_message_timeout: Duration,
}

impl Default for NodeLimits {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            max_connections_per_ip: 1_000,
            max_message_size: 32 * 1024,
            max_queue_bytes: 1024 * 1024,
            max_queue_messages: 10_000,
            activity_timeout: Duration::from_secs(60),
            ping_interval: Duration::from_secs(25),
            write_timeout: Duration::from_secs(10),
            max_client_messages_per_second: 100,
            incomplete_message_timeout: Duration::from_secs(30),
        }
    }
}

impl NodeLimits {
    /// Every problem with these limits, as `(key, message)` under `prefix`.
    pub fn validate(&self, prefix: &str) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut bad = |key: &str, msg: &str| problems.push((format!("{prefix}.{key}"), msg.into()));
        if self.max_connections == 0 {
            bad("max_connections", "must be at least 1");
        }
        if self.max_message_size < 512 {
            bad("max_message_size", "must be at least 512 bytes");
        }
        if self.max_queue_bytes < 4096 {
            bad("max_queue_bytes", "must be at least 4096 bytes");
        }
        if self.max_queue_messages == 0 {
            bad("max_queue_messages", "must be at least 1");
        }
        if self.ping_interval.is_zero() {
            bad("ping_interval", "must be more than 0");
        }
        if self.activity_timeout <= self.ping_interval {
            bad("activity_timeout", "must be longer than ping_interval");
        }
        if self.write_timeout.is_zero() {
            bad("write_timeout", "must be more than 0");
        }
        if self.max_client_messages_per_second == 0 {
            bad("max_client_messages_per_second", "must be at least 1");
        }
        if self.incomplete_message_timeout.is_zero() {
            bad("incomplete_message_timeout", "must be more than 0");
        }
        problems
    }
}

/// Deserialize a duration from a human string (`"30s"`, `"500ms"`, `"2m"`) or whole seconds.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(s) => Ok(Duration::from_secs(s)),
        Raw::Text(t) => humantime::parse_duration(&t).map_err(|e| {
            serde::de::Error::custom(format!("invalid duration {t:?} ({e}); use e.g. \"30s\""))
        }),
    }
}

/// Deserialize an optional duration (absent or null: `None`).
pub fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| Pattern::new(&s))
    }
}
