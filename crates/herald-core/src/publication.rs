//! [`Publication`]: one message on one channel, as it travels from a publisher through the
//! broker to every subscriber; and [`DirectMessage`], one message to a user or a socket.
//!
//! A publication is encoded at most once per protocol, lazily, by whichever fan-out needs
//! that encoding first; the bytes are then shared by every subscriber on this node.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use herald_protocol::{ChannelName, SocketId};
use tokio::time::Instant;

use crate::outbound::SessionHandle;
use crate::raw_json::RawJson;
use crate::wire::{self, Protocol};

/// A presence member: a user id and its public info.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The user id.
    pub user_id: Arc<str>,
    /// Public info (JSON), `null` if none.
    pub info: RawJson,
}

/// An event's data, as the publisher gave it.
///
/// The two protocols disagree on what `data` is: a JSON value in the native protocol, a
/// string in Pusher's. Keeping the publisher's form lets each protocol get back exactly what
/// was sent in that protocol, and gives the natural translation across:
/// - native clients receive a [`EventData::Text`] that holds JSON as that JSON (what Laravel
///   broadcasts arrives as an object), and any other text as a JSON string;
/// - Pusher clients receive a [`EventData::Text`] unchanged, a JSON string value as that
///   string, and any other JSON value as its JSON text in a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventData {
    /// A JSON value: native API publishes, client events.
    Json(RawJson),
    /// A string: Pusher API publishes (its `data` is always a string).
    Text(Arc<str>),
}

impl EventData {
    /// Size of the data, in bytes (the measure the payload limit applies to).
    pub fn len(&self) -> usize {
        match self {
            Self::Json(j) => j.len(),
            Self::Text(t) => t.len(),
        }
    }

    /// Whether the data is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The data as native-protocol JSON text.
    pub fn native_json(&self) -> Cow<'_, [u8]> {
        match self {
            Self::Json(j) => Cow::Borrowed(j.as_bytes()),
            Self::Text(t) => {
                if herald_protocol::json::is_valid(t.as_bytes()) {
                    Cow::Borrowed(t.as_bytes())
                } else {
                    Cow::Owned(RawJson::string(t).as_bytes().to_vec())
                }
            }
        }
    }

    /// The data as a Pusher `data` value: a JSON string literal (quotes included).
    pub fn pusher_literal(&self) -> Cow<'_, [u8]> {
        match self {
            Self::Text(t) => Cow::Owned(RawJson::string(t).as_bytes().to_vec()),
            Self::Json(j) => {
                if j.as_bytes().first() == Some(&b'"') {
                    Cow::Borrowed(j.as_bytes())
                } else {
                    Cow::Owned(RawJson::string(j.as_str()).as_bytes().to_vec())
                }
            }
        }
    }
}

/// What a publication carries.
#[derive(Debug, Clone)]
pub enum Payload {
    /// An event: from the publish API, or a client event.
    Event {
        /// The event name.
        event: Arc<str>,
        /// The event data.
        data: EventData,
        /// For client events: the sending user, when known.
        user_id: Option<Arc<str>>,
    },
    /// A user's first connection joined a presence channel.
    Joined(Member),
    /// A user's last connection left a presence channel.
    Left {
        /// The user who left.
        user_id: Arc<str>,
    },
    /// The channel's subscriber count changed (Pusher `pusher_internal:subscription_count`;
    /// native clients do not receive it).
    SubscriptionCount(usize),
}

/// A channel's history position of a publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// Offset in the channel's stream (from 1).
    pub offset: u64,
    /// The stream's epoch.
    pub epoch: Arc<str>,
}

/// One message on one channel.
#[derive(Debug)]
pub struct Publication {
    /// The app the channel belongs to.
    pub app_id: Arc<str>,
    /// The channel.
    pub channel: ChannelName,
    /// The message id (shared by the channels of one multi-channel publish).
    pub id: Arc<str>,
    /// What it carries.
    pub payload: Payload,
    /// A connection that must not receive it (the publisher's own, usually).
    pub exclude: Option<SocketId>,
    /// Milliseconds since the Unix epoch when it was published.
    pub timestamp_ms: u64,
    /// When it entered this node, for the publish-to-write latency histogram.
    pub received_at: Instant,
    /// Its place in the channel history, when the channel keeps history.
    pub position: Option<Position>,
    /// The native-protocol encoding, made on first use (`None`: not for native clients).
    native: OnceLock<Option<Bytes>>,
    /// The Pusher-protocol encoding, made on first use.
    pusher: OnceLock<Option<Bytes>>,
    /// The native encoding compressed with permessage-deflate, made when the first
    /// compressing subscriber needs it and shared by all of them.
    native_deflated: OnceLock<Bytes>,
    /// The Pusher encoding, compressed likewise.
    pusher_deflated: OnceLock<Bytes>,
}

impl Publication {
    /// A publication with no history position.
    pub fn new(
        app_id: Arc<str>,
        channel: ChannelName,
        id: Arc<str>,
        payload: Payload,
        exclude: Option<SocketId>,
        timestamp_ms: u64,
    ) -> Self {
        Self {
            app_id,
            channel,
            id,
            payload,
            exclude,
            timestamp_ms,
            received_at: Instant::now(),
            position: None,
            native: OnceLock::new(),
            pusher: OnceLock::new(),
            native_deflated: OnceLock::new(),
            pusher_deflated: OnceLock::new(),
        }
    }

    /// The encoded bytes for `protocol`, encoding on first use; `None` when the payload is
    /// not delivered to clients of that protocol.
    pub fn encoded(&self, protocol: Protocol) -> Option<&Bytes> {
        match protocol {
            Protocol::Native => self
                .native
                .get_or_init(|| wire::native::encode_publication(self))
                .as_ref(),
            Protocol::Pusher => self
                .pusher
                .get_or_init(|| wire::pusher::encode_publication(self))
                .as_ref(),
        }
    }

    /// The bytes `handle` gets, and whether they are compressed: compressed when its
    /// connection negotiated permessage-deflate and the encoding reaches its threshold.
    /// Either way the bytes are made once per protocol and shared. `None` when the payload
    /// is not delivered to clients of that protocol.
    pub fn frame_for(&self, handle: &SessionHandle) -> Option<(Bytes, bool)> {
        let plain = self.encoded(handle.protocol)?;
        Some(deflated_if(
            handle,
            plain,
            match handle.protocol {
                Protocol::Native => &self.native_deflated,
                Protocol::Pusher => &self.pusher_deflated,
            },
        ))
    }
}

/// `plain`, or its compressed form (made once in `cache`), as `handle` takes it.
fn deflated_if(handle: &SessionHandle, plain: &Bytes, cache: &OnceLock<Bytes>) -> (Bytes, bool) {
    if handle.compresses(plain.len()) {
        let compressed = cache.get_or_init(|| herald_protocol::deflate::compress(plain));
        (compressed.clone(), true)
    } else {
        (plain.clone(), false)
    }
}

/// A message to one user (all their connections) or one connection, not on a channel.
#[derive(Debug)]
pub struct DirectMessage {
    /// The message id.
    pub id: Arc<str>,
    /// The event name.
    pub event: Arc<str>,
    /// The data.
    pub data: EventData,
    /// The user it is addressed to, when sent to a user (Pusher clients receive it on
    /// their `#server-to-user-<id>` channel).
    pub user: Option<Arc<str>>,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// When it entered this node.
    pub received_at: Instant,
    /// The native encoding, made on first use.
    native: OnceLock<Bytes>,
    /// The Pusher encoding, made on first use.
    pusher: OnceLock<Bytes>,
    /// The native encoding compressed, made on first use by a compressing connection.
    native_deflated: OnceLock<Bytes>,
    /// The Pusher encoding compressed likewise.
    pusher_deflated: OnceLock<Bytes>,
}

impl DirectMessage {
    /// A direct message created now.
    pub fn new(
        id: Arc<str>,
        event: Arc<str>,
        data: EventData,
        user: Option<Arc<str>>,
        timestamp_ms: u64,
    ) -> Self {
        Self {
            id,
            event,
            data,
            user,
            timestamp_ms,
            received_at: Instant::now(),
            native: OnceLock::new(),
            pusher: OnceLock::new(),
            native_deflated: OnceLock::new(),
            pusher_deflated: OnceLock::new(),
        }
    }

    /// The bytes `handle` gets, and whether they are compressed (see
    /// [`Publication::frame_for`]).
    pub fn frame_for(&self, handle: &SessionHandle) -> (Bytes, bool) {
        let plain = self.encoded(handle.protocol);
        deflated_if(
            handle,
            plain,
            match handle.protocol {
                Protocol::Native => &self.native_deflated,
                Protocol::Pusher => &self.pusher_deflated,
            },
        )
    }

    /// The encoded bytes for `protocol`.
    pub fn encoded(&self, protocol: Protocol) -> &Bytes {
        match protocol {
            Protocol::Native => self
                .native
                .get_or_init(|| wire::native::encode_direct(self)),
            Protocol::Pusher => self
                .pusher
                .get_or_init(|| wire::pusher::encode_direct(self)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_translates_between_protocols() {
        let json = EventData::Json(RawJson::parse(Bytes::from_static(br#"{"a":1}"#)).unwrap());
        assert_eq!(&*json.native_json(), br#"{"a":1}"#);
        assert_eq!(&*json.pusher_literal(), br#""{\"a\":1}""#);
        let json_string = EventData::Json(RawJson::string("hi"));
        assert_eq!(&*json_string.pusher_literal(), br#""hi""#);
        let text_json = EventData::Text(Arc::from(r#"{"b":2}"#));
        assert_eq!(&*text_json.native_json(), br#"{"b":2}"#);
        assert_eq!(&*text_json.pusher_literal(), br#""{\"b\":2}""#);
        let text_plain = EventData::Text(Arc::from("hello"));
        assert_eq!(&*text_plain.native_json(), br#""hello""#);
        assert_eq!(&*text_plain.pusher_literal(), br#""hello""#);
    }
}
