//! The admin listener: /health, /ready, /status, /metrics.

use serde_json::{Value, json};

use crate::harness::TestServer;

#[tokio::test]
async fn health_ready_status_and_metrics() {
    let server = TestServer::start().await;
    let (status, body) = server.admin_get("/health").await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (status, body) = server.admin_get("/ready").await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ready"}"#));

    let mut c = server.connect().await;
    c.subscribe_ok("news").await;
    server.publish("news", "e", json!({"a": 1})).await;
    c.recv().await;

    let (status, body) = server.admin_get("/status").await;
    assert_eq!(status, 200);
    let s: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s["connections"], 1);
    assert_eq!(s["channels"], 1);
    assert_eq!(s["subscriptions"], 1);
    assert_eq!(s["messages_in"], 1);
    assert!(
        s["messages_out"].as_u64().unwrap() >= 3,
        "connected, subscribed, event: {s}"
    );
    assert_eq!(s["messages_published"], 1);
    assert!(s["memory_rss_bytes"].as_u64().unwrap() > 1_000_000);
    assert!(s["uptime_seconds"].is_u64());
    assert_eq!(s["broker"]["name"], "memory");
    assert_eq!(s["apps"][0]["connections"], 1);

    let (status, text) = server.admin_get("/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "herald_connections 1\n",
        "herald_subscriptions 1\n",
        "herald_channels 1\n",
        "herald_messages_published_total 1\n",
        "herald_messages_dropped_total 0\n",
        "herald_slow_consumer_disconnects_total 0\n",
        "herald_publish_to_write_seconds_count 1\n",
        "# TYPE herald_publish_to_write_seconds histogram\n",
        "herald_ready 1\n",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert!(text.contains("herald_messages_delivered_total "));
    assert!(text.contains("herald_publish_to_write_seconds_bucket{le=\"+Inf\"} 1\n"));
    let (status, _) = server.admin_get("/nope").await;
    assert_eq!(status, 404);
}
