//! `history.store = "disk"`: clients recover across a restart of a single node, and a node
//! killed with SIGKILL loses exactly what docs/operations.md says its fsync policy loses.

use std::path::Path;

use herald_core::settings::HistoryRule;
use serde_json::{Value, json};

use crate::harness::{APP_ID, APP_KEY, HeraldProcess, SECRET, TestServer, http};
use herald_server::config::HistoryStoreKind;

async fn server_on_disk(dir: &Path) -> TestServer {
    let dir = dir.to_owned();
    TestServer::with(move |c| {
        c.history.store = HistoryStoreKind::Disk;
        c.history.path = dir;
        c.apps[0].history = vec![HistoryRule::new("feed")];
    })
    .await
}

/// The next event's `(offset, epoch, data.n)`.
async fn next_event(c: &mut crate::harness::Client) -> (u64, String, u64) {
    let m = c.recv_non_ping().await;
    assert_eq!(m.kind, "event", "{m:?}");
    (
        m.offset.expect("offset"),
        m.epoch.clone().expect("epoch"),
        m.data["n"].as_u64().expect("n"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_recovers_across_a_restart_with_the_same_epoch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut first = server_on_disk(dir.path()).await;
    let mut c = first.connect().await;
    let reply = c.subscribe("feed").await;
    let epoch = reply.data["epoch"].as_str().expect("epoch").to_owned();
    for n in 1..=3 {
        first.publish("feed", "tick", json!({ "n": n })).await;
    }
    for n in 1..=3 {
        assert_eq!(next_event(&mut c).await, (n, epoch.clone(), n));
    }
    first.shutdown().await;
    drop(c);

    let second = server_on_disk(dir.path()).await;
    for n in 4..=5 {
        let reply = second.publish("feed", "tick", json!({ "n": n })).await;
        assert_eq!(
            reply["positions"]["feed"],
            json!({"offset": n, "epoch": epoch}),
            "the restarted node continues the stream"
        );
    }
    let mut c = second.connect().await;
    let reply = c
        .subscribe_with(json!({"type": "subscribe", "channel": "feed",
            "since": {"offset": 3, "epoch": epoch}}))
        .await;
    assert_eq!(
        reply.data,
        json!({"offset": 5, "epoch": epoch, "recovered": true, "replayed": 2}),
        "{reply:?}"
    );
    for n in 4..=5 {
        assert_eq!(next_event(&mut c).await, (n, epoch.clone(), n));
    }
}

async fn spawn(dir: &Path, fsync: &str) -> HeraldProcess {
    let config = dir.join("herald.toml");
    std::fs::write(
        &config,
        format!(
            r#"[history]
store = "disk"
path = "{}"
fsync = "{fsync}"
[[apps]]
id = "{APP_ID}"
key = "{APP_KEY}"
secret = "{SECRET}"
[[apps.history]]
pattern = "feed"
"#,
            dir.join("store").display()
        ),
    )
    .unwrap();
    HeraldProcess::spawn(&config).await
}

async fn publish(node: &HeraldProcess, n: u64) -> Value {
    let (status, reply) = node.publish("feed", "tick", json!({ "n": n })).await;
    assert_eq!(status, 200, "{reply}");
    reply["positions"]["feed"].clone()
}

async fn history(node: &HeraldProcess) -> Value {
    let (status, body, _) = http(
        node.addr.parse().unwrap(),
        "GET",
        &format!("/api/{APP_ID}/channels/feed/history?limit=1000"),
        None,
        Some(SECRET),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkill_every_acknowledged_publication_is_kept_under_either_fsync_policy() {
    // Killing the process loses nothing either way: every commit reaches the operating
    // system before its publish is answered, and the kernel keeps it. (What `fsync = "off"`
    // gives up is a power loss, tested at the store level with a changed boot id.)
    for fsync in ["always", "off"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = spawn(dir.path(), fsync).await;
        let first = publish(&node, 1).await;
        let epoch = first["epoch"].as_str().expect("epoch").to_owned();
        for n in 2..=200 {
            assert_eq!(publish(&node, n).await["offset"], n, "{fsync}");
        }
        drop(node); // SIGKILL, no drain.

        let node = spawn(dir.path(), fsync).await;
        let body = history(&node).await;
        let offsets: Vec<u64> = body["publications"]
            .as_array()
            .expect("publications")
            .iter()
            .map(|p| p["offset"].as_u64().expect("offset"))
            .collect();
        assert_eq!(
            offsets,
            (1..=200).collect::<Vec<_>>(),
            "{fsync}: all 200, in order"
        );
        assert_eq!(body["epoch"], epoch.as_str(), "{fsync}: the same stream");
        assert_eq!(
            publish(&node, 201).await,
            json!({"offset": 201, "epoch": epoch}),
            "{fsync}: no offset is handed out twice"
        );
    }
}
