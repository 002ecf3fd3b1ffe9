//! [`RawJson`]: JSON text that has been validated once and is copied verbatim afterwards.

use std::fmt;

use bytes::Bytes;
use serde_json::value::RawValue;

/// Valid JSON text (one value), held as shared bytes.
///
/// A publication's `data` is parsed once where it enters the server (the API's body parse,
/// a client message parse) and then only ever copied, never re-serialised. Holding it as
/// `RawJson` puts that precondition in the type.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RawJson(Bytes);

impl RawJson {
    /// `null`.
    pub fn null() -> Self {
        Self(Bytes::from_static(b"null"))
    }

    /// Copy an already-parsed raw value.
    pub fn from_raw(raw: &RawValue) -> Self {
        Self(Bytes::copy_from_slice(raw.get().as_bytes()))
    }

    /// Serialise a value.
    pub fn from_value(value: &serde_json::Value) -> Self {
        Self(Bytes::from(
            serde_json::to_vec(value).expect("a Value always serialises"),
        ))
    }

    /// Validate `text` as one JSON value.
    pub fn parse(text: Bytes) -> Result<Self, serde_json::Error> {
        serde_json::from_slice::<serde::de::IgnoredAny>(&text)?;
        Ok(Self(text))
    }

    /// A JSON string literal holding `s`.
    pub fn string(s: &str) -> Self {
        let mut out = Vec::with_capacity(s.len() + 2);
        herald_protocol::json::write_str(&mut out, s);
        Self(Bytes::from(out))
    }

    /// The JSON text.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The JSON text as `&str` (JSON text is always UTF-8).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("null")
    }

    /// The shared bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the text is empty (never, for a valid value).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Parse into a `Value` (for the few cold paths that need structure).
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_slice(&self.0).unwrap_or(serde_json::Value::Null)
    }
}

impl fmt::Debug for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RawJson({})", self.as_str())
    }
}
