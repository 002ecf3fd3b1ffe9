//! The Redis backends: one Redis (standalone, or the primary behind Sentinel-aware DNS)
//! carries everything a cluster of Herald nodes shares.
//!
//! | Concern | Redis structure | Atomicity |
//! |---|---|---|
//! | fan-out | pub/sub channel `{prefix}:pub:{app}:{channel}`; control on `{prefix}:control` | Redis delivers one channel's messages in order |
//! | history | hash `{prefix}:hm:…` (epoch, top offset, dedupe) and sorted set `{prefix}:he:…` | one Lua script appends **and** publishes |
//! | presence | hashes `{prefix}:pu/pi/pc:…`, sorted set `{prefix}:po:…` | one Lua script per join or leave |
//! | occupancy | hash `{prefix}:oc:…` (node → local count), set `{prefix}:ch:{app}` | one Lua script per transition |
//! | liveness | sorted set `{prefix}:nodes` (node → last heartbeat, Redis clock) | |
//!
//! Every node heartbeats every `heartbeat` interval. A node whose heartbeat is older than
//! `node_ttl` is dead: the first live node to notice takes a lock on it, removes its presence
//! members and channel occupancy (announcing `left` and webhooks for what changed), and
//! deletes it. So a dead node's members disappear within `node_ttl + heartbeat`.
//!
//! Connections: one multiplexed connection for commands and scripts, one for pub/sub. Both
//! reconnect with jittered exponential backoff; every command has a timeout, so a slow or
//! absent Redis fails publishes fast instead of stalling them. Redis Cluster is not
//! supported (the scripts touch keys of several channels).

mod broker;
mod history;
mod occupancy;
mod presence;
mod scripts;
mod stats;

use std::sync::Arc;
use std::time::Duration;

use herald_core::node::Backends;
use herald_protocol::ChannelName;
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, ScriptInvocation};
use tracing::{info, warn};

pub(crate) use crate::envelope::split_position as split_frame;
pub use broker::RedisBroker;
pub use history::{RedisHistory, StreamLog};
pub use occupancy::RedisOccupancy;
pub use presence::RedisPresence;

use crate::backoff::Backoff;

/// How to reach Redis and how the cluster's liveness is timed.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS.
    pub url: String,
    /// PEM certificates trusted for a `rediss://` server instead of the built-in web roots
    /// (a private CA, or the server's own self-signed certificate).
    pub ca_pem: Option<Vec<u8>>,
    /// Prefix of every key and pub/sub channel, so several clusters can share one Redis.
    pub prefix: String,
    /// How often a node proves it is alive (and flushes its subscriber counts).
    pub heartbeat: Duration,
    /// A node silent for this long is dead; its presence members and channels are removed.
    pub node_ttl: Duration,
    /// The longest any Redis command may take before it fails (fail fast, never stall).
    pub timeout: Duration,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            ca_pem: None,
            prefix: "herald".into(),
            heartbeat: Duration::from_secs(1),
            node_ttl: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
        }
    }
}

/// Every key and channel name, under the prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    fn k(&self, kind: &str, app: &str, channel: &str) -> String {
        format!("{}:{kind}:{app}:{channel}", self.prefix)
    }
    pub(crate) fn publications(&self, app: &str, channel: &str) -> String {
        self.k("pub", app, channel)
    }
    pub(crate) fn control(&self) -> String {
        format!("{}:control", self.prefix)
    }
    pub(crate) fn history_meta(&self, app: &str, channel: &str) -> String {
        self.k("hm", app, channel)
    }
    pub(crate) fn history_entries(&self, app: &str, channel: &str) -> String {
        self.k("he", app, channel)
    }
    pub(crate) fn history_meta_pattern(&self, app: Option<&str>) -> String {
        match app {
            Some(app) => format!("{}:hm:{app}:*", self.prefix),
            None => format!("{}:hm:*", self.prefix),
        }
    }
    /// Presence keys of one channel: users, info, order, conns, seq.
    pub(crate) fn presence(&self, app: &str, channel: &str) -> [String; 5] {
        ["pu", "pi", "po", "pc", "ps"].map(|kind| self.k(kind, app, channel))
    }
    pub(crate) fn node_presence(&self, node: &str) -> String {
        format!("{}:np:{node}", self.prefix)
    }
    pub(crate) fn occupancy(&self, app: &str, channel: &str) -> String {
        self.k("oc", app, channel)
    }
    pub(crate) fn app_channels(&self, app: &str) -> String {
        format!("{}:ch:{app}", self.prefix)
    }
    pub(crate) fn node_channels(&self, node: &str) -> String {
        format!("{}:nc:{node}", self.prefix)
    }
    pub(crate) fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }
    /// The connections a node holds, for the lifecycle webhooks (socket id → record).
    pub(crate) fn node_connections(&self, node: &str) -> String {
        format!("{}:cx:{node}", self.prefix)
    }
    /// A node's latest report for the admin views (expires with the node).
    pub(crate) fn node_report(&self, node: &str) -> String {
        format!("{}:nr:{node}", self.prefix)
    }
    pub(crate) fn reap_lock(&self, node: &str) -> String {
        format!("{}:reap:{node}", self.prefix)
    }
}

/// The command connection, shared by the backends of one node.
pub(crate) struct Link {
    /// Opens connections (the pub/sub one too).
    pub(crate) client: redis::Client,
    /// The multiplexed command connection, once established (it reconnects by itself
    /// afterwards).
    conn: Mutex<Option<ConnectionManager>>,
    /// The per-command deadline.
    pub(crate) timeout: Duration,
    /// Key names.
    pub(crate) keys: Keys,
    /// This node's id in the cluster.
    pub(crate) node_id: Arc<str>,
    /// `None` while the last heartbeat reached Redis; otherwise why it did not.
    pub(crate) state_problem: Mutex<Option<String>>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl Link {
    fn conn(&self) -> Result<ConnectionManager, String> {
        self.conn
            .lock()
            .clone()
            .ok_or_else(|| "not connected to Redis yet".to_owned())
    }

    /// Run a script, with the command deadline.
    pub(crate) async fn script<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, String> {
        let mut conn = self.conn()?;
        match tokio::time::timeout(self.timeout, invocation.invoke_async(&mut conn)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("Redis did not answer in time".into()),
        }
    }

    /// Run a command, with the command deadline.
    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, String> {
        let mut conn = self.conn()?;
        match tokio::time::timeout(self.timeout, cmd.query_async(&mut conn)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("Redis did not answer in time".into()),
        }
    }

    /// Run a pipeline, with the command deadline.
    pub(crate) async fn pipe<T: FromRedisValue>(&self, p: &redis::Pipeline) -> Result<T, String> {
        let mut conn = self.conn()?;
        match tokio::time::timeout(self.timeout, p.query_async(&mut conn)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("Redis did not answer in time".into()),
        }
    }

    /// Connect the command connection in the background, retrying with backoff.
    fn connect(self: &Arc<Self>) {
        let link = self.clone();
        tokio::spawn(async move {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(link.timeout))
                .set_response_timeout(Some(link.timeout))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_secs(2));
            let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
            loop {
                match ConnectionManager::new_with_config(link.client.clone(), config.clone()).await
                {
                    Ok(conn) => {
                        info!("connected to Redis");
                        *link.conn.lock() = Some(conn);
                        return;
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot connect to Redis; retrying");
                        *link.state_problem.lock() = Some(format!("Redis unreachable: {e}"));
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                }
            }
        });
    }
}

/// Check a Redis URL (and the CA certificates it is to be verified with) without
/// connecting, for config validation. The error never repeats the URL, which may hold a
/// password.
pub fn check_url(url: &str, ca_pem: Option<&[u8]>) -> Result<(), String> {
    open_client(url, ca_pem).map(|_| ())
}

/// A client for `url`; a `rediss://` server is verified against `ca_pem` when given, the
/// built-in web roots otherwise. Errors never repeat the URL.
pub fn open_client(url: &str, ca_pem: Option<&[u8]>) -> Result<redis::Client, String> {
    match ca_pem {
        None => {
            redis::Client::open(url).map_err(|e| format!("not a valid Redis URL ({:?})", e.kind()))
        }
        Some(pem) => {
            if !url.starts_with("rediss://") {
                return Err("a CA file needs a rediss:// (TLS) URL".into());
            }
            redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.to_vec()),
                },
            )
            .map_err(|e| match e.kind() {
                redis::ErrorKind::InvalidClientConfig => {
                    format!("not a valid Redis URL or CA certificate ({:?})", e.kind())
                }
                kind => format!("unusable CA certificate ({kind:?})"),
            })
        }
    }
}

/// One node's Redis backends, sharing one command connection.
#[derive(Debug, Clone)]
pub struct RedisCluster {
    link: Arc<Link>,
    settings: RedisSettings,
}

impl RedisCluster {
    /// Check the URL and start connecting in the background (a node starts, and reports
    /// degraded, even when Redis is down). Must be called inside a tokio runtime.
    pub fn new(settings: RedisSettings, node_id: Arc<str>) -> Result<Self, String> {
        let client = open_client(&settings.url, settings.ca_pem.as_deref())?;
        let link = Arc::new(Link {
            client,
            conn: Mutex::new(None),
            timeout: settings.timeout,
            keys: Keys {
                prefix: settings.prefix.clone(),
            },
            node_id,
            state_problem: Mutex::new(Some("connecting to Redis".into())),
        });
        link.connect();
        Ok(Self { link, settings })
    }

    /// The broker, history, presence and occupancy backends, all on this Redis.
    pub fn backends(&self) -> Backends {
        let presence = Arc::new(RedisPresence::new(self.link.clone()));
        Backends {
            broker: Arc::new(RedisBroker::new(self.link.clone())),
            history: Arc::new(RedisHistory::new(self.link.clone())),
            occupancy: Arc::new(RedisOccupancy::new(
                self.link.clone(),
                presence.clone(),
                self.settings.heartbeat,
                self.settings.node_ttl,
            )),
            presence,
        }
    }

    /// Presence, history and occupancy on this Redis, with another broker's fan-out (the
    /// broker should append history through [`RedisCluster::stream_log`]).
    pub fn backends_with(&self, broker: Arc<dyn herald_core::Broker>) -> Backends {
        Backends {
            broker,
            ..self.backends()
        }
    }

    /// The history streams, for a broker that carries publications itself.
    pub fn stream_log(&self) -> StreamLog {
        StreamLog::new(self.link.clone())
    }

    /// The broker alone (for pairing another broker's fan-out with Redis state, or tests).
    pub fn broker(&self) -> RedisBroker {
        RedisBroker::new(self.link.clone())
    }

    /// The history store alone.
    pub fn history(&self) -> RedisHistory {
        RedisHistory::new(self.link.clone())
    }

    /// Whether the command connection is up (for tests and start-up waits).
    pub fn is_connected(&self) -> bool {
        self.link.conn.lock().is_some()
    }

    /// Wait up to `limit` for the command connection; returns whether it is up.
    pub async fn wait_connected(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.is_connected() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }
}

/// `app\0channel`-style identity of a channel in maps.
pub(crate) type ChannelKey = (Arc<str>, ChannelName);

/// What the read script returns: epoch, top offset, first offset, entries.
pub(crate) type StreamRead = (String, u64, u64, Vec<Vec<u8>>);

/// A fresh random epoch for a new history stream.
pub(crate) fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}
