//! History on a paired broker (PostgreSQL `LISTEN`/`NOTIFY` fan-out, Redis history): a
//! publication whose send fails after its history append must not stay in history, and must
//! not make a retry look like a duplicate.
//!
//! Under `CI=true` an unreachable Redis or PostgreSQL fails these tests; elsewhere they are
//! skipped with a printed reason.

use std::process::Command;
use std::time::Duration;

use herald_core::settings::HistoryRule;
use herald_server::config::BrokerKind;
use serde_json::{Value, json};

use crate::cluster::{on_redis, redis_available, service_available, unique_prefix, wait_ready};
use crate::harness::{Client, TestServer};

const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Run `sql` on the test database with `psql` (the server tests have no PostgreSQL client).
fn psql(sql: &str) {
    let out = Command::new("psql")
        .args([POSTGRES_URL, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .output()
        .expect("psql is installed");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The broker's table of payloads too large for a `NOTIFY`, as the broker creates it.
fn create_payloads(table: &str) {
    psql(&format!(
        "CREATE TABLE IF NOT EXISTS {table} (id bigserial PRIMARY KEY, body text NOT NULL, \
         created_at timestamptz NOT NULL DEFAULT now())"
    ));
}

/// The offsets and `data.n` of a channel's history.
async fn history(server: &TestServer, channel: &str) -> Vec<(u64, u64)> {
    let (status, body) = server
        .api("GET", &format!("channels/{channel}/history"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    body["publications"]
        .as_array()
        .expect("publications")
        .iter()
        .map(|p| {
            (
                p["offset"].as_u64().unwrap(),
                p["data"]["n"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Publish `{"n": n, "pad": pad}` on `feed`: `(status, body)`.
async fn publish(server: &TestServer, n: u64, pad: &str) -> (u16, Value) {
    let body = json!({"channel": "feed", "event": "tick", "data": {"n": n, "pad": pad}});
    server.api("POST", "publish", Some(body)).await
}

/// The next event's `(offset, data.n)`.
async fn next_event(c: &mut Client) -> (u64, u64) {
    let m = c.recv_non_ping().await;
    assert_eq!(m.kind, "event", "{m:?}");
    (m.offset.expect("offset"), m.data["n"].as_u64().expect("n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_failed_send_is_withdrawn_from_history_and_a_retry_is_sent() {
    if !redis_available().await || !service_available("PostgreSQL", "127.0.0.1:5432").await {
        return;
    }
    let prefix = unique_prefix();
    let pg_prefix = format!("herald_ph_{}_{}", std::process::id(), rand::random::<u32>());
    let table = format!("{pg_prefix}_payloads");
    let server = TestServer::with({
        let pg_prefix = pg_prefix.clone();
        move |c| {
            on_redis(c, &prefix);
            c.broker.kind = BrokerKind::Postgres;
            c.postgres.url = herald_core::Secret::new(POSTGRES_URL);
            c.postgres.prefix = pg_prefix;
            let mut rule = HistoryRule::new("feed");
            rule.dedupe_window = Some(Duration::from_secs(60));
            c.apps[0].history = vec![rule];
        }
    })
    .await;
    wait_ready(&server).await;
    let mut live = server.connect().await;
    live.subscribe_ok("feed").await;
    let (status, body) = publish(&server, 1, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(next_event(&mut live).await, (1, 1));
    let epoch = body["positions"]["feed"]["epoch"]
        .as_str()
        .unwrap()
        .to_owned();

    // Too large for a NOTIFY: it goes through the payload table, which is gone, so the send
    // fails after the history append.
    let large = "x".repeat(9_000);
    psql(&format!("DROP TABLE {table}"));
    let (status, body) = publish(&server, 2, &large).await;
    assert!(status >= 500, "the send failed: {status} {body}");
    assert_eq!(
        history(&server, "feed").await,
        vec![(1, 1)],
        "a publication the API reported as failed is not in history"
    );

    // The same payload again, once the table is back: sent, not taken for a duplicate of the
    // refused one.
    create_payloads(&table);
    let (status, body) = publish(&server, 2, &large).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("unchanged").is_none(), "a retry is sent: {body}");
    assert_eq!(body["positions"]["feed"]["offset"], 3, "{body}");
    let (status, body) = publish(&server, 4, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["positions"]["feed"]["offset"], 4, "{body}");
    assert_eq!(history(&server, "feed").await, vec![(1, 1), (3, 2), (4, 4)]);
    assert_eq!(
        next_event(&mut live).await,
        (3, 2),
        "the refused one never arrives"
    );
    assert_eq!(next_event(&mut live).await, (4, 4));

    // Recovery from before the gap replays what was accepted, nothing else.
    let mut recovering = server.connect().await;
    let reply = recovering
        .subscribe_with(json!({"type": "subscribe", "channel": "feed",
            "since": {"offset": 1, "epoch": epoch}}))
        .await;
    assert_eq!(reply.kind, "subscribe", "{reply:?}");
    assert_eq!(
        reply.data,
        json!({"offset": 4, "epoch": epoch, "recovered": true, "replayed": 2})
    );
    assert_eq!(next_event(&mut recovering).await, (3, 2));
    assert_eq!(next_event(&mut recovering).await, (4, 4));
    recovering.expect_silence(Duration::from_millis(200)).await;
    psql(&format!("DROP TABLE IF EXISTS {table}"));
}
