//! [`RedisOccupancy`]: which nodes have subscribers on which channels, node heartbeats, and
//! the clean-up after a node that dies.
//!
//! # How it meets the occupancy contract
//! - **Transitions:** one hash per channel maps node → local subscriber count. A node adds
//!   its field on its first local subscriber and removes it on its last, each in one Lua
//!   script that also says whether the hash went from or to empty: exactly one node sees
//!   each cluster transition. Overlapping calls for one channel are serialised on the node
//!   and reconciled against the hub's count, so the last one wins.
//! - **Counts** are flushed every `heartbeat` for channels whose local count changed;
//!   cluster counts lag by at most that.
//! - **Node loss:** every node heartbeats into a sorted set scored by the Redis clock. A
//!   node silent for `node_ttl` is cleaned up by the first live node to take its lock:
//!   its presence connections leave (announcing `left` for users with no other
//!   connection), its channels are vacated (announcing `channel_vacated` where it was the
//!   last), and it is forgotten. Members of a dead node are gone within
//!   `node_ttl + heartbeat`.
//! - **Outage:** a heartbeat that fails marks the state degraded; when a heartbeat finds
//!   this node missing (Redis restarted empty, or this node was presumed dead), the node
//!   writes its channels and presence members again, without webhooks.
//! - **Connections:** records of the connections whose app wants the lifecycle webhooks
//!   are kept in a hash per node, written by the heartbeat (opens and closes within one
//!   heartbeat cancel out). The reaper of a dead node reads and deletes it, so each lost
//!   connection is reported once; a node that stops cleanly deletes its own.
//! - **Reports:** every heartbeat writes this node's latest report to a key that expires
//!   after `node_ttl` (so it disappears with the node); `reports` reads the report of every
//!   node in the heartbeat set that has one.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use herald_core::broker::BrokerHealth;
use herald_core::occupancy::{Departure, Occupancy, OccupancyError, OccupancyHandler};
use herald_core::webhook::ConnectionRecord;
use herald_protocol::{ChannelName, SocketId};
use parking_lot::Mutex;
use tracing::{info, warn};

use super::presence::RedisPresence;
use super::scripts::{FORGET_NODE, HEARTBEAT, OCCUPY, SET_COUNTS, VACATE};
use super::{ChannelKey, Link};
use crate::shards::Shards;

const LOCK_SHARDS: usize = 64;

/// Cluster occupancy and node liveness in Redis.
#[derive(Debug)]
pub struct RedisOccupancy {
    inner: Arc<Inner>,
}

struct Inner {
    /// The shared command connection.
    link: Arc<Link>,
    /// Presence, for the clean-up of dead nodes and the rewrite after a Redis restart.
    presence: Arc<RedisPresence>,
    /// How often to heartbeat and flush counts.
    heartbeat: Duration,
    /// Silence after which a node is dead.
    node_ttl: Duration,
    /// The node, set by `start`.
    handler: OnceLock<Arc<dyn OccupancyHandler>>,
    /// Channels this node has registered in Redis, with the count last written.
    registered: Mutex<HashMap<ChannelKey, usize>>,
    /// Local counts changed since the last flush.
    dirty: Mutex<HashMap<ChannelKey, usize>>,
    /// Serialises reconciles of one channel (sharded by name).
    locks: Shards,
    /// This node's latest report, written with every heartbeat.
    report: Mutex<Option<Arc<str>>>,
    /// Records of this node's connections (for the lifecycle webhooks), to write again if
    /// Redis loses them.
    connections: Mutex<HashMap<String, Arc<str>>>,
    /// Connection records changed since the last heartbeat: `None` deletes.
    connections_dirty: Mutex<HashMap<String, Option<Arc<str>>>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner").finish_non_exhaustive()
    }
}

/// What a reconcile changed in the cluster.
#[derive(Debug, PartialEq, Eq)]
enum Transition {
    None,
    Occupied,
    Vacated,
}

fn unavailable(e: String) -> OccupancyError {
    OccupancyError(e)
}

fn channel_entry(app: &str, channel: &str) -> String {
    serde_json::json!([app, channel]).to_string()
}

impl RedisOccupancy {
    pub(crate) fn new(
        link: Arc<Link>,
        presence: Arc<RedisPresence>,
        heartbeat: Duration,
        node_ttl: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                link,
                presence,
                heartbeat,
                node_ttl,
                handler: OnceLock::new(),
                registered: Mutex::new(HashMap::new()),
                dirty: Mutex::new(HashMap::new()),
                locks: Shards::new(LOCK_SHARDS),
                report: Mutex::new(None),
                connections: Mutex::new(HashMap::new()),
                connections_dirty: Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl Inner {
    async fn occupy_script(&self, app: &str, channel: &str, count: usize) -> Result<bool, String> {
        let keys = &self.link.keys;
        let mut invocation = OCCUPY.prepare_invoke();
        invocation
            .key(keys.occupancy(app, channel))
            .key(keys.app_channels(app))
            .key(keys.node_channels(&self.link.node_id))
            .arg(&*self.link.node_id)
            .arg(count)
            .arg(channel_entry(app, channel))
            .arg(channel);
        Ok(self.link.script::<i64>(&invocation).await? == 1)
    }

    async fn vacate_script(&self, node: &str, app: &str, channel: &str) -> Result<bool, String> {
        let keys = &self.link.keys;
        let mut invocation = VACATE.prepare_invoke();
        invocation
            .key(keys.occupancy(app, channel))
            .key(keys.app_channels(app))
            .key(keys.node_channels(node))
            .arg(node)
            .arg(channel_entry(app, channel))
            .arg(channel);
        Ok(self.link.script::<i64>(&invocation).await? == 1)
    }

    async fn reconcile(&self, app_id: &str, channel: &ChannelName) -> Result<Transition, String> {
        let handler = self.handler.get().ok_or("occupancy not started")?;
        let _guard = self.locks.of(&[app_id, channel.as_str()]).lock().await;
        let count = handler.local_subscribers(app_id, channel);
        let key: ChannelKey = (Arc::from(app_id), channel.clone());
        let have = self.registered.lock().contains_key(&key);
        match (count > 0, have) {
            (true, false) => {
                let first = self.occupy_script(app_id, channel.as_str(), count).await?;
                self.registered.lock().insert(key, count);
                Ok(if first {
                    Transition::Occupied
                } else {
                    Transition::None
                })
            }
            (false, true) => {
                self.registered.lock().remove(&key);
                let last = self
                    .vacate_script(&self.link.node_id, app_id, channel.as_str())
                    .await?;
                Ok(if last {
                    Transition::Vacated
                } else {
                    Transition::None
                })
            }
            _ => Ok(Transition::None),
        }
    }

    /// Write changed local counts of registered channels.
    async fn flush_counts(&self) -> Result<(), String> {
        let dirty = std::mem::take(&mut *self.dirty.lock());
        if dirty.is_empty() {
            return Ok(());
        }
        let mut updates: Vec<(String, usize)> = Vec::new();
        {
            let mut registered = self.registered.lock();
            for (key, count) in &dirty {
                if let Some(written) = registered.get_mut(key)
                    && *written != *count
                    && *count > 0
                {
                    *written = *count;
                    updates.push((self.link.keys.occupancy(&key.0, key.1.as_str()), *count));
                }
            }
        }
        for chunk in updates.chunks(500) {
            let mut invocation = SET_COUNTS.prepare_invoke();
            invocation.arg(&*self.link.node_id);
            for (key, count) in chunk {
                invocation.key(key).arg(*count);
            }
            self.link.script::<i64>(&invocation).await?;
        }
        Ok(())
    }

    /// Rewrite this node's channels and presence after Redis lost them.
    async fn rewrite(&self) {
        let channels: Vec<(ChannelKey, usize)> = self
            .registered
            .lock()
            .iter()
            .map(|(k, c)| (k.clone(), *c))
            .collect();
        info!(
            channels = channels.len(),
            "this node was missing from Redis; writing its state again"
        );
        for ((app, channel), count) in channels {
            if let Err(e) = self.occupy_script(&app, channel.as_str(), count).await {
                warn!(error = %e, "cannot restore channel occupancy");
                return;
            }
        }
        self.presence.rejoin_all().await;
        let records: Vec<(String, Arc<str>)> = self
            .connections
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut dirty = self.connections_dirty.lock();
        for (socket, record) in records {
            dirty.entry(socket).or_insert(Some(record));
        }
    }

    /// Write the connection records changed since the last heartbeat.
    async fn flush_connections(&self) -> Result<(), String> {
        let changes: Vec<(String, Option<Arc<str>>)> =
            self.connections_dirty.lock().drain().collect();
        if changes.is_empty() {
            return Ok(());
        }
        let key = self.link.keys.node_connections(&self.link.node_id);
        let mut pipe = redis::pipe();
        for (socket, record) in &changes {
            match record {
                Some(record) => pipe
                    .cmd("HSET")
                    .arg(&key)
                    .arg(socket)
                    .arg(&**record)
                    .ignore(),
                None => pipe.cmd("HDEL").arg(&key).arg(socket).ignore(),
            };
        }
        if let Err(e) = self.link.pipe::<()>(&pipe).await {
            // Put them back (newer changes win) for the next heartbeat.
            let mut dirty = self.connections_dirty.lock();
            for (socket, record) in changes {
                dirty.entry(socket).or_insert(record);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Clean up after a dead node, if this node wins its lock.
    async fn reap(&self, dead: &str) -> Result<Vec<Departure>, String> {
        let keys = &self.link.keys;
        let locked: Option<String> = self
            .link
            .query(
                redis::cmd("SET")
                    .arg(keys.reap_lock(dead))
                    .arg(&*self.link.node_id)
                    .arg("NX")
                    .arg("PX")
                    .arg(60_000),
            )
            .await?;
        if locked.is_none() {
            return Ok(Vec::new());
        }
        let mut departures = Vec::new();
        let entries: Vec<String> = self
            .link
            .query(redis::cmd("SMEMBERS").arg(keys.node_presence(dead)))
            .await?;
        for entry in entries {
            let Ok((app, channel, socket, user)) =
                serde_json::from_str::<(String, String, String, String)>(&entry)
            else {
                continue;
            };
            let (Ok(socket), Ok(name)) = (socket.parse::<SocketId>(), ChannelName::new(&channel))
            else {
                continue;
            };
            if self
                .presence
                .leave_for_node(dead, &app, &channel, socket, &user)
                .await?
            {
                departures.push(Departure::Left {
                    app_id: Arc::from(app),
                    channel: name,
                    user_id: Arc::from(user),
                });
            }
        }
        let entries: Vec<String> = self
            .link
            .query(redis::cmd("SMEMBERS").arg(keys.node_channels(dead)))
            .await?;
        for entry in entries {
            let Ok((app, channel)) = serde_json::from_str::<(String, String)>(&entry) else {
                continue;
            };
            let Ok(name) = ChannelName::new(&channel) else {
                continue;
            };
            if self.vacate_script(dead, &app, &channel).await? {
                departures.push(Departure::Vacated {
                    app_id: Arc::from(app),
                    channel: name,
                });
            }
        }
        let records: Vec<String> = self
            .link
            .query(redis::cmd("HVALS").arg(keys.node_connections(dead)))
            .await?;
        for record in records {
            match serde_json::from_str::<ConnectionRecord>(&record) {
                Ok(record) => departures.push(Departure::ConnectionLost {
                    record: Arc::new(record),
                }),
                Err(e) => warn!(error = %e, "unreadable connection record of a dead node"),
            }
        }
        self.link
            .query::<i64>(
                redis::cmd("DEL")
                    .arg(keys.node_presence(dead))
                    .arg(keys.node_channels(dead))
                    .arg(keys.node_connections(dead)),
            )
            .await?;
        let mut invocation = FORGET_NODE.prepare_invoke();
        invocation
            .key(keys.nodes())
            .arg(dead)
            .arg(self.node_ttl.as_millis() as u64);
        self.link.script::<i64>(&invocation).await?;
        info!(
            node = dead,
            departures = departures.len(),
            "cleaned up after a dead node"
        );
        Ok(departures)
    }

    /// One heartbeat: prove liveness, rewrite state if Redis lost it, flush counts, clean
    /// up after dead nodes.
    async fn beat(&self, first: bool) -> Result<(), String> {
        let mut invocation = HEARTBEAT.prepare_invoke();
        invocation
            .key(self.link.keys.nodes())
            .arg(&*self.link.node_id)
            .arg(self.node_ttl.as_millis() as u64);
        let (added, dead): (i64, Vec<String>) = self.link.script(&invocation).await?;
        if added == 1 && !first {
            self.rewrite().await;
        }
        self.flush_counts().await?;
        self.flush_connections().await?;
        let report = self.report.lock().clone();
        if let Some(report) = report {
            self.link
                .query::<()>(
                    redis::cmd("SET")
                        .arg(self.link.keys.node_report(&self.link.node_id))
                        .arg(&*report)
                        .arg("PX")
                        .arg(self.node_ttl.as_millis() as u64),
                )
                .await?;
        }
        for node in dead {
            if *node == *self.link.node_id {
                continue;
            }
            let departures = self.reap(&node).await?;
            if !departures.is_empty()
                && let Some(handler) = self.handler.get()
            {
                handler.departed(departures);
            }
        }
        Ok(())
    }
}

async fn run_heartbeat(weak: Weak<Inner>) {
    let Some(interval) = weak.upgrade().map(|i| i.heartbeat) else {
        return;
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    loop {
        tick.tick().await;
        let Some(inner) = weak.upgrade() else { return };
        match inner.beat(first).await {
            Ok(()) => {
                first = false;
                let mut problem = inner.link.state_problem.lock();
                if problem.is_some() {
                    info!("Redis cluster state healthy");
                    *problem = None;
                }
            }
            Err(e) => {
                let mut problem = inner.link.state_problem.lock();
                if problem.is_none() {
                    warn!(error = %e, "Redis heartbeat failed; cluster state degraded");
                }
                *problem = Some(format!("Redis heartbeat failed: {e}"));
            }
        }
    }
}

#[async_trait]
impl Occupancy for RedisOccupancy {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn start(&self, handler: Arc<dyn OccupancyHandler>) -> Result<(), OccupancyError> {
        self.inner
            .handler
            .set(handler)
            .map_err(|_| OccupancyError("started twice".into()))?;
        tokio::spawn(run_heartbeat(Arc::downgrade(&self.inner)));
        Ok(())
    }

    async fn occupy(&self, app_id: &str, channel: &ChannelName) -> Result<bool, OccupancyError> {
        let t = self
            .inner
            .reconcile(app_id, channel)
            .await
            .map_err(unavailable)?;
        Ok(t == Transition::Occupied)
    }

    async fn vacate(&self, app_id: &str, channel: &ChannelName) -> Result<bool, OccupancyError> {
        let t = self
            .inner
            .reconcile(app_id, channel)
            .await
            .map_err(unavailable)?;
        Ok(t == Transition::Vacated)
    }

    fn local_count(&self, app_id: &str, channel: &ChannelName, count: usize) {
        self.inner
            .dirty
            .lock()
            .insert((Arc::from(app_id), channel.clone()), count);
    }

    async fn subscriber_count(
        &self,
        app_id: &str,
        channel: &ChannelName,
    ) -> Result<Option<usize>, OccupancyError> {
        let counts: Vec<usize> = self
            .inner
            .link
            .query(
                redis::cmd("HVALS").arg(self.inner.link.keys.occupancy(app_id, channel.as_str())),
            )
            .await
            .map_err(unavailable)?;
        Ok(Some(counts.iter().sum()))
    }

    async fn channels(
        &self,
        app_id: &str,
        prefix: &str,
    ) -> Result<Option<Vec<(ChannelName, usize)>>, OccupancyError> {
        let link = &self.inner.link;
        let names: Vec<String> = link
            .query(redis::cmd("SMEMBERS").arg(link.keys.app_channels(app_id)))
            .await
            .map_err(unavailable)?;
        let names: Vec<ChannelName> = names
            .iter()
            .filter(|n| n.starts_with(prefix))
            .filter_map(|n| ChannelName::new(n).ok())
            .collect();
        let mut out = Vec::with_capacity(names.len());
        for chunk in names.chunks(500) {
            let mut pipe = redis::pipe();
            for name in chunk {
                pipe.cmd("HVALS")
                    .arg(link.keys.occupancy(app_id, name.as_str()));
            }
            let counts: Vec<Vec<usize>> = link.pipe(&pipe).await.map_err(unavailable)?;
            for (name, counts) in chunk.iter().zip(counts) {
                let total: usize = counts.iter().sum();
                if total > 0 {
                    out.push((name.clone(), total));
                }
            }
        }
        out.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        Ok(Some(out))
    }

    fn report(&self, report: Arc<str>) {
        *self.inner.report.lock() = Some(report);
    }

    fn connection_opened(&self, record: &Arc<ConnectionRecord>) {
        let Ok(json) = serde_json::to_string(&**record) else {
            return;
        };
        let json: Arc<str> = Arc::from(json);
        let socket = record.socket_id.clone();
        self.inner
            .connections
            .lock()
            .insert(socket.clone(), json.clone());
        self.inner
            .connections_dirty
            .lock()
            .insert(socket, Some(json));
    }

    fn connection_closed(&self, _app_id: &str, socket_id: &str) {
        if self.inner.connections.lock().remove(socket_id).is_some() {
            self.inner
                .connections_dirty
                .lock()
                .insert(socket_id.to_owned(), None);
        }
    }

    async fn leave(&self) {
        let inner = &self.inner;
        if let Err(e) = inner.flush_counts().await {
            warn!(error = %e, "cannot write the last subscriber counts");
        }
        inner.connections_dirty.lock().clear();
        let key = inner.link.keys.node_connections(&inner.link.node_id);
        if let Err(e) = inner.link.query::<i64>(redis::cmd("DEL").arg(key)).await {
            warn!(error = %e, "cannot delete this node's connection records");
        }
    }

    async fn reports(&self) -> Result<Option<Vec<Arc<str>>>, OccupancyError> {
        let link = &self.inner.link;
        let nodes: Vec<String> = link
            .query(redis::cmd("ZRANGE").arg(link.keys.nodes()).arg(0).arg(-1))
            .await
            .map_err(unavailable)?;
        if nodes.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let mut get = redis::cmd("MGET");
        for node in &nodes {
            get.arg(link.keys.node_report(node));
        }
        let reports: Vec<Option<String>> = link.query(&get).await.map_err(unavailable)?;
        Ok(Some(reports.into_iter().flatten().map(Arc::from).collect()))
    }

    fn health(&self) -> BrokerHealth {
        match self.inner.link.state_problem.lock().clone() {
            None => BrokerHealth::Healthy,
            Some(why) => BrokerHealth::Degraded(why),
        }
    }
}
