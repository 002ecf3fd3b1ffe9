//! Integration tests: a real server on ephemeral ports, driven over real sockets by real
//! clients. One test binary (see matklad, "Delete Cargo Integration Tests").

mod harness;

mod acme;
mod admin;
mod admin_ui;
mod api;
mod auth;
mod backend_auth;
mod cli;
mod cluster;
mod cluster_faults;
mod compression;
mod disk_history;
mod handover;
mod hardening;
mod http_transports;
mod jwks;
mod limits;
mod messaging;
mod network;
mod paired_history;
mod presence;
mod pusher;
mod pusher_http;
mod recovery;
mod shutdown;
mod tls;
mod token_refresh;
