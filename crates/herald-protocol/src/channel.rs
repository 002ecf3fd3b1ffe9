//! Channel names and the kinds their prefixes select.
//!
//! A channel name is validated once, where it enters the server, and travels inward as a
//! [`ChannelName`]; nothing past that boundary re-checks it. The rules are Pusher's, so a
//! channel is valid for both protocols: 1 to [`ChannelName::MAX_LEN`] bytes from
//! `[-a-zA-Z0-9_=@,.;]`. A leading `#` is reserved for server-internal channels and rejected.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

/// A validated channel name. Cheap to clone (a reference-counted string).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

/// Why a string is not a valid channel name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvalidChannelName {
    /// The name is empty.
    Empty,
    /// The name is longer than [`ChannelName::MAX_LEN`] bytes.
    TooLong,
    /// The name holds a character outside the allowed set.
    BadCharacter(char),
}

impl fmt::Display for InvalidChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("channel name is empty"),
            Self::TooLong => write!(
                f,
                "channel name is longer than {} bytes",
                ChannelName::MAX_LEN
            ),
            Self::BadCharacter(c) => write!(
                f,
                "channel name contains {c:?}; allowed are letters, digits and -_=@,.;"
            ),
        }
    }
}

impl std::error::Error for InvalidChannelName {}

impl ChannelName {
    /// The longest accepted name, in bytes.
    pub const MAX_LEN: usize = 200;

    /// Validate `name` and wrap it.
    pub fn new(name: &str) -> Result<Self, InvalidChannelName> {
        Self::validate(name)?;
        Ok(Self(Arc::from(name)))
    }

    /// Check `name` without allocating.
    pub fn validate(name: &str) -> Result<(), InvalidChannelName> {
        if name.is_empty() {
            return Err(InvalidChannelName::Empty);
        }
        if name.len() > Self::MAX_LEN {
            return Err(InvalidChannelName::TooLong);
        }
        if let Some(bad) = name.chars().find(|c| !is_channel_char(*c)) {
            return Err(InvalidChannelName::BadCharacter(bad));
        }
        Ok(())
    }

    /// A server-internal channel name (such as Pusher's `#server-to-user-…`), which clients
    /// can never subscribe to by name. The caller guarantees the suffix is safe.
    pub fn internal(name: &str) -> Self {
        Self(Arc::from(name))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The kind selected by the name's prefix.
    pub fn kind(&self) -> ChannelKind {
        ChannelKind::of(&self.0)
    }
}

fn is_channel_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '=' | '@' | ',' | '.' | ';')
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Borrow<str> for ChannelName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for ChannelName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Who may subscribe to a channel, as selected by its name's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone connected to the app (no prefix).
    Public,
    /// Only connections the app authorises (`private-`).
    Private,
    /// Authorised connections, with end-to-end encrypted payloads the server never reads
    /// (`private-encrypted-`, a Pusher feature; treated as private by the native protocol).
    PrivateEncrypted,
    /// Authorised connections with a user identity, whose membership is tracked (`presence-`).
    Presence,
}

/// The kind of a channel: its access rule and whether it caches its last event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelKind {
    /// Who may subscribe.
    pub access: Access,
    /// Pusher `cache-` channels replay their last event to each new subscriber.
    pub cache: bool,
}

impl ChannelKind {
    /// Classify a channel name by prefix.
    pub fn of(name: &str) -> Self {
        // Longest prefixes first: `private-encrypted-cache-` also starts with `private-`.
        const TABLE: &[(&str, Access, bool)] = &[
            ("private-encrypted-cache-", Access::PrivateEncrypted, true),
            ("private-encrypted-", Access::PrivateEncrypted, false),
            ("private-cache-", Access::Private, true),
            ("private-", Access::Private, false),
            ("presence-cache-", Access::Presence, true),
            ("presence-", Access::Presence, false),
            ("cache-", Access::Public, true),
        ];
        for (prefix, access, cache) in TABLE {
            if name.starts_with(prefix) {
                return Self {
                    access: *access,
                    cache: *cache,
                };
            }
        }
        Self {
            access: Access::Public,
            cache: false,
        }
    }

    /// Whether subscribing needs authorisation.
    pub fn is_protected(self) -> bool {
        !matches!(self.access, Access::Public)
    }

    /// Whether the channel tracks presence.
    pub fn is_presence(self) -> bool {
        matches!(self.access, Access::Presence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_names() {
        assert!(ChannelName::new("chat.room-1_a=b@c,d;e").is_ok());
        assert_eq!(ChannelName::new(""), Err(InvalidChannelName::Empty));
        assert_eq!(
            ChannelName::new(&"a".repeat(201)),
            Err(InvalidChannelName::TooLong)
        );
        assert!(ChannelName::new(&"a".repeat(200)).is_ok());
        assert_eq!(
            ChannelName::new("#server-to-user-1"),
            Err(InvalidChannelName::BadCharacter('#'))
        );
        assert_eq!(
            ChannelName::new("caf\u{e9}"),
            Err(InvalidChannelName::BadCharacter('\u{e9}'))
        );
        assert!(ChannelName::new("a b").is_err());
    }

    #[test]
    fn classifies_prefixes() {
        let k = |n: &str| ChannelKind::of(n);
        assert_eq!(k("news").access, Access::Public);
        assert_eq!(k("private-x").access, Access::Private);
        assert_eq!(k("presence-x").access, Access::Presence);
        assert_eq!(k("private-encrypted-x").access, Access::PrivateEncrypted);
        assert!(k("private-encrypted-cache-x").cache);
        assert!(k("presence-cache-x").cache && k("presence-cache-x").is_presence());
        assert!(k("cache-x").cache && !k("cache-x").is_protected());
        assert!(!k("privatex").is_protected());
    }
}
