//! The connect and subscribe proxies against a real HTTP backend: a PHP stand-in for a
//! Laravel app (`tests/backend/laravel.php`, Debian's php-cli built-in server) with session
//! cookies, CSRF, `/broadcasting/auth` signed with `hash_hmac`, and channel rules.
//!
//! Under `CI=true` a missing `php` fails these tests; elsewhere they are skipped with a
//! printed reason.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use herald_core::settings::{AppSettings, ProxySettings};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::harness::{APP_KEY, Client, SECRET, TestServer, free_port, test_app};

const KEY_OTHER: &str = "other-key";

fn php_available() -> bool {
    crate::harness::tool_available("php", "--version", "php-cli")
}

/// The PHP backend, killed on drop.
struct Backend {
    child: Child,
    addr: String,
    log: PathBuf,
    state: tempfile::TempDir,
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Backend {
    async fn start() -> Self {
        let state = tempfile::tempdir().expect("tempdir");
        let log = state.path().join("requests.log");
        let port = free_port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/backend/laravel.php");
        let child = Command::new("php")
            .args(["-S", &format!("127.0.0.1:{port}")])
            .arg(&script)
            .env("APP_KEY", APP_KEY)
            .env("APP_SECRET", SECRET)
            .env("LOG_FILE", &log)
            .env("STATE_DIR", state.path())
            // Enough workers that only Herald's own bound limits the concurrency.
            .env("PHP_CLI_SERVER_WORKERS", "24")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start php");
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(&addr).await.is_err() {
            assert!(Instant::now() < deadline, "php did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            child,
            addr,
            log,
            state,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request the backend saw.
    fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The most requests the slow endpoint answered at once.
    fn max_concurrency(&self) -> u64 {
        let text =
            std::fs::read_to_string(self.state.path().join("concurrency")).unwrap_or_default();
        serde_json::from_str::<Value>(&text).map_or(0, |v| v["max"].as_u64().unwrap_or(0))
    }
}

fn proxy(url: String) -> ProxySettings {
    ProxySettings {
        url,
        timeout: Duration::from_secs(2),
        max_concurrent: 64,
        headers: vec!["user-agent".into()],
        cookies: vec!["laravel_session".into()],
        xsrf_cookie: Some("XSRF-TOKEN".into()),
    }
}

/// The test app with `tweak` applied, plus an app without proxies (key `other-key`).
async fn server(backend: &Backend, tweak: impl FnOnce(&mut AppSettings)) -> TestServer {
    let mut app = test_app();
    app.connect_proxy = Some(proxy(backend.url("/herald/connect")));
    app.subscribe_proxy = Some(proxy(backend.url("/broadcasting/auth")));
    tweak(&mut app);
    let mut other = test_app();
    other.id = "other".into();
    other.key = KEY_OTHER.into();
    TestServer::with(move |c| c.apps = vec![app, other]).await
}

/// A WebSocket with these cookies: its `connected` message, or its refusal.
async fn open(server: &TestServer, cookie: Option<&str>) -> (Client, Value) {
    let mut headers = vec![("user-agent", "herald-test/1")];
    if let Some(cookie) = cookie {
        headers.push(("cookie", cookie));
    }
    let mut c = Client::open(&server.ws_url(APP_KEY, None), &headers).await;
    let first = c.recv().await;
    let value = json!({"type": first.kind, "data": first.data, "event": first.event});
    if first.kind == "connected" {
        c.socket_id = first.data["socket_id"].as_str().unwrap().to_owned();
    }
    (c, value)
}

/// Open an SSE stream with `cookie`: its first event's data.
async fn sse_first_event(addr: std::net::SocketAddr, cookie: &str) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET /sse/{APP_KEY} HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut lines = BufReader::new(stream).lines();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .expect("an SSE event in time")
            .unwrap()
            .expect("open");
        if let Some(data) = line.strip_prefix("data: ") {
            return data.to_owned();
        }
    }
}

const ANN: &str = "laravel_session=sess-ann; XSRF-TOKEN=tok%3D1; tracking=do-not-forward";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connect_proxy_names_the_user_or_refuses_and_forwards_only_what_it_may() {
    if !php_available() {
        return;
    }
    let backend = Backend::start().await;
    let server = server(&backend, |_| {}).await;

    // Allowed: the backend's answer is the identity (user, channels, info).
    let (mut ann, hello) = open(&server, Some(ANN)).await;
    assert_eq!(hello["type"], "connected", "{hello}");
    assert_eq!(hello["data"]["user_id"], "1", "{hello}");
    ann.subscribe_ok("private-user.1").await;

    // Over SSE too.
    let first = sse_first_event(server.addr, ANN).await;
    assert!(first.contains(r#""user_id":"1""#), "{first}");

    // Denied, with the backend's code and message: 4004, no retry.
    let (mut anon, refusal) = open(&server, None).await;
    assert_eq!(refusal["type"], "error", "{refusal}");
    assert_eq!(refusal["data"]["code"], 200);
    assert_eq!(refusal["data"]["message"], "not signed in");
    anon.expect_close(4004).await;

    // Only the allowed cookies and headers reached the backend.
    let seen = backend.requests();
    let connect = seen
        .iter()
        .find(|r| r["path"] == "/herald/connect" && r["cookie"].is_string())
        .expect("a connect request with cookies");
    let cookie = connect["cookie"].as_str().unwrap();
    assert!(cookie.contains("laravel_session=sess-ann"), "{cookie}");
    assert!(cookie.contains("XSRF-TOKEN=tok%3D1"), "{cookie}");
    assert!(
        !cookie.contains("tracking"),
        "a cookie outside the allowlist: {cookie}"
    );
    assert_eq!(connect["user_agent"], "herald-test/1");
    assert_eq!(connect["xsrf"], "tok=1", "the XSRF cookie, URL-decoded");
    assert!(
        seen.iter()
            .all(|r| !r.to_string().contains("do-not-forward"))
    );

    let (_, metrics) = server.admin_get("/metrics").await;
    assert!(
        metrics.contains(
            r#"herald_backend_requests_total{app="app",proxy="connect",outcome="allowed"} 2"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains(
        r#"herald_backend_requests_total{app="app",proxy="connect",outcome="denied"} 1"#
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_fails_refuses_connections_and_nothing_else() {
    if !php_available() {
        return;
    }
    let backend = Backend::start().await;
    for (mode, timeout) in [("hang", 500), ("error", 2000), ("malformed", 2000)] {
        let url = backend.url(&format!("/herald/connect?mode={mode}"));
        let server = server(&backend, |app| {
            let mut p = proxy(url);
            p.timeout = Duration::from_millis(timeout);
            app.connect_proxy = Some(p);
        })
        .await;
        let started = Instant::now();
        let (mut c, refusal) = open(&server, Some(ANN)).await;
        assert_eq!(refusal["data"]["code"], 210, "{mode}: {refusal}");
        assert_eq!(refusal["event"], "backend_unavailable", "{mode}");
        c.expect_close(1013).await;
        assert!(
            started.elapsed() < Duration::from_millis(timeout + 1500),
            "{mode}: refused within the timeout ({:?})",
            started.elapsed()
        );
        // Another app of the same node is untouched.
        let mut other = Client::open(&format!("ws://{}/ws/{KEY_OTHER}", server.addr), &[]).await;
        assert_eq!(other.recv().await.kind, "connected");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_against_a_slow_backend_stays_within_the_bound_and_other_apps_connect() {
    if !php_available() {
        return;
    }
    let backend = Backend::start().await;
    let url = backend.url("/herald/connect?mode=slow&ms=150");
    let server = server(&backend, |app| {
        let mut p = proxy(url);
        p.max_concurrent = 4;
        p.timeout = Duration::from_secs(1);
        app.connect_proxy = Some(p);
    })
    .await;
    let ws_url = server.ws_url(APP_KEY, None);
    let burst: Vec<_> = (0..500)
        .map(|_| {
            let url = ws_url.clone();
            tokio::spawn(async move {
                let mut c = Client::open(&url, &[("cookie", ANN)]).await;
                c.recv().await.kind
            })
        })
        .collect();
    // Meanwhile the other app connects at once.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let other_started = Instant::now();
    for _ in 0..20 {
        let mut other = Client::open(&format!("ws://{}/ws/{KEY_OTHER}", server.addr), &[]).await;
        assert_eq!(other.recv().await.kind, "connected");
    }
    let other_took = other_started.elapsed();
    let mut connected = 0;
    let mut refused = 0;
    for b in burst {
        match b.await.unwrap().as_str() {
            "connected" => connected += 1,
            _ => refused += 1,
        }
    }
    let max = backend.max_concurrency();
    eprintln!(
        "burst of 500: {connected} connected, {refused} refused (backend_unavailable); \
         the backend saw at most {max} at once; 20 connections of the other app took {other_took:?}"
    );
    assert!(max <= 4, "the bound holds: {max}");
    assert!(connected >= 4, "the ones within the bound got in");
    assert_eq!(connected + refused, 500);
    assert!(other_took < Duration::from_secs(2), "{other_took:?}");
    let (_, metrics) = server.admin_get("/metrics").await;
    assert!(
        metrics.contains(r#"proxy="connect",outcome="overloaded"}"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn laravels_channel_rules_authorise_native_clients_through_the_subscribe_proxy() {
    if !php_available() {
        return;
    }
    let backend = Backend::start().await;
    let server = server(&backend, |_| {}).await;
    let (mut ann, _) = open(&server, Some(ANN)).await;
    // routes/channels.php: orders.{id} is the user's own.
    ann.subscribe_ok("private-orders.1").await;
    let refused = ann.subscribe("private-orders.2").await;
    assert_eq!(refused.kind, "error", "{refused:?}");
    assert_eq!(refused.data["code"], 205);
    // A presence channel: the member as channel_data says, in the sync.
    let reply = ann.subscribe("presence-room").await;
    assert_eq!(reply.kind, "subscribe", "{reply:?}");
    let sync = ann.recv_non_ping().await;
    assert_eq!(sync.event.as_deref(), Some("sync"), "{sync:?}");
    assert_eq!(
        sync.data["members"],
        json!([{"user_id": "1", "info": {"name": "Ann"}}]),
        "{sync:?}"
    );
    // An answer signed with another secret is not accepted.
    let forged = ann.subscribe("private-forged").await;
    assert_eq!(forged.data["code"], 210, "{forged:?}");

    // The request carried Laravel's CSRF header and the form.
    let auth = backend
        .requests()
        .into_iter()
        .find(|r| r["path"] == "/broadcasting/auth")
        .expect("an auth request");
    assert_eq!(auth["xsrf"], "tok=1");
    let body = auth["body"].as_str().unwrap();
    assert!(
        body.starts_with(&format!("socket_id={}", ann.socket_id)),
        "{body}"
    );
    assert!(body.contains("channel_name=private-orders.1"), "{body}");

    // A backend refusal with 419 (CSRF) is not a grant either.
    let (mut no_xsrf, hello) = open(&server, Some("laravel_session=sess-ann")).await;
    assert_eq!(hello["type"], "connected");
    let r = no_xsrf.subscribe("private-orders.1").await;
    assert_eq!(r.data["code"], 210, "{r:?}");
}
