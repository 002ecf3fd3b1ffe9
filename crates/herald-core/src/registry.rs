//! [`SessionRegistry`]: every live connection on this node, by socket id, and per app by
//! user id. Used for direct sends, forced disconnects, the heartbeat and shutdown.

use std::collections::HashMap;
use std::sync::Arc;

use herald_protocol::SocketId;
use parking_lot::Mutex;

use crate::outbound::SessionHandle;

/// Number of shards of the socket map.
const SHARDS: usize = 32;

/// One shard of the socket map.
type SocketMap = HashMap<SocketId, Arc<SessionHandle>>;

/// (app id, user id).
type UserKey = (Arc<str>, Arc<str>);

/// The node's live connections.
#[derive(Debug)]
pub struct SessionRegistry {
    /// Connections by socket id, sharded to keep connect and disconnect bursts uncontended.
    sockets: Box<[Mutex<SocketMap>]>,
    /// Connections with a user id, by (app id, user id).
    users: Mutex<HashMap<UserKey, Vec<Arc<SessionHandle>>>>,
}

impl Default for SessionRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl SessionRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self {
            sockets: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            users: Mutex::new(HashMap::new()),
        }
    }

    fn shard(&self, id: SocketId) -> &Mutex<SocketMap> {
        let key = [id.high().to_le_bytes(), id.low().to_le_bytes()].concat();
        &self.sockets[crate::shard::shard_of(&[&key], SHARDS)]
    }

    /// Add a connection. Returns false (and adds nothing) if the socket id is taken.
    pub fn insert(&self, handle: &Arc<SessionHandle>) -> bool {
        let mut shard = self.shard(handle.socket_id).lock();
        if shard.contains_key(&handle.socket_id) {
            return false;
        }
        shard.insert(handle.socket_id, handle.clone());
        true
    }

    /// Index a connection under its user id (call once the user id is known).
    pub fn index_user(&self, handle: &Arc<SessionHandle>) {
        if let Some(user) = handle.user_id() {
            self.users
                .lock()
                .entry((handle.app_id.clone(), user.clone()))
                .or_default()
                .push(handle.clone());
        }
    }

    /// Remove a connection from both indexes.
    pub fn remove(&self, handle: &SessionHandle) {
        self.shard(handle.socket_id)
            .lock()
            .remove(&handle.socket_id);
        if let Some(user) = handle.user_id() {
            let mut users = self.users.lock();
            let key = (handle.app_id.clone(), user.clone());
            if let Some(list) = users.get_mut(&key) {
                list.retain(|h| h.socket_id != handle.socket_id);
                if list.is_empty() {
                    users.remove(&key);
                }
            }
        }
    }

    /// The connection with this socket id.
    pub fn get(&self, id: SocketId) -> Option<Arc<SessionHandle>> {
        self.shard(id).lock().get(&id).cloned()
    }

    /// The connections of a user of an app.
    pub fn user_sessions(&self, app_id: &str, user_id: &str) -> Vec<Arc<SessionHandle>> {
        let key = (Arc::from(app_id), Arc::from(user_id));
        self.users.lock().get(&key).cloned().unwrap_or_default()
    }

    /// Call `f` for every connection. Shards are visited one at a time and `f` runs with the
    /// shard locked, so it must be quick and must not touch the registry.
    pub fn for_each(&self, mut f: impl FnMut(&Arc<SessionHandle>)) {
        for shard in self.sockets.iter() {
            for handle in shard.lock().values() {
                f(handle);
            }
        }
    }

    /// Number of connections.
    pub fn len(&self) -> usize {
        self.sockets.iter().map(|s| s.lock().len()).sum()
    }

    /// Whether there are no connections.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
