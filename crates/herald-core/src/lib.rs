//! Herald's engine: everything between the bytes a transport receives and the bytes it
//! writes, with no I/O of its own.
//!
//! This crate never depends on HTTP, TLS or a concrete broker client, and never reads
//! files or the environment: the server crate hands it settings and backends.
//!
//! # Layout
//! - [`node`]: [`Node`], the composition root: apps, backends, metrics, the registry of
//!   connections, health and drain; `node/queries.rs` answers channel queries.
//! - [`cmd`]: one module per operation: connect, subscribe (steps that undo themselves),
//!   unsubscribe, client events, sign-in, publish, direct sends.
//! - [`session`]: [`Session`], one connection's state; protocol adapters in `session/`
//!   parse requests, call the operations and encode replies.
//! - [`hub`]: local subscriptions per app and the fan-out of a publication.
//! - [`outbound`]: [`SessionHandle`], a connection's bounded outbound queue.
//! - [`publication`]: [`Publication`] and [`DirectMessage`], encoded once per protocol.
//! - [`wire`]: the per-protocol encodings of server messages.
//! - [`broker`]: the [`Broker`] trait and its contract; [`broker::memory`] for one node.
//! - [`presence`]: the [`PresenceManager`] trait; [`presence::memory`] for one node.
//! - [`auth`]: token verification and channel authorisation; [`pusher_auth`]: Pusher
//!   signatures for channels and sign-in.
//! - [`webhook`]: webhook events and their debounce; [`cache`]: cache channels' last event.
//! - [`settings`]: per-app and per-node settings, with every default.
//! - [`heartbeat`]: pings idle connections and closes silent ones.
//! - [`registry`], [`metrics`], [`ratelimit`], [`pattern`], [`ids`], [`clock`], [`secret`],
//!   [`raw_json`], [`refusal`]: small supporting types.

#![forbid(unsafe_code)]

pub mod app;
pub mod auth;
pub mod backend;
pub mod broker;
pub mod cache;
pub mod clock;
pub mod cmd;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod heartbeat;
pub mod history;
pub mod hub;
pub mod idempotency;
pub mod ids;
pub mod metrics;
pub mod node;
pub mod occupancy;
pub mod outbound;
pub mod pattern;
pub mod presence;
pub mod publication;
pub mod pusher_auth;
pub mod ratelimit;
pub mod raw_json;
pub mod recovery;
pub mod refusal;
pub mod registry;
pub mod secret;
pub mod session;
pub mod settings;
pub mod shard;
pub mod webhook;
pub mod wire;

pub use app::App;
pub use broker::Broker;
pub use cmd::connect::{ConnectRefusal, ConnectRequest};
pub use cmd::publish::{PublishReceipt, PublishRequest};
pub use metrics::Metrics;
pub use node::Node;
pub use outbound::{OutItem, PushOutcome, SessionHandle};
pub use presence::PresenceManager;
pub use publication::{DirectMessage, EventData, Publication};
pub use raw_json::RawJson;
pub use refusal::Refusal;
pub use secret::Secret;
pub use session::Session;
pub use settings::{AppSettings, NodeLimits, WebhookSettings};
pub use wire::{Protocol, Transport};
