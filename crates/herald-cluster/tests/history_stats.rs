//! `RedisHistory::stats` on a private `redis-server` (so no other test's keys or commands
//! count): repeated calls within the cache's lifetime scan the keyspace once per app filter.
//! Under `CI=true` a missing `redis-server` binary fails the test; elsewhere it is skipped
//! with a printed reason.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use herald_cluster::redis::{RedisCluster, RedisSettings};
use herald_core::EventData;
use herald_core::history::{HistoryPolicy, HistoryStore};
use herald_core::publication::{Payload, Publication};
use herald_protocol::ChannelName;

#[path = "support/common.rs"]
mod common;

/// A private `redis-server`, killed when dropped.
struct PrivateRedis {
    /// Its port on 127.0.0.1.
    port: u16,
    /// The process.
    child: Child,
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start a private redis-server and wait until it accepts connections; `None` (skip) when
/// the binary is missing, a failure under `CI=true`.
async fn private_redis() -> Option<PrivateRedis> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let spawned = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(child) = spawned else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("redis-server is not installed, and CI=true");
        }
        eprintln!("SKIPPED: redis-server is not installed");
        return None;
    };
    let redis = PrivateRedis { port, child };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "redis-server starts"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Some(redis)
}

/// How many SCAN commands the server has run (`INFO commandstats`).
async fn scans(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_scan:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

fn event(app: &str, channel: &ChannelName, n: u32) -> Publication {
    Publication::new(
        Arc::from(app),
        channel.clone(),
        Arc::from(format!("id-{n}")),
        Payload::Event {
            event: Arc::from("e"),
            data: EventData::Text(Arc::from(n.to_string())),
            user_id: None,
        },
        None,
        1,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_scan_redis_once_per_filter_within_the_cache_lifetime() {
    let Some(redis) = private_redis().await else {
        return;
    };
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let settings = RedisSettings {
        url: url.clone(),
        prefix: common::unique("herald-test"),
        ..RedisSettings::default()
    };
    let cluster = RedisCluster::new(settings, Arc::from("node")).expect("valid settings");
    assert!(cluster.wait_connected(Duration::from_secs(5)).await);
    let log = cluster.stream_log();
    let policy = HistoryPolicy {
        size: 10,
        ttl: Duration::from_secs(60),
        dedupe_window: None,
    };
    for (app, channel, n) in [("a", "one", 1), ("a", "one", 2), ("b", "two", 3)] {
        let channel = ChannelName::new(channel).unwrap();
        let p = event(app, &channel, n);
        let body = herald_cluster::envelope::encode_publication(&p);
        log.append(&p, &body, &policy, None).await.unwrap();
    }
    let mut conn = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let history = Arc::new(cluster.history());
    let before = scans(&mut conn).await;

    for _ in 0..3 {
        let all = history.stats(None).await.unwrap();
        assert_eq!((all.streams, all.publications), (2, 3), "{all:?}");
    }
    assert_eq!(
        scans(&mut conn).await - before,
        1,
        "one scan for three calls"
    );

    let calls: Vec<_> = (0..5)
        .map(|_| {
            let history = history.clone();
            tokio::spawn(async move { history.stats(Some("a")).await.unwrap() })
        })
        .collect();
    for call in calls {
        let a = call.await.unwrap();
        assert_eq!((a.streams, a.publications), (1, 2), "{a:?}");
    }
    assert_eq!(
        scans(&mut conn).await - before,
        2,
        "the app filter has its own figures, taken once for concurrent callers"
    );
    history.stats(None).await.unwrap();
    assert_eq!(scans(&mut conn).await - before, 2, "still cached");
}
