//! Live token refresh (`{"type":"refresh","token":…}`) and the enforcement of a token's
//! expiry on open connections (`[apps.token_expiry]`).

use std::time::Duration;

use herald_core::clock::unix_secs;
use herald_core::settings::TokenExpiry;
use serde_json::json;

use crate::harness::{Ended, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refreshed_connection_outlives_its_first_token_and_the_others_are_closed() {
    let server = TestServer::with(|c| {
        c.apps[0].token_expiry = TokenExpiry {
            enforce: true,
            grace: Duration::from_secs(1),
        };
        c.limits.ping_interval = Duration::from_secs(1);
        c.limits.activity_timeout = Duration::from_secs(30);
    })
    .await;
    let short = |user: &str| {
        let user = user.to_owned();
        server.token(move |c| {
            c.sub = Some(user);
            c.exp = unix_secs() + 2;
            c.channels = vec!["private-*".into()];
        })
    };
    let mut kept = server.connect_with(Some(&short("ann"))).await;
    let mut lapsed = server.connect_with(Some(&short("ann"))).await;
    let mut wrong = server.connect_with(Some(&short("ann"))).await;
    kept.subscribe_ok("private-feed").await;

    // Refreshed before expiry: the reply says until when.
    let exp = unix_secs() + 300;
    let long = server.token(|c| {
        c.sub = Some("ann".into());
        c.exp = exp;
        c.channels = vec!["private-*".into()];
    });
    kept.send(json!({"type": "refresh", "token": long, "ref": 1}))
        .await;
    let reply = kept.recv_non_ping().await;
    assert_eq!(
        (reply.kind.as_str(), reply.event.as_deref()),
        ("refresh", Some("refreshed")),
        "{reply:?}"
    );
    assert_eq!(reply.data["expires_at"], exp);

    // A refresh for another user, or a bad token, is refused and changes nothing.
    let bob = server.token(|c| {
        c.sub = Some("bob".into());
        c.exp = unix_secs() + 300;
    });
    wrong.send(json!({"type": "refresh", "token": bob})).await;
    let e = wrong.recv_non_ping().await;
    assert_eq!(
        (e.kind.as_str(), &e.data["code"]),
        ("error", &json!(204)),
        "{e:?}"
    );
    wrong
        .send(json!({"type": "refresh", "token": "not.a.token"}))
        .await;
    assert_eq!(wrong.recv_non_ping().await.kind, "error");
    wrong.subscribe_ok("private-still-ann").await;

    // At expiry the others get the hint, then the close after the grace period.
    for c in [&mut lapsed, &mut wrong] {
        let hint = tokio::time::timeout(Duration::from_secs(6), c.recv_non_ping())
            .await
            .expect("a hint");
        assert_eq!(
            (hint.kind.as_str(), hint.event.as_deref()),
            ("refresh", Some("required")),
            "{hint:?}"
        );
        assert_eq!(hint.data["grace_seconds"], 1);
        match c.ended().await {
            Ended::Closed(code, _) => assert_eq!(code, 4005),
            Ended::Dropped => panic!("closed without a code"),
        }
    }
    // The refreshed one is still there, and still receives.
    server
        .publish("private-feed", "tick", json!({"n": 1}))
        .await;
    let event = kept.recv_non_ping().await;
    assert_eq!(
        (event.kind.as_str(), &event.data["n"]),
        ("event", &json!(1)),
        "{event:?}"
    );
}
