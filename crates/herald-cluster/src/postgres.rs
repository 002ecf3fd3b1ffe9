//! [`PostgresBroker`]: fan-out over PostgreSQL `LISTEN`/`NOTIFY`, paired with Redis for
//! history, presence and occupancy. For teams that already run PostgreSQL and publish at low
//! volume; see `docs/scaling.md` for its measured throughput.
//!
//! Each channel maps to one notification channel `{prefix}_{hash}` (identifiers are limited
//! to 63 bytes, channel names are not); control messages use `{prefix}_control`. A `NOTIFY`
//! payload is limited to about 8,000 bytes: a larger frame is stored in the table
//! `{prefix}_payloads` and the notification carries `R{id}`; receivers read the row. Rows
//! are deleted after five minutes.
//!
//! Two connections per node: one `LISTEN`s (its notifications are read by one task, in
//! order), one sends `NOTIFY`s and reads stored payloads.
//!
//! # What it guarantees, and what it does not
//! - **Delivery:** at most once. Notifications sent while a node's listening connection is
//!   down are not kept for it; after reconnecting it catches up every channel with history
//!   from Redis (up to 1,000 publications each).
//! - **Ordering:** PostgreSQL delivers notifications in commit order; all of a node's
//!   `NOTIFY`s go through one connection, and append-then-notify holds a per-channel lock,
//!   so one channel's publications through one node arrive in order everywhere. Concurrent
//!   publications from different nodes may interleave differently.
//! - **Outage:** operations fail at once while disconnected; the node reconnects with
//!   jittered backoff, listens again and catches up.
//! - Plain connections only (`sslmode=disable`); reach a remote server through a TLS tunnel.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use herald_core::broker::{Broker, BrokerError, BrokerHandler, BrokerHealth, Control, Published};
use herald_core::history::HistoryPolicy;
use herald_core::publication::{Position, Publication};
use herald_protocol::ChannelName;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::envelope;
use crate::nats::shard;
use crate::redis::StreamLog;
use crate::relay::{self, Delivered};

/// Frames up to this size go in the notification itself.
pub const MAX_INLINE: usize = 7900;
/// Notifications waiting for the reader, at most.
const NOTIFICATION_QUEUE: usize = 8192;

/// How to reach PostgreSQL.
#[derive(Debug, Clone)]
pub struct PostgresSettings {
    /// `postgres://user:password@host:5432/db` (or a key=value string).
    pub url: String,
    /// Prefix of notification channels and of the payload table: lowercase letters, digits
    /// and `_`, starting with a letter.
    pub prefix: String,
    /// The longest a connect or statement may take.
    pub timeout: Duration,
}

/// The PostgreSQL broker. See the module docs for its guarantees.
pub struct PostgresBroker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PostgresBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBroker").finish_non_exhaustive()
    }
}

struct Inner {
    settings: PostgresSettings,
    /// The history streams in Redis.
    log: StreamLog,
    /// Where deliveries go, set by `start`.
    handler: OnceLock<Arc<dyn BrokerHandler>>,
    /// The listening connection's client (LISTEN/UNLISTEN), `None` while down.
    listener: Mutex<Option<Arc<Client>>>,
    /// The connection for NOTIFY and payload rows, `None` while down.
    sender: Mutex<Option<Arc<Client>>>,
    /// Notification channels listened to, with their channel.
    listening: Mutex<HashMap<String, (Arc<str>, ChannelName)>>,
    /// Serialise listen/unlisten reconciles of a channel.
    listen_locks: Box<[tokio::sync::Mutex<()>]>,
    /// Serialise append-then-notify of a channel.
    publish_locks: Box<[tokio::sync::Mutex<()>]>,
    /// `None` while connected; otherwise why not.
    problem: Mutex<Option<String>>,
}

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

/// Whether `prefix` can start a PostgreSQL identifier unquoted.
pub fn valid_prefix(prefix: &str) -> bool {
    prefix.len() <= 40
        && prefix.starts_with(|c: char| c.is_ascii_lowercase())
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl PostgresBroker {
    /// A broker that connects to PostgreSQL on `start`, with history in `log`.
    pub fn new(settings: PostgresSettings, log: StreamLog) -> Self {
        let locks = || {
            (0..64)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect::<Box<[_]>>()
        };
        Self {
            inner: Arc::new(Inner {
                settings,
                log,
                handler: OnceLock::new(),
                listener: Mutex::new(None),
                sender: Mutex::new(None),
                listening: Mutex::new(HashMap::new()),
                listen_locks: locks(),
                publish_locks: locks(),
                problem: Mutex::new(Some("connecting to PostgreSQL".into())),
            }),
        }
    }
}

impl Inner {
    fn notify_channel(&self, app_id: &str, channel: &str) -> String {
        let mut h = Sha256::new();
        h.update(app_id.as_bytes());
        h.update([0]);
        h.update(channel.as_bytes());
        let hex: String = h.finalize()[..10]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{}_{hex}", self.settings.prefix)
    }

    fn control_channel(&self) -> String {
        format!("{}_control", self.settings.prefix)
    }

    fn table(&self) -> String {
        format!("{}_payloads", self.settings.prefix)
    }

    fn sender(&self) -> Result<Arc<Client>, BrokerError> {
        self.sender
            .lock()
            .clone()
            .ok_or_else(|| unavailable("not connected to PostgreSQL"))
    }

    /// NOTIFY `frame` on `channel`, through the payload table when it is too large.
    async fn notify(&self, channel: &str, frame: &[u8]) -> Result<(), BrokerError> {
        let client = self.sender()?;
        let text = std::str::from_utf8(frame).map_err(unavailable)?;
        let work = async {
            if text.len() <= MAX_INLINE {
                client
                    .execute("SELECT pg_notify($1, $2)", &[&channel, &text])
                    .await?;
            } else {
                let sql = format!(
                    "WITH row AS (INSERT INTO {} (body) VALUES ($2) RETURNING id) \
                     SELECT pg_notify($1, 'R' || id) FROM row",
                    self.table()
                );
                client.execute(sql.as_str(), &[&channel, &text]).await?;
            }
            Ok::<_, tokio_postgres::Error>(())
        };
        tokio::time::timeout(self.settings.timeout, work)
            .await
            .map_err(|_| unavailable("PostgreSQL did not answer in time"))?
            .map_err(unavailable)
    }

    async fn reconcile(&self, app_id: &str, channel: &ChannelName) -> Result<(), BrokerError> {
        let handler = self.handler.get().ok_or(BrokerError::Closed)?;
        let name = self.notify_channel(app_id, channel.as_str());
        let _guard = shard(&self.listen_locks, &name).lock().await;
        let want = handler.local_subscribers(app_id, channel) > 0;
        let have = self.listening.lock().contains_key(&name);
        if want == have {
            return Ok(());
        }
        let listener = self.listener.lock().clone();
        if !want {
            self.listening.lock().remove(&name);
            if let Some(l) = listener {
                let sql = format!("UNLISTEN \"{name}\"");
                let _ = tokio::time::timeout(self.settings.timeout, l.batch_execute(&sql)).await;
            }
            return Ok(());
        }
        let listener = listener.ok_or_else(|| unavailable("not connected to PostgreSQL"))?;
        let sql = format!("LISTEN \"{name}\"");
        tokio::time::timeout(self.settings.timeout, listener.batch_execute(&sql))
            .await
            .map_err(|_| unavailable("LISTEN timed out"))?
            .map_err(unavailable)?;
        self.listening
            .lock()
            .insert(name, (Arc::from(app_id), channel.clone()));
        Ok(())
    }

    /// Open both connections, create the payload table, listen to what is wanted. Returns
    /// the notifications of the listening connection.
    async fn connect(&self) -> Result<mpsc::Receiver<(String, String)>, String> {
        let s = &self.settings;
        let open = || async {
            tokio::time::timeout(s.timeout, tokio_postgres::connect(&s.url, NoTls))
                .await
                .map_err(|_| "connect timed out".to_owned())?
                .map_err(|e| e.to_string())
        };
        let (listener, mut connection) = open().await?;
        let (tx, rx) = mpsc::channel(NOTIFICATION_QUEUE);
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        tokio::spawn(async move {
            while let Some(Ok(message)) = messages.next().await {
                if let AsyncMessage::Notification(n) = message
                    && tx
                        .send((n.channel().to_owned(), n.payload().to_owned()))
                        .await
                        .is_err()
                {
                    return;
                }
            }
        });
        let (sender, connection) = open().await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let setup = async {
            sender
                .batch_execute(&format!(
                    "CREATE TABLE IF NOT EXISTS {} (id bigserial PRIMARY KEY, body text NOT NULL, \
                     created_at timestamptz NOT NULL DEFAULT now())",
                    self.table()
                ))
                .await?;
            let mut names: Vec<String> = self.listening.lock().keys().cloned().collect();
            names.push(self.control_channel());
            for chunk in names.chunks(500) {
                let sql: String = chunk.iter().map(|n| format!("LISTEN \"{n}\";")).collect();
                listener.batch_execute(&sql).await?;
            }
            Ok::<_, tokio_postgres::Error>(())
        };
        tokio::time::timeout(s.timeout * 4, setup)
            .await
            .map_err(|_| "setup timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        *self.listener.lock() = Some(Arc::new(listener));
        *self.sender.lock() = Some(Arc::new(sender));
        Ok(rx)
    }

    /// The frame a notification stands for (reading the payload row of an `R{id}`).
    async fn frame(&self, payload: String) -> Option<Vec<u8>> {
        let Some(id) = payload.strip_prefix('R') else {
            return Some(payload.into_bytes());
        };
        let id: i64 = id.parse().ok()?;
        let client = self.sender().ok()?;
        let sql = format!("SELECT body FROM {} WHERE id = $1", self.table());
        match tokio::time::timeout(
            self.settings.timeout,
            client.query_opt(sql.as_str(), &[&id]),
        )
        .await
        {
            Ok(Ok(Some(row))) => row.try_get::<_, String>(0).ok().map(String::into_bytes),
            _ => {
                warn!(id, "a stored PostgreSQL payload could not be read");
                None
            }
        }
    }

    async fn delete_old_payloads(&self) {
        if let Ok(client) = self.sender() {
            let sql = format!(
                "DELETE FROM {} WHERE created_at < now() - interval '5 minutes'",
                self.table()
            );
            let _ = tokio::time::timeout(self.settings.timeout, client.execute(sql.as_str(), &[]))
                .await;
        }
    }
}

/// Keep the connections: connect, listen, catch up, deliver; on loss, back off and retry.
async fn run(weak: Weak<Inner>) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut delivered: HashMap<String, Delivered> = HashMap::new();
    let mut connected_before = false;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let mut rx = match inner.connect().await {
            Ok(rx) => rx,
            Err(e) => {
                *inner.problem.lock() = Some(format!("PostgreSQL unreachable: {e}"));
                drop(inner);
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        let Some(handler) = inner.handler.get().cloned() else {
            return;
        };
        if connected_before {
            let listening: Vec<(String, (Arc<str>, ChannelName))> = inner
                .listening
                .lock()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            delivered.retain(|k, _| listening.iter().any(|(l, _)| l == k));
            for (name, (app, channel)) in listening {
                let d = delivered.entry(name).or_default();
                relay::catch_up(&inner.log, &handler, &app, &channel, d).await;
            }
            info!("PostgreSQL reconnected, listening again and caught up");
        }
        *inner.problem.lock() = None;
        connected_before = true;
        backoff.reset();
        let control = inner.control_channel();
        drop(inner);
        let mut cleanup = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                n = rx.recv() => {
                    let Some((channel, payload)) = n else { break };
                    let Some(inner) = weak.upgrade() else { return };
                    let Some(frame) = inner.frame(payload).await else { continue };
                    if channel == control {
                        relay::deliver_control(&handler, &frame);
                        continue;
                    }
                    let d = match delivered.get_mut(&channel) {
                        Some(d) => d,
                        None => delivered.entry(channel).or_default(),
                    };
                    relay::deliver(&handler, d, &frame);
                }
                _ = cleanup.tick() => {
                    let Some(inner) = weak.upgrade() else { return };
                    inner.delete_old_payloads().await;
                }
            }
        }
        let Some(inner) = weak.upgrade() else { return };
        warn!("PostgreSQL listening connection lost; reconnecting");
        *inner.listener.lock() = None;
        *inner.sender.lock() = None;
        *inner.problem.lock() = Some("PostgreSQL connection lost".into());
        drop(inner);
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

#[async_trait]
impl Broker for PostgresBroker {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn start(&self, handler: Arc<dyn BrokerHandler>) -> Result<(), BrokerError> {
        self.inner
            .handler
            .set(handler)
            .map_err(|_| unavailable("started twice"))?;
        tokio::spawn(run(Arc::downgrade(&self.inner)));
        Ok(())
    }

    async fn publish(
        &self,
        mut publication: Publication,
        history: Option<&HistoryPolicy>,
    ) -> Result<Published, BrokerError> {
        let inner = &self.inner;
        inner.sender()?;
        let channel = inner.notify_channel(&publication.app_id, publication.channel.as_str());
        let body = envelope::encode_publication(&publication);
        let Some(policy) = history else {
            inner
                .notify(&channel, &relay::publication_frame(None, &body))
                .await?;
            return Ok(Published::Sent(Arc::new(publication)));
        };
        let _order = shard(&inner.publish_locks, &channel).lock().await;
        let (sent, offset, epoch) = inner
            .log
            .append(&publication, &body, policy, None)
            .await
            .map_err(unavailable)?;
        let position = Position {
            offset,
            epoch: Arc::from(epoch.as_str()),
        };
        if !sent {
            return Ok(Published::Unchanged(position));
        }
        inner
            .notify(
                &channel,
                &relay::publication_frame(Some((offset, &epoch)), &body),
            )
            .await?;
        publication.position = Some(position);
        Ok(Published::Sent(Arc::new(publication)))
    }

    async fn control(&self, control: Control) -> Result<(), BrokerError> {
        let channel = self.inner.control_channel();
        self.inner
            .notify(&channel, &relay::control_frame(&control))
            .await
    }

    async fn subscribe(&self, app_id: &str, channel: &ChannelName) -> Result<(), BrokerError> {
        self.inner.reconcile(app_id, channel).await
    }

    async fn unsubscribe(&self, app_id: &str, channel: &ChannelName) -> Result<(), BrokerError> {
        self.inner.reconcile(app_id, channel).await
    }

    fn health(&self) -> BrokerHealth {
        match self.inner.problem.lock().clone() {
            None => BrokerHealth::Healthy,
            Some(why) => BrokerHealth::Degraded(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_plain_identifiers() {
        assert!(valid_prefix("herald"));
        assert!(valid_prefix("herald_2"));
        assert!(!valid_prefix("Herald"));
        assert!(!valid_prefix("2herald"));
        assert!(!valid_prefix("her-ald"));
        assert!(!valid_prefix(""));
    }
}
