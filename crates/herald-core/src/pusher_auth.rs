//! Pusher signatures: channel authorisation (`key:HMAC(secret, "socket_id:channel[:channel_data]")`)
//! and user sign-in (`key:HMAC(secret, "socket_id::user::user_data")`), verified in constant
//! time. The backend's auth endpoint (a Pusher server SDK) produces them; Herald checks them.

use std::sync::Arc;

use herald_protocol::token::MAX_USER_ID_LEN;
use herald_protocol::{ChannelName, ErrorCode, SocketId};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::auth::ChannelAccess;
use crate::raw_json::RawJson;
use crate::refusal::Refusal;
use crate::secret::{Secret, constant_time_eq};
use crate::settings::AppSettings;

/// The hex HMAC-SHA256 of `message` with `secret`.
pub fn sign(secret: &Secret, message: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
        .expect("HMAC takes any key length");
    mac.update(message.as_bytes());
    hex(&mac.finalize().into_bytes())
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// Check `auth` (`key:signature`) against the expected signature of `message`.
fn check(app: &AppSettings, auth: &str, message: &str) -> Result<(), Refusal> {
    let Some((key, signature)) = auth.split_once(':') else {
        return Err(Refusal::new(
            ErrorCode::BadSignature,
            "auth must be key:signature",
        ));
    };
    if !constant_time_eq(key.as_bytes(), app.key.as_bytes()) {
        return Err(Refusal::new(
            ErrorCode::BadSignature,
            "auth is signed for another app key",
        ));
    }
    let expected = sign(&app.secret, message);
    if !constant_time_eq(signature.as_bytes(), expected.as_bytes()) {
        return Err(Refusal::new(ErrorCode::BadSignature, "invalid signature"));
    }
    Ok(())
}

/// The `channel_data` of a presence subscription.
#[derive(Deserialize)]
struct ChannelData {
    #[serde(deserialize_with = "string_or_number")]
    user_id: String,
    #[serde(default)]
    user_info: Option<serde_json::Value>,
}

/// A user id given as a JSON string or number.
fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        S(String),
        N(serde_json::Number),
    }
    Ok(match Id::deserialize(d)? {
        Id::S(s) => s,
        Id::N(n) => n.to_string(),
    })
}

/// Authorise a Pusher subscription to `channel` (private, private-encrypted or presence;
/// public channels need no auth). For presence, returns the member from `channel_data`.
pub fn authorize_channel(
    app: &AppSettings,
    socket: SocketId,
    channel: &ChannelName,
    auth: Option<&str>,
    channel_data: Option<&str>,
) -> Result<ChannelAccess, Refusal> {
    let kind = channel.kind();
    if !kind.is_protected() {
        return Ok(ChannelAccess::default());
    }
    let auth = auth.ok_or_else(|| {
        Refusal::new(
            ErrorCode::Unauthorized,
            "this channel needs an auth signature",
        )
    })?;
    if !kind.is_presence() {
        check(app, auth, &format!("{socket}:{channel}"))?;
        return Ok(ChannelAccess::default());
    }
    let data = channel_data.ok_or_else(|| {
        Refusal::new(
            ErrorCode::InvalidRequest,
            "presence channels need channel_data",
        )
    })?;
    check(app, auth, &format!("{socket}:{channel}:{data}"))?;
    let parsed: ChannelData = serde_json::from_str(data).map_err(|e| {
        Refusal::new(
            ErrorCode::InvalidRequest,
            format!("invalid channel_data: {e}"),
        )
    })?;
    if parsed.user_id.is_empty() || parsed.user_id.len() > MAX_USER_ID_LEN {
        return Err(Refusal::new(
            ErrorCode::InvalidRequest,
            format!("user_id must be 1 to {MAX_USER_ID_LEN} bytes"),
        ));
    }
    Ok(ChannelAccess {
        user_id: Some(Arc::from(parsed.user_id.as_str())),
        info: Some(
            parsed
                .user_info
                .as_ref()
                .map_or_else(RawJson::null, RawJson::from_value),
        ),
    })
}

/// The `user_data` of a sign-in.
#[derive(Deserialize)]
struct UserData {
    #[serde(deserialize_with = "string_or_number")]
    id: String,
}

/// Verify a `pusher:signin` and return the user id from `user_data`.
pub fn verify_signin(
    app: &AppSettings,
    socket: SocketId,
    auth: &str,
    user_data: &str,
) -> Result<Arc<str>, Refusal> {
    check(app, auth, &format!("{socket}::user::{user_data}"))?;
    let parsed: UserData = serde_json::from_str(user_data)
        .map_err(|e| Refusal::new(ErrorCode::InvalidRequest, format!("invalid user_data: {e}")))?;
    if parsed.id.is_empty() || parsed.id.len() > MAX_USER_ID_LEN {
        return Err(Refusal::new(
            ErrorCode::InvalidRequest,
            format!("user id must be 1 to {MAX_USER_ID_LEN} bytes"),
        ));
    }
    Ok(Arc::from(parsed.id.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> AppSettings {
        let mut a = AppSettings::development();
        a.key = "278d425bdf160c739803".into();
        a.secret = Secret::new("7ad3773142a6692b25b8");
        a
    }

    #[test]
    fn documented_test_vectors() {
        let app = app();
        assert_eq!(
            sign(&app.secret, "1234.1234:private-foobar"),
            "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
        let socket: SocketId = "1234.1234".parse().unwrap();
        let private = ChannelName::new("private-foobar").unwrap();
        let good =
            "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4";
        assert!(authorize_channel(&app, socket, &private, Some(good), None).is_ok());
        let bad =
            "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a5";
        assert_eq!(
            authorize_channel(&app, socket, &private, Some(bad), None)
                .unwrap_err()
                .code,
            ErrorCode::BadSignature
        );
        assert_eq!(
            authorize_channel(&app, socket, &private, None, None)
                .unwrap_err()
                .code,
            ErrorCode::Unauthorized
        );

        // Presence: the documented example signs channel_data {"user_id":10,"user_info":{"name":"Mr. Pusher"}}.
        let presence = ChannelName::new("presence-foobar").unwrap();
        let data = r#"{"user_id":10,"user_info":{"name":"Mr. Pusher"}}"#;
        let sig = sign(&app.secret, &format!("1234.1234:presence-foobar:{data}"));
        assert_eq!(
            sig,
            "afaed3695da2ffd16931f457e338e6c9f2921fa133ce7dac49f529792be6304c"
        );
        let access = authorize_channel(
            &app,
            socket,
            &presence,
            Some(&format!("{}:{sig}", app.key)),
            Some(data),
        )
        .unwrap();
        assert_eq!(access.user_id.as_deref(), Some("10"));
        assert_eq!(access.info.unwrap().as_str(), r#"{"name":"Mr. Pusher"}"#);

        // User authentication: {"id":"12345"}.
        let user_data = r#"{"id":"12345"}"#;
        let sig = sign(&app.secret, &format!("1234.1234::user::{user_data}"));
        assert_eq!(
            sig,
            "4708d583dada6a56435fb8bc611c77c359a31eebde13337c16ab43aa6de336ba"
        );
        let user = verify_signin(&app, socket, &format!("{}:{sig}", app.key), user_data).unwrap();
        assert_eq!(&*user, "12345");
    }
}
