//! Connection and subscription tokens: HS256, RS256, ES256; expiry, signatures, channel
//! patterns, role rules; unknown apps and origins.

use herald_core::auth::mint_token;
use herald_core::clock::unix_secs;
use herald_core::pattern::Pattern;
use herald_core::settings::{ChannelRule, JwtAlgorithm};
use herald_protocol::token::TokenClaims;
use serde_json::json;

use crate::harness::{APP_KEY, Client, TestServer, test_app};

#[tokio::test]
async fn valid_token_identifies_the_user() {
    let server = TestServer::start().await;
    let t = server.token(|c| c.sub = Some("ann".into()));
    let mut c = Client::open(&server.ws_url(APP_KEY, Some(&t)), &[]).await;
    let hello = c.recv().await;
    assert_eq!(hello.data["user_id"], "ann");
    // The token may also come in an Authorization header.
    let mut c = Client::open(
        &server.ws_url(APP_KEY, None),
        &[("authorization", &format!("Bearer {t}"))],
    )
    .await;
    assert_eq!(c.recv().await.data["user_id"], "ann");
}

#[tokio::test]
async fn expired_and_forged_tokens_are_refused_with_their_own_codes() {
    let server = TestServer::start().await;
    let expired = server.token(|c| {
        c.sub = Some("ann".into());
        c.exp = unix_secs() - 600;
    });
    server
        .expect_refused(APP_KEY, Some(&expired), 202, 4005)
        .await;
    let mut other = test_app();
    other.secret = herald_core::Secret::new("not-the-right-secret");
    let forged = mint_token(
        &other,
        &TokenClaims {
            sub: Some("x".into()),
            exp: unix_secs() + 60,
            ..Default::default()
        },
        None,
    )
    .unwrap();
    server
        .expect_refused(APP_KEY, Some(&forged), 203, 4004)
        .await;
    server
        .expect_refused(APP_KEY, Some("not.a.jwt"), 204, 4004)
        .await;
    server.expect_refused("no-such-key", None, 201, 4001).await;
}

#[tokio::test]
async fn require_token_refuses_anonymous_connections() {
    let server = TestServer::with(|c| c.apps[0].require_token = true).await;
    server.expect_refused(APP_KEY, None, 200, 4004).await;
}

#[tokio::test]
async fn disabled_app_and_foreign_origin_are_refused() {
    let server = TestServer::with(|c| {
        c.apps[0].allowed_origins = vec![Pattern::new("https://*.example.com")];
    })
    .await;
    let mut ok = Client::open(
        &server.ws_url(APP_KEY, None),
        &[("origin", "https://app.example.com")],
    )
    .await;
    assert_eq!(ok.recv().await.kind, "connected");
    let mut bad = Client::open(
        &server.ws_url(APP_KEY, None),
        &[("origin", "https://evil.test")],
    )
    .await;
    assert_eq!(bad.recv().await.data["code"], 207);
    bad.expect_close(4006).await;

    let server = TestServer::with(|c| c.apps[0].enabled = false).await;
    server.expect_refused(APP_KEY, None, 208, 4003).await;
}

#[tokio::test]
async fn channel_patterns_decide_private_channels() {
    let server = TestServer::start().await;
    let mut anon = server.connect().await;
    assert_eq!(anon.subscribe("private-orders.1").await.data["code"], 200);
    let t = server.token(|c| {
        c.sub = Some("ann".into());
        c.channels = vec!["private-orders.*".into()];
    });
    let mut ann = server.connect_with(Some(&t)).await;
    ann.subscribe_ok("private-orders.42").await;
    let e = ann.subscribe("private-invoices.1").await;
    assert_eq!(e.kind, "error");
    assert_eq!(e.data["code"], 205);
    assert_eq!(e.event.as_deref(), Some("channel_not_allowed"));
    assert_eq!(e.channel.as_deref(), Some("private-invoices.1"));
    // Public channels are open to everyone.
    anon.subscribe_ok("news").await;
}

#[tokio::test]
async fn role_rules_guard_matching_channels() {
    let server = TestServer::with(|c| {
        c.apps[0].channel_rules = vec![
            ChannelRule {
                pattern: Pattern::new("private-admin.*"),
                roles: vec!["admin".into()],
                permissions: vec![],
            },
            ChannelRule {
                pattern: Pattern::new("reports.*"),
                roles: vec![],
                permissions: vec!["reports:read".into()],
            },
        ];
    })
    .await;
    let user = server.token(|c| {
        c.sub = Some("u".into());
        c.channels = vec!["private-*".into()];
        c.roles = vec!["staff".into()];
    });
    let admin = server.token(|c| {
        c.sub = Some("a".into());
        c.channels = vec!["private-*".into()];
        c.roles = vec!["admin".into()];
        c.permissions = vec!["reports:read".into()];
    });
    let mut u = server.connect_with(Some(&user)).await;
    assert_eq!(u.subscribe("private-admin.panel").await.data["code"], 206);
    assert_eq!(u.subscribe("reports.daily").await.data["code"], 206);
    u.subscribe_ok("private-staff").await;
    let mut a = server.connect_with(Some(&admin)).await;
    a.subscribe_ok("private-admin.panel").await;
    a.subscribe_ok("reports.daily").await;
}

#[tokio::test]
async fn subscription_token_grants_exactly_one_channel() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    let grant = server.token(|c| {
        c.sub = Some("ann".into());
        c.channel = Some("private-doc.7".into());
    });
    let reply = c
        .subscribe_with(json!({"type": "subscribe", "channel": "private-doc.7", "token": grant}))
        .await;
    assert_eq!(reply.kind, "subscribe", "{reply:?}");
    let reply = c
        .subscribe_with(json!({"type": "subscribe", "channel": "private-doc.8", "token": grant}))
        .await;
    assert_eq!(reply.data["code"], 205);
    let expired = server.token(|c| {
        c.channel = Some("private-doc.9".into());
        c.exp = unix_secs() - 600;
    });
    let reply = c
        .subscribe_with(json!({"type": "subscribe", "channel": "private-doc.9", "token": expired}))
        .await;
    assert_eq!(reply.data["code"], 202);
    // A connection token is not a subscription token.
    let conn_token = server.token(|c| c.channels = vec!["*".into()]);
    let reply = c
        .subscribe_with(
            json!({"type": "subscribe", "channel": "private-doc.9", "token": conn_token}),
        )
        .await;
    assert_eq!(reply.data["code"], 204);
}

/// A 2048-bit RSA key pair generated for these tests only (openssl genrsa 2048).
const RSA_PRIVATE: &str = include_str!("../fixtures/rsa-test-private.pem");
const RSA_PUBLIC: &str = include_str!("../fixtures/rsa-test-public.pem");

#[tokio::test]
async fn rs256_and_es256_tokens_verify_with_the_configured_public_key() {
    let server = TestServer::with(|c| {
        c.apps[0].jwt.algorithm = JwtAlgorithm::Rs256;
        c.apps[0].jwt.public_key = Some(RSA_PUBLIC.into());
    })
    .await;
    let mut app = test_app();
    app.jwt.algorithm = JwtAlgorithm::Rs256;
    let claims = TokenClaims {
        sub: Some("rsa-user".into()),
        exp: unix_secs() + 60,
        ..Default::default()
    };
    let t = mint_token(&app, &claims, Some(RSA_PRIVATE)).unwrap();
    let c = server.connect_with(Some(&t)).await;
    drop(c);
    // An HS256 token signed with the secret is refused by an RS256 app.
    let hs = server.token(|c| c.sub = Some("x".into()));
    server.expect_refused(APP_KEY, Some(&hs), 204, 4004).await;

    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let public = key.public_key_pem();
    let private = key.serialize_pem();
    let server = TestServer::with(|c| {
        c.apps[0].jwt.algorithm = JwtAlgorithm::Es256;
        c.apps[0].jwt.public_key = Some(public.clone());
    })
    .await;
    app.jwt.algorithm = JwtAlgorithm::Es256;
    let t = mint_token(&app, &claims, Some(&private)).unwrap();
    let mut c = Client::open(&server.ws_url(APP_KEY, Some(&t)), &[]).await;
    assert_eq!(c.recv().await.data["user_id"], "rsa-user");
}
