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
//! - **Atomicity:** as for the NATS broker: appended to history, then notified; a `NOTIFY`
//!   (or payload row) that fails is withdrawn from history again.
//! - **Outage:** operations fail at once while disconnected; the node reconnects with
//!   jittered backoff, listens again and catches up.
//! - Plain connections only (`sslmode=disable`); reach a remote server through a TLS tunnel.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use herald_core::broker::BrokerError;
use herald_protocol::ChannelName;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::redis::StreamLog;
use crate::relay::{self, Bus, Delivered, Paired, Shared, unavailable};

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
pub type PostgresBroker = Paired<PostgresBus>;

/// The PostgreSQL side of a [`PostgresBroker`]: its two connections and names. Made only by
/// [`PostgresBroker::new`].
pub struct PostgresBus {
    /// Where PostgreSQL is, the name prefix and the deadlines.
    settings: PostgresSettings,
    /// The listening connection's client (LISTEN/UNLISTEN), `None` while down.
    listener: Mutex<Option<Arc<Client>>>,
    /// The connection for NOTIFY and payload rows, `None` while down.
    sender: Mutex<Option<Arc<Client>>>,
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
        Paired::with_bus(
            PostgresBus {
                settings,
                listener: Mutex::new(None),
                sender: Mutex::new(None),
            },
            log,
        )
    }
}

impl PostgresBus {
    fn table(&self) -> String {
        format!("{}_payloads", self.settings.prefix)
    }

    fn sender(&self) -> Result<Arc<Client>, BrokerError> {
        self.sender
            .lock()
            .clone()
            .ok_or_else(|| unavailable("not connected to PostgreSQL"))
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

impl Bus for PostgresBus {
    /// Nothing: the listening connection's one reader receives every notification.
    type Receiver = ();
    const NAME: &'static str = "postgres";
    const SERVICE: &'static str = "PostgreSQL";
    const BROKER: &'static str = "PostgresBroker";

    /// The notification channel: `{prefix}_{hash}` (identifiers are limited to 63 bytes).
    fn route(&self, app_id: &str, channel: &str) -> String {
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

    fn control_route(&self) -> String {
        format!("{}_control", self.settings.prefix)
    }

    fn ready(&self) -> Result<(), BrokerError> {
        self.sender().map(|_| ())
    }

    /// NOTIFY `frame` on `channel`, through the payload table when it is too large.
    async fn send(&self, channel: String, frame: Vec<u8>) -> Result<(), BrokerError> {
        let client = self.sender()?;
        let text = std::str::from_utf8(&frame).map_err(unavailable)?;
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

    async fn receive(
        shared: &Arc<Shared<Self>>,
        name: &str,
        _app_id: &str,
        _channel: &ChannelName,
    ) -> Result<(), BrokerError> {
        let bus = &shared.bus;
        let listener = bus.listener.lock().clone();
        let listener = listener.ok_or_else(|| unavailable("not connected to PostgreSQL"))?;
        let sql = format!("LISTEN \"{name}\"");
        tokio::time::timeout(bus.settings.timeout, listener.batch_execute(&sql))
            .await
            .map_err(|_| unavailable("LISTEN timed out"))?
            .map_err(unavailable)
    }

    async fn ignore(&self, name: &str, (): ()) {
        let listener = self.listener.lock().clone();
        if let Some(l) = listener {
            let sql = format!("UNLISTEN \"{name}\"");
            let _ = tokio::time::timeout(self.settings.timeout, l.batch_execute(&sql)).await;
        }
    }

    async fn run(shared: Weak<Shared<Self>>) {
        run(shared).await;
    }
}

/// Open both connections, create the payload table, listen to what is wanted. Returns the
/// notifications of the listening connection.
async fn connect(shared: &Shared<PostgresBus>) -> Result<mpsc::Receiver<(String, String)>, String> {
    let bus = &shared.bus;
    let s = &bus.settings;
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
                bus.table()
            ))
            .await?;
        let mut names: Vec<String> = shared.receiving.lock().keys().cloned().collect();
        names.push(bus.control_route());
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
    *bus.listener.lock() = Some(Arc::new(listener));
    *bus.sender.lock() = Some(Arc::new(sender));
    Ok(rx)
}

/// Keep the connections: connect, listen, catch up, deliver; on loss, back off and retry.
async fn run(weak: Weak<Shared<PostgresBus>>) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut delivered: HashMap<String, Delivered> = HashMap::new();
    let mut connected_before = false;
    loop {
        let Some(shared) = weak.upgrade() else { return };
        let mut rx = match connect(&shared).await {
            Ok(rx) => rx,
            Err(e) => {
                *shared.problem.lock() = Some(format!("PostgreSQL unreachable: {e}"));
                drop(shared);
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        let Some(handler) = shared.handler.get().cloned() else {
            return;
        };
        if connected_before {
            shared.catch_up_all(&handler, &mut delivered).await;
            info!("PostgreSQL reconnected, listening again and caught up");
        }
        *shared.problem.lock() = None;
        connected_before = true;
        backoff.reset();
        let control = shared.bus.control_route();
        drop(shared);
        let mut cleanup = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                n = rx.recv() => {
                    let Some((channel, payload)) = n else { break };
                    let Some(shared) = weak.upgrade() else { return };
                    let Some(frame) = shared.bus.frame(payload).await else { continue };
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
                    let Some(shared) = weak.upgrade() else { return };
                    shared.bus.delete_old_payloads().await;
                }
            }
        }
        let Some(shared) = weak.upgrade() else { return };
        warn!("PostgreSQL listening connection lost; reconnecting");
        *shared.bus.listener.lock() = None;
        *shared.bus.sender.lock() = None;
        *shared.problem.lock() = Some("PostgreSQL connection lost".into());
        drop(shared);
        tokio::time::sleep(backoff.next_delay()).await;
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
