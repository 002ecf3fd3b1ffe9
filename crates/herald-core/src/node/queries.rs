//! What the HTTP APIs ask about channels: which are occupied, how many subscribers and
//! presence members a channel has, and who the members are. Answers are cluster-wide when
//! the backends are shared, and this node's own otherwise.

use herald_protocol::{ChannelName, ErrorCode};
use tracing::warn;

use super::Node;
use crate::app::App;
use crate::publication::Member;
use crate::refusal::Refusal;

/// What the API reports about one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelInfo {
    /// The channel name.
    pub name: ChannelName,
    /// Connections subscribed (across the cluster when the backend is shared).
    pub subscribers: usize,
    /// Distinct users present, for presence channels.
    pub presence_members: Option<usize>,
}

fn cluster_unavailable() -> Refusal {
    Refusal::new(
        ErrorCode::Internal,
        "cluster state is unavailable; retry later",
    )
}

impl Node {
    /// Channels of `app` with subscribers (in the whole cluster), whose name starts with
    /// `prefix`.
    pub async fn channels(&self, app: &App, prefix: &str) -> Result<Vec<ChannelInfo>, Refusal> {
        let listed = match self.occupancy.channels(&app.id, prefix).await {
            Ok(Some(cluster)) => cluster,
            Ok(None) => app.hub.channels(prefix),
            Err(e) => {
                warn!(error = %e, "channel listing failed");
                return Err(cluster_unavailable());
            }
        };
        let mut out = Vec::new();
        for (name, subscribers) in listed {
            let presence_members = if name.kind().is_presence() {
                self.presence.count(&app.id, &name).await.ok()
            } else {
                None
            };
            out.push(ChannelInfo {
                name,
                subscribers,
                presence_members,
            });
        }
        Ok(out)
    }

    /// One channel's subscriber count and presence member count.
    pub async fn channel_info(
        &self,
        app: &App,
        channel: &ChannelName,
    ) -> Result<ChannelInfo, Refusal> {
        let presence_members = if channel.kind().is_presence() {
            Some(self.presence.count(&app.id, channel).await.map_err(|e| {
                warn!(error = %e, "presence count failed");
                Refusal::plain(ErrorCode::Internal)
            })?)
        } else {
            None
        };
        let subscribers = match self.occupancy.subscriber_count(&app.id, channel).await {
            Ok(Some(n)) => n,
            Ok(None) => app.hub.subscriber_count(channel.as_str()),
            Err(e) => {
                warn!(error = %e, "subscriber count failed");
                return Err(cluster_unavailable());
            }
        };
        Ok(ChannelInfo {
            name: channel.clone(),
            subscribers,
            presence_members,
        })
    }

    /// The members of a presence channel.
    pub async fn presence_members(
        &self,
        app: &App,
        channel: &ChannelName,
    ) -> Result<Vec<Member>, Refusal> {
        if !channel.kind().is_presence() {
            return Err(Refusal::new(
                ErrorCode::InvalidChannel,
                "not a presence channel (the name must start with presence-)",
            ));
        }
        self.presence.members(&app.id, channel).await.map_err(|e| {
            warn!(error = %e, "presence members failed");
            Refusal::plain(ErrorCode::Internal)
        })
    }
}
