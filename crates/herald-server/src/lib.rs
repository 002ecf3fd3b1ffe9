//! The Herald server: transports, HTTP API, admin endpoints, TLS, configuration and the CLI,
//! around `herald_core`.
//!
//! The binary (`main.rs`) only calls [`cli::main`]. Everything else is reachable from tests:
//! build a [`config::Config`], bind [`server::Listeners`] on port 0, and run a
//! [`server::Server`] with your own shutdown future.
//!
//! # Layout
//! - [`config`]: the configuration tree, loading (file, env, flags) and validation.
//! - [`server`]: builds the node, runs the listeners, drains on shutdown.
//! - [`listener`]: accept loops and per-connection HTTP serving (plain and TLS).
//! - [`routes`]: the client-facing routes; [`api`]: the native HTTP API; [`pusher_api`]: the
//!   Pusher HTTP API; [`webhooks`]: webhook delivery.
//! - [`transport`]: WebSocket (and later SSE, long-polling): bytes to and from sessions.
//! - [`admin`]: `/health`, `/ready`, `/status`, `/metrics` on their own listener.
//! - [`tls`]: certificates and reloads; [`signals`]: SIGTERM/SIGINT/SIGHUP.
//! - [`http`], [`client_ip`], [`telemetry`]: HTTP helpers, client addresses, logging.
//! - [`cli`], [`commands`]: `herald serve | check-config | token | publish`.

#![forbid(unsafe_code)]
// Route helpers return `Result<_, Response>` so a handler can bail out with a ready error
// response. Those are cold paths; boxing the response would only add an allocation.
#![allow(clippy::result_large_err)]

pub mod acme;
pub mod admin;
pub mod api;
pub mod app_backend;
pub mod backend_http;
pub mod cli;
pub mod client_ip;
pub mod commands;
pub mod config;
pub mod handover;
pub mod history_api;
pub mod http;
pub mod jwks;
pub mod listener;
pub mod pusher_api;
pub mod routes;
pub mod server;
pub mod signals;
pub mod systemd;
pub mod telemetry;
pub mod tls;
pub mod transport;
pub mod webhooks;
