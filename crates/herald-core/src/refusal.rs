//! [`Refusal`]: why the core declined a request, as a catalogue code plus a message.
//!
//! Every entry point (transport, HTTP API) turns a `Refusal` into its own wire form: a native
//! `error` message, a Pusher `pusher:error`/`subscription_error`, or an HTTP error body with
//! the code's status. The message never contains secrets or token contents.

use std::borrow::Cow;
use std::fmt;

use herald_protocol::ErrorCode;

/// A declined request: the catalogue code and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The catalogue code; decides the HTTP status and the client's reaction.
    pub code: ErrorCode,
    /// What exactly was wrong, for the client and the logs.
    pub message: Cow<'static, str>,
}

impl Refusal {
    /// A refusal with a specific message.
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// A refusal with the code's catalogue description as its message.
    pub fn plain(code: ErrorCode) -> Self {
        Self::new(code, code.description())
    }
}

impl From<ErrorCode> for Refusal {
    fn from(code: ErrorCode) -> Self {
        Self::plain(code)
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Refusal {}
