//! [`RedisPresence`]: presence members in Redis, shared by every node.
//!
//! # How it meets the presence contract
//! - Each join and leave is one Lua script, so concurrent joins of a user (on any nodes)
//!   report one `FirstConnection`, concurrent last leaves one `last_connection`, and the
//!   member limit holds cluster-wide.
//! - Every connection is also listed in its node's index, so when a node dies the node
//!   that cleans up after it (see [`super::RedisOccupancy`]) removes exactly its
//!   connections, within `node_ttl + heartbeat`.
//! - This node keeps a copy of its own joins, to write them again if Redis loses them (a
//!   restart without persistence).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use herald_core::presence::{JoinOutcome, LeaveOutcome, PresenceError, PresenceManager};
use herald_core::publication::Member;
use herald_core::raw_json::RawJson;
use herald_protocol::{ChannelName, SocketId};
use parking_lot::Mutex;
use tracing::warn;

use super::Link;
use super::scripts::{PRESENCE_JOIN, PRESENCE_LEAVE, PRESENCE_MEMBERS};

/// One connection's presence on one channel.
type ConnKey = (Arc<str>, ChannelName, SocketId);

/// Presence in Redis.
#[derive(Debug)]
pub struct RedisPresence {
    link: Arc<Link>,
    /// This node's joins, rewritten to Redis after Redis lost them.
    local: Mutex<HashMap<ConnKey, Member>>,
}

fn unavailable(e: String) -> PresenceError {
    PresenceError(e)
}

/// The node-index entry of one connection: `[app, channel, socket, user]` as JSON.
pub(crate) fn index_entry(app: &str, channel: &str, socket: SocketId, user: &str) -> String {
    serde_json::json!([app, channel, socket.to_string(), user]).to_string()
}

impl RedisPresence {
    pub(crate) fn new(link: Arc<Link>) -> Self {
        Self {
            link,
            local: Mutex::new(HashMap::new()),
        }
    }

    /// Run the leave script for a connection listed in `node`'s index. Returns whether it
    /// was the user's last connection.
    pub(crate) async fn leave_for_node(
        &self,
        node: &str,
        app: &str,
        channel: &str,
        socket: SocketId,
        user: &str,
    ) -> Result<bool, String> {
        let [users, info, order, conns, seq] = self.link.keys.presence(app, channel);
        let mut invocation = PRESENCE_LEAVE.prepare_invoke();
        invocation
            .key(users)
            .key(info)
            .key(order)
            .key(conns)
            .key(seq)
            .key(self.link.keys.node_presence(node))
            .arg(socket.to_string())
            .arg(user)
            .arg(index_entry(app, channel, socket, user));
        let last: i64 = self.link.script(&invocation).await?;
        Ok(last == 1)
    }

    async fn join_script(
        &self,
        app: &str,
        channel: &str,
        socket: SocketId,
        member: &Member,
        max_members: usize,
    ) -> Result<i64, String> {
        let [users, info, order, conns, seq] = self.link.keys.presence(app, channel);
        let mut invocation = PRESENCE_JOIN.prepare_invoke();
        invocation
            .key(users)
            .key(info)
            .key(order)
            .key(conns)
            .key(seq)
            .key(self.link.keys.node_presence(&self.link.node_id))
            .arg(socket.to_string())
            .arg(&*member.user_id)
            .arg(member.info.as_bytes())
            .arg(max_members)
            .arg(index_entry(app, channel, socket, &member.user_id));
        self.link.script(&invocation).await
    }

    /// Write every local join again (after Redis lost its data). No announcements.
    pub(crate) async fn rejoin_all(&self) {
        let joins: Vec<(ConnKey, Member)> = self
            .local
            .lock()
            .iter()
            .map(|(k, m)| (k.clone(), m.clone()))
            .collect();
        for ((app, channel, socket), member) in joins {
            if let Err(e) = self
                .join_script(&app, channel.as_str(), socket, &member, usize::MAX >> 1)
                .await
            {
                warn!(error = %e, "cannot restore a presence member in Redis");
                return;
            }
        }
    }
}

#[async_trait]
impl PresenceManager for RedisPresence {
    async fn join(
        &self,
        app_id: &str,
        channel: &ChannelName,
        socket: SocketId,
        member: &Member,
        max_members: usize,
    ) -> Result<JoinOutcome, PresenceError> {
        let outcome = self
            .join_script(app_id, channel.as_str(), socket, member, max_members)
            .await
            .map_err(unavailable)?;
        let outcome = match outcome {
            1 => JoinOutcome::FirstConnection,
            2 => JoinOutcome::AnotherConnection,
            _ => return Ok(JoinOutcome::Full),
        };
        self.local
            .lock()
            .insert((Arc::from(app_id), channel.clone(), socket), member.clone());
        Ok(outcome)
    }

    async fn leave(
        &self,
        app_id: &str,
        channel: &ChannelName,
        socket: SocketId,
        user_id: &str,
    ) -> Result<LeaveOutcome, PresenceError> {
        self.local
            .lock()
            .remove(&(Arc::from(app_id), channel.clone(), socket));
        let last = self
            .leave_for_node(
                &self.link.node_id,
                app_id,
                channel.as_str(),
                socket,
                user_id,
            )
            .await
            .map_err(unavailable)?;
        Ok(LeaveOutcome {
            last_connection: last,
        })
    }

    async fn members(
        &self,
        app_id: &str,
        channel: &ChannelName,
    ) -> Result<Vec<Member>, PresenceError> {
        let [_, info, order, _, _] = self.link.keys.presence(app_id, channel.as_str());
        let mut invocation = PRESENCE_MEMBERS.prepare_invoke();
        invocation.key(info).key(order);
        let flat: Vec<Vec<u8>> = self.link.script(&invocation).await.map_err(unavailable)?;
        let mut out = Vec::with_capacity(flat.len() / 2);
        for pair in flat.chunks_exact(2) {
            let Ok(user) = std::str::from_utf8(&pair[0]) else {
                continue;
            };
            let info = RawJson::parse(Bytes::copy_from_slice(&pair[1]))
                .unwrap_or_else(|_| RawJson::null());
            out.push(Member {
                user_id: Arc::from(user),
                info,
            });
        }
        Ok(out)
    }

    async fn count(&self, app_id: &str, channel: &ChannelName) -> Result<usize, PresenceError> {
        let [users, ..] = self.link.keys.presence(app_id, channel.as_str());
        self.link
            .query(redis::cmd("HLEN").arg(users))
            .await
            .map_err(unavailable)
    }
}
