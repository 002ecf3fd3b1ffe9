//! Laravel Redis ingest: Laravel's `redis` broadcast driver PUBLISHes
//! `{"event": …, "data": …, "socket": …}` to a Redis channel named after the broadcast
//! channel (behind the Redis connection's key prefix). Herald subscribes to those by pattern
//! and publishes each one to the app, exactly like an API publish: history, cache channels,
//! webhooks and every node of a cluster included, and `socket` excludes the sender's own
//! connection. One Redis command per broadcast replaces an HTTP call per event.
//!
//! # Exactly one node ingests
//! Redis delivers a PUBLISH to every subscriber, so if every node ingested, every broadcast
//! would be published once per node. The nodes instead hold a **lease** in Redis
//! (`{key_prefix}:ingest:{app}`, `SET NX PX`): only its holder subscribes. It renews the
//! lease every `LEASE / 5`; a node that cannot renew stops ingesting at once. When the holder
//! stops cleanly it releases the lease and another node takes over within a second; when it
//! crashes, within the lease time ([`LEASE`], 5 s). Broadcasts published during a takeover
//! are lost, as Redis pub/sub keeps nothing: that window is the price of not duplicating.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use herald_core::publication::EventData;
use herald_core::raw_json::RawJson;
use herald_core::{Node, PublishRequest};
use herald_protocol::SocketId;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;

/// How long a lease lasts without renewal.
pub const LEASE: Duration = Duration::from_secs(5);

/// One ingest: which Redis, which channels, into which app.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    /// The Redis Laravel publishes to.
    pub url: String,
    /// PEM certificates trusted for a `rediss://` URL instead of the built-in web roots.
    pub ca_pem: Option<Vec<u8>>,
    /// The app the broadcasts are published to.
    pub app_id: String,
    /// Laravel's Redis prefix (`database.redis.options.prefix`, e.g. `laravel_database_`);
    /// removed from the Redis channel name to get the Herald channel name.
    pub prefix: String,
    /// Redis glob patterns of channel names, after the prefix (`*`: all).
    pub channels: Vec<String>,
    /// Prefix of the lease key (the cluster's Redis prefix).
    pub key_prefix: String,
    /// This node's id, written into the lease.
    pub node_id: Arc<str>,
}

/// A running ingest; `stop` releases its lease.
#[derive(Debug)]
pub struct Ingest {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Ingest {
    /// Check the settings and start. Must be called inside a tokio runtime.
    pub fn spawn(node: Arc<Node>, settings: IngestSettings) -> Result<Self, String> {
        let client = crate::redis::open_client(&settings.url, settings.ca_pem.as_deref())?;
        if node.app_by_id(&settings.app_id).is_none() {
            return Err(format!("no app has the id {:?}", settings.app_id));
        }
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(node, settings, client, stopped));
        Ok(Self { stop, task })
    }

    /// Stop ingesting and release the lease.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(3), self.task).await;
    }
}

/// A Laravel broadcast, as its Redis driver writes it.
#[derive(Deserialize)]
struct Broadcast<'a> {
    event: String,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    socket: Option<String>,
}

/// Turn one Laravel broadcast (the Redis channel it was published on, and its payload) into
/// a publish request; an error says why it is not a broadcast Herald can accept.
pub fn broadcast_request(
    prefix: &str,
    redis_channel: &str,
    payload: &[u8],
) -> Result<PublishRequest, String> {
    let channel = redis_channel
        .strip_prefix(prefix)
        .ok_or("channel outside the prefix")?;
    let b: Broadcast<'_> = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
    let data = match b.data {
        Some(raw) => match serde_json::from_str::<String>(raw.get()) {
            // A string stays a string for Pusher clients, as from the Pusher API.
            Ok(text) => EventData::Text(Arc::from(text)),
            Err(_) => EventData::Json(RawJson::from_raw(raw)),
        },
        None => EventData::Json(RawJson::null()),
    };
    // Laravel sends `socket: null` when there is no sender to exclude; an id it cannot have
    // produced is ignored rather than refusing the broadcast.
    let exclude = b.socket.as_deref().and_then(|s| s.parse::<SocketId>().ok());
    Ok(PublishRequest {
        channels: vec![channel.to_owned()],
        event: b.event,
        data,
        exclude,
        idempotency_key: None,
    })
}

async fn run(
    node: Arc<Node>,
    settings: IngestSettings,
    client: redis::Client,
    mut stopped: watch::Receiver<bool>,
) {
    let lease_key = format!("{}:ingest:{}", settings.key_prefix, settings.app_id);
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let renew_every = LEASE / 5;
    loop {
        if *stopped.borrow() {
            return;
        }
        // Wait for the lease.
        let mut conn = match tokio::time::timeout(
            Duration::from_secs(2),
            client.get_multiplexed_async_connection(),
        )
        .await
        {
            Ok(Ok(c)) => c,
            _ => {
                debug!("ingest: Redis unreachable; retrying");
                if wait(&mut stopped, backoff.next_delay()).await {
                    return;
                }
                continue;
            }
        };
        let acquired: Result<Option<String>, _> = redis::cmd("SET")
            .arg(&lease_key)
            .arg(&*settings.node_id)
            .arg("NX")
            .arg("PX")
            .arg(LEASE.as_millis() as u64)
            .query_async(&mut conn)
            .await;
        match acquired {
            Ok(Some(_)) => {}
            Ok(None) => {
                if wait(&mut stopped, renew_every).await {
                    return;
                }
                continue;
            }
            Err(e) => {
                debug!(error = %e, "ingest: lease request failed");
                if wait(&mut stopped, backoff.next_delay()).await {
                    return;
                }
                continue;
            }
        }
        info!(app = %settings.app_id, "Laravel ingest: this node holds the lease");
        backoff.reset();
        let ended = lead(
            &node,
            &settings,
            &client,
            &mut conn,
            &lease_key,
            &mut stopped,
        )
        .await;
        // Release the lease if it is still ours.
        let _: Result<i64, _> = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
        )
        .key(&lease_key)
        .arg(&*settings.node_id)
        .invoke_async(&mut conn)
        .await;
        if ended {
            return;
        }
        if wait(&mut stopped, backoff.next_delay()).await {
            return;
        }
    }
}

/// Ingest while holding the lease. Returns `true` when asked to stop, `false` when the
/// lease or the subscription was lost.
async fn lead(
    node: &Arc<Node>,
    settings: &IngestSettings,
    client: &redis::Client,
    conn: &mut redis::aio::MultiplexedConnection,
    lease_key: &str,
    stopped: &mut watch::Receiver<bool>,
) -> bool {
    let Some(app) = node.app_by_id(&settings.app_id) else {
        return true;
    };
    let pubsub = match tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub()).await
    {
        Ok(Ok(p)) => p,
        _ => return false,
    };
    let (mut sink, mut stream) = pubsub.split();
    let patterns: Vec<String> = settings
        .channels
        .iter()
        .map(|p| format!("{}{p}", settings.prefix))
        .collect();
    if !matches!(
        tokio::time::timeout(Duration::from_secs(2), sink.psubscribe(&patterns)).await,
        Ok(Ok(()))
    ) {
        return false;
    }
    let renew = redis::Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0",
    );
    let mut tick = tokio::time::interval(LEASE / 5);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stopped.changed() => return true,
            _ = tick.tick() => {
                let renewed: Result<Result<i64, _>, _> = tokio::time::timeout(
                    LEASE / 5,
                    renew
                        .key(lease_key)
                        .arg(&*settings.node_id)
                        .arg(LEASE.as_millis() as u64)
                        .invoke_async(conn),
                )
                .await;
                if !matches!(renewed, Ok(Ok(1))) {
                    warn!("Laravel ingest: lease lost; stopping ingest on this node");
                    return false;
                }
            }
            msg = stream.next() => {
                let Some(msg) = msg else {
                    warn!("Laravel ingest: Redis subscription lost");
                    return false;
                };
                match broadcast_request(&settings.prefix, msg.get_channel_name(), msg.get_payload_bytes()) {
                    Ok(req) => {
                        if let Err(r) = node.publish(&app, req).await {
                            warn!(code = ?r.code, message = %r.message, "Laravel ingest: broadcast refused");
                        }
                    }
                    Err(why) => warn!(reason = %why, "Laravel ingest: not a Laravel broadcast; ignored"),
                }
            }
        }
    }
}

/// Sleep `d`; `true` if asked to stop meanwhile.
async fn wait(stopped: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = stopped.changed() => true,
        _ = tokio::time::sleep(d) => *stopped.borrow(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn laravel_broadcasts_become_publish_requests() {
        let req = broadcast_request(
            "laravel_database_",
            "laravel_database_private-orders.1",
            br#"{"event":"App\\Events\\OrderShipped","data":{"order":{"id":1},"socket":null},"socket":"123.456"}"#,
        )
        .unwrap();
        assert_eq!(req.channels, ["private-orders.1"]);
        assert_eq!(req.event, "App\\Events\\OrderShipped");
        assert_eq!(req.exclude, Some(SocketId::new(123, 456)));
        assert!(
            matches!(&req.data, EventData::Json(j) if j.to_value()["order"]["id"] == 1),
            "{:?}",
            req.data
        );
        let req = broadcast_request("", "news", br#"{"event":"e","data":"plain","socket":null}"#)
            .unwrap();
        assert_eq!(req.exclude, None);
        assert!(matches!(&req.data, EventData::Text(t) if &**t == "plain"));
        assert!(broadcast_request("p_", "news", br#"{"event":"e"}"#).is_err());
        assert!(broadcast_request("", "news", b"not json").is_err());
    }
}
