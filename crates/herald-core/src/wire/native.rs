//! Native-protocol encodings of server messages.

use bytes::Bytes;
use herald_protocol::native::{Envelope, MessageType};

use crate::publication::{DirectMessage, Payload, Publication};
use crate::raw_json::RawJson;

/// Encode a publication: an `event` message, or a presence `joined`/`left` message.
/// `None` for payloads native clients do not receive.
pub fn encode_publication(p: &Publication) -> Option<Bytes> {
    let mut env = Envelope::new(&p.id, MessageType::Event, p.timestamp_ms);
    env.channel = Some(p.channel.as_str());
    env.position = p.position.as_ref().map(|pos| (pos.offset, &*pos.epoch));
    let data;
    match &p.payload {
        Payload::Event {
            event,
            data: event_data,
            user_id,
        } => {
            env.event = Some(event);
            data = event_data.native_json();
            env.data = &data;
            env.user_id = user_id.as_deref();
        }
        Payload::Joined(member) => {
            env.kind = MessageType::Presence;
            env.event = Some("joined");
            data = member_json(&member.user_id, Some(&member.info)).into();
            env.data = &data;
        }
        Payload::Left { user_id } => {
            env.kind = MessageType::Presence;
            env.event = Some("left");
            data = member_json(user_id, None).into();
            env.data = &data;
        }
        Payload::SubscriptionCount(_) => return None,
    }
    Some(Bytes::from(env.to_vec()))
}

/// Encode a direct message: an `event` with a null channel.
pub fn encode_direct(d: &DirectMessage) -> Bytes {
    let mut env = Envelope::new(&d.id, MessageType::Event, d.timestamp_ms);
    env.event = Some(&d.event);
    let data = d.data.native_json();
    env.data = &data;
    Bytes::from(env.to_vec())
}

/// `{"user_id":…,"info":…}`, or `{"user_id":…}` without info.
pub fn member_json(user_id: &str, info: Option<&RawJson>) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + info.map_or(0, RawJson::len));
    out.extend_from_slice(b"{\"user_id\":");
    herald_protocol::json::write_str(&mut out, user_id);
    if let Some(info) = info {
        out.extend_from_slice(b",\"info\":");
        out.extend_from_slice(info.as_bytes());
    }
    out.push(b'}');
    out
}
