//! [`MemoryPresence`]: presence for a single node, in a map behind one lock.
//!
//! Every operation is a short critical section with no I/O, so the contract's atomicity
//! holds trivially. State lives only as long as the process.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use herald_protocol::{ChannelName, SocketId};
use indexmap::IndexMap;
use parking_lot::Mutex;

use super::{JoinOutcome, LeaveOutcome, PresenceError, PresenceManager};
use crate::publication::Member;
use crate::raw_json::RawJson;

/// One present user.
#[derive(Debug)]
struct PresentUser {
    /// Info from the user's first connection.
    info: RawJson,
    /// The user's connections on the channel.
    sockets: Vec<SocketId>,
}

/// The users of one channel, in join order.
type Members = IndexMap<Arc<str>, PresentUser>;

/// In-process presence.
#[derive(Debug, Default)]
pub struct MemoryPresence {
    /// Users by (app id, channel), in join order.
    channels: Mutex<HashMap<(Arc<str>, ChannelName), Members>>,
}

impl MemoryPresence {
    /// An empty presence store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl PresenceManager for MemoryPresence {
    async fn join(
        &self,
        app_id: &str,
        channel: &ChannelName,
        socket: SocketId,
        member: &Member,
        max_members: usize,
    ) -> Result<JoinOutcome, PresenceError> {
        let mut channels = self.channels.lock();
        let users = channels
            .entry((Arc::from(app_id), channel.clone()))
            .or_default();
        if let Some(user) = users.get_mut(&member.user_id) {
            if !user.sockets.contains(&socket) {
                user.sockets.push(socket);
            }
            return Ok(JoinOutcome::AnotherConnection);
        }
        if users.len() >= max_members {
            if users.is_empty() {
                channels.remove(&(Arc::from(app_id), channel.clone()));
            }
            return Ok(JoinOutcome::Full);
        }
        users.insert(
            member.user_id.clone(),
            PresentUser {
                info: member.info.clone(),
                sockets: vec![socket],
            },
        );
        Ok(JoinOutcome::FirstConnection)
    }

    async fn leave(
        &self,
        app_id: &str,
        channel: &ChannelName,
        socket: SocketId,
        user_id: &str,
    ) -> Result<LeaveOutcome, PresenceError> {
        let mut channels = self.channels.lock();
        let key = (Arc::from(app_id), channel.clone());
        let Some(users) = channels.get_mut(&key) else {
            return Ok(LeaveOutcome {
                last_connection: false,
            });
        };
        let Some(user) = users.get_mut(user_id) else {
            return Ok(LeaveOutcome {
                last_connection: false,
            });
        };
        let before = user.sockets.len();
        user.sockets.retain(|s| *s != socket);
        let removed = user.sockets.len() < before;
        let last_connection = removed && user.sockets.is_empty();
        if last_connection {
            users.shift_remove(user_id);
            if users.is_empty() {
                channels.remove(&key);
            }
        }
        Ok(LeaveOutcome { last_connection })
    }

    async fn members(
        &self,
        app_id: &str,
        channel: &ChannelName,
    ) -> Result<Vec<Member>, PresenceError> {
        let channels = self.channels.lock();
        Ok(channels
            .get(&(Arc::from(app_id), channel.clone()))
            .map(|users| {
                users
                    .iter()
                    .map(|(id, u)| Member {
                        user_id: id.clone(),
                        info: u.info.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn count(&self, app_id: &str, channel: &ChannelName) -> Result<usize, PresenceError> {
        let channels = self.channels.lock();
        Ok(channels
            .get(&(Arc::from(app_id), channel.clone()))
            .map_or(0, IndexMap::len))
    }
}
