//! The configuration tree, its defaults and its validation.
//!
//! Configuration comes from, lowest precedence first: built-in defaults, a TOML file
//! (`--config`), `HERALD_*` environment variables, and command-line flags (see [`load`]).
//! The merged tree is deserialised (unknown keys are errors), then [`Config::validate`]
//! checks every value and reads every referenced file, once, into the [`Validated`] values
//! the server runs with. All of this happens before any
//! port is bound; any problem is reported with the key it concerns, and `herald` exits
//! with status 64.
//!
//! Every key is documented in `docs/configuration.md` and `herald.example.toml`.

mod acme;
mod history;
pub mod load;
mod validated;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use herald_core::settings::duration;
use herald_core::{AppSettings, NodeLimits};
use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

pub use acme::AcmeConfig;
pub use history::{FsyncPolicy, HistoryConfig, HistoryStoreKind};
pub use load::{ConfigError, Overrides, load};
pub use validated::Validated;

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The client-facing listeners (WebSocket, SSE, HTTP API).
    pub server: ServerConfig,
    /// The admin listener (health, readiness, status, metrics).
    pub admin: AdminConfig,
    /// Logging.
    pub log: LogConfig,
    /// How publications reach every node.
    pub broker: BrokerConfig,
    /// Where a single node keeps channel history (memory, or disk to survive restarts).
    pub history: HistoryConfig,
    /// The Redis server: the `redis` broker, and the shared state of the other cluster
    /// brokers.
    pub redis: RedisConfig,
    /// The NATS server of the `nats` broker.
    pub nats: NatsConfig,
    /// The RabbitMQ server of the `rabbitmq` broker.
    pub rabbitmq: RabbitMqConfig,
    /// The PostgreSQL server of the `postgres` broker.
    pub postgres: PostgresConfig,
    /// This node's identity and liveness timing in a cluster.
    pub cluster: ClusterConfig,
    /// Laravel broadcasts read from Redis (`[[laravel_ingest]]`).
    pub laravel_ingest: Vec<LaravelIngestConfig>,
    /// Node-wide connection limits and timing.
    pub limits: NodeLimits,
    /// The Server-Sent Events transport.
    pub sse: SseConfig,
    /// The HTTP long-polling transport.
    pub long_poll: LongPollConfig,
    /// pusher-js's HTTP fallback transports (`xhr_streaming`, `xhr_polling`).
    pub pusher_http: PusherHttpConfig,
    /// The apps (tenants). Empty means: run with the development app.
    pub apps: Vec<AppSettings>,
}

/// The Server-Sent Events transport (`/sse/{app_key}`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SseConfig {
    /// Whether the endpoint is served.
    pub enabled: bool,
    /// A comment line is sent this often, so proxies do not close an idle stream.
    #[serde(deserialize_with = "duration")]
    pub heartbeat_interval: Duration,
}

impl Default for SseConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            heartbeat_interval: Duration::from_secs(15),
        }
    }
}

/// The HTTP long-polling transport (`/poll/{app_key}`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LongPollConfig {
    /// Whether the endpoint is served.
    pub enabled: bool,
    /// A poll with nothing to return waits this long before answering empty.
    #[serde(deserialize_with = "duration")]
    pub poll_timeout: Duration,
    /// A session with no poll open for this long expires (its presence ends).
    #[serde(deserialize_with = "duration")]
    pub session_timeout: Duration,
    /// Messages kept for a session between polls; past this the session must resync.
    pub max_buffered_messages: usize,
}

impl Default for LongPollConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            poll_timeout: Duration::from_secs(25),
            session_timeout: Duration::from_secs(60),
            max_buffered_messages: 1000,
        }
    }
}

/// pusher-js's HTTP fallback transports, `xhr_streaming` and `xhr_polling`, under
/// `/pusher/app/{key}/…` and `/app/{key}/…` (see `transport/pusher_http.rs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PusherHttpConfig {
    /// Whether the endpoints are served.
    pub enabled: bool,
    /// A heartbeat (`h`) goes down an idle stream, and answers a poll that had nothing to
    /// carry, this often: under pusher-js's 30 s wait for a pong and nginx's 60 s
    /// `proxy_read_timeout`.
    #[serde(deserialize_with = "duration")]
    pub heartbeat_interval: Duration,
    /// A session with no receive request open for this long ends (pusher-js never says
    /// goodbye on these transports, so this is how soon presence sees it leave).
    #[serde(deserialize_with = "duration")]
    pub session_timeout: Duration,
    /// The host name pusher-js should send the rest of a session's requests to (the `o`
    /// frame's `hostname`), so a node behind a load balancer keeps its sessions without
    /// sticky routing. Unset: the host the client used.
    pub hostname: Option<String>,
}

impl Default for PusherHttpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            heartbeat_interval: Duration::from_secs(25),
            session_timeout: Duration::from_secs(15),
            hostname: None,
        }
    }
}

/// The client-facing listeners.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Plain-text listener (ws://, http://): WebSocket, fallbacks and HTTP API.
    pub listen: SocketAddr,
    /// A TLS listener (wss://, https://) serving the same routes, when configured.
    pub tls: Option<TlsConfig>,
    /// Time allowed for a TLS handshake and for a request's headers to arrive.
    #[serde(deserialize_with = "duration")]
    pub handshake_timeout: Duration,
    /// Time given to clients to reconnect elsewhere and to in-flight requests on shutdown
    /// (and on a handover), counted from the start of the drain.
    #[serde(deserialize_with = "duration")]
    pub shutdown_grace_period: Duration,
    /// A drain (shutdown or handover) asks its clients to reconnect spread evenly over this
    /// long, so that their reconnects arrive as a stream, not a thundering herd. Shorter than
    /// `shutdown_grace_period`; `0s` asks them all at once.
    #[serde(deserialize_with = "duration")]
    pub drain_window: Duration,
    /// How long a running process waits for the process it started on SIGUSR2 to be ready
    /// to take over, and then to serve, before it gives up (and, before the hand-over,
    /// keeps serving).
    #[serde(deserialize_with = "duration")]
    pub handover_timeout: Duration,
    /// Proxies whose `X-Forwarded-For` header is trusted to give the client address.
    #[serde(deserialize_with = "networks")]
    pub trusted_proxies: Vec<IpNet>,
    /// If not empty, only clients from these networks may connect at all.
    #[serde(deserialize_with = "networks")]
    pub ip_allow: Vec<IpNet>,
    /// Clients from these networks are refused (checked after `ip_allow`).
    #[serde(deserialize_with = "networks")]
    pub ip_deny: Vec<IpNet>,
    /// Largest HTTP request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// Time a request body may take to arrive once its headers are in (408 after), so a
    /// body trickled or never finished holds nothing for long.
    #[serde(deserialize_with = "duration")]
    pub body_timeout: Duration,
    /// Bytes all request bodies being received or handled may hold together. A request
    /// that would go beyond is refused at once with 503 and `Retry-After`, so concurrent
    /// bodies cannot exhaust memory. At least `max_body_bytes`.
    pub max_body_memory: usize,
    /// Pending-connection queue of each client listener (the kernel caps it at
    /// `net.core.somaxconn`). Too small a queue drops SYNs in a reconnect storm, and each
    /// dropped client waits a second to retry.
    pub listen_backlog: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 6001)),
            tls: None,
            handshake_timeout: Duration::from_secs(10),
            shutdown_grace_period: Duration::from_secs(10),
            drain_window: Duration::from_secs(5),
            handover_timeout: Duration::from_secs(60),
            trusted_proxies: Vec::new(),
            ip_allow: Vec::new(),
            ip_deny: Vec::new(),
            max_body_bytes: 1024 * 1024,
            body_timeout: Duration::from_secs(10),
            max_body_memory: 64 * 1024 * 1024,
            listen_backlog: 4096,
        }
    }
}

/// The TLS listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Address of the TLS listener.
    #[serde(default = "default_tls_listen")]
    pub listen: SocketAddr,
    /// PEM file with the certificate chain (leaf first). With `acme`, the cache's.
    #[serde(default)]
    pub cert_file: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1). With `acme`, the cache's.
    #[serde(default)]
    pub key_file: PathBuf,
    /// Obtain and renew the certificate from an ACME CA instead of reading given files.
    #[serde(default)]
    pub acme: Option<AcmeConfig>,
    /// How often the two files are checked for changes (a renewal is picked up without a
    /// restart; SIGHUP also reloads). `0s` disables the check.
    #[serde(default = "default_reload_interval", deserialize_with = "duration")]
    pub reload_interval: Duration,
}

fn default_tls_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 6443))
}

fn default_reload_interval() -> Duration {
    Duration::from_secs(10)
}

/// The admin listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Whether the admin listener runs.
    pub enabled: bool,
    /// Its address. Keep it private: `/status` and `/metrics` reveal load and app ids.
    pub listen: SocketAddr,
    /// The admin credential: it opens the web UI (`/ui`) and its API, as the password of
    /// HTTP Basic authentication (any user name) or as a bearer token. Unset, the UI is off.
    /// Never logged.
    pub token: Option<herald_core::Secret>,
    /// Whether `/metrics` also requires `token` (for a scraper that can send it).
    pub protect_metrics: bool,
    /// Whether `/status` also requires `token`.
    pub protect_status: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9601)),
            token: None,
            protect_metrics: false,
            protect_status: false,
        }
    }
}

/// Logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter: a level (`info`) or directives (`herald_core=debug,info`).
    /// `RUST_LOG`, when set, takes precedence.
    pub level: String,
    /// `text` for people, `json` for log pipelines.
    pub format: LogFormat,
    /// Colours in text logs: `auto` (only on a terminal, and not when `NO_COLOR` is set),
    /// `always`, or `never`. Files, pipes, journald and `docker logs` get plain text.
    pub color: LogColor,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
            color: LogColor::Auto,
        }
    }
}

/// When text logs are coloured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogColor {
    /// On a terminal, unless `NO_COLOR` is set (https://no-color.org).
    Auto,
    /// Always, even into a file or a pipe.
    Always,
    /// Never.
    Never,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Which broker carries publications.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// `memory`: a single node, no external service.
    pub kind: BrokerKind,
    /// Dispatcher tasks of the memory broker (0: one per core).
    pub dispatchers: usize,
    /// Publications each dispatcher may have queued before publishers wait.
    pub queue: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            kind: BrokerKind::Memory,
            dispatchers: 0,
            queue: 4096,
        }
    }
}

/// The broker backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    /// In-process, single node.
    Memory,
    /// Redis: pub/sub fan-out, history, presence and occupancy (`[redis]`).
    Redis,
    /// Core NATS fan-out (`[nats]`), with history, presence and occupancy on Redis.
    Nats,
    /// RabbitMQ topic-exchange fan-out (`[rabbitmq]`), with the rest on Redis.
    Rabbitmq,
    /// PostgreSQL LISTEN/NOTIFY fan-out (`[postgres]`), with the rest on Redis.
    Postgres,
}

/// The RabbitMQ server (`broker.kind = "rabbitmq"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RabbitMqConfig {
    /// `amqp://user:password@host:5672/%2f`, or `amqps://` for TLS. Never logged.
    pub url: herald_core::Secret,
    /// The topic exchange every node publishes to (declared durable if missing).
    pub exchange: String,
    /// The longest a connect, bind or publisher confirm may take.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
}

impl Default for RabbitMqConfig {
    fn default() -> Self {
        Self {
            url: herald_core::Secret::new("amqp://guest:guest@127.0.0.1:5672/%2f"),
            exchange: "herald".into(),
            timeout: Duration::from_secs(2),
        }
    }
}

/// The PostgreSQL server (`broker.kind = "postgres"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// `postgres://user:password@host:5432/db`. Never logged.
    pub url: herald_core::Secret,
    /// Prefix of notification channels and of the payload table (`{prefix}_payloads`).
    pub prefix: String,
    /// The longest a connect or statement may take.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            url: herald_core::Secret::new("postgres://postgres@127.0.0.1:5432/postgres"),
            prefix: "herald".into(),
            timeout: Duration::from_secs(2),
        }
    }
}

/// The NATS server (`broker.kind = "nats"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// `nats://[user:password@]host:port`; several separated by commas. Never logged.
    pub url: herald_core::Secret,
    /// First token of every subject, so several clusters can share one NATS.
    pub prefix: String,
    /// The longest a connect, subscribe or flush may take.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: herald_core::Secret::new("nats://127.0.0.1:4222"),
            prefix: "herald".into(),
            timeout: Duration::from_secs(2),
        }
    }
}

/// The Redis server (`broker.kind = "redis"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://…` for TLS. Never logged.
    pub url: herald_core::Secret,
    /// PEM file of the certificates a `rediss://` server is verified against, instead of
    /// the built-in web roots: a private CA, or the server's self-signed certificate.
    /// Also used by a `[[laravel_ingest]]` on a `rediss://` URL.
    pub ca_file: Option<PathBuf>,
    /// Prefix of every key and pub/sub channel, so several clusters can share one Redis.
    pub prefix: String,
    /// The longest a Redis command may take before it fails.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: herald_core::Secret::new("redis://127.0.0.1:6379"),
            ca_file: None,
            prefix: "herald".into(),
            timeout: Duration::from_secs(2),
        }
    }
}

impl RedisConfig {
    /// The contents of `ca_file`, if one is set; an error unless it holds at least one PEM
    /// certificate.
    pub fn ca_pem(&self) -> Result<Option<Vec<u8>>, String> {
        let Some(path) = &self.ca_file else {
            return Ok(None);
        };
        let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let certs = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: invalid PEM: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{}: no certificate found", path.display()));
        }
        Ok(Some(pem))
    }
}

/// One Laravel Redis ingest: Laravel's `redis` broadcaster publishes, Herald delivers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaravelIngestConfig {
    /// The app the broadcasts are published to.
    pub app: String,
    /// The Redis Laravel publishes to; default: `redis.url`. Never logged.
    #[serde(default)]
    pub url: Option<herald_core::Secret>,
    /// Laravel's Redis key prefix (`database.redis.options.prefix`), removed from the
    /// Redis channel name to get the Herald channel name.
    #[serde(default)]
    pub prefix: String,
    /// Redis glob patterns of the channels to read, after the prefix.
    #[serde(default = "all_channels")]
    pub channels: Vec<String>,
}

fn all_channels() -> Vec<String> {
    vec!["*".into()]
}

/// This node in a cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This node's id; empty: a random one at each start.
    pub node_id: String,
    /// How often the node proves it is alive and flushes its subscriber counts.
    #[serde(deserialize_with = "duration")]
    pub heartbeat_interval: Duration,
    /// A node silent this long is dead: its presence members and channels are removed.
    #[serde(deserialize_with = "duration")]
    pub node_ttl: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            node_id: String::new(),
            heartbeat_interval: Duration::from_secs(1),
            node_ttl: Duration::from_secs(10),
        }
    }
}

fn networks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    let raw = Vec::<String>::deserialize(d)?;
    raw.iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "{s:?} is not an IP address or CIDR network (e.g. 10.0.0.0/8)"
                    ))
                })
        })
        .collect()
}

impl Config {
    /// Whether no app was configured and the development app is in use.
    pub fn uses_development_app(&self) -> bool {
        self.apps.len() == 1 && self.apps[0].id == AppSettings::development().id
    }

    /// Check every value, fill in what comes from files (JWT public keys) and defaults (the
    /// development app), and read what the server runs with (TLS key, Redis CA, webhook
    /// targets). Returns every problem, each with its key.
    pub fn validate(mut self) -> Result<Validated, Vec<(String, String)>> {
        let mut problems = Vec::new();
        if self.apps.is_empty() {
            self.apps.push(AppSettings::development());
        }
        for (i, app) in self.apps.iter_mut().enumerate() {
            let prefix = format!("apps[{i}]");
            problems.extend(app.validate(&prefix));
            if let Some(path) = &app.jwt.public_key_file {
                match std::fs::read_to_string(path) {
                    Ok(pem) => app.jwt.public_key = Some(pem),
                    Err(e) => problems.push((
                        format!("{prefix}.jwt.public_key_file"),
                        format!("cannot read {path}: {e}"),
                    )),
                }
            }
            if app.jwt.public_key.is_some()
                && let Err(e) = herald_core::auth::TokenVerifier::new(&app.jwt, &app.secret)
            {
                problems.push((format!("{prefix}.jwt"), e));
            }
        }
        for (key, pick) in [
            (
                "id",
                (|a: &AppSettings| a.id.clone()) as fn(&AppSettings) -> String,
            ),
            ("key", |a: &AppSettings| a.key.clone()),
        ] {
            let mut seen = std::collections::HashMap::new();
            for (i, app) in self.apps.iter().enumerate() {
                if let Some(first) = seen.insert(pick(app), i) {
                    problems.push((
                        format!("apps[{i}].{key}"),
                        format!("duplicate {key}, already used by apps[{first}]"),
                    ));
                }
            }
        }
        problems.extend(self.limits.validate("limits"));
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            problems.push(("log.level".into(), format!("invalid filter: {e}")));
        }
        if self.server.drain_window >= self.server.shutdown_grace_period
            && !self.server.drain_window.is_zero()
        {
            problems.push((
                "server.drain_window".into(),
                "must be shorter than server.shutdown_grace_period".into(),
            ));
        }
        if let Some(token) = &self.admin.token
            && token.expose().len() < 16
        {
            problems.push((
                "admin.token".into(),
                "must be at least 16 characters (it opens the admin UI)".into(),
            ));
        }
        if (self.admin.protect_metrics || self.admin.protect_status) && self.admin.token.is_none() {
            problems.push((
                "admin.token".into(),
                "protect_metrics and protect_status need a token".into(),
            ));
        }
        if self.server.handover_timeout < Duration::from_secs(1) {
            problems.push((
                "server.handover_timeout".into(),
                "must be at least 1s".into(),
            ));
        }
        if self.server.max_body_bytes < 1024 {
            problems.push((
                "server.max_body_bytes".into(),
                "must be at least 1024".into(),
            ));
        }
        if self.server.body_timeout.is_zero() {
            problems.push(("server.body_timeout".into(), "must be more than 0".into()));
        }
        if self.server.max_body_memory < self.server.max_body_bytes
            || u32::try_from(self.server.max_body_memory).is_err()
        {
            problems.push((
                "server.max_body_memory".into(),
                "must be at least server.max_body_bytes and below 4 GiB".into(),
            ));
        }
        if self.server.listen_backlog == 0 {
            problems.push(("server.listen_backlog".into(), "must be at least 1".into()));
        }
        if self.server.handshake_timeout.is_zero() {
            problems.push((
                "server.handshake_timeout".into(),
                "must be more than 0".into(),
            ));
        }
        if self.sse.heartbeat_interval.is_zero() {
            problems.push((
                "sse.heartbeat_interval".into(),
                "must be more than 0".into(),
            ));
        }
        if self.long_poll.poll_timeout.is_zero() {
            problems.push((
                "long_poll.poll_timeout".into(),
                "must be more than 0".into(),
            ));
        }
        if self.long_poll.session_timeout <= self.long_poll.poll_timeout {
            problems.push((
                "long_poll.session_timeout".into(),
                "must be longer than long_poll.poll_timeout".into(),
            ));
        }
        if self.pusher_http.heartbeat_interval.is_zero() {
            problems.push((
                "pusher_http.heartbeat_interval".into(),
                "must be longer than 0".into(),
            ));
        }
        if self.pusher_http.session_timeout.is_zero() {
            problems.push((
                "pusher_http.session_timeout".into(),
                "must be longer than 0".into(),
            ));
        }
        if self.long_poll.max_buffered_messages == 0 {
            problems.push((
                "long_poll.max_buffered_messages".into(),
                "must be at least 1".into(),
            ));
        }
        if self.broker.queue == 0 {
            problems.push(("broker.queue".into(), "must be at least 1".into()));
        }
        problems.extend(self.history.problems(self.broker.kind));
        if self.broker.kind == BrokerKind::Nats {
            let prefix = &self.nats.prefix;
            if prefix.is_empty()
                || prefix
                    .bytes()
                    .any(|b| b.is_ascii_whitespace() || b"*>.".contains(&b))
            {
                problems.push((
                    "nats.prefix".into(),
                    "must be one subject token: non-empty, without spaces, '.', '*' or '>'".into(),
                ));
            }
            if self.nats.timeout.is_zero() {
                problems.push(("nats.timeout".into(), "must be more than 0".into()));
            }
        }
        if self.broker.kind == BrokerKind::Rabbitmq {
            if self.rabbitmq.exchange.is_empty() || self.rabbitmq.exchange.len() > 127 {
                problems.push(("rabbitmq.exchange".into(), "must be 1 to 127 bytes".into()));
            }
            if self.rabbitmq.timeout.is_zero() {
                problems.push(("rabbitmq.timeout".into(), "must be more than 0".into()));
            }
        }
        if self.broker.kind == BrokerKind::Postgres {
            if !herald_cluster::postgres::valid_prefix(&self.postgres.prefix) {
                problems.push((
                    "postgres.prefix".into(),
                    "lowercase letters, digits and _, starting with a letter, at most 40".into(),
                ));
            }
            if self.postgres.timeout.is_zero() {
                problems.push(("postgres.timeout".into(), "must be more than 0".into()));
            }
        }
        let redis_ca = match self.redis.ca_pem() {
            Ok(pem) => pem,
            Err(e) => {
                problems.push(("redis.ca_file".into(), e));
                None
            }
        };
        if self.broker.kind != BrokerKind::Memory {
            if let Err(e) =
                herald_cluster::redis::check_url(self.redis.url.expose(), redis_ca.as_deref())
            {
                problems.push(("redis.url".into(), e));
            }
            if self.redis.prefix.is_empty() || self.redis.prefix.contains(char::is_whitespace) {
                problems.push((
                    "redis.prefix".into(),
                    "must be non-empty, without spaces".into(),
                ));
            }
            if self.redis.timeout.is_zero() {
                problems.push(("redis.timeout".into(), "must be more than 0".into()));
            }
        }
        for (i, ingest) in self.laravel_ingest.iter().enumerate() {
            if !self.apps.is_empty() && !self.apps.iter().any(|a| a.id == ingest.app) {
                problems.push((
                    format!("laravel_ingest[{i}].app"),
                    format!("no app has the id {:?}", ingest.app),
                ));
            }
            let url = ingest.url.as_ref().unwrap_or(&self.redis.url);
            let ca = redis_ca
                .as_deref()
                .filter(|_| url.expose().starts_with("rediss://"));
            if let Err(e) = herald_cluster::redis::check_url(url.expose(), ca) {
                problems.push((format!("laravel_ingest[{i}].url"), e));
            }
            if ingest.channels.is_empty() {
                problems.push((
                    format!("laravel_ingest[{i}].channels"),
                    "name at least one pattern (\"*\" for all)".into(),
                ));
            }
        }
        if !self
            .cluster
            .node_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            problems.push((
                "cluster.node_id".into(),
                "may contain only letters, digits, - _ and .".into(),
            ));
        }
        if self.cluster.heartbeat_interval.is_zero() {
            problems.push((
                "cluster.heartbeat_interval".into(),
                "must be more than 0".into(),
            ));
        }
        if self.cluster.node_ttl < self.cluster.heartbeat_interval * 3 {
            problems.push((
                "cluster.node_ttl".into(),
                "must be at least 3 × cluster.heartbeat_interval".into(),
            ));
        }
        let webhooks = self.webhook_targets(&mut problems);
        let mut tls_key = None;
        let mut ports = vec![("server.listen", self.server.listen)];
        if self.admin.enabled {
            ports.push(("admin.listen", self.admin.listen));
        }
        if let Some(tls) = &mut self.server.tls {
            ports.push(("server.tls.listen", tls.listen));
            match &tls.acme {
                Some(acme) => {
                    problems.extend(acme.problems());
                    if !tls.cert_file.as_os_str().is_empty() || !tls.key_file.as_os_str().is_empty()
                    {
                        problems.push((
                            "server.tls.cert_file".into(),
                            "leave cert_file and key_file out with [server.tls.acme]: the \
                             certificate lives in its cache_dir"
                                .into(),
                        ));
                    }
                    tls.cert_file = acme.cert_file();
                    tls.key_file = acme.key_file();
                    // A certificate from an earlier run serves at once; without one the
                    // listener answers only the CA's challenges until the first is issued.
                    if tls.cert_file.exists() {
                        match crate::tls::load_certified_key(&tls.cert_file, &tls.key_file) {
                            Ok(key) => tls_key = Some(key),
                            Err(e) => tracing::warn!(
                                error = %e,
                                "the cached ACME certificate cannot be used; obtaining a new one"
                            ),
                        }
                    }
                }
                None => match crate::tls::load_certified_key(&tls.cert_file, &tls.key_file) {
                    Ok(key) => tls_key = Some(key),
                    Err(e) => problems.push(("server.tls".into(), e)),
                },
            }
        }
        for (i, (key, addr)) in ports.iter().enumerate() {
            for (other, other_addr) in &ports[..i] {
                if addr == other_addr && addr.port() != 0 {
                    problems.push(((*key).into(), format!("same address as {other}")));
                }
            }
        }
        if problems.is_empty() {
            Ok(Validated::new(self, tls_key, redis_ca, webhooks))
        } else {
            Err(problems)
        }
    }

    /// Every app's webhook URLs, parsed (problems named by key).
    fn webhook_targets(
        &self,
        problems: &mut Vec<(String, String)>,
    ) -> std::collections::HashMap<String, Vec<crate::webhooks::WebhookTarget>> {
        let mut targets = std::collections::HashMap::new();
        for (i, app) in self.apps.iter().enumerate() {
            let mut list = Vec::new();
            for (j, hook) in app.webhooks.iter().enumerate() {
                let key = format!("apps[{i}].webhooks[{j}].url");
                match crate::webhooks::WebhookTarget::parse(&hook.url) {
                    Ok(t) => list.push(t),
                    Err(_) if problems.iter().any(|(k, _)| *k == key) => {}
                    Err(e) => problems.push((key, format!("not a usable webhook URL: {e}"))),
                }
            }
            targets.insert(app.id.clone(), list);
        }
        targets
    }
}
