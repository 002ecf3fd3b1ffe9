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
