//! Encodings of server messages, one submodule per client protocol.
//!
//! The hub and the sessions never format bytes themselves: they ask the connection's
//! [`Protocol`] for the encoding of a publication, a direct message or a reply. Adding a
//! protocol (Pusher, in a later change) means adding a variant and a submodule here.

pub mod native;

/// A client protocol: decides how a connection's messages are encoded and parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Herald's own JSON protocol (`docs/protocol.md`).
    Native,
}

impl Protocol {
    /// A short name for logs and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Native => "native",
        }
    }
}
