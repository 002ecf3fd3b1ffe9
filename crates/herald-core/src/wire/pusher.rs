//! Pusher-protocol encodings of server messages. `data` is always a string: channel events
//! carry the publisher's data as a string, `pusher_internal:` events a JSON object in one.

use bytes::Bytes;
use herald_protocol::pusher::{encode, encode_with_data_literal};

use crate::publication::{DirectMessage, Payload, Publication};

/// Encode a publication for Pusher clients.
pub fn encode_publication(p: &Publication) -> Option<Bytes> {
    let channel = p.channel.as_str();
    let bytes = match &p.payload {
        Payload::Event {
            event,
            data,
            user_id,
        } => {
            // Pusher sends `user_id` only with client events on presence channels.
            let user = user_id
                .as_deref()
                .filter(|_| p.channel.kind().is_presence());
            encode_with_data_literal(event, Some(channel), &data.pusher_literal(), user)
        }
        Payload::Joined(member) => {
            let mut data = Vec::with_capacity(48 + member.info.len());
            data.extend_from_slice(b"{\"user_id\":");
            herald_protocol::json::write_str(&mut data, &member.user_id);
            data.extend_from_slice(b",\"user_info\":");
            data.extend_from_slice(member.info.as_bytes());
            data.push(b'}');
            encode(
                "pusher_internal:member_added",
                Some(channel),
                Some(std::str::from_utf8(&data).unwrap_or("{}")),
                None,
            )
        }
        Payload::Left { user_id } => {
            let mut data = Vec::with_capacity(32);
            data.extend_from_slice(b"{\"user_id\":");
            herald_protocol::json::write_str(&mut data, user_id);
            data.push(b'}');
            encode(
                "pusher_internal:member_removed",
                Some(channel),
                Some(std::str::from_utf8(&data).unwrap_or("{}")),
                None,
            )
        }
        Payload::SubscriptionCount(n) => encode(
            "pusher_internal:subscription_count",
            Some(channel),
            Some(&format!("{{\"subscription_count\":{n}}}")),
            None,
        ),
    };
    Some(Bytes::from(bytes))
}

/// Encode a direct message: on the user's `#server-to-user-<id>` channel when sent to a
/// user (where pusher-js's user object listens), without a channel when sent to a socket.
pub fn encode_direct(d: &DirectMessage) -> Bytes {
    let channel = d.user.as_ref().map(|u| format!("#server-to-user-{u}"));
    Bytes::from(encode_with_data_literal(
        &d.event,
        channel.as_deref(),
        &d.data.pusher_literal(),
        None,
    ))
}
