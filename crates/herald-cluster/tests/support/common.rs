//! Shared helpers of the cluster tests: where the real services are, and whether to skip.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The Redis the tests use.
pub fn redis_url() -> String {
    std::env::var("HERALD_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Whether a service at `addr` accepts connections. Under `CI=true` a missing service
/// fails the test; otherwise the test is skipped with the reason printed.
pub async fn service_available(name: &str, addr: &str) -> bool {
    let reachable = matches!(
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    );
    if reachable {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{name} is not reachable at {addr}, and CI=true: cluster tests must run");
    }
    eprintln!("SKIPPED: {name} is not reachable at {addr} (set CI=true to make this a failure)");
    false
}

/// Whether the test Redis is up.
pub async fn redis_available() -> bool {
    let url = redis_url();
    let addr = url
        .trim_start_matches("redis://")
        .trim_start_matches("rediss://")
        .rsplit('@')
        .next()
        .unwrap_or("127.0.0.1:6379")
        .split('/')
        .next()
        .unwrap_or("127.0.0.1:6379")
        .to_owned();
    service_available("Redis", &addr).await
}

/// A name no other test run uses.
pub fn unique(what: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{what}-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        rand_suffix()
    )
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}
