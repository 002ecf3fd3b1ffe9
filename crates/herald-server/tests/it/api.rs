//! The native HTTP API: authentication, error bodies and statuses, batch, queries.

use serde_json::{Value, json};

use crate::harness::{APP_ID, SECRET, TestServer, http};

async fn raw(
    server: &TestServer,
    method: &str,
    path: &str,
    body: Option<&str>,
    bearer: Option<&str>,
) -> (u16, Value, http::HeaderMap) {
    let (status, text, headers) =
        http(server.addr, method, path, body.map(str::to_owned), bearer).await;
    let json =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("error bodies are JSON: {text}"));
    (status, json, headers)
}

fn assert_error(body: &Value, code: u64, name: &str) {
    assert_eq!(body["error"]["code"], code, "{body}");
    assert_eq!(body["error"]["name"], name, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}

#[tokio::test]
async fn authentication_failures() {
    let server = TestServer::start().await;
    let path = format!("/api/{APP_ID}/publish");
    let body = r#"{"channel":"a","event":"e"}"#;
    let (status, b, _) = raw(&server, "POST", &path, Some(body), None).await;
    assert_eq!(status, 401);
    assert_error(&b, 200, "unauthorized");
    let (status, b, _) = raw(&server, "POST", &path, Some(body), Some("wrong-secret")).await;
    assert_eq!(status, 401);
    assert_error(&b, 200, "unauthorized");
    let (status, b, _) = raw(
        &server,
        "POST",
        "/api/nope/publish",
        Some(body),
        Some(SECRET),
    )
    .await;
    assert_eq!(status, 404);
    assert_error(&b, 201, "unknown_app");
    let (status, _, _) = raw(&server, "POST", &path, Some(body), Some(SECRET)).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn malformed_and_oversized_requests() {
    let server = TestServer::with(|c| c.server.max_body_bytes = 4096).await;
    let path = format!("/api/{APP_ID}/publish");
    let (status, b, _) = raw(&server, "POST", &path, Some("{not json"), Some(SECRET)).await;
    assert_eq!(status, 400);
    assert_error(&b, 101, "invalid_json");
    let (status, b, _) = raw(
        &server,
        "POST",
        &path,
        Some(r#"{"channel":"a"}"#),
        Some(SECRET),
    )
    .await;
    assert_eq!(status, 400);
    assert_error(&b, 104, "invalid_request");
    let (status, b, _) = raw(
        &server,
        "POST",
        &path,
        Some(r#"{"channel":"a","event":"e","chanel":"typo"}"#),
        Some(SECRET),
    )
    .await;
    assert_eq!(status, 400);
    assert_error(&b, 104, "invalid_request");
    let (status, b, _) = raw(
        &server,
        "POST",
        &path,
        Some(r#"{"channel":"no spaces","event":"e"}"#),
        Some(SECRET),
    )
    .await;
    assert_eq!(status, 400);
    assert_error(&b, 103, "invalid_channel");
    let big = format!(
        r#"{{"channel":"a","event":"e","data":"{}"}}"#,
        "x".repeat(5000)
    );
    let (status, b, _) = raw(&server, "POST", &path, Some(&big), Some(SECRET)).await;
    assert_eq!(status, 413);
    assert_error(&b, 302, "payload_too_large");
    let many: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
    let (status, b) = server
        .api(
            "POST",
            "publish",
            Some(json!({"channels": many, "event": "e"})),
        )
        .await;
    assert_eq!(status, 400);
    assert_error(&b, 304, "too_many_channels");
    let (status, b, _) = raw(&server, "GET", &path, None, Some(SECRET)).await;
    assert_eq!(status, 405);
    assert_error(&b, 110, "method_not_allowed");
    let (status, b, _) = raw(
        &server,
        "GET",
        &format!("/api/{APP_ID}/nothing"),
        None,
        Some(SECRET),
    )
    .await;
    assert_eq!(status, 404);
    assert_error(&b, 109, "not_found");
    let (status, b, _) = raw(&server, "GET", "/elsewhere", None, None).await;
    assert_eq!(status, 404);
    assert_error(&b, 109, "not_found");
    let (status, b) = server
        .api(
            "POST",
            "sockets/not-a-socket/events",
            Some(json!({"event": "e"})),
        )
        .await;
    assert_eq!(status, 400);
    assert_error(&b, 104, "invalid_request");
}

#[tokio::test]
async fn publish_rate_limit_answers_429_with_retry_after() {
    let server = TestServer::with(|c| c.apps[0].limits.publish_rate = 3).await;
    let path = format!("/api/{APP_ID}/publish");
    let body = r#"{"channel":"a","event":"e"}"#;
    for _ in 0..3 {
        assert_eq!(
            raw(&server, "POST", &path, Some(body), Some(SECRET))
                .await
                .0,
            200
        );
    }
    let (status, b, headers) = raw(&server, "POST", &path, Some(body), Some(SECRET)).await;
    assert_eq!(status, 429);
    assert_error(&b, 301, "rate_limited");
    assert!(headers.get("retry-after").is_some());
}

#[tokio::test]
async fn batch_is_validated_before_anything_is_published() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    c.subscribe_ok("a").await;
    let (status, b) = server
        .api(
            "POST",
            "batch",
            Some(json!({"events": [
                {"channel": "a", "event": "first", "data": 1},
                {"channel": "bad channel", "event": "second"},
            ]})),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("events[1]"),
        "{b}"
    );
    c.expect_silence(std::time::Duration::from_millis(200))
        .await;
    let (status, b) = server
        .api(
            "POST",
            "batch",
            Some(json!({"events": [
                {"channel": "a", "event": "first", "data": 1},
                {"channels": ["a", "b"], "event": "second", "data": 2},
            ]})),
        )
        .await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["results"].as_array().unwrap().len(), 2);
    assert_eq!(c.recv().await.event.as_deref(), Some("first"));
    assert_eq!(c.recv().await.event.as_deref(), Some("second"));
    let events: Vec<_> = (0..11)
        .map(|i| json!({"channel": "a", "event": format!("e{i}")}))
        .collect();
    let (status, b) = server
        .api("POST", "batch", Some(json!({"events": events})))
        .await;
    assert_eq!(status, 400);
    assert_error(&b, 304, "too_many_channels");
}

#[tokio::test]
async fn channel_queries() {
    let server = TestServer::start().await;
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    a.subscribe_ok("news").await;
    b.subscribe_ok("news").await;
    b.subscribe_ok("sports").await;
    let (status, body) = server.api("GET", "channels", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"channels": [
            {"name": "news", "subscribers": 2},
            {"name": "sports", "subscribers": 1},
        ]})
    );
    let (_, body) = server.api("GET", "channels?prefix=sp", None).await;
    assert_eq!(body["channels"].as_array().unwrap().len(), 1);
    let (_, body) = server.api("GET", "channels/news", None).await;
    assert_eq!(
        body,
        json!({"name": "news", "subscribers": 2, "occupied": true})
    );
    let (_, body) = server.api("GET", "channels/empty", None).await;
    assert_eq!(body["occupied"], false);
    let (status, body) = server.api("GET", "channels/news/presence", None).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], 103);
}

#[tokio::test]
async fn disconnect_user_closes_all_their_connections() {
    let server = TestServer::start().await;
    let t = server.token(|c| c.sub = Some("ann".into()));
    let mut tab1 = server.connect_with(Some(&t)).await;
    let mut tab2 = server.connect_with(Some(&t)).await;
    let mut bob = server
        .connect_with(Some(&server.token(|c| c.sub = Some("bob".into()))))
        .await;
    let (status, _) = server.api("POST", "users/ann/disconnect", None).await;
    assert_eq!(status, 200);
    tab1.expect_close(4008).await;
    tab2.expect_close(4008).await;
    bob.send(json!({"type": "ping", "ref": 1})).await;
    assert_eq!(bob.recv().await.kind, "pong");
    let mut tab3 = server.connect_with(Some(&t)).await;
    let (status, _) = server
        .api(
            "POST",
            "users/ann/disconnect",
            Some(json!({"reconnect": true})),
        )
        .await;
    assert_eq!(status, 200);
    tab3.expect_close(4200).await;
}

#[tokio::test]
async fn a_disabled_app_answers_403() {
    let server = TestServer::with(|c| c.apps[0].enabled = false).await;
    let (status, b) = server
        .api(
            "POST",
            "publish",
            Some(json!({"channel": "a", "event": "e"})),
        )
        .await;
    assert_eq!(status, 403);
    assert_error(&b, 208, "app_disabled");
}
