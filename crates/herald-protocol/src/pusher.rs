//! The Pusher Channels protocol, version 7: what pusher-js, Laravel Echo and every Pusher
//! client library speak (`docs/pusher-compatibility.md`).
//!
//! Every message is a JSON object with an `event` name. Server messages carry their `data`
//! as a **string** (the "double encoding" of the protocol): `pusher:` events hold a
//! JSON-encoded object in that string, channel events hold whatever string the publisher
//! sent. Client messages may send `data` as an object or as a string.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::codes::CloseCode;
use crate::json;

/// The protocol versions accepted (pusher-js 8 speaks 7; 5 and 6 differ only in legacy
/// error reporting, which this server does not need).
pub const SUPPORTED_VERSIONS: std::ops::RangeInclusive<u32> = 5..=7;

/// Why a connection URL's `protocol` parameter is refused, with the Pusher close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionError {
    /// 4008: no `protocol` parameter.
    Missing,
    /// 4006: not an integer.
    Malformed,
    /// 4007: a version this server does not speak.
    Unsupported,
}

impl VersionError {
    /// The Pusher close code.
    pub const fn close_code(self) -> u16 {
        match self {
            Self::Missing => 4008,
            Self::Malformed => 4006,
            Self::Unsupported => 4007,
        }
    }

    /// The close reason.
    pub const fn reason(self) -> &'static str {
        match self {
            Self::Missing => "no protocol version supplied",
            Self::Malformed => "invalid version string format",
            Self::Unsupported => "unsupported protocol version",
        }
    }
}

/// Check the `protocol` query parameter of a connection URL.
pub fn check_version(protocol: Option<&str>) -> Result<u32, VersionError> {
    let text = protocol.ok_or(VersionError::Missing)?;
    let version: u32 = text.trim().parse().map_err(|_| VersionError::Malformed)?;
    if SUPPORTED_VERSIONS.contains(&version) {
        Ok(version)
    } else {
        Err(VersionError::Unsupported)
    }
}

/// The Pusher close code (and reason) for a catalogue close code: Pusher clients decide
/// whether to reconnect by these ranges (4000–4099 give up, 4100–4199 back off, 4200–4299
/// reconnect now), so each Herald code maps to the Pusher code with the same advice.
pub const fn close_code(code: CloseCode) -> (u16, &'static str) {
    match code {
        CloseCode::UnknownApp => (4001, "Application does not exist"),
        CloseCode::AppDisabled => (4003, "Application disabled"),
        CloseCode::BadRequest => (4007, "Unsupported protocol version or bad request"),
        CloseCode::Unauthorized | CloseCode::TokenExpired | CloseCode::OriginNotAllowed => {
            (4009, "Connection is unauthorized")
        }
        CloseCode::Terminated => (4009, "You got disconnected by the app."),
        CloseCode::OverCapacity => (4100, "Over capacity"),
        CloseCode::AppOverQuota => (4004, "Application is over connection quota"),
        CloseCode::SlowConsumer => (4100, "Slow consumer: messages were not read in time"),
        CloseCode::TooManyRequests => (4100, "Too many messages, back off"),
        CloseCode::GoingAway => (4200, "Server going away, reconnect"),
        CloseCode::Reconnect => (4200, "Reconnect requested"),
        CloseCode::ActivityTimeout => (4201, "Pong reply not received"),
        CloseCode::IncompleteMessage => (4200, "Message not completed in time, reconnect"),
        other => (other.code(), other.reason()),
    }
}

/// A client message: its event, channel and raw data.
#[derive(Debug, Deserialize)]
pub struct ClientMessage<'a> {
    /// The event name (`pusher:subscribe`, `client-…`, …).
    #[serde(borrow)]
    pub event: Cow<'a, str>,
    /// The channel, for client events.
    #[serde(borrow, default)]
    pub channel: Option<Cow<'a, str>>,
    /// The data: an object, or a string holding JSON.
    #[serde(borrow, default)]
    pub data: Option<&'a RawValue>,
}

/// The data of `pusher:subscribe`.
#[derive(Debug, Deserialize)]
pub struct SubscribeData<'a> {
    /// The channel.
    #[serde(borrow)]
    pub channel: Cow<'a, str>,
    /// `key:signature` for private and presence channels.
    #[serde(borrow, default)]
    pub auth: Option<Cow<'a, str>>,
    /// For presence channels: the JSON string that was signed, with `user_id` and `user_info`.
    #[serde(borrow, default)]
    pub channel_data: Option<Cow<'a, str>>,
}

/// The data of `pusher:unsubscribe`.
#[derive(Debug, Deserialize)]
pub struct UnsubscribeData<'a> {
    /// The channel.
    #[serde(borrow)]
    pub channel: Cow<'a, str>,
}

/// The data of `pusher:signin`.
#[derive(Debug, Deserialize)]
pub struct SigninData<'a> {
    /// `key:signature` over `socket_id::user::user_data`.
    #[serde(borrow)]
    pub auth: Cow<'a, str>,
    /// The JSON string that was signed; must hold a string `id`.
    #[serde(borrow)]
    pub user_data: Cow<'a, str>,
}

/// Parse a client message's envelope.
pub fn parse_client_message(text: &[u8]) -> Result<ClientMessage<'_>, serde_json::Error> {
    serde_json::from_slice(text)
}

/// Parse `data` (an object) as `T`.
pub fn parse_data<'a, T: Deserialize<'a>>(data: Option<&'a RawValue>) -> Result<T, String> {
    let raw = data.ok_or("data is required")?;
    serde_json::from_str::<T>(raw.get()).map_err(|e| format!("invalid data: {e}"))
}

/// Write a server message: `{"event":…,"channel":…,"data":"…","user_id":…}`. `data_text`
/// is the text the `data` string holds (it is written as a JSON string literal); `None`
/// omits `data`.
pub fn encode(
    event: &str,
    channel: Option<&str>,
    data_text: Option<&str>,
    user_id: Option<&str>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(48 + event.len() + data_text.map_or(0, |d| d.len() + 8));
    out.extend_from_slice(b"{\"event\":");
    json::write_str(&mut out, event);
    if let Some(c) = channel {
        out.extend_from_slice(b",\"channel\":");
        json::write_str(&mut out, c);
    }
    if let Some(d) = data_text {
        out.extend_from_slice(b",\"data\":");
        json::write_str(&mut out, d);
    }
    if let Some(u) = user_id {
        out.extend_from_slice(b",\"user_id\":");
        json::write_str(&mut out, u);
    }
    out.push(b'}');
    out
}

/// Write a server message whose `data` is already a JSON string literal (a Pusher `data`
/// string as it travels, quotes and escapes included).
pub fn encode_with_data_literal(
    event: &str,
    channel: Option<&str>,
    data_literal: &[u8],
    user_id: Option<&str>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(48 + event.len() + data_literal.len());
    out.extend_from_slice(b"{\"event\":");
    json::write_str(&mut out, event);
    if let Some(c) = channel {
        out.extend_from_slice(b",\"channel\":");
        json::write_str(&mut out, c);
    }
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(data_literal);
    if let Some(u) = user_id {
        out.extend_from_slice(b",\"user_id\":");
        json::write_str(&mut out, u);
    }
    out.push(b'}');
    out
}

/// A channel name that addresses one user's connections (`#server-to-user-<id>`): the user
/// id, if `channel` is one.
pub fn server_to_user_id(channel: &str) -> Option<&str> {
    channel
        .strip_prefix("#server-to-user-")
        .filter(|id| !id.is_empty() && id.len() <= 200)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_map_to_close_codes() {
        assert_eq!(check_version(Some("7")), Ok(7));
        assert_eq!(check_version(None).unwrap_err().close_code(), 4008);
        assert_eq!(check_version(Some("seven")).unwrap_err().close_code(), 4006);
        assert_eq!(check_version(Some("4")).unwrap_err().close_code(), 4007);
        assert_eq!(check_version(Some("8")).unwrap_err().close_code(), 4007);
    }

    #[test]
    fn encodes_double_encoded_data() {
        let m = encode(
            "pusher:connection_established",
            None,
            Some(r#"{"socket_id":"1.2","activity_timeout":25}"#),
            None,
        );
        let v: serde_json::Value = serde_json::from_slice(&m).unwrap();
        assert_eq!(v["data"], r#"{"socket_id":"1.2","activity_timeout":25}"#);
        let m = encode("client-x", Some("presence-a"), Some("hi"), Some("u1"));
        assert_eq!(
            String::from_utf8(m).unwrap(),
            r#"{"event":"client-x","channel":"presence-a","data":"hi","user_id":"u1"}"#
        );
    }

    #[test]
    fn parses_client_messages() {
        let m = parse_client_message(
            br#"{"event":"pusher:subscribe","data":{"channel":"private-a","auth":"k:s"}}"#,
        )
        .unwrap();
        assert_eq!(m.event, "pusher:subscribe");
        let d: SubscribeData<'_> = parse_data(m.data).unwrap();
        assert_eq!(d.channel, "private-a");
        assert_eq!(d.auth.as_deref(), Some("k:s"));
        let m =
            parse_client_message(br#"{"event":"client-x","channel":"private-a","data":{"a":1}}"#)
                .unwrap();
        assert_eq!(m.data.unwrap().get(), r#"{"a":1}"#);
        assert_eq!(server_to_user_id("#server-to-user-42"), Some("42"));
        assert_eq!(server_to_user_id("#server-to-user-"), None);
        assert_eq!(server_to_user_id("news"), None);
    }
}
