//! [`Publication`]: one message on one channel, as it travels from a publisher through the
//! broker to every subscriber; and [`DirectMessage`], one message to a user or a socket.
//!
//! A publication is encoded at most once per protocol, lazily, by whichever fan-out needs
//! that encoding first; the bytes are then shared by every subscriber on this node.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use herald_protocol::{ChannelName, SocketId};
use tokio::time::Instant;

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

/// What a publication carries.
#[derive(Debug, Clone)]
pub enum Payload {
    /// An event: from the publish API, or a client event.
    Event {
        /// The event name.
        event: Arc<str>,
        /// The event data (JSON).
        data: RawJson,
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
    /// The native-protocol encoding, made on first use.
    native: OnceLock<Bytes>,
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
        }
    }

    /// The encoded bytes for `protocol`, encoding on first use.
    pub fn encoded(&self, protocol: Protocol) -> &Bytes {
        match protocol {
            Protocol::Native => self
                .native
                .get_or_init(|| wire::native::encode_publication(self)),
        }
    }
}

/// A message to one user (all their connections) or one connection, not on a channel.
#[derive(Debug)]
pub struct DirectMessage {
    /// The message id.
    pub id: Arc<str>,
    /// The event name.
    pub event: Arc<str>,
    /// The data (JSON).
    pub data: RawJson,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// When it entered this node.
    pub received_at: Instant,
    /// The native encoding, made on first use.
    native: OnceLock<Bytes>,
}

impl DirectMessage {
    /// A direct message created now.
    pub fn new(id: Arc<str>, event: Arc<str>, data: RawJson, timestamp_ms: u64) -> Self {
        Self {
            id,
            event,
            data,
            timestamp_ms,
            received_at: Instant::now(),
            native: OnceLock::new(),
        }
    }

    /// The encoded bytes for `protocol`.
    pub fn encoded(&self, protocol: Protocol) -> &Bytes {
        match protocol {
            Protocol::Native => self
                .native
                .get_or_init(|| wire::native::encode_direct(self)),
        }
    }
}
