//! Token verification and channel authorisation.
//!
//! [`TokenVerifier`] checks connection and subscription JWTs for one app (HS256 with the app
//! secret, or RS256/ES256 with a configured public key) and turns their claims into an
//! [`Identity`] or a [`SubscriptionGrant`]. [`authorize_channel`] decides whether a
//! connection may subscribe to a channel:
//!
//! 1. Public channels are open to every connection of the app.
//! 2. `private-` and `presence-` channels need either a subscription token for exactly that
//!    channel, or a connection token whose `channels` patterns match it.
//! 3. Every channel rule whose pattern matches then requires one of its roles and all of its
//!    permissions (from the connection token, or the subscription token if it carries them).
//! 4. Presence channels need a user id (`sub`).
//!
//! Each failure has its own code: expired (202), bad signature (203), malformed (204), channel
//! not allowed (205), missing role or permission (206), no credentials (200).

mod keyset;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use keyset::{KeySet, KeySetStatus};

use herald_protocol::token::MAX_USER_ID_LEN;
use herald_protocol::token::TokenClaims;
use herald_protocol::{ChannelName, ErrorCode};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

use crate::clock::unix_secs;
use crate::pattern::Pattern;
use crate::raw_json::RawJson;
use crate::refusal::Refusal;
use crate::secret::Secret;
use crate::settings::{AppSettings, JwtAlgorithm, JwtSettings};

/// Who a connection is, from its connection token.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The user id (`sub`), if the token has one.
    pub user_id: Option<Arc<str>>,
    /// Protected channels the token allows.
    pub channels: Vec<Pattern>,
    /// Roles, for channel rules.
    pub roles: Vec<String>,
    /// Permissions, for channel rules.
    pub permissions: Vec<String>,
    /// Presence info.
    pub info: Option<RawJson>,
    /// Expiry (seconds since the Unix epoch); subscribes after it are refused with 202.
    pub expires_at: u64,
}

/// What a subscription token grants.
#[derive(Debug, Clone)]
pub struct SubscriptionGrant {
    /// The one channel it is for.
    pub channel: String,
    /// The user id, if given.
    pub user_id: Option<Arc<str>>,
    /// Roles, for channel rules.
    pub roles: Vec<String>,
    /// Permissions, for channel rules.
    pub permissions: Vec<String>,
    /// Presence info, overriding the connection token's.
    pub info: Option<RawJson>,
}

/// The outcome of a successful channel authorisation.
#[derive(Debug, Clone, Default)]
pub struct ChannelAccess {
    /// The user the subscription acts as (required for presence).
    pub user_id: Option<Arc<str>>,
    /// Presence info for this channel.
    pub info: Option<RawJson>,
}

/// Verifies one app's tokens.
pub struct TokenVerifier {
    /// The key tokens must be signed with.
    key: VerifyingKey,
    /// Algorithm, expiry, issuer and audience rules.
    validation: Validation,
    /// Clock skew tolerated when re-checking expiry at subscribe time.
    leeway: u64,
}

impl fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

/// Where a verifier's key comes from.
enum VerifyingKey {
    /// The app secret (HS256) or a configured public key.
    Fixed(DecodingKey),
    /// A JSON Web Key Set, by `kid`.
    Set(Arc<KeySet>),
}

fn algorithm(a: JwtAlgorithm) -> Algorithm {
    match a {
        JwtAlgorithm::Hs256 => Algorithm::HS256,
        JwtAlgorithm::Rs256 => Algorithm::RS256,
        JwtAlgorithm::Es256 => Algorithm::ES256,
    }
}

impl TokenVerifier {
    /// A verifier for `jwt`, using `secret` for HS256. Fails if the public key does not parse.
    pub fn new(jwt: &JwtSettings, secret: &Secret) -> Result<Self, String> {
        let pem = || {
            jwt.public_key
                .as_deref()
                .ok_or_else(|| "no public key configured".to_owned())
        };
        let key = match jwt.algorithm {
            _ if jwt.jwks_url.is_some() => VerifyingKey::Set(Arc::new(KeySet::default())),
            JwtAlgorithm::Hs256 => {
                VerifyingKey::Fixed(DecodingKey::from_secret(secret.expose().as_bytes()))
            }
            JwtAlgorithm::Rs256 => VerifyingKey::Fixed(
                DecodingKey::from_rsa_pem(pem()?.as_bytes())
                    .map_err(|e| format!("invalid RSA public key PEM: {e}"))?,
            ),
            JwtAlgorithm::Es256 => VerifyingKey::Fixed(
                DecodingKey::from_ec_pem(pem()?.as_bytes())
                    .map_err(|e| format!("invalid EC public key PEM: {e}"))?,
            ),
        };
        let mut validation = Validation::new(algorithm(jwt.algorithm));
        validation.leeway = jwt.leeway.as_secs();
        validation.validate_exp = true;
        // A token with `nbf` is refused until then (within the leeway); one without it is
        // valid from the start.
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        match &jwt.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &jwt.issuer {
            validation.set_issuer(&[iss]);
            validation.set_required_spec_claims(&["exp", "iss"]);
        }
        Ok(Self {
            key,
            validation,
            leeway: jwt.leeway.as_secs(),
        })
    }

    /// The app's key set, when its tokens are verified with one.
    pub fn key_set(&self) -> Option<&Arc<KeySet>> {
        match &self.key {
            VerifyingKey::Set(set) => Some(set),
            VerifyingKey::Fixed(_) => None,
        }
    }

    /// Before verifying `token` with a key set: wait, at most `timeout`, until the key it
    /// names is held (fetching the set again if need be). Nothing to wait for otherwise.
    pub async fn ready_for(&self, token: &str, timeout: Duration) {
        if let VerifyingKey::Set(set) = &self.key
            && let Ok(header) = jsonwebtoken::decode_header(token.trim())
            && let Some(kid) = header.kid
        {
            set.ensure(&kid, timeout).await;
        }
    }

    fn decode(&self, token: &str) -> Result<TokenClaims, Refusal> {
        let token = token.trim();
        let key = match &self.key {
            VerifyingKey::Fixed(key) => key.clone(),
            VerifyingKey::Set(set) => {
                let header = jsonwebtoken::decode_header(token)
                    .map_err(|_| Refusal::new(ErrorCode::TokenInvalid, "token is malformed"))?;
                let kid = header.kid.ok_or_else(|| {
                    Refusal::new(ErrorCode::TokenInvalid, "token has no kid (key id)")
                })?;
                match set.get(&kid) {
                    Some(key) => key,
                    None => {
                        set.want();
                        return Err(Refusal::new(
                            ErrorCode::TokenInvalid,
                            "token is signed with a key the app's key set does not hold (yet)",
                        ));
                    }
                }
            }
        };
        let claims = jsonwebtoken::decode::<TokenClaims>(token, &key, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => Refusal::plain(ErrorCode::TokenExpired),
                ErrorKind::ImmatureSignature => Refusal::new(
                    ErrorCode::TokenInvalid,
                    "token is not valid yet (its nbf is in the future)",
                ),
                ErrorKind::InvalidSignature => Refusal::plain(ErrorCode::BadSignature),
                ErrorKind::InvalidAlgorithm => Refusal::new(
                    ErrorCode::TokenInvalid,
                    "token is signed with an algorithm this app does not accept",
                ),
                ErrorKind::InvalidIssuer => Refusal::new(ErrorCode::TokenInvalid, "wrong issuer"),
                ErrorKind::InvalidAudience => {
                    Refusal::new(ErrorCode::TokenInvalid, "wrong audience")
                }
                ErrorKind::MissingRequiredClaim(c) => Refusal::new(
                    ErrorCode::TokenInvalid,
                    format!("token lacks the {c} claim"),
                ),
                ErrorKind::Json(_) => {
                    Refusal::new(ErrorCode::TokenInvalid, "token claims are malformed")
                }
                _ => Refusal::new(ErrorCode::TokenInvalid, "token is malformed"),
            })?;
        if let Some(sub) = &claims.sub
            && (sub.is_empty() || sub.len() > MAX_USER_ID_LEN)
        {
            return Err(Refusal::new(
                ErrorCode::TokenInvalid,
                format!("sub must be 1 to {MAX_USER_ID_LEN} bytes"),
            ));
        }
        Ok(claims)
    }

    /// Verify a connection token.
    pub fn connection(&self, token: &str) -> Result<Identity, Refusal> {
        let claims = self.decode(token)?;
        if claims.channel.is_some() {
            return Err(Refusal::new(
                ErrorCode::TokenInvalid,
                "a subscription token (with a channel claim) cannot open a connection",
            ));
        }
        Ok(Identity {
            user_id: claims.sub.map(Arc::from),
            channels: claims.channels.iter().map(|p| Pattern::new(p)).collect(),
            roles: claims.roles,
            permissions: claims.permissions,
            info: claims.info.as_ref().map(RawJson::from_value),
            expires_at: claims.exp,
        })
    }

    /// Verify a subscription token.
    pub fn subscription(&self, token: &str) -> Result<SubscriptionGrant, Refusal> {
        let claims = self.decode(token)?;
        let Some(channel) = claims.channel else {
            return Err(Refusal::new(
                ErrorCode::TokenInvalid,
                "a subscription token needs a channel claim",
            ));
        };
        Ok(SubscriptionGrant {
            channel,
            user_id: claims.sub.map(Arc::from),
            roles: claims.roles,
            permissions: claims.permissions,
            info: claims.info.as_ref().map(RawJson::from_value),
        })
    }
}

/// Decide whether a connection with `identity` may subscribe to `channel`, optionally
/// presenting a subscription `token`.
pub fn authorize_channel(
    app: &AppSettings,
    verifier: &TokenVerifier,
    identity: Option<&Identity>,
    channel: &ChannelName,
    token: Option<&str>,
) -> Result<ChannelAccess, Refusal> {
    let kind = channel.kind();
    let grant = token.map(|t| verifier.subscription(t)).transpose()?;
    if let Some(g) = &grant {
        if g.channel != channel.as_str() {
            return Err(Refusal::new(
                ErrorCode::ChannelNotAllowed,
                "the subscription token is for another channel",
            ));
        }
        if let (Some(granted), Some(Some(connected))) =
            (&g.user_id, identity.map(|i| i.user_id.as_ref()))
            && granted != connected
        {
            return Err(Refusal::new(
                ErrorCode::TokenInvalid,
                "the subscription token is for another user",
            ));
        }
    }
    if let Some(id) = identity
        && id.expires_at.saturating_add(verifier.leeway) < unix_secs()
    {
        return Err(Refusal::new(
            ErrorCode::TokenExpired,
            "the connection token has expired; reconnect with a fresh one",
        ));
    }
    if kind.is_protected() && grant.is_none() {
        let Some(id) = identity else {
            return Err(Refusal::new(
                ErrorCode::Unauthorized,
                "private and presence channels need a connection or subscription token",
            ));
        };
        if !id.channels.iter().any(|p| p.matches(channel.as_str())) {
            return Err(Refusal::new(
                ErrorCode::ChannelNotAllowed,
                format!("the token does not allow channel {channel}"),
            ));
        }
    }
    let has = |list_of: fn(&Identity) -> &Vec<String>,
               grant_list: Option<&Vec<String>>,
               wanted: &String| {
        identity.is_some_and(|i| list_of(i).contains(wanted))
            || grant_list.is_some_and(|g| g.contains(wanted))
    };
    for rule in app
        .channel_rules
        .iter()
        .filter(|r| r.pattern.matches(channel.as_str()))
    {
        let roles_ok = rule.roles.is_empty()
            || rule
                .roles
                .iter()
                .any(|r| has(|i| &i.roles, grant.as_ref().map(|g| &g.roles), r));
        let perms_ok = rule.permissions.iter().all(|p| {
            has(
                |i| &i.permissions,
                grant.as_ref().map(|g| &g.permissions),
                p,
            )
        });
        if !roles_ok || !perms_ok {
            return Err(Refusal::new(
                ErrorCode::PermissionDenied,
                format!(
                    "channel {channel} needs {}",
                    describe_rule(&rule.roles, &rule.permissions)
                ),
            ));
        }
    }
    let user_id = grant
        .as_ref()
        .and_then(|g| g.user_id.clone())
        .or_else(|| identity.and_then(|i| i.user_id.clone()));
    if kind.is_presence() && user_id.is_none() {
        return Err(Refusal::new(
            ErrorCode::Unauthorized,
            "presence channels need a user id (the token's sub claim)",
        ));
    }
    let info = grant
        .and_then(|g| g.info)
        .or_else(|| identity.and_then(|i| i.info.clone()));
    Ok(ChannelAccess { user_id, info })
}

fn describe_rule(roles: &[String], permissions: &[String]) -> String {
    let mut parts = Vec::new();
    if !roles.is_empty() {
        parts.push(format!("one of the roles [{}]", roles.join(", ")));
    }
    if !permissions.is_empty() {
        parts.push(format!("the permissions [{}]", permissions.join(", ")));
    }
    parts.join(" and ")
}

/// Sign `claims` for `app`: HS256 with the app secret, or RS256/ES256 with `private_key_pem`.
/// Used by `herald token` and by tests.
pub fn mint_token(
    app: &AppSettings,
    claims: &TokenClaims,
    private_key_pem: Option<&str>,
) -> Result<String, String> {
    let alg = app.jwt.algorithm;
    let key = match alg {
        JwtAlgorithm::Hs256 => EncodingKey::from_secret(app.secret.expose().as_bytes()),
        JwtAlgorithm::Rs256 | JwtAlgorithm::Es256 => {
            let pem = private_key_pem
                .ok_or_else(|| format!("{alg:?} tokens need a private key to sign with"))?;
            let parsed = if alg == JwtAlgorithm::Rs256 {
                EncodingKey::from_rsa_pem(pem.as_bytes())
            } else {
                EncodingKey::from_ec_pem(pem.as_bytes())
            };
            parsed.map_err(|e| format!("invalid private key PEM: {e}"))?
        }
    };
    jsonwebtoken::encode(&Header::new(algorithm(alg)), claims, &key)
        .map_err(|e| format!("cannot sign token: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::ChannelRule;

    fn app() -> AppSettings {
        let mut app = AppSettings::development();
        app.channel_rules.push(ChannelRule {
            pattern: Pattern::new("private-admin.*"),
            roles: vec!["admin".into(), "ops".into()],
            permissions: vec!["audit".into()],
        });
        app
    }

    fn token(app: &AppSettings, f: impl FnOnce(&mut TokenClaims)) -> String {
        let mut c = TokenClaims {
            sub: Some("u1".into()),
            exp: unix_secs() + 60,
            ..Default::default()
        };
        f(&mut c);
        mint_token(app, &c, None).unwrap()
    }

    fn check(
        app: &AppSettings,
        conn: Option<&str>,
        channel: &str,
        sub: Option<&str>,
    ) -> Result<ChannelAccess, ErrorCode> {
        let v = TokenVerifier::new(&app.jwt, &app.secret).unwrap();
        let id = conn
            .map(|t| v.connection(t))
            .transpose()
            .map_err(|r| r.code)?;
        authorize_channel(
            app,
            &v,
            id.as_ref(),
            &ChannelName::new(channel).unwrap(),
            sub,
        )
        .map_err(|r| r.code)
    }

    #[test]
    fn token_failures_have_their_own_codes() {
        let app = app();
        let v = TokenVerifier::new(&app.jwt, &app.secret).unwrap();
        let expired = token(&app, |c| c.exp = unix_secs() - 120);
        assert_eq!(
            v.connection(&expired).unwrap_err().code,
            ErrorCode::TokenExpired
        );
        let mut other = app.clone();
        other.secret = Secret::new("another-secret");
        let forged = token(&other, |_| {});
        assert_eq!(
            v.connection(&forged).unwrap_err().code,
            ErrorCode::BadSignature
        );
        assert_eq!(
            v.connection("garbage").unwrap_err().code,
            ErrorCode::TokenInvalid
        );
        let sub_token = token(&app, |c| c.channel = Some("private-a".into()));
        assert_eq!(
            v.connection(&sub_token).unwrap_err().code,
            ErrorCode::TokenInvalid
        );
        assert_eq!(
            v.connection(&token(&app, |c| c.info = Some(serde_json::json!({"n": 1}))))
                .unwrap()
                .info
                .unwrap()
                .as_str(),
            r#"{"n":1}"#
        );
    }

    #[test]
    fn channel_access_follows_patterns_rules_and_grants() {
        let app = app();
        let orders = token(&app, |c| c.channels = vec!["private-orders.*".into()]);
        assert!(check(&app, None, "news", None).is_ok());
        assert_eq!(
            check(&app, None, "private-orders.1", None).unwrap_err(),
            ErrorCode::Unauthorized
        );
        assert!(check(&app, Some(&orders), "private-orders.1", None).is_ok());
        assert_eq!(
            check(&app, Some(&orders), "private-other", None).unwrap_err(),
            ErrorCode::ChannelNotAllowed
        );
        let admin_no_perm = token(&app, |c| {
            c.channels = vec!["private-admin.*".into()];
            c.roles = vec!["ops".into()];
        });
        assert_eq!(
            check(&app, Some(&admin_no_perm), "private-admin.x", None).unwrap_err(),
            ErrorCode::PermissionDenied
        );
        let admin = token(&app, |c| {
            c.channels = vec!["private-admin.*".into()];
            c.roles = vec!["ops".into()];
            c.permissions = vec!["audit".into()];
        });
        assert!(check(&app, Some(&admin), "private-admin.x", None).is_ok());
        // A subscription token for exactly this channel works without a connection token.
        let grant = token(&app, |c| c.channel = Some("presence-room".into()));
        let access = check(&app, None, "presence-room", Some(&grant)).unwrap();
        assert_eq!(access.user_id.as_deref(), Some("u1"));
        assert_eq!(
            check(&app, None, "presence-other", Some(&grant)).unwrap_err(),
            ErrorCode::ChannelNotAllowed
        );
        // Presence needs a user.
        let anon = token(&app, |c| {
            c.sub = None;
            c.channels = vec!["presence-*".into()];
        });
        assert_eq!(
            check(&app, Some(&anon), "presence-room", None).unwrap_err(),
            ErrorCode::Unauthorized
        );
    }
}
