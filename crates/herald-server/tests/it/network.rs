//! Network-level protection: IP allow/deny lists, trusted proxies, the handshake timeout.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{APP_ID, APP_KEY, Client, SECRET, TestServer, http};

#[tokio::test]
async fn denied_addresses_are_dropped_before_any_http() {
    let server =
        TestServer::with(|c| c.server.ip_deny = vec!["127.0.0.1/32".parse().unwrap()]).await;
    assert!(
        tokio_tungstenite::connect_async(server.ws_url(APP_KEY, None))
            .await
            .is_err()
    );
    assert_dropped_without_an_answer(&server).await;

    // An allow list that does not include loopback has the same effect...
    let server =
        TestServer::with(|c| c.server.ip_allow = vec!["10.0.0.0/8".parse().unwrap()]).await;
    assert!(
        tokio_tungstenite::connect_async(server.ws_url(APP_KEY, None))
            .await
            .is_err()
    );
    assert_dropped_without_an_answer(&server).await;
    // ...and one that includes it lets loopback in, to the end of a WebSocket handshake.
    let server = TestServer::with(|c| {
        c.server.ip_allow = vec![
            "10.0.0.0/8".parse().unwrap(),
            "127.0.0.0/8".parse().unwrap(),
        ]
    })
    .await;
    let mut client = Client::open(&server.ws_url(APP_KEY, None), &[]).await;
    assert_eq!(client.recv().await.kind, "connected");
}

/// Send a request on a fresh connection and assert the server closes it without a byte.
async fn assert_dropped_without_an_answer(server: &TestServer) {
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let _ = tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut buf))
        .await
        .expect("the server closes the connection")
        .unwrap_or(0);
    assert_eq!(n, 0, "the connection is closed without an answer");
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_address_counts() {
    let server = TestServer::with(|c| {
        c.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        c.server.ip_deny = vec!["203.0.113.66/32".parse().unwrap()];
        c.limits.max_connections_per_ip = 1;
    })
    .await;
    let url = server.ws_url(APP_KEY, None);
    let mut a = Client::open(&url, &[("x-forwarded-for", "198.51.100.1")]).await;
    assert_eq!(a.recv().await.kind, "connected");
    let mut b = Client::open(&url, &[("x-forwarded-for", "198.51.100.2")]).await;
    assert_eq!(b.recv().await.kind, "connected");
    // A second connection from the same forwarded address is over the per-IP limit.
    let mut c = Client::open(&url, &[("x-forwarded-for", "198.51.100.1")]).await;
    assert_eq!(c.recv().await.data["code"], 303);
    c.expect_close(4100).await;

    // A denied client address behind the proxy gets a 403 with the error body.
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("/api/{APP_ID}/channels"))
        .header("host", "x")
        .header("authorization", format!("Bearer {SECRET}"))
        .header("x-forwarded-for", "203.0.113.66")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 403);
}

#[tokio::test]
async fn a_connection_that_never_sends_its_request_is_closed() {
    let server =
        TestServer::with(|c| c.server.handshake_timeout = Duration::from_millis(300)).await;
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(3), idle.read(&mut buf))
        .await
        .expect("closed by the server");
    // hyper may answer 408 before closing; either way the connection ends.
    if let Ok(n) = read
        && n > 0
    {
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"));
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    // A proper request still works.
    let (status, _, _) = http(server.addr, "GET", "/", None, None).await;
    assert_eq!(status, 200);
}
