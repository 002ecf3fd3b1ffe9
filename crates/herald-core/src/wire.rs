//! Encodings of server messages, one submodule per client protocol.
//!
//! The hub and the sessions never format bytes themselves: they ask the connection's
//! [`Protocol`] for the encoding of a publication, a direct message or a reply.

pub mod native;
pub mod pusher;

use bytes::Bytes;
use herald_protocol::CloseCode;
use herald_protocol::native::{Envelope, MessageType};

use crate::clock::unix_ms;

/// A client protocol: decides how a connection's messages are encoded and parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Herald's own JSON protocol (`docs/protocol.md`).
    Native,
    /// The Pusher Channels protocol v7 (`docs/pusher-compatibility.md`).
    Pusher,
}

impl Protocol {
    /// A short name for logs and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Pusher => "pusher",
        }
    }

    /// The WebSocket close code and reason this protocol's clients get for `code`.
    pub const fn close_frame(self, code: CloseCode) -> (u16, &'static str) {
        match self {
            Self::Native => (code.code(), code.reason()),
            Self::Pusher => herald_protocol::pusher::close_code(code),
        }
    }
}

/// How a connection reaches the node, for metrics and the admin views.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// A WebSocket (`/ws/{key}` or `/app/{key}`).
    WebSocket,
    /// Server-Sent Events (native protocol).
    Sse,
    /// HTTP long-polling (native protocol).
    LongPoll,
    /// pusher-js's HTTP fallback (`xhr_streaming`, `xhr_polling`).
    Http,
}

impl Transport {
    /// A short name for metrics labels and JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Self::WebSocket => "websocket",
            Self::Sse => "sse",
            Self::LongPoll => "long_poll",
            Self::Http => "http",
        }
    }

    /// The combinations of protocol and transport that exist: what a per-transport count
    /// reports, one entry each.
    pub const COMBINATIONS: [(Protocol, Transport); 5] = [
        (Protocol::Native, Transport::WebSocket),
        (Protocol::Native, Transport::Sse),
        (Protocol::Native, Transport::LongPoll),
        (Protocol::Pusher, Transport::WebSocket),
        (Protocol::Pusher, Transport::Http),
    ];

    /// The index of `(protocol, transport)` in [`Transport::COMBINATIONS`] (a native
    /// connection over `Http`, which does not exist, counts as long-polling).
    pub const fn slot(protocol: Protocol, transport: Transport) -> usize {
        match (protocol, transport) {
            (Protocol::Native, Transport::WebSocket) => 0,
            (Protocol::Native, Transport::Sse) => 1,
            (Protocol::Native, Transport::LongPoll | Transport::Http) => 2,
            (Protocol::Pusher, Transport::WebSocket) => 3,
            (Protocol::Pusher, _) => 4,
        }
    }
}

/// The native hint that the connection's token expired at `expired_at` and must be
/// refreshed within `grace` seconds.
pub(crate) fn refresh_hint(id: &str, expired_at: u64, grace: u64) -> Bytes {
    let data = format!(r#"{{"expired_at":{expired_at},"grace_seconds":{grace}}}"#);
    let mut env = Envelope::new(id, MessageType::Refresh, unix_ms());
    env.event = Some("required");
    env.data = data.as_bytes();
    Bytes::from(env.to_vec())
}

/// The protocol-level heartbeat (`ping`) for a connection speaking `protocol`; `id` is a
/// fresh message id (the native protocol gives every message one).
pub(crate) fn ping(protocol: Protocol, id: &str) -> Bytes {
    match protocol {
        Protocol::Native => {
            let mut env = Envelope::new(id, MessageType::Ping, unix_ms());
            env.data = b"null";
            Bytes::from(env.to_vec())
        }
        Protocol::Pusher => Bytes::from_static(br#"{"event":"pusher:ping","data":"{}"}"#),
    }
}
