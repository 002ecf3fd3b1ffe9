//! The form publications and control messages take between nodes: compact JSON, the same
//! for every cluster backend.
//!
//! A publication's history position is not in the JSON: the Redis broker assigns it inside
//! Redis and puts it in front of the JSON (see [`crate::redis`]), so one encoding serves
//! every node and the stored history entry.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use herald_core::broker::Control;
use herald_core::publication::{DirectMessage, EventData, Member, Payload, Position, Publication};
use herald_core::raw_json::RawJson;
use herald_protocol::{ChannelName, CloseCode, SocketId};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Why bytes from the broker could not be decoded (another version, or not Herald's).
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// Not the JSON we expect.
    #[error("malformed envelope: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON of the right shape with a value we cannot accept.
    #[error("invalid envelope: {0}")]
    Invalid(&'static str),
}

#[derive(Serialize, Deserialize)]
struct WirePublication<'a> {
    /// App id.
    #[serde(borrow)]
    a: Cow<'a, str>,
    /// Channel.
    #[serde(borrow)]
    c: Cow<'a, str>,
    /// Message id.
    #[serde(borrow)]
    i: Cow<'a, str>,
    /// Timestamp, ms since the Unix epoch.
    t: u64,
    /// Excluded socket.
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    x: Option<Cow<'a, str>>,
    /// Payload kind: `e` event, `j` joined, `l` left, `n` subscription count.
    k: char,
    /// Event name.
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    e: Option<Cow<'a, str>>,
    /// JSON data (events) or member info (joined).
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    d: Option<&'a RawValue>,
    /// Text data (events published through the Pusher API).
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    s: Option<Cow<'a, str>>,
    /// User id (client events, joined, left).
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    u: Option<Cow<'a, str>>,
    /// Subscription count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    n: Option<usize>,
}

fn raw(json: &RawJson) -> &RawValue {
    // A RawJson always holds valid JSON text.
    serde_json::from_str(json.as_str()).unwrap_or_else(|_| null_raw())
}

fn null_raw() -> &'static RawValue {
    serde_json::from_str("null").expect("null is JSON")
}

fn data_fields(data: &EventData) -> (Option<&RawValue>, Option<Cow<'_, str>>) {
    match data {
        EventData::Json(j) => (Some(raw(j)), None),
        EventData::Text(t) => (None, Some(Cow::Borrowed(&**t))),
    }
}

/// Encode a publication (without its position).
pub fn encode_publication(p: &Publication) -> Vec<u8> {
    let mut w = WirePublication {
        a: Cow::Borrowed(&p.app_id),
        c: Cow::Borrowed(p.channel.as_str()),
        i: Cow::Borrowed(&p.id),
        t: p.timestamp_ms,
        x: p.exclude.map(|s| Cow::Owned(s.to_string())),
        k: 'e',
        e: None,
        d: None,
        s: None,
        u: None,
        n: None,
    };
    match &p.payload {
        Payload::Event {
            event,
            data,
            user_id,
        } => {
            w.e = Some(Cow::Borrowed(event));
            (w.d, w.s) = data_fields(data);
            w.u = user_id.as_deref().map(Cow::Borrowed);
        }
        Payload::Joined(member) => {
            w.k = 'j';
            w.u = Some(Cow::Borrowed(&member.user_id));
            w.d = Some(raw(&member.info));
        }
        Payload::Left { user_id } => {
            w.k = 'l';
            w.u = Some(Cow::Borrowed(user_id));
        }
        Payload::SubscriptionCount(n) => {
            w.k = 'n';
            w.n = Some(*n);
        }
    }
    serde_json::to_vec(&w).expect("a publication always serialises")
}

fn raw_json(v: Option<&RawValue>) -> Result<RawJson, EnvelopeError> {
    match v {
        Some(v) => Ok(RawJson::parse(Bytes::copy_from_slice(v.get().as_bytes()))?),
        None => Ok(RawJson::null()),
    }
}

fn event_data(d: Option<&RawValue>, s: Option<Cow<'_, str>>) -> Result<EventData, EnvelopeError> {
    match (d, s) {
        (_, Some(text)) => Ok(EventData::Text(Arc::from(&*text))),
        (Some(d), None) => Ok(EventData::Json(raw_json(Some(d))?)),
        (None, None) => Err(EnvelopeError::Invalid("event without data")),
    }
}

/// Split a publication frame after its `P`: `offset,epoch,body` (offset and epoch empty when
/// the publication has no position).
pub fn split_position(rest: &[u8]) -> Option<(Option<u64>, &str, &[u8])> {
    let c1 = rest.iter().position(|&b| b == b',')?;
    let c2 = c1 + 1 + rest[c1 + 1..].iter().position(|&b| b == b',')?;
    let offset = std::str::from_utf8(&rest[..c1]).ok()?;
    let epoch = std::str::from_utf8(&rest[c1 + 1..c2]).ok()?;
    let offset = if offset.is_empty() {
        None
    } else {
        Some(offset.parse().ok()?)
    };
    Some((offset, epoch, &rest[c2 + 1..]))
}

/// Decode a publication, giving it `position`.
pub fn decode_publication(
    bytes: &[u8],
    position: Option<Position>,
) -> Result<Publication, EnvelopeError> {
    let w: WirePublication<'_> = serde_json::from_slice(bytes)?;
    let channel = ChannelName::new(&w.c).map_err(|_| EnvelopeError::Invalid("channel name"))?;
    let exclude = match w.x {
        Some(x) => Some(
            x.parse::<SocketId>()
                .map_err(|_| EnvelopeError::Invalid("socket id"))?,
        ),
        None => None,
    };
    let user = |u: Option<Cow<'_, str>>| u.map(|u| Arc::<str>::from(&*u));
    let payload = match w.k {
        'e' => Payload::Event {
            event: Arc::from(&*w.e.ok_or(EnvelopeError::Invalid("event without name"))?),
            data: event_data(w.d, w.s)?,
            user_id: user(w.u),
        },
        'j' => Payload::Joined(Member {
            user_id: user(w.u).ok_or(EnvelopeError::Invalid("joined without user"))?,
            info: raw_json(w.d)?,
        }),
        'l' => Payload::Left {
            user_id: user(w.u).ok_or(EnvelopeError::Invalid("left without user"))?,
        },
        'n' => Payload::SubscriptionCount(w.n.unwrap_or(0)),
        _ => return Err(EnvelopeError::Invalid("payload kind")),
    };
    let mut p = Publication::new(
        Arc::from(&*w.a),
        channel,
        Arc::from(&*w.i),
        payload,
        exclude,
        w.t,
    );
    p.position = position;
    Ok(p)
}

#[derive(Serialize, Deserialize)]
struct WireDirect<'a> {
    #[serde(borrow)]
    i: Cow<'a, str>,
    #[serde(borrow)]
    e: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    d: Option<&'a RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    s: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    u: Option<Cow<'a, str>>,
    t: u64,
}

#[derive(Serialize, Deserialize)]
struct WireControl<'a> {
    /// `u` send to user, `s` send to socket, `d` disconnect user.
    k: char,
    #[serde(borrow)]
    a: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    u: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    s: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    code: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    m: Option<WireDirect<'a>>,
}

fn wire_direct(m: &DirectMessage) -> WireDirect<'_> {
    let (d, s) = data_fields(&m.data);
    WireDirect {
        i: Cow::Borrowed(&m.id),
        e: Cow::Borrowed(&m.event),
        d,
        s,
        u: m.user.as_deref().map(Cow::Borrowed),
        t: m.timestamp_ms,
    }
}

/// Encode a control message.
pub fn encode_control(c: &Control) -> Vec<u8> {
    let w = match c {
        Control::SendToUser {
            app_id,
            user_id,
            message,
        } => WireControl {
            k: 'u',
            a: Cow::Borrowed(app_id),
            u: Some(Cow::Borrowed(user_id)),
            s: None,
            code: None,
            m: Some(wire_direct(message)),
        },
        Control::SendToSocket {
            app_id,
            socket_id,
            message,
        } => WireControl {
            k: 's',
            a: Cow::Borrowed(app_id),
            u: None,
            s: Some(Cow::Owned(socket_id.to_string())),
            code: None,
            m: Some(wire_direct(message)),
        },
        Control::DisconnectUser {
            app_id,
            user_id,
            code,
        } => WireControl {
            k: 'd',
            a: Cow::Borrowed(app_id),
            u: Some(Cow::Borrowed(user_id)),
            s: None,
            code: Some(code.code()),
            m: None,
        },
    };
    serde_json::to_vec(&w).expect("a control message always serialises")
}

/// Decode a control message.
pub fn decode_control(bytes: &[u8]) -> Result<Control, EnvelopeError> {
    let w: WireControl<'_> = serde_json::from_slice(bytes)?;
    let app_id: Arc<str> = Arc::from(&*w.a);
    let user = || {
        w.u.as_deref()
            .map(Arc::<str>::from)
            .ok_or(EnvelopeError::Invalid("control without user"))
    };
    let message = |m: Option<WireDirect<'_>>| -> Result<Arc<DirectMessage>, EnvelopeError> {
        let m = m.ok_or(EnvelopeError::Invalid("control without message"))?;
        Ok(Arc::new(DirectMessage::new(
            Arc::from(&*m.i),
            Arc::from(&*m.e),
            event_data(m.d, m.s)?,
            m.u.map(|u| Arc::from(&*u)),
            m.t,
        )))
    };
    match w.k {
        'u' => Ok(Control::SendToUser {
            app_id,
            user_id: user()?,
            message: message(w.m)?,
        }),
        's' => Ok(Control::SendToSocket {
            app_id,
            socket_id: w
                .s
                .as_deref()
                .and_then(|s| s.parse().ok())
                .ok_or(EnvelopeError::Invalid("socket id"))?,
            message: message(w.m)?,
        }),
        'd' => Ok(Control::DisconnectUser {
            app_id,
            user_id: user()?,
            code: w
                .code
                .and_then(CloseCode::from_code)
                .ok_or(EnvelopeError::Invalid("close code"))?,
        }),
        _ => Err(EnvelopeError::Invalid("control kind")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(payload: Payload) -> Publication {
        let p = Publication::new(
            Arc::from("app"),
            ChannelName::new("presence-room.1").unwrap(),
            Arc::from("id-1"),
            payload,
            Some(SocketId::new(12, 34)),
            1_700_000_000_000,
        );
        let bytes = encode_publication(&p);
        let back = decode_publication(&bytes, None).unwrap();
        assert_eq!(
            (&*back.app_id, back.channel.as_str(), &*back.id),
            ("app", "presence-room.1", "id-1")
        );
        assert_eq!(back.exclude, p.exclude);
        assert_eq!(back.timestamp_ms, p.timestamp_ms);
        back
    }

    #[test]
    fn publications_survive_the_trip_with_both_data_forms() {
        let json = RawJson::from_value(&serde_json::json!({"a": [1, "é\n"]}));
        let back = roundtrip(Payload::Event {
            event: Arc::from("e"),
            data: EventData::Json(json.clone()),
            user_id: Some(Arc::from("u")),
        });
        assert!(
            matches!(back.payload, Payload::Event { data: EventData::Json(j), .. } if j == json)
        );
        let back = roundtrip(Payload::Event {
            event: Arc::from("e"),
            data: EventData::Text(Arc::from("{\"x\":1} \"quoted\"")),
            user_id: None,
        });
        assert!(
            matches!(back.payload, Payload::Event { data: EventData::Text(t), .. } if &*t == "{\"x\":1} \"quoted\"")
        );
        let info = RawJson::from_value(&serde_json::json!({"name": "Ann"}));
        let back = roundtrip(Payload::Joined(Member {
            user_id: Arc::from("ann"),
            info: info.clone(),
        }));
        assert!(
            matches!(back.payload, Payload::Joined(m) if m.info == info && &*m.user_id == "ann")
        );
        let back = roundtrip(Payload::SubscriptionCount(7));
        assert!(matches!(back.payload, Payload::SubscriptionCount(7)));
    }

    #[test]
    fn control_messages_survive_the_trip() {
        let c = Control::DisconnectUser {
            app_id: Arc::from("app"),
            user_id: Arc::from("u1"),
            code: CloseCode::Terminated,
        };
        assert!(matches!(
            decode_control(&encode_control(&c)).unwrap(),
            Control::DisconnectUser {
                code: CloseCode::Terminated,
                ..
            }
        ));
        let c = Control::SendToSocket {
            app_id: Arc::from("app"),
            socket_id: SocketId::new(1, 2),
            message: Arc::new(DirectMessage::new(
                Arc::from("m"),
                Arc::from("ev"),
                EventData::Text(Arc::from("hi")),
                None,
                5,
            )),
        };
        assert!(matches!(
            decode_control(&encode_control(&c)).unwrap(),
            Control::SendToSocket { socket_id, .. } if socket_id == SocketId::new(1, 2)
        ));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b""[..],
            b"{}",
            b"[1]",
            b"{\"a\":\"x\",\"c\":\"bad channel!\",\"i\":\"1\",\"t\":1,\"k\":\"e\"}",
        ] {
            assert!(decode_publication(bad, None).is_err());
            assert!(decode_control(bad).is_err());
        }
    }
}
