//! What the admin views ask of a node beyond the HTTP APIs' queries: this node's
//! connections of a user, the client addresses with the most connections, and the nodes'
//! reports (each node's own summary, shared through the cluster state).

use std::net::IpAddr;
use std::sync::Arc;

use super::Node;
use crate::outbound::SessionHandle;

impl Node {
    /// This node's connections of `user_id` in `app_id`.
    pub fn user_connections(&self, app_id: &str, user_id: &str) -> Vec<Arc<SessionHandle>> {
        self.sessions.user_sessions(app_id, user_id)
    }

    /// The `n` client addresses with the most connections on this node, most first.
    pub fn top_ips(&self, n: usize) -> Vec<(IpAddr, u32)> {
        let mut all: Vec<(IpAddr, u32)> = self
            .per_ip
            .lock()
            .iter()
            .map(|(ip, count)| (*ip, *count))
            .collect();
        all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }

    /// Keep `report` (this node's summary, a JSON object) where every node's admin view
    /// reads it, until this node stops.
    pub fn report(&self, report: Arc<str>) {
        self.occupancy.report(report);
    }

    /// Every live node's latest report; `None` on a single node (which has only its own).
    pub async fn node_reports(&self) -> Result<Option<Vec<Arc<str>>>, String> {
        self.occupancy.reports().await.map_err(|e| e.to_string())
    }

    /// Node-clock milliseconds now (the clock [`SessionHandle::connected_ms`] reads).
    pub fn clock_ms(&self) -> u64 {
        self.clock.now_ms()
    }
}
