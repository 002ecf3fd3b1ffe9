//! The core's conformance suites against the Redis backends, on the real Redis at
//! `HERALD_TEST_REDIS` (default `redis://127.0.0.1:6379`). Each run uses its own key prefix.
//! Under `CI=true` an unreachable Redis fails the test; elsewhere it is skipped with a
//! printed reason.

use std::sync::Arc;
use std::time::Duration;

use herald_cluster::nats::{NatsBroker, NatsSettings};
use herald_cluster::redis::{RedisCluster, RedisSettings};
use herald_core::broker::Broker;
use herald_core::conformance::{broker_suite, presence_suite};
use herald_core::history::HistoryStore;
use herald_core::presence::PresenceManager;

#[path = "support/common.rs"]
mod common;

fn cluster(prefix: &str) -> RedisCluster {
    let settings = RedisSettings {
        url: common::redis_url(),
        prefix: prefix.to_owned(),
        ..RedisSettings::default()
    };
    RedisCluster::new(settings, Arc::from(common::unique("node"))).expect("valid settings")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_broker_and_history_conform() {
    if !common::redis_available().await {
        return;
    }
    broker_suite(|| async {
        let c = cluster(&common::unique("herald-test"));
        assert!(
            c.wait_connected(Duration::from_secs(5)).await,
            "Redis connects"
        );
        (
            Arc::new(c.broker()) as Arc<dyn Broker>,
            Arc::new(c.history()) as Arc<dyn HistoryStore>,
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_presence_conforms() {
    if !common::redis_available().await {
        return;
    }
    presence_suite(|| async {
        let c = cluster(&common::unique("herald-test"));
        assert!(
            c.wait_connected(Duration::from_secs(5)).await,
            "Redis connects"
        );
        c.backends().presence as Arc<dyn PresenceManager>
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nats_broker_with_redis_history_conforms() {
    if !common::redis_available().await
        || !common::service_available("NATS", "127.0.0.1:4222").await
    {
        return;
    }
    broker_suite(|| async {
        let prefix = common::unique("herald-test");
        let c = cluster(&prefix);
        assert!(
            c.wait_connected(Duration::from_secs(5)).await,
            "Redis connects"
        );
        let nats = NatsBroker::new(
            NatsSettings {
                url: "nats://127.0.0.1:4222".into(),
                prefix,
                timeout: Duration::from_secs(2),
            },
            c.stream_log(),
        );
        (
            Arc::new(nats) as Arc<dyn Broker>,
            Arc::new(c.history()) as Arc<dyn HistoryStore>,
        )
    })
    .await;
}
