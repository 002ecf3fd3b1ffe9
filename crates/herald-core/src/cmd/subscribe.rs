//! Subscribe: join a channel, as an ordered list of steps that undo themselves.
//!
//! 1. **authorise**: the channel name, the subscription limit, the token or the Pusher
//!    signature. Nothing to undo.
//! 2. **presence** (presence channels): join the channel's presence set.
//! 3. **hub and broker**: join the app's hub (behind a gate on channels with history); the
//!    first subscriber on this node also subscribes the broker and occupies the channel in
//!    the cluster.
//! 4. **recover** (channels with history): read the history after `since`.
//! 5. **announce**: record the subscription, then tell everyone else: the
//!    `channel_occupied` and `member_added` webhooks, the presence `joined` event, the
//!    subscription count, the cache channel's last event.
//!
//! Steps 2 and 3 each register their undo on a [`Rollback`] the moment they have taken
//! effect (or may have: a backend call that failed may still have been applied). When a later
//! step fails, the rollback undoes exactly what was done, newest first, and announces
//! nothing that was not announced: a member whose `joined` was never sent is never reported
//! `left`, a channel whose `channel_occupied` was never sent is never reported vacated. When
//! the subscribe's future is dropped midway (its connection went away), the rollback's
//! `Drop` runs the same undo on the runtime. Only step 5 makes the subscription visible; from
//! there on nothing is undone, and leaving is [`crate::cmd::unsubscribe`]'s job.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use herald_protocol::native::StreamPosition;
use herald_protocol::{ChannelName, ErrorCode, SocketId};
use tracing::warn;

use super::{announce_subscription_count, truncate};
use crate::app::App;
use crate::auth::{ChannelAccess, authorize_channel};
use crate::history::{HistoryPolicy, HistoryQuery};
use crate::metrics::Metrics;
use crate::node::Node;
use crate::presence::JoinOutcome;
use crate::publication::{Member, Payload, Publication};
use crate::raw_json::RawJson;
use crate::recovery::{Gate, Recovery};
use crate::refusal::Refusal;
use crate::session::{Session, Subscription};
use crate::webhook::WebhookEvent;

/// How a subscription is authorised.
#[derive(Debug, Clone, Copy)]
pub enum ChannelAuth<'a> {
    /// Native protocol: the connection token, or this subscription token.
    Token(Option<&'a str>),
    /// Pusher protocol: `key:signature`, and for presence channels the signed
    /// `channel_data`.
    Pusher {
        /// The `auth` field.
        auth: Option<&'a str>,
        /// The `channel_data` field.
        channel_data: Option<&'a str>,
    },
}

/// A successful subscribe.
#[derive(Debug)]
pub struct SubscribeOk {
    /// The channel, validated.
    pub channel: ChannelName,
    /// On presence channels: the members present right after joining (this user included).
    pub members: Option<Vec<Member>>,
    /// On cache channels: the cached last event, or `None` for a cache miss.
    pub cached: Option<Option<Arc<Publication>>>,
    /// On channels with history: the stream position, and the recovery result and replay
    /// when the client asked to recover.
    pub recovery: Option<Recovery>,
    /// On channels with history: holds live publications until the protocol adapter has
    /// queued the reply and the replay, then calls [`Session::open_gate`].
    pub(crate) gate: Option<Arc<Gate>>,
}

/// What step 2 decided about the member, for the announcement and for its undo.
#[derive(Debug, Clone)]
struct Joined {
    /// The member as others see it.
    member: Member,
    /// `Some(true)`: this was the user's first connection, so step 5 announces `joined`.
    /// `Some(false)`: another connection of the user is present (and was announced).
    /// `None`: the join failed and may or may not have been recorded.
    first: Option<bool>,
}

/// What steps 2 and 3 have done, to be undone if the subscribe does not complete.
#[derive(Debug)]
enum Undo {
    /// Step 2: this connection's presence on the channel.
    Presence(Joined),
    /// Step 3: this connection's place in the hub. `occupied_first`: this subscribe occupied
    /// the channel in the cluster, so `channel_occupied` is still to be announced by step 5.
    Hub { occupied_first: bool },
}

/// The undo list of one subscribe. Dropped with entries left (the subscribe's future was
/// cancelled), it undoes them on the runtime.
struct Rollback {
    /// The node whose backends the steps changed.
    node: Arc<Node>,
    /// The app of the channel.
    app: Arc<App>,
    /// The subscribing connection.
    socket: SocketId,
    /// The channel.
    channel: ChannelName,
    /// What has taken effect, oldest first.
    done: Vec<Undo>,
}

impl Rollback {
    /// The subscribe completed: keep everything.
    fn commit(mut self) {
        self.done.clear();
    }

    /// Undo everything done, newest first.
    async fn undo(mut self) {
        let done = std::mem::take(&mut self.done);
        undo_all(&self.node, &self.app, self.socket, &self.channel, done).await;
    }
}

impl Drop for Rollback {
    fn drop(&mut self) {
        if self.done.is_empty() {
            return;
        }
        let done = std::mem::take(&mut self.done);
        let (node, app, socket, channel) = (
            self.node.clone(),
            self.app.clone(),
            self.socket,
            self.channel.clone(),
        );
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { undo_all(&node, &app, socket, &channel, done).await });
        }
    }
}

async fn undo_all(
    node: &Node,
    app: &App,
    socket: SocketId,
    channel: &ChannelName,
    done: Vec<Undo>,
) {
    for undo in done.into_iter().rev() {
        match undo {
            Undo::Hub { occupied_first } => {
                undo_hub(node, app, socket, channel, occupied_first).await
            }
            Undo::Presence(joined) => undo_presence(node, app, socket, channel, joined).await,
        }
    }
}

/// Leave the hub; the last local subscriber also leaves the broker and the cluster's
/// occupancy. `channel_vacated` is sent only if `channel_occupied` was: by another
/// subscribe, not this one.
async fn undo_hub(
    node: &Node,
    app: &App,
    socket: SocketId,
    channel: &ChannelName,
    occupied_first: bool,
) {
    let removed = app.hub.unsubscribe(channel, socket, &node.metrics);
    if !removed.last_on_node {
        if removed.removed {
            let count = app.hub.subscriber_count(channel.as_str());
            node.occupancy.local_count(&app.id, channel, count);
        }
        return;
    }
    // A tapped channel stays subscribed at the broker (cmd/tap.rs).
    if node.taps.count(&app.id, channel) == 0
        && let Err(e) = node.broker.unsubscribe(&app.id, channel).await
    {
        warn!(error = %e, channel = %channel, "broker unsubscribe failed");
    }
    match node.occupancy.vacate(&app.id, channel).await {
        Ok(true) if !occupied_first => node.emit_webhook(
            app,
            WebhookEvent::ChannelVacated {
                channel: channel.clone(),
            },
        ),
        Ok(_) => {}
        Err(e) => warn!(error = %e, channel = %channel, "occupancy update failed"),
    }
}

/// Leave the presence set, announcing only what keeps others' view right: nothing for a
/// member this subscribe would have announced; `left` when another connection announced
/// the member and has gone since; `joined` when another connection of the user arrived
/// meanwhile, counting on this one's announcement.
async fn undo_presence(
    node: &Node,
    app: &App,
    socket: SocketId,
    channel: &ChannelName,
    joined: Joined,
) {
    let user_id = joined.member.user_id.clone();
    let outcome = match node
        .presence
        .leave(&app.id, channel, socket, &user_id)
        .await
    {
        Ok(outcome) => outcome,
        Err(e) => {
            warn!(error = %e, "presence leave failed");
            return;
        }
    };
    match (joined.first, outcome.last_connection) {
        (Some(false), true) => {
            node.emit_webhook(
                app,
                WebhookEvent::MemberRemoved {
                    channel: channel.clone(),
                    user_id: user_id.clone(),
                },
            );
            if let Err(e) = node
                .publish_payload(app, channel, Payload::Left { user_id }, None)
                .await
            {
                warn!(error = %e, "cannot announce presence leave");
            }
        }
        (Some(true), false) => announce_joined(node, app, channel, joined.member, None).await,
        _ => {}
    }
}

/// Send `member_added` and publish `joined` (to everyone but `exclude`).
async fn announce_joined(
    node: &Node,
    app: &App,
    channel: &ChannelName,
    member: Member,
    exclude: Option<SocketId>,
) {
    node.emit_webhook(
        app,
        WebhookEvent::MemberAdded {
            channel: channel.clone(),
            user_id: member.user_id.clone(),
        },
    );
    if let Err(e) = node
        .publish_payload(app, channel, Payload::Joined(member), exclude)
        .await
    {
        warn!(error = %e, "cannot announce presence join");
    }
}

/// What steps 2 to 4 produced for step 5.
struct Prepared {
    /// Step 2's member, on presence channels.
    joined: Option<Joined>,
    /// Step 3's gate, on channels with history.
    gate: Option<Arc<Gate>>,
    /// Step 3: the channel became occupied in the cluster.
    occupied_first: bool,
    /// Step 4's result.
    recovery: Option<Recovery>,
}

impl Session {
    /// Subscribe to `name`, authorised according to `auth`, recovering from `since` when the
    /// channel keeps history. See the module documentation for the steps.
    pub async fn subscribe(
        &mut self,
        name: &str,
        auth: ChannelAuth<'_>,
        since: Option<&StreamPosition>,
    ) -> Result<SubscribeOk, Refusal> {
        if let ChannelAuth::Pusher { .. } = auth
            && let Some(user) = herald_protocol::pusher::server_to_user_id(name)
        {
            return self.subscribe_server_to_user(name, user);
        }
        let (channel, access) = match self.authorise(name, auth) {
            Ok(granted) => granted,
            Err(refusal) if self.may_ask_backend(&refusal, auth) => self.ask_backend(name).await?,
            Err(refusal) => return Err(refusal),
        };
        let mut rollback = Rollback {
            node: self.node.clone(),
            app: self.app.clone(),
            socket: self.handle.socket_id,
            channel: channel.clone(),
            done: Vec::new(),
        };
        let prepared = match self.prepare(&channel, &access, since, &mut rollback).await {
            Ok(prepared) => prepared,
            Err(refusal) => {
                rollback.undo().await;
                return Err(refusal);
            }
        };
        rollback.commit();
        Ok(self.announce(channel, prepared).await)
    }

    /// Steps 2 to 4, each registering its undo on `rollback`.
    async fn prepare(
        &mut self,
        channel: &ChannelName,
        access: &ChannelAccess,
        since: Option<&StreamPosition>,
        rollback: &mut Rollback,
    ) -> Result<Prepared, Refusal> {
        let joined = if channel.kind().is_presence() {
            let joined = self.join_presence(channel, access, rollback).await?;
            Some(joined)
        } else {
            None
        };
        let policy = self.app.history_policy(channel.as_str()).cloned();
        let (gate, occupied_first) = self.join_hub(channel, policy.is_some(), rollback).await?;
        let recovery = match &policy {
            Some(policy) => Some(self.recover(channel, policy, since).await?),
            None => None,
        };
        Ok(Prepared {
            joined,
            gate,
            occupied_first,
            recovery,
        })
    }

    /// Step 1: the channel name, the subscription limit, and the credentials.
    fn authorise(
        &mut self,
        name: &str,
        auth: ChannelAuth<'_>,
    ) -> Result<(ChannelName, ChannelAccess), Refusal> {
        let channel = ChannelName::new(name).map_err(|e| {
            Refusal::new(
                ErrorCode::InvalidChannel,
                format!("{:?}: {e}", truncate(name, 64)),
            )
        })?;
        if self.subscriptions.iter().any(|s| s.channel == channel) {
            return Err(Refusal::plain(ErrorCode::AlreadySubscribed));
        }
        let max = self.app.settings.limits.max_subscriptions_per_connection as usize;
        if self.subscriptions.len() >= max {
            return Err(Refusal::new(
                ErrorCode::TooManySubscriptions,
                format!("a connection may hold at most {max} subscriptions"),
            ));
        }
        let access = match auth {
            ChannelAuth::Token(token) => authorize_channel(
                &self.app.settings,
                &self.app.verifier,
                self.identity.as_deref(),
                &channel,
                token,
            )?,
            ChannelAuth::Pusher { auth, channel_data } => crate::pusher_auth::authorize_channel(
                &self.app.settings,
                self.handle.socket_id,
                &channel,
                auth,
                channel_data,
            )?,
        };
        if channel.kind().is_protected() {
            self.handle.mark_authorized();
        }
        Ok((channel, access))
    }

    /// Whether a refusal by the tokens may be overruled by the app's subscribe proxy: a
    /// native subscribe to a private or presence channel that no token granted, on an app
    /// with a subscribe proxy.
    fn may_ask_backend(&self, refusal: &Refusal, auth: ChannelAuth<'_>) -> bool {
        matches!(auth, ChannelAuth::Token(_))
            && matches!(
                refusal.code,
                ErrorCode::Unauthorized | ErrorCode::ChannelNotAllowed
            )
            && self
                .extras
                .as_ref()
                .is_some_and(|e| e.backend_context.is_some())
            && self.node.subscribe_authority.get().is_some()
    }

    /// Step 1 by the app's backend: its subscribe proxy decides, as Laravel's channel rules
    /// say. Name and subscription limit were checked by [`Session::authorise`] already.
    async fn ask_backend(&mut self, name: &str) -> Result<(ChannelName, ChannelAccess), Refusal> {
        let channel = ChannelName::new(name)
            .map_err(|e| Refusal::new(ErrorCode::InvalidChannel, e.to_string()))?;
        let (Some(authority), Some(context)) = (
            self.node.subscribe_authority.get().cloned(),
            self.extras.as_ref().and_then(|e| e.backend_context.clone()),
        ) else {
            return Err(Refusal::plain(ErrorCode::Unauthorized));
        };
        let access = authority
            .authorize(&self.app, self.handle.socket_id, &channel, &context)
            .await?;
        if channel.kind().is_presence() && access.user_id.is_none() {
            return Err(Refusal::new(
                ErrorCode::BackendUnavailable,
                "the backend granted a presence channel without channel_data.user_id",
            ));
        }
        self.handle.mark_authorized();
        Ok((channel, access))
    }

    /// Step 2: join the presence set as the authorised user.
    async fn join_presence(
        &self,
        channel: &ChannelName,
        access: &ChannelAccess,
        rollback: &mut Rollback,
    ) -> Result<Joined, Refusal> {
        let limits = &self.app.settings.limits;
        let user_id = access
            .user_id
            .clone()
            .ok_or_else(|| Refusal::plain(ErrorCode::Unauthorized))?;
        let info = access.info.clone().unwrap_or_else(RawJson::null);
        if info.len() > limits.max_user_info_bytes {
            return Err(Refusal::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "presence info is {} bytes; the limit is {}",
                    info.len(),
                    limits.max_user_info_bytes
                ),
            ));
        }
        let member = Member { user_id, info };
        let outcome = self
            .node
            .presence
            .join(
                &self.app.id,
                channel,
                self.handle.socket_id,
                &member,
                limits.max_presence_members,
            )
            .await;
        let first = match &outcome {
            Ok(JoinOutcome::FirstConnection) => Some(true),
            Ok(JoinOutcome::AnotherConnection) => Some(false),
            Ok(JoinOutcome::Full) => {
                return Err(Refusal::new(
                    ErrorCode::PresenceFull,
                    format!(
                        "presence channel has its maximum of {} members",
                        limits.max_presence_members
                    ),
                ));
            }
            Err(_) => None,
        };
        let joined = Joined { member, first };
        rollback.done.push(Undo::Presence(joined.clone()));
        if let Err(e) = outcome {
            warn!(error = %e, "presence join failed");
            return Err(Refusal::new(
                ErrorCode::Internal,
                "presence is unavailable; retry later",
            ));
        }
        Ok(joined)
    }

    /// Step 3: join the hub (gated when the channel keeps history); the first local
    /// subscriber subscribes the broker and occupies the channel in the cluster. Returns
    /// the gate and whether the channel became occupied in the cluster.
    async fn join_hub(
        &self,
        channel: &ChannelName,
        gated: bool,
        rollback: &mut Rollback,
    ) -> Result<(Option<Arc<Gate>>, bool), Refusal> {
        let node = &self.node;
        let app = &self.app;
        let gate = gated.then(|| Arc::new(Gate::new(node.limits.max_queue_messages)));
        let added = app
            .hub
            .subscribe(channel, self.handle.clone(), gate.clone(), &node.metrics);
        rollback.done.push(Undo::Hub {
            occupied_first: false,
        });
        let mut occupied_first = false;
        if added.first_on_node {
            if let Err(e) = node.broker.subscribe(&app.id, channel).await {
                warn!(error = %e, channel = %channel, "broker subscribe failed");
                return Err(Refusal::new(
                    ErrorCode::Internal,
                    "the broker is unavailable; retry later",
                ));
            }
            match node.occupancy.occupy(&app.id, channel).await {
                Ok(first) => occupied_first = first,
                Err(e) => warn!(error = %e, channel = %channel, "occupancy update failed"),
            }
            if let Some(Undo::Hub { occupied_first: o }) = rollback.done.last_mut() {
                *o = occupied_first;
            }
        }
        let count = app.hub.subscriber_count(channel.as_str());
        node.occupancy.local_count(&app.id, channel, count);
        Ok((gate, occupied_first))
    }

    /// Step 4: the stream position and, when the client gave `since`, what it missed. Read
    /// after joining the hub: see `recovery.rs` for why.
    async fn recover(
        &self,
        channel: &ChannelName,
        policy: &HistoryPolicy,
        since: Option<&StreamPosition>,
    ) -> Result<Recovery, Refusal> {
        let max = self
            .app
            .settings
            .limits
            .max_recovery_publications
            .min(self.recovery_budget.0 as usize);
        let query = HistoryQuery {
            after_offset: since.map(|s| s.offset),
            limit: if since.is_some() { max } else { 0 },
            ..HistoryQuery::default()
        };
        let page = self
            .node
            .history
            .read(&self.app.id, channel, &query, Some(policy))
            .await
            .map_err(|e| {
                warn!(error = %e, channel = %channel, "history read failed");
                Refusal::new(ErrorCode::Internal, "history is unavailable; retry later")
            })?;
        let mut recovery = Recovery::decide(since, page, max);
        let protocol = self.handle.protocol;
        let bytes: usize = recovery
            .replay
            .iter()
            .filter_map(|p| p.encoded(protocol).map(|b| b.len()))
            .sum();
        if bytes > self.recovery_budget.1 as usize {
            recovery.too_many();
        }
        Ok(recovery)
    }

    /// Step 5: record the subscription and tell everyone else.
    async fn announce(&mut self, channel: ChannelName, prepared: Prepared) -> SubscribeOk {
        let node = self.node.clone();
        let app = self.app.clone();
        count_recovery(&node.metrics, prepared.recovery.as_ref());
        self.subscriptions.push(Subscription {
            channel: channel.clone(),
            presence_user: prepared.joined.as_ref().map(|j| j.member.user_id.clone()),
            in_hub: true,
        });
        if prepared.occupied_first {
            let event = WebhookEvent::ChannelOccupied {
                channel: channel.clone(),
            };
            node.emit_webhook(&app, event);
        }
        let members = match prepared.joined {
            Some(joined) => {
                if joined.first == Some(true) {
                    let exclude = Some(self.handle.socket_id);
                    announce_joined(&node, &app, &channel, joined.member, exclude).await;
                }
                let members = node.presence.members(&app.id, &channel).await;
                Some(members.unwrap_or_default())
            }
            None => None,
        };
        announce_subscription_count(&node, &app, &channel).await;
        let cached = channel.kind().cache.then(|| {
            let hit = node.cache.get(&app.id, &channel).map(|(p, _)| p);
            if hit.is_none() {
                let event = WebhookEvent::CacheMiss {
                    channel: channel.clone(),
                };
                node.emit_webhook(&app, event);
            }
            hit
        });
        SubscribeOk {
            channel,
            members,
            cached,
            recovery: prepared.recovery,
            gate: prepared.gate,
        }
    }

    /// A Pusher `#server-to-user-<id>` subscription: allowed only to a connection signed in
    /// as that user. Delivery to it goes through the user index, not the hub.
    fn subscribe_server_to_user(&mut self, name: &str, user: &str) -> Result<SubscribeOk, Refusal> {
        if self.handle.user_id().map(|u| &**u) != Some(user) {
            return Err(Refusal::new(
                ErrorCode::ChannelNotAllowed,
                "sign in as this user before subscribing to its channel",
            ));
        }
        let channel = ChannelName::internal(name);
        if !self.subscriptions.iter().any(|s| s.channel == channel) {
            self.subscriptions.push(Subscription {
                channel: channel.clone(),
                presence_user: None,
                in_hub: false,
            });
        }
        Ok(SubscribeOk {
            channel,
            members: None,
            cached: None,
            recovery: None,
            gate: None,
        })
    }
}

/// Count a recovery's outcome.
fn count_recovery(metrics: &Metrics, recovery: Option<&Recovery>) {
    match recovery.and_then(|r| r.outcome.map(|o| (o, r.replay.len()))) {
        Some((Ok(()), replayed)) => {
            Metrics::inc(&metrics.recoveries_succeeded);
            metrics
                .recovered_publications
                .fetch_add(replayed as u64, Ordering::Relaxed);
        }
        Some((Err(_), _)) => Metrics::inc(&metrics.recoveries_failed),
        None => {}
    }
}
