//! Herald's native JSON protocol.
//!
//! Every message is one JSON object in one WebSocket text frame (or one SSE event, or one
//! element of a long-poll response). `docs/protocol.md` is the prose version of this module.
//!
//! Client → server: [`ClientMessage`], parsed with [`parse_client_message`]. Its `type` is
//! `subscribe`, `unsubscribe`, `event` (a client event), `ping` or `pong`; an optional `ref`
//! (a string or number) is echoed in the reply.
//!
//! Server → client: an [`Envelope`] with `id`, `type`, `channel`, `event`, `data` and
//! `timestamp` always present (`null` where not applicable), plus `ref` on replies and
//! `user_id` on client events. Its `type` is one of [`MessageType`].

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::codes::ErrorCode;
use crate::json;

/// The `type` of a server message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    /// First message on every connection: socket id, user id and heartbeat settings.
    Connected,
    /// Reply to a `subscribe` request (`event`: `subscribed`).
    Subscribe,
    /// Reply to an `unsubscribe` request (`event`: `unsubscribed`).
    Unsubscribe,
    /// A publication on a channel, a client event, or a direct message (`channel`: null).
    Event,
    /// Presence changes: `event` is `sync` (the full member list), `joined` or `left`.
    Presence,
    /// An error; `event` is the error name and `data` holds `code` and `message`.
    Error,
    /// A server heartbeat; answer with `{"type":"pong"}`.
    Ping,
    /// The reply to a client `ping`.
    Pong,
    /// The reply to a `refresh` (`data.expires_at`); sent unasked (`event`: `required`)
    /// when the connection's token has expired and the app enforces expiry: send a
    /// `refresh` within `data.grace_seconds`, or the connection closes with 4005.
    Refresh,
}

impl MessageType {
    /// The string on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Connected => "connected",
            Self::Subscribe => "subscribe",
            Self::Unsubscribe => "unsubscribe",
            Self::Event => "event",
            Self::Presence => "presence",
            Self::Error => "error",
            Self::Ping => "ping",
            Self::Pong => "pong",
            Self::Refresh => "refresh",
        }
    }
}

/// A position in a channel's history stream: its offset and the stream's epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    /// The offset of the last publication seen (publications count from 1).
    pub offset: u64,
    /// The epoch of the stream the offset belongs to; a different epoch means a new stream.
    pub epoch: String,
}

/// One server message, written field by field by [`Envelope::encode`].
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    /// Unique message id (a publication id for publications).
    pub id: &'a str,
    /// The message type.
    pub kind: MessageType,
    /// The channel, if the message concerns one.
    pub channel: Option<&'a str>,
    /// The event name (or the sub-kind for non-event messages).
    pub event: Option<&'a str>,
    /// Raw JSON text of `data`, copied verbatim; `b"null"` when there is none.
    pub data: &'a [u8],
    /// Milliseconds since the Unix epoch when the message was created.
    pub timestamp: u64,
    /// Raw JSON text of the request's `ref`, on replies.
    pub reference: Option<&'a str>,
    /// For client events: the sender's user id, when known.
    pub user_id: Option<&'a str>,
    /// For publications on channels with history: their offset and the stream epoch.
    pub position: Option<(u64, &'a str)>,
}

impl<'a> Envelope<'a> {
    /// An envelope with no channel, event, data, ref or user.
    pub fn new(id: &'a str, kind: MessageType, timestamp: u64) -> Self {
        Self {
            id,
            kind,
            channel: None,
            event: None,
            data: b"null",
            timestamp,
            reference: None,
            user_id: None,
            position: None,
        }
    }

    /// Append the JSON object to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(96 + self.data.len());
        out.extend_from_slice(b"{\"id\":");
        json::write_str(out, self.id);
        out.extend_from_slice(b",\"type\":\"");
        out.extend_from_slice(self.kind.as_str().as_bytes());
        out.extend_from_slice(b"\",\"channel\":");
        json::write_opt_str(out, self.channel);
        out.extend_from_slice(b",\"event\":");
        json::write_opt_str(out, self.event);
        out.extend_from_slice(b",\"data\":");
        out.extend_from_slice(self.data);
        out.extend_from_slice(b",\"timestamp\":");
        json::write_u64(out, self.timestamp);
        if let Some(r) = self.reference {
            out.extend_from_slice(b",\"ref\":");
            out.extend_from_slice(r.as_bytes());
        }
        if let Some(u) = self.user_id {
            out.extend_from_slice(b",\"user_id\":");
            json::write_str(out, u);
        }
        if let Some((offset, epoch)) = self.position {
            out.extend_from_slice(b",\"offset\":");
            json::write_u64(out, offset);
            out.extend_from_slice(b",\"epoch\":");
            json::write_str(out, epoch);
        }
        out.push(b'}');
    }

    /// The encoded JSON as a fresh vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

/// `data` of the `connected` message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectedData {
    /// This connection's id, to pass to the API for exclusion or direct sends.
    pub socket_id: String,
    /// The user id from the connection token, if one was given.
    pub user_id: Option<String>,
    /// Seconds without any message after which the server closes the connection (4201).
    pub activity_timeout: u64,
    /// Seconds between server pings on an idle connection; a client that sees nothing for
    /// longer than `ping_interval` plus a margin should treat the connection as dead.
    pub ping_interval: u64,
    /// On the SSE and long-polling transports: the session id to POST commands with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

/// `data` of an `error` message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorData {
    /// The numeric code from the catalogue.
    pub code: u16,
    /// A human-readable explanation.
    pub message: String,
}

impl ErrorData {
    /// Error data for `code` with `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code: code.code(),
            message: message.into(),
        }
    }
}

/// One presence member: a user id and the info the token carried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceMember {
    /// The member's user id.
    pub user_id: String,
    /// The member's public info (any JSON), or null.
    #[serde(default)]
    pub info: serde_json::Value,
}

/// `data` of a presence `sync` message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceSync {
    /// Every member currently present, each user once.
    pub members: Vec<PresenceMember>,
    /// The number of members.
    pub count: usize,
}

/// A parsed client message.
#[derive(Debug)]
pub struct ClientMessage<'a> {
    /// The request's `ref`, as raw JSON text, to echo in the reply.
    pub reference: Option<&'a str>,
    /// What the client asks for.
    pub request: Request<'a>,
}

/// The request a client message carries.
#[derive(Debug)]
pub enum Request<'a> {
    /// Subscribe to `channel`, with an optional subscription token and recovery position.
    Subscribe {
        /// The channel name, not yet validated.
        channel: Cow<'a, str>,
        /// A per-channel subscription token, for protected channels.
        token: Option<Cow<'a, str>>,
        /// Resume from this position (recovery), if the client has one.
        since: Option<StreamPosition>,
    },
    /// Unsubscribe from `channel`.
    Unsubscribe {
        /// The channel name.
        channel: Cow<'a, str>,
    },
    /// Send a client event to the other subscribers of `channel`.
    Event {
        /// The channel name.
        channel: Cow<'a, str>,
        /// The event name; must start with `client-`.
        event: Cow<'a, str>,
        /// The payload, as raw JSON text.
        data: &'a RawValue,
    },
    /// A heartbeat; the server answers `pong`.
    Ping,
    /// The answer to a server `ping`.
    Pong,
    /// Replace the connection's token with `token` (same user), before or after it expires.
    Refresh {
        /// The new connection token.
        token: Cow<'a, str>,
    },
}

/// Why a client message was rejected, with the `ref` to echo if it could be read.
#[derive(Debug)]
pub struct RequestError<'a> {
    /// The catalogue code.
    pub code: ErrorCode,
    /// What exactly was wrong.
    pub message: String,
    /// The request's `ref`, if it was readable.
    pub reference: Option<&'a str>,
}

#[derive(Deserialize)]
struct RawMessage<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(rename = "ref", borrow, default)]
    reference: Option<&'a RawValue>,
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    event: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    token: Option<Cow<'a, str>>,
    #[serde(default)]
    since: Option<StreamPosition>,
}

#[derive(Deserialize)]
struct RefOnly<'a> {
    #[serde(rename = "ref", borrow, default)]
    reference: Option<&'a RawValue>,
}

/// The longest accepted `ref`, in bytes of JSON text.
pub const MAX_REF_LEN: usize = 66;

fn valid_ref(raw: &RawValue) -> Option<&str> {
    let text = raw.get();
    let first = text.as_bytes().first().copied()?;
    let scalar = first == b'"' || first == b'-' || first.is_ascii_digit();
    (scalar && text.len() <= MAX_REF_LEN).then_some(text)
}

/// Parse one client message.
pub fn parse_client_message(text: &[u8]) -> Result<ClientMessage<'_>, RequestError<'_>> {
    let err = |code, message: &str, reference| RequestError {
        code,
        message: message.to_owned(),
        reference,
    };
    let trimmed = text.trim_ascii_start();
    if trimmed.first() != Some(&b'{') {
        return Err(err(
            ErrorCode::InvalidJson,
            "message must be a JSON object",
            None,
        ));
    }
    let raw: RawMessage<'_> = match serde_json::from_slice(text) {
        Ok(raw) => raw,
        Err(e) if e.is_data() => {
            let reference = serde_json::from_slice::<RefOnly<'_>>(text)
                .ok()
                .and_then(|r| r.reference)
                .and_then(valid_ref);
            return Err(RequestError {
                code: ErrorCode::InvalidRequest,
                message: format!("invalid field: {e}"),
                reference,
            });
        }
        Err(e) => {
            return Err(RequestError {
                code: ErrorCode::InvalidJson,
                message: format!("invalid JSON: {e}"),
                reference: None,
            });
        }
    };
    let reference = match raw.reference {
        None => None,
        Some(r) => match valid_ref(r) {
            Some(r) => Some(r),
            None => {
                return Err(err(
                    ErrorCode::InvalidRequest,
                    "ref must be a string or number of at most 64 characters",
                    None,
                ));
            }
        },
    };
    let request = match raw.kind.as_deref() {
        Some("subscribe") => Request::Subscribe {
            channel: required(raw.channel, "channel", reference)?,
            token: raw.token,
            since: raw.since,
        },
        Some("unsubscribe") => Request::Unsubscribe {
            channel: required(raw.channel, "channel", reference)?,
        },
        Some("event") => Request::Event {
            channel: required(raw.channel, "channel", reference)?,
            event: required(raw.event, "event", reference)?,
            data: required(raw.data, "data", reference)?,
        },
        Some("ping") => Request::Ping,
        Some("pong") => Request::Pong,
        Some("refresh") => Request::Refresh {
            token: required(raw.token, "token", reference)?,
        },
        Some(other) => {
            return Err(RequestError {
                code: ErrorCode::UnknownType,
                message: format!("unknown message type {other:?}"),
                reference,
            });
        }
        None => {
            return Err(err(
                ErrorCode::UnknownType,
                "message type is required",
                reference,
            ));
        }
    };
    Ok(ClientMessage { reference, request })
}

fn required<'a, T>(
    value: Option<T>,
    field: &str,
    reference: Option<&'a str>,
) -> Result<T, RequestError<'a>> {
    value.ok_or_else(|| RequestError {
        code: ErrorCode::InvalidRequest,
        message: format!("{field} is required"),
        reference,
    })
}

/// How an encoded server message changes what a client knows of its channel streams. Used
/// by transports that must tell the client where it is (SSE event ids).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamChange {
    /// The client is now at this position of the channel: a publication on a channel with
    /// history (`offset`, `epoch`), or a `subscribed` reply on such a channel (its `data`).
    Position(String, StreamPosition),
    /// The client left the channel (an `unsubscribed` reply): forget its position.
    Left(String),
}

/// What an encoded server message changes (see [`StreamChange`]), if anything.
pub fn stream_change(bytes: &[u8]) -> Option<StreamChange> {
    #[derive(Deserialize)]
    struct Peek<'a> {
        #[serde(rename = "type", borrow)]
        kind: Cow<'a, str>,
        #[serde(borrow, default)]
        channel: Option<Cow<'a, str>>,
        #[serde(default)]
        offset: Option<u64>,
        #[serde(borrow, default)]
        epoch: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        data: Option<&'a RawValue>,
    }
    #[derive(Deserialize)]
    struct Subscribed {
        offset: Option<u64>,
        epoch: Option<String>,
    }
    let peek: Peek<'_> = serde_json::from_slice(bytes).ok()?;
    let channel = peek.channel?.into_owned();
    match (peek.kind.as_ref(), peek.offset, peek.epoch) {
        ("event", Some(offset), Some(epoch)) => Some(StreamChange::Position(
            channel,
            StreamPosition {
                offset,
                epoch: epoch.into_owned(),
            },
        )),
        ("subscribe", _, _) => {
            let data: Subscribed = serde_json::from_str(peek.data?.get()).ok()?;
            Some(StreamChange::Position(
                channel,
                StreamPosition {
                    offset: data.offset?,
                    epoch: data.epoch?,
                },
            ))
        }
        ("unsubscribe", _, _) => Some(StreamChange::Left(channel)),
        _ => None,
    }
}

/// A server message as a client sees it, for clients written in Rust (tests, the bench tool).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ServerMessage {
    /// Unique message id.
    pub id: String,
    /// The message type, as a string.
    #[serde(rename = "type")]
    pub kind: String,
    /// The channel, if any.
    pub channel: Option<String>,
    /// The event, if any.
    pub event: Option<String>,
    /// The payload.
    pub data: serde_json::Value,
    /// Milliseconds since the Unix epoch.
    pub timestamp: u64,
    /// The echoed `ref`, on replies.
    #[serde(rename = "ref", default)]
    pub reference: Option<serde_json::Value>,
    /// The sender of a client event, when known.
    #[serde(default)]
    pub user_id: Option<String>,
    /// The publication's offset in the channel history, if the channel keeps history.
    #[serde(default)]
    pub offset: Option<u64>,
    /// The epoch of the channel history stream.
    #[serde(default)]
    pub epoch: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_changes_are_read_from_publications_and_subscription_replies() {
        let position = |bytes: Vec<u8>| match stream_change(&bytes) {
            Some(StreamChange::Position(channel, pos)) => Some((channel, pos)),
            _ => None,
        };
        let mut env = Envelope::new("1", MessageType::Event, 5);
        env.channel = Some("feed");
        env.event = Some("e");
        env.data = br#"{"x":1}"#;
        env.position = Some((7, "ep"));
        let (channel, pos) = position(env.to_vec()).unwrap();
        assert_eq!(
            (channel.as_str(), pos.offset, pos.epoch.as_str()),
            ("feed", 7, "ep")
        );
        let mut reply = Envelope::new("2", MessageType::Subscribe, 5);
        reply.channel = Some("feed");
        reply.data = br#"{"offset":3,"epoch":"e2"}"#;
        assert_eq!(position(reply.to_vec()).unwrap().1.offset, 3);
        reply.data = b"{}";
        assert!(stream_change(&reply.to_vec()).is_none());
        env.position = None;
        assert!(stream_change(&env.to_vec()).is_none());
        let mut left = Envelope::new("3", MessageType::Unsubscribe, 5);
        left.channel = Some("feed");
        left.data = b"{}";
        assert_eq!(
            stream_change(&left.to_vec()),
            Some(StreamChange::Left("feed".into()))
        );
    }

    #[test]
    fn envelope_is_valid_json_with_every_field() {
        let mut env = Envelope::new("m1", MessageType::Event, 1_700_000_000_000);
        env.channel = Some("news");
        env.event = Some("héllo \"quoted\"");
        env.data = r#"{"a":[1,2,"ü"]}"#.as_bytes();
        env.reference = Some("\"r1\"");
        env.user_id = Some("u1");
        env.position = Some((7, "ep"));
        let bytes = env.to_vec();
        let parsed: ServerMessage = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(parsed.kind, "event");
        assert_eq!(parsed.event.as_deref(), Some("héllo \"quoted\""));
        assert_eq!(parsed.data, serde_json::json!({"a":[1,2,"ü"]}));
        assert_eq!(parsed.reference, Some(serde_json::json!("r1")));
        assert_eq!(parsed.offset, Some(7));
        let bare = Envelope::new("m2", MessageType::Ping, 1).to_vec();
        assert_eq!(
            String::from_utf8(bare).unwrap(),
            r#"{"id":"m2","type":"ping","channel":null,"event":null,"data":null,"timestamp":1}"#
        );
    }

    #[test]
    fn parses_requests() {
        let m = parse_client_message(br#"{"type":"subscribe","channel":"news","ref":7}"#).unwrap();
        assert_eq!(m.reference, Some("7"));
        assert!(
            matches!(m.request, Request::Subscribe { ref channel, token: None, since: None } if channel == "news")
        );
        let m = parse_client_message(
            br#"{"type":"event","channel":"private-a","event":"client-x","data":{"k":"v"}}"#,
        )
        .unwrap();
        assert!(matches!(m.request, Request::Event { data, .. } if data.get() == r#"{"k":"v"}"#));
        let m = parse_client_message(
            br#"{"type":"subscribe","channel":"c","since":{"offset":3,"epoch":"e"}}"#,
        )
        .unwrap();
        assert!(matches!(
            m.request,
            Request::Subscribe {
                since: Some(StreamPosition { offset: 3, .. }),
                ..
            }
        ));
        // Escaped strings are decoded.
        let m = parse_client_message(br#"{"type":"unsubscribe","channel":"a\u0062"}"#).unwrap();
        assert!(matches!(m.request, Request::Unsubscribe { ref channel } if channel == "ab"));
    }

    #[test]
    fn rejects_bad_requests_with_codes() {
        let code = |t: &[u8]| parse_client_message(t).unwrap_err().code;
        assert_eq!(code(b"not json"), ErrorCode::InvalidJson);
        assert_eq!(code(b"[1]"), ErrorCode::InvalidJson);
        assert_eq!(code(b"{\"type\":"), ErrorCode::InvalidJson);
        assert_eq!(code(br#"{"channel":"x"}"#), ErrorCode::UnknownType);
        assert_eq!(code(br#"{"type":"dance"}"#), ErrorCode::UnknownType);
        assert_eq!(code(br#"{"type":"subscribe"}"#), ErrorCode::InvalidRequest);
        assert_eq!(
            code(br#"{"type":"subscribe","channel":5}"#),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            code(br#"{"type":"ping","ref":{"a":1}}"#),
            ErrorCode::InvalidRequest
        );
        let e = parse_client_message(br#"{"type":"subscribe","channel":5,"ref":"x"}"#).unwrap_err();
        assert_eq!(e.reference, Some("\"x\""));
        let e = parse_client_message(br#"{"type":"nope","ref":"y"}"#).unwrap_err();
        assert_eq!(e.reference, Some("\"y\""));
    }
}
