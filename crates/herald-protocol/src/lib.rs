//! Herald's wire contract.
//!
//! Everything a client or a server SDK can observe on the wire is defined here, and nothing
//! else: this crate does no I/O, owns no state and knows nothing about tokio, HTTP or brokers.
//! The load tool and the test suite use it to speak to the server, so a change to a public
//! item here is a protocol change and must be reflected in `docs/protocol.md`.
//!
//! # Layout
//! - [`codes`]: the one catalogue of error codes and WebSocket close codes, with their ranges
//!   and what a client should do when it sees one.
//! - [`channel`]: [`ChannelName`], its validation and the channel kinds its prefix selects.
//! - [`socket_id`]: [`SocketId`], the public identifier of one connection.
//! - [`native`]: Herald's own JSON protocol: client requests and server messages.
//! - [`pusher`]: the Pusher Channels protocol v7: client messages, server encoding, close codes.
//! - [`websocket`]: RFC 6455 framing (both roles) and the handshake accept key.
//! - [`deflate`]: permessage-deflate (RFC 7692): negotiation, compression, bounded inflation.
//! - [`json`]: small helpers to write JSON by hand on the hot path.
//! - [`token`]: the claims of connection and subscription tokens (JWT).

#![forbid(unsafe_code)]

pub mod channel;
pub mod codes;
pub mod deflate;
pub mod json;
pub mod native;
pub mod pusher;
pub mod socket_id;
pub mod token;
pub mod websocket;

pub use channel::{ChannelKind, ChannelName, InvalidChannelName};
pub use codes::{CloseCode, ErrorCode, PusherErrorCode, Reconnect};
pub use socket_id::SocketId;
