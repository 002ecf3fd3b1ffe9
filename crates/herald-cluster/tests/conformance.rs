//! The core's conformance suites against the Redis backends, on the real Redis at
//! `HERALD_TEST_REDIS` (default `redis://127.0.0.1:6379`). Each run uses its own key prefix.
//! Under `CI=true` an unreachable Redis fails the test; elsewhere it is skipped with a
//! printed reason.

use std::sync::Arc;
use std::time::Duration;

use herald_cluster::amqp::{AmqpBroker, AmqpSettings};
use herald_cluster::nats::{NatsBroker, NatsSettings};
use herald_cluster::postgres::{PostgresBroker, PostgresSettings};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rabbitmq_broker_with_redis_history_conforms() {
    if !common::redis_available().await
        || !common::service_available("RabbitMQ", "127.0.0.1:5672").await
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
        let amqp = AmqpBroker::new(
            AmqpSettings {
                url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
                exchange: prefix,
                timeout: Duration::from_secs(5),
            },
            c.stream_log(),
        );
        (
            Arc::new(amqp) as Arc<dyn Broker>,
            Arc::new(c.history()) as Arc<dyn HistoryStore>,
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_broker_with_redis_history_conforms() {
    if !common::redis_available().await
        || !common::service_available("PostgreSQL", "127.0.0.1:5432").await
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
        let pg = PostgresBroker::new(
            PostgresSettings {
                url: "postgres://postgres@127.0.0.1:5432/test".into(),
                prefix: format!("herald_test_{}", std::process::id()),
                timeout: Duration::from_secs(5),
            },
            c.stream_log(),
        );
        (
            Arc::new(pg) as Arc<dyn Broker>,
            Arc::new(c.history()) as Arc<dyn HistoryStore>,
        )
    })
    .await;
}

/// Records publications (for the backend-specific checks below).
#[derive(Default)]
struct Collect(parking_lot::Mutex<Vec<Arc<herald_core::Publication>>>);

impl herald_core::broker::BrokerHandler for Collect {
    fn handle_publication(&self, p: Arc<herald_core::Publication>) {
        self.0.lock().push(p);
    }
    fn handle_control(&self, _: herald_core::broker::Control) {}
    fn local_subscribers(&self, _: &str, _: &herald_protocol::ChannelName) -> usize {
        1
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_carries_payloads_larger_than_a_notify_through_its_table() {
    if !common::redis_available().await
        || !common::service_available("PostgreSQL", "127.0.0.1:5432").await
    {
        return;
    }
    let c = cluster(&common::unique("herald-test"));
    assert!(c.wait_connected(Duration::from_secs(5)).await);
    let pg = PostgresBroker::new(
        PostgresSettings {
            url: "postgres://postgres@127.0.0.1:5432/test".into(),
            prefix: format!("herald_big_{}", std::process::id()),
            timeout: Duration::from_secs(5),
        },
        c.stream_log(),
    );
    let seen = Arc::new(Collect::default());
    pg.start(seen.clone()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while pg.health() != herald_core::broker::BrokerHealth::Healthy {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", pg.health());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ch = herald_protocol::ChannelName::new("big").unwrap();
    pg.subscribe("app", &ch).await.unwrap();
    let big = "x".repeat(20_000);
    for text in ["small", big.as_str()] {
        let p = herald_core::Publication::new(
            Arc::from("app"),
            ch.clone(),
            Arc::from("id"),
            herald_core::publication::Payload::Event {
                event: Arc::from("e"),
                data: herald_core::EventData::Text(Arc::from(text)),
                user_id: None,
            },
            None,
            1,
        );
        pg.publish(p, None).await.unwrap();
    }
    while seen.0.lock().len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "both delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = seen.0.lock();
    let len = |p: &herald_core::Publication| match &p.payload {
        herald_core::publication::Payload::Event { data, .. } => data.len(),
        _ => 0,
    };
    assert_eq!((len(&got[0]), len(&got[1])), (5, 20_000), "in order, whole");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_redis_pubsub_link_stays_up_past_its_keepalive_pings() {
    if !common::redis_available().await {
        return;
    }
    let c = cluster(&common::unique("herald-test"));
    assert!(c.wait_connected(Duration::from_secs(5)).await);
    let broker = c.broker();
    broker.start(Arc::new(Collect::default())).unwrap();
    // Two keepalive pings (every 5 s) must be answered without dropping the link, which
    // would lose publications on channels without history.
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(broker.health(), herald_core::broker::BrokerHealth::Healthy);
    assert_eq!(
        broker.link_losses(),
        0,
        "the keepalive must not drop a live link"
    );
}
