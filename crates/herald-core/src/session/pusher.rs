//! The Pusher protocol's request handling: parse a client message, perform it on the
//! [`Session`], and queue the reply in Pusher's format. See `herald_protocol::pusher`.

use herald_protocol::pusher::{
    ClientMessage, SigninData, SubscribeData, UnsubscribeData, encode, parse_client_message,
    parse_data,
};
use herald_protocol::{CloseCode, ErrorCode, PusherErrorCode};
use serde_json::json;

use super::{ChannelAuth, Session};
use crate::metrics::Metrics;
use crate::publication::EventData;
use crate::raw_json::RawJson;
use crate::refusal::Refusal;

/// `pusher:connection_established`.
pub(super) fn connected(session: &Session) -> Vec<u8> {
    let data = json!({
        "socket_id": session.handle.socket_id.to_string(),
        "activity_timeout": session.node.limits.ping_interval.as_secs(),
    });
    encode(
        "pusher:connection_established",
        None,
        Some(&data.to_string()),
        None,
    )
}

/// Handle one Pusher message.
pub(super) async fn handle(session: &mut Session, text: &[u8]) -> Result<(), CloseCode> {
    let message: ClientMessage<'_> = match parse_client_message(text) {
        Ok(m) => m,
        Err(e) => {
            push_error(session, None, &format!("invalid message: {e}"));
            return Ok(());
        }
    };
    match &*message.event {
        "pusher:ping" => session.push(br#"{"event":"pusher:pong","data":"{}"}"#.to_vec()),
        "pusher:pong" => {}
        "pusher:subscribe" => subscribe(session, &message).await?,
        "pusher:unsubscribe" => {
            if let Ok(data) = parse_data::<UnsubscribeData<'_>>(message.data) {
                // Unsubscribing from a channel one is not on is not an error in Pusher.
                let _ = session.unsubscribe(&data.channel).await;
            }
        }
        "pusher:signin" => match parse_data::<SigninData<'_>>(message.data) {
            Ok(data) => match session.signin(&data.auth, &data.user_data) {
                Ok(_) => {
                    let reply = json!({ "user_data": &*data.user_data });
                    session.push(encode(
                        "pusher:signin_success",
                        None,
                        Some(&reply.to_string()),
                        None,
                    ));
                }
                Err(refusal) => push_error(session, None, &refusal.message),
            },
            Err(e) => push_error(session, None, &e),
        },
        event if event.starts_with("client-") => {
            let Some(channel) = message.channel.as_deref() else {
                push_error(session, None, "client events need a channel");
                return Ok(());
            };
            let data = match message.data {
                Some(raw) => EventData::Json(RawJson::from_raw(raw)),
                None => EventData::Json(RawJson::null()),
            };
            if let Err(refusal) = session.client_event(channel, event, data).await {
                let code = (refusal.code == ErrorCode::RateLimited)
                    .then_some(PusherErrorCode::ClientEventRateLimited.code());
                push_error(session, code, &refusal.message);
            }
        }
        other => push_error(session, None, &format!("unsupported event {other:?}")),
    }
    Ok(())
}

async fn subscribe(session: &mut Session, message: &ClientMessage<'_>) -> Result<(), CloseCode> {
    let data: SubscribeData<'_> = match parse_data(message.data) {
        Ok(d) => d,
        Err(e) => {
            push_error(session, None, &e);
            return Ok(());
        }
    };
    let auth = ChannelAuth::Pusher {
        auth: data.auth.as_deref(),
        channel_data: data.channel_data.as_deref(),
    };
    match session.subscribe(&data.channel, auth, None).await {
        Ok(ok) => {
            let payload = match &ok.members {
                Some(members) => {
                    let ids: Vec<&str> = members.iter().map(|m| &*m.user_id).collect();
                    let hash: serde_json::Map<String, serde_json::Value> = members
                        .iter()
                        .map(|m| (m.user_id.to_string(), m.info.to_value()))
                        .collect();
                    json!({"presence": {"ids": ids, "hash": hash, "count": members.len()}})
                        .to_string()
                }
                None => "{}".to_owned(),
            };
            session.push(encode(
                "pusher_internal:subscription_succeeded",
                Some(ok.channel.as_str()),
                Some(&payload),
                None,
            ));
            match &ok.cached {
                Some(Some(cached)) => {
                    if let Some(frame) = cached.frame_for(&session.handle) {
                        session
                            .handle
                            .push_frame(frame, None, &session.node.metrics);
                    }
                }
                Some(None) => session.push(encode(
                    "pusher:cache_miss",
                    Some(ok.channel.as_str()),
                    None,
                    None,
                )),
                None => {}
            }
            if !session.open_gate(&ok) {
                return Err(CloseCode::Reconnect);
            }
        }
        Err(refusal) => push_subscription_error(session, &data.channel, &refusal),
    }
    Ok(())
}

/// `pusher:subscription_error`, in the shape pusher-js reports for a failed authorisation.
fn push_subscription_error(session: &Session, channel: &str, refusal: &Refusal) {
    Metrics::inc(&session.node.metrics.client_errors);
    let data = json!({
        "type": "AuthError",
        "error": &*refusal.message,
        "status": refusal.code.http_status(),
    });
    let channel = (channel.len() <= 256).then_some(channel);
    session.push(encode(
        "pusher:subscription_error",
        channel,
        Some(&data.to_string()),
        None,
    ));
}

/// `pusher:error` (not followed by a close: the connection stays open).
fn push_error(session: &Session, code: Option<u16>, message: &str) {
    Metrics::inc(&session.node.metrics.client_errors);
    let data = json!({ "message": message, "code": code });
    // pusher:error carries its data as an object, not a string.
    let mut out = Vec::with_capacity(64 + message.len());
    out.extend_from_slice(br#"{"event":"pusher:error","data":"#);
    out.extend_from_slice(data.to_string().as_bytes());
    out.push(b'}');
    session.push(out);
}
