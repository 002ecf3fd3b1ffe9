//! Presence: sync on join, joined/left with several users, one member per user however
//! many tabs, and the API's member list.

use std::time::Duration;

use serde_json::json;

use crate::harness::{Client, TestServer};

fn user_token(server: &TestServer, user: &str, name: &str) -> String {
    server.token(|c| {
        c.sub = Some(user.into());
        c.channels = vec!["presence-room.*".into()];
        c.info = Some(json!({"name": name}));
    })
}

async fn join(server: &TestServer, user: &str, name: &str) -> (Client, serde_json::Value) {
    let mut c = server
        .connect_with(Some(&user_token(server, user, name)))
        .await;
    c.subscribe_ok("presence-room.1").await;
    let sync = c.recv().await;
    assert_eq!(sync.kind, "presence");
    assert_eq!(sync.event.as_deref(), Some("sync"));
    (c, sync.data)
}

#[tokio::test]
async fn sync_joined_and_left_with_two_users() {
    let server = TestServer::start().await;
    let (mut ann, sync) = join(&server, "ann", "Ann").await;
    assert_eq!(
        sync,
        json!({"members": [{"user_id": "ann", "info": {"name": "Ann"}}], "count": 1})
    );

    let (mut bob, sync) = join(&server, "bob", "Bob").await;
    assert_eq!(sync["count"], 2);
    let ids: Vec<_> = sync["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user_id"].clone())
        .collect();
    assert_eq!(ids, [json!("ann"), json!("bob")]);

    let joined = ann.recv().await;
    assert_eq!(joined.kind, "presence");
    assert_eq!(joined.event.as_deref(), Some("joined"));
    assert_eq!(
        joined.data,
        json!({"user_id": "bob", "info": {"name": "Bob"}})
    );
    // Bob does not hear about his own join.
    bob.expect_silence(Duration::from_millis(200)).await;

    drop(bob);
    let left = ann.recv().await;
    assert_eq!(left.event.as_deref(), Some("left"));
    assert_eq!(left.data, json!({"user_id": "bob"}));
}

#[tokio::test]
async fn several_tabs_of_one_user_count_once() {
    let server = TestServer::start().await;
    let (mut watcher, _) = join(&server, "watcher", "W").await;
    let (tab1, _) = join(&server, "ann", "Ann").await;
    assert_eq!(watcher.recv().await.event.as_deref(), Some("joined"));
    let (tab2, sync) = join(&server, "ann", "Ann").await;
    assert_eq!(sync["count"], 2, "ann once, watcher once: {sync}");
    // The second tab announces nothing.
    watcher.expect_silence(Duration::from_millis(300)).await;

    let (status, body) = server
        .api("GET", "channels/presence-room.1/presence", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["count"], 2);
    let (_, info) = server.api("GET", "channels/presence-room.1", None).await;
    assert_eq!(info["subscribers"], 3);
    assert_eq!(info["presence_members"], 2);

    // Closing one tab: still present. Closing the last: left.
    drop(tab1);
    watcher.expect_silence(Duration::from_millis(300)).await;
    drop(tab2);
    let left = watcher.recv().await;
    assert_eq!(left.event.as_deref(), Some("left"));
    assert_eq!(left.data["user_id"], "ann");
}

#[tokio::test]
async fn presence_needs_a_user_and_respects_the_member_limit() {
    let server = TestServer::with(|c| c.apps[0].limits.max_presence_members = 1).await;
    let anon = server.token(|c| c.channels = vec!["presence-*".into()]);
    let mut c = server.connect_with(Some(&anon)).await;
    let e = c.subscribe("presence-room.1").await;
    assert_eq!(e.kind, "error");
    assert_eq!(e.data["code"], 200);

    let (_ann, _) = join(&server, "ann", "Ann").await;
    let mut bob = server
        .connect_with(Some(&user_token(&server, "bob", "Bob")))
        .await;
    let e = bob.subscribe("presence-room.1").await;
    assert_eq!(e.data["code"], 305);
    // Ann's second tab still fits: she is already a member.
    let (_ann2, sync) = join(&server, "ann", "Ann").await;
    assert_eq!(sync["count"], 1);
}

#[tokio::test]
async fn unsubscribe_from_presence_announces_left() {
    let server = TestServer::start().await;
    let (mut ann, _) = join(&server, "ann", "Ann").await;
    let (mut bob, _) = join(&server, "bob", "Bob").await;
    assert_eq!(ann.recv().await.event.as_deref(), Some("joined"));
    bob.send(json!({"type": "unsubscribe", "channel": "presence-room.1"}))
        .await;
    assert_eq!(bob.recv().await.kind, "unsubscribe");
    let left = ann.recv().await;
    assert_eq!(
        (left.event.as_deref(), left.data["user_id"].as_str()),
        (Some("left"), Some("bob"))
    );
}
