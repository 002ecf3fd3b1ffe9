//! Herald's cluster backends: the core's [`Broker`](herald_core::Broker),
//! [`HistoryStore`](herald_core::history::HistoryStore),
//! [`PresenceManager`](herald_core::PresenceManager) and
//! [`Occupancy`](herald_core::occupancy::Occupancy) traits implemented on real distributed
//! engines, so several Herald nodes behind a load balancer act as one server; and the
//! Laravel Redis ingest.
//!
//! - [`nats`]: core NATS fan-out, with history, presence and occupancy on Redis.
//! - [`amqp`]: RabbitMQ topic-exchange fan-out, with the same Redis state.
//! - [`postgres`]: PostgreSQL `LISTEN`/`NOTIFY` fan-out (low volume), with the same Redis state.
//! - [`redis`]: everything on one Redis: pub/sub fan-out, history with atomic Lua
//!   append-and-publish, presence and occupancy with per-node heartbeats.
//! - [`disk`]: durable history for a single node, on SQLite.
//!
//! Nothing here talks to clients: this crate depends on the core, never the other way.
//! Every backend passes the core's conformance suites (`tests/conformance.rs`).

#![forbid(unsafe_code)]

pub mod amqp;
pub mod backoff;
pub mod disk;
pub mod envelope;
pub mod ingest;
pub mod nats;
pub mod postgres;
pub mod redis;
mod relay;
mod shards;

pub use relay::Paired;
