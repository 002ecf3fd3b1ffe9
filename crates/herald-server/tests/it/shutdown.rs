//! Graceful shutdown: clients get 1001 ("going away, reconnect"), the server stops.

use std::time::Duration;

use serde_json::json;

use crate::harness::TestServer;

#[tokio::test]
async fn shutdown_closes_clients_with_going_away_after_flushing() {
    let mut server = TestServer::start().await;
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    a.subscribe_ok("news").await;
    server.publish("news", "last", json!(1)).await;
    let started = tokio::time::Instant::now();
    let stop = async {
        server.shutdown().await;
    };
    let read_a = async {
        assert_eq!(a.recv().await.event.as_deref(), Some("last"));
        a.expect_close(1001).await
    };
    let (_, reason_a, reason_b) = tokio::join!(stop, read_a, b.expect_close(1001));
    assert_eq!(reason_a, "server going away, reconnect");
    assert_eq!(reason_b, reason_a);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "drained without waiting for the grace period"
    );
    // New connections are refused: the listener is closed.
    assert!(tokio::net::TcpStream::connect(server.addr).await.is_err());
}
