//! The claims of Herald's JSON Web Tokens: part of the wire contract.
//!
//! Two kinds of token share one claim set:
//! - a **connection token** identifies the user (`sub`) and lists the protected channels it
//!   may join (`channels`, with `*` wildcards), with optional `roles`, `permissions` and
//!   presence `info`. It must not carry `channel`.
//! - a **subscription token** authorises exactly one channel (`channel`), usually minted by
//!   the backend just before a subscribe and short-lived; it may carry `sub` and `info`.
//!
//! Both must carry `exp`. `sub` may be a JSON string or number (numbers become strings).

use serde::{Deserialize, Deserializer, Serialize};

/// The claims Herald reads from (and `herald token` writes into) a JWT.
/// The longest user id accepted, in bytes: a token's `sub`, a Pusher presence `user_id` or
/// sign-in `id`. User ids are kept per connection and per presence member, and echoed in
/// events, so they are bounded like every other name.
pub const MAX_USER_ID_LEN: usize = 128;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenClaims {
    /// The user id. Required for presence channels.
    #[serde(
        default,
        deserialize_with = "string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub sub: Option<String>,
    /// Expiry, in seconds since the Unix epoch. Required.
    pub exp: u64,
    /// Issued-at, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Not-before, in seconds since the Unix epoch: the token is refused until then (less
    /// the app's `jwt.leeway`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Channel patterns a connection token allows (`*` matches any run of characters).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    /// Roles, matched against the app's channel rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// Permissions, matched against the app's channel rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permissions: Vec<String>,
    /// Public user info shown to other presence members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
    /// The one channel a subscription token authorises. Absent in connection tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Issuer, checked when the app configures one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience, checked when the app configures one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        S(String),
        N(serde_json::Number),
    }
    Ok(Option::<Id>::deserialize(d)?.map(|id| match id {
        Id::S(s) => s,
        Id::N(n) => n.to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_may_be_a_number() {
        let c: TokenClaims = serde_json::from_str(r#"{"sub":42,"exp":1}"#).unwrap();
        assert_eq!(c.sub.as_deref(), Some("42"));
        let c: TokenClaims =
            serde_json::from_str(r#"{"sub":"ann","exp":1,"channels":["a*"]}"#).unwrap();
        assert_eq!(c.channels, vec!["a*"]);
        assert!(serde_json::from_str::<TokenClaims>(r#"{"sub":"x"}"#).is_err());
    }
}
