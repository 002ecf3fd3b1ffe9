//! Publish: an event to one or more channels of an app, through the broker. A request is
//! validated first (event name, payload size, channel names, each channel once); with an
//! idempotency key, a repeat within the app's window is answered with the first receipt and
//! not delivered again. A batch validates every event before publishing any.

use std::sync::Arc;

use herald_protocol::{ChannelName, ErrorCode, SocketId};

use super::{check_event_name, check_payload, truncate};
use crate::app::App;
use crate::broker::Published;
use crate::clock::unix_ms;
use crate::idempotency::Claim;
use crate::metrics::Metrics;
use crate::node::Node;
use crate::publication::{EventData, Payload, Position, Publication};
use crate::refusal::Refusal;

/// A publish request from the API, already parsed.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    /// Channel names, not yet validated.
    pub channels: Vec<String>,
    /// The event name.
    pub event: String,
    /// The event data.
    pub data: EventData,
    /// A connection that must not receive it.
    pub exclude: Option<SocketId>,
    /// A repeat of this key within the app's idempotency window is not delivered again.
    pub idempotency_key: Option<String>,
}

/// The result of an accepted publish.
#[derive(Debug, Clone)]
pub struct PublishReceipt {
    /// The message id, shared by all channels of this publish.
    pub id: Arc<str>,
    /// The channels it was published to, in request order.
    pub channels: Vec<PublishedChannel>,
    /// This publish repeated an earlier one's idempotency key and was not delivered again;
    /// the rest of the receipt is the earlier publish's.
    pub duplicate: bool,
}

/// What a publish did on one channel.
#[derive(Debug, Clone)]
pub struct PublishedChannel {
    /// The channel.
    pub name: ChannelName,
    /// Its history position, when the channel keeps history.
    pub position: Option<Position>,
    /// Not delivered: same payload as the channel's previous publication within the
    /// dedupe window (`position` is that publication's).
    pub unchanged: bool,
}

impl Node {
    /// Check a publish request against the app's limits without publishing it; returns
    /// the validated channel names. A batch validates every event before publishing any.
    pub fn validate_publish(
        &self,
        app: &App,
        req: &PublishRequest,
    ) -> Result<Vec<ChannelName>, Refusal> {
        let limits = &app.settings.limits;
        if req.channels.is_empty() {
            return Err(Refusal::new(ErrorCode::InvalidRequest, "no channel given"));
        }
        if req.channels.len() > limits.max_channels_per_publish {
            return Err(Refusal::new(
                ErrorCode::TooManyChannels,
                format!(
                    "a publish may name at most {} channels",
                    limits.max_channels_per_publish
                ),
            ));
        }
        check_event_name(&req.event)?;
        check_payload(app, &req.data)?;
        let mut channels: Vec<ChannelName> = Vec::with_capacity(req.channels.len());
        for c in &req.channels {
            let channel = ChannelName::new(c).map_err(|e| {
                Refusal::new(
                    ErrorCode::InvalidChannel,
                    format!("{}: {e}", truncate(c, 64)),
                )
            })?;
            // A channel named twice is published to once: a subscriber gets one copy of a
            // message id, and a publish costs what the rate limit counts.
            if !channels.contains(&channel) {
                channels.push(channel);
            }
        }
        Ok(channels)
    }

    /// Publish one event to one or more channels of `app`, through the broker.
    pub async fn publish(&self, app: &App, req: PublishRequest) -> Result<PublishReceipt, Refusal> {
        let channels = self.validate_publish(app, &req)?;
        self.publish_validated(app, channels, req).await
    }

    /// Publish a request already checked by [`Node::validate_publish`], which returned
    /// `channels` (a batch validates every event first, then publishes each this way).
    pub async fn publish_validated(
        &self,
        app: &App,
        channels: Vec<ChannelName>,
        req: PublishRequest,
    ) -> Result<PublishReceipt, Refusal> {
        let id: Arc<str> = Arc::from(self.ids.next().as_str());
        let claim = match &req.idempotency_key {
            Some(key) => match self.claim_key(app, key, &id) {
                Ok(claim) => Some(claim),
                Err(earlier) => return Ok(earlier),
            },
            None => None,
        };
        let result = self.publish_channels(app, &id, channels, &req).await;
        if let (Some(claim), Ok(receipt)) = (claim, &result) {
            claim.complete(receipt);
        }
        result
    }

    /// Claim an idempotency key for a publish with message id `id`; a repeat gets the
    /// receipt to answer with instead.
    fn claim_key<'a>(
        &'a self,
        app: &'a App,
        key: &'a str,
        id: &Arc<str>,
    ) -> Result<KeyClaim<'a>, PublishReceipt> {
        let claim = self.idempotency.claim(
            &app.id,
            key,
            id,
            app.settings.idempotency_window,
            app.settings.limits.max_idempotency_keys,
        );
        match claim {
            Claim::New => Ok(KeyClaim {
                node: self,
                app,
                key: Some(key),
            }),
            Claim::Duplicate(receipt) => {
                Metrics::inc(&self.metrics.publishes_deduplicated);
                Err(PublishReceipt {
                    duplicate: true,
                    ..(*receipt).clone()
                })
            }
            Claim::InFlight(first) => {
                Metrics::inc(&self.metrics.publishes_deduplicated);
                Err(PublishReceipt {
                    id: first,
                    channels: Vec::new(),
                    duplicate: true,
                })
            }
        }
    }

    async fn publish_channels(
        &self,
        app: &App,
        id: &Arc<str>,
        channels: Vec<ChannelName>,
        req: &PublishRequest,
    ) -> Result<PublishReceipt, Refusal> {
        let event: Arc<str> = Arc::from(req.event.as_str());
        let timestamp = unix_ms();
        let limits = &app.settings.limits;
        let mut published = Vec::with_capacity(channels.len());
        for channel in channels {
            let payload = Payload::Event {
                event: event.clone(),
                data: req.data.clone(),
                user_id: None,
            };
            let publication = Publication::new(
                app.id.clone(),
                channel.clone(),
                id.clone(),
                payload,
                req.exclude,
                timestamp,
            );
            let policy = app.history_policy(channel.as_str());
            let (position, unchanged) = match self.publish_publication(publication, policy).await? {
                Published::Sent(publication) => {
                    let position = publication.position.clone();
                    if channel.kind().cache {
                        self.cache
                            .store(publication, limits.cache_ttl, limits.max_cached_channels);
                    }
                    (position, false)
                }
                Published::Unchanged(position) => {
                    Metrics::inc(&self.metrics.publishes_unchanged);
                    (Some(position), true)
                }
            };
            published.push(PublishedChannel {
                name: channel,
                position,
                unchanged,
            });
        }
        Ok(PublishReceipt {
            id: id.clone(),
            channels: published,
            duplicate: false,
        })
    }
}

/// A claimed idempotency key. Completed with the receipt when the publish succeeds; released
/// on drop otherwise (the publish failed, or its future was cancelled), so a retry can go
/// through.
struct KeyClaim<'a> {
    /// The node whose key store holds the claim.
    node: &'a Node,
    /// The app the key belongs to.
    app: &'a App,
    /// The key, until it is completed.
    key: Option<&'a str>,
}

impl KeyClaim<'_> {
    /// Keep the key, with the receipt a repeat is answered with.
    fn complete(mut self, receipt: &PublishReceipt) {
        if let Some(key) = self.key.take() {
            self.node
                .idempotency
                .complete(&self.app.id, key, Arc::new(receipt.clone()));
        }
    }
}

impl Drop for KeyClaim<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.node.idempotency.release(&self.app.id, key);
        }
    }
}
