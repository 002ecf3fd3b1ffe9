//! The native protocol's request handling: parse a client message, perform it on the
//! [`Session`], and queue the reply. See `herald_protocol::native` for the message format.

use herald_protocol::native::{
    ConnectedData, Envelope, ErrorData, MessageType, PresenceMember, PresenceSync, Request,
    parse_client_message,
};
use herald_protocol::{CloseCode, ErrorCode};

use super::{ChannelAuth, Session};
use crate::clock::unix_ms;
use crate::metrics::Metrics;
use crate::publication::EventData;
use crate::raw_json::RawJson;
use crate::recovery::Recovery;
use crate::refusal::Refusal;

/// The `connected` message that opens every native connection.
pub(super) fn connected(session: &Session, transport_session: Option<&str>) -> Vec<u8> {
    let limits = &session.node.limits;
    let data = ConnectedData {
        socket_id: session.handle.socket_id.to_string(),
        user_id: session.handle.user_id().map(|u| u.to_string()),
        activity_timeout: limits.activity_timeout.as_secs(),
        ping_interval: limits.ping_interval.as_secs(),
        session: transport_session.map(str::to_owned),
    };
    let data = serde_json::to_vec(&data).expect("ConnectedData serialises");
    reply(session, MessageType::Connected, None, None, &data, None)
}

/// How long a request whose token names a `kid` the app's key set does not hold waits for
/// the set to be fetched again.
const KEY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Handle one native message.
pub(super) async fn handle(session: &mut Session, text: &[u8]) -> Result<(), CloseCode> {
    let message = match parse_client_message(text) {
        Ok(m) => m,
        Err(e) => {
            push_error(session, &Refusal::new(e.code, e.message), None, e.reference);
            return Ok(());
        }
    };
    let reference = message.reference;
    match message.request {
        Request::Subscribe {
            channel,
            token,
            since,
        } => {
            if let Some(token) = token.as_deref() {
                session.app.verifier.ready_for(token, KEY_WAIT).await;
            }
            match session
                .subscribe(
                    &channel,
                    ChannelAuth::Token(token.as_deref()),
                    since.as_ref(),
                )
                .await
            {
                Ok(ok) => {
                    let data = subscribed_data(ok.recovery.as_ref());
                    let bytes = reply(
                        session,
                        MessageType::Subscribe,
                        Some(ok.channel.as_str()),
                        Some("subscribed"),
                        &data,
                        reference,
                    );
                    session.push(bytes);
                    // The replay follows the reply, oldest first.
                    if let Some(recovery) = &ok.recovery {
                        for p in &recovery.replay {
                            if let Some(frame) = p.frame_for(&session.handle) {
                                session
                                    .handle
                                    .push_frame(frame, None, &session.node.metrics);
                            }
                        }
                    }
                    if let Some(members) = ok.members.as_ref() {
                        let sync = PresenceSync {
                            count: members.len(),
                            members: members
                                .iter()
                                .map(|m| PresenceMember {
                                    user_id: m.user_id.to_string(),
                                    info: m.info.to_value(),
                                })
                                .collect(),
                        };
                        let data = serde_json::to_vec(&sync).expect("PresenceSync serialises");
                        let bytes = reply(
                            session,
                            MessageType::Presence,
                            Some(ok.channel.as_str()),
                            Some("sync"),
                            &data,
                            None,
                        );
                        session.push(bytes);
                    }
                    // A cache channel's last event follows the reply (a miss sends nothing).
                    if let Some(Some(cached)) = &ok.cached
                        && let Some(frame) = cached.frame_for(&session.handle)
                    {
                        session
                            .handle
                            .push_frame(frame, None, &session.node.metrics);
                    }
                    if !session.open_gate(&ok) {
                        return Err(CloseCode::Reconnect);
                    }
                }
                Err(refusal) => push_error(session, &refusal, Some(&channel), reference),
            }
        }
        Request::Unsubscribe { channel } => match session.unsubscribe(&channel).await {
            Ok(channel) => {
                let bytes = reply(
                    session,
                    MessageType::Unsubscribe,
                    Some(channel.as_str()),
                    Some("unsubscribed"),
                    b"{}",
                    reference,
                );
                session.push(bytes);
            }
            Err(refusal) => push_error(session, &refusal, Some(&channel), reference),
        },
        Request::Event {
            channel,
            event,
            data,
        } => {
            let data = EventData::Json(RawJson::from_raw(data));
            if let Err(refusal) = session.client_event(&channel, &event, data).await {
                push_error(session, &refusal, Some(&channel), reference);
            }
        }
        Request::Refresh { token } => {
            session.app.verifier.ready_for(&token, KEY_WAIT).await;
            refresh(session, &token, reference);
        }
        Request::Ping => {
            let bytes = reply(session, MessageType::Pong, None, None, b"null", reference);
            session.push(bytes);
        }
        Request::Pong => {}
    }
    Ok(())
}

/// Answer a `refresh`: the new expiry, or why the token was refused (nothing changes).
fn refresh(session: &mut Session, token: &str, reference: Option<&str>) {
    match session.refresh(token) {
        Ok(expires_at) => {
            let data = format!(r#"{{"expires_at":{expires_at}}}"#);
            let bytes = reply(
                session,
                MessageType::Refresh,
                None,
                Some("refreshed"),
                data.as_bytes(),
                reference,
            );
            session.push(bytes);
        }
        Err(refusal) => push_error(session, &refusal, None, reference),
    }
}

fn reply(
    session: &Session,
    kind: MessageType,
    channel: Option<&str>,
    event: Option<&str>,
    data: &[u8],
    reference: Option<&str>,
) -> Vec<u8> {
    let id = session.node.ids.next();
    let mut env = Envelope::new(id.as_str(), kind, unix_ms());
    env.channel = channel;
    env.event = event;
    env.data = data;
    env.reference = reference;
    env.to_vec()
}

fn push_error(
    session: &Session,
    refusal: &Refusal,
    channel: Option<&str>,
    reference: Option<&str>,
) {
    Metrics::inc(&session.node.metrics.client_errors);
    let data = serde_json::to_vec(&ErrorData::new(refusal.code, refusal.message.clone()))
        .expect("ErrorData serialises");
    // Echo the channel only when it is a valid name (never reflect arbitrary input).
    let channel = channel.filter(|c| herald_protocol::ChannelName::validate(c).is_ok());
    let name = if refusal.code == ErrorCode::Internal {
        ErrorCode::Internal.name()
    } else {
        refusal.code.name()
    };
    let bytes = reply(
        session,
        MessageType::Error,
        channel,
        Some(name),
        &data,
        reference,
    );
    session.push(bytes);
}

/// The `data` of a `subscribed` reply: `{}`, or on a channel with history its position and,
/// when the client asked, the recovery result.
fn subscribed_data(recovery: Option<&Recovery>) -> Vec<u8> {
    let Some(r) = recovery else {
        return b"{}".to_vec();
    };
    let mut data = serde_json::json!({
        "offset": r.position.offset,
        "epoch": &*r.position.epoch,
    });
    if let Some(outcome) = r.outcome {
        data["recovered"] = outcome.is_ok().into();
        data["replayed"] = r.replay.len().into();
        if let Err(why) = outcome {
            data["reason"] = why.as_str().into();
        }
    }
    serde_json::to_vec(&data).expect("JSON serialises")
}
