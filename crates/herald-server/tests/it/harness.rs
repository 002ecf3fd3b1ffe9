//! Test harness: a real server on ephemeral ports, real WebSocket and HTTP clients.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use herald_core::auth::mint_token;
use herald_core::clock::unix_secs;
use herald_core::{AppSettings, Node, Secret};
use herald_protocol::native::ServerMessage;
use herald_protocol::token::TokenClaims;
use herald_server::config::Config;
use herald_server::server::{Listeners, Server};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const APP_ID: &str = "app";
pub const APP_KEY: &str = "app-key";
pub const SECRET: &str = "app-secret-1234";

/// How long a test waits for a message before failing.
pub const WAIT: Duration = Duration::from_secs(5);

/// The app every test server has (unless the test changes it).
pub fn test_app() -> AppSettings {
    let mut app = AppSettings::development();
    app.id = APP_ID.into();
    app.key = APP_KEY.into();
    app.secret = Secret::new(SECRET);
    app.client_events = true;
    // History only where a test asks for it.
    app.history = Vec::new();
    app
}

/// A server running in this test's runtime.
pub struct TestServer {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub tls: Option<SocketAddr>,
    pub node: Arc<Node>,
    pub tls_state: Option<Arc<herald_server::tls::TlsState>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// A server with the test app and default limits.
    pub async fn start() -> Self {
        Self::with(|_| {}).await
    }

    /// A server whose config `tweak` may change first.
    pub async fn with(tweak: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config::default();
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        config.admin.listen = "127.0.0.1:0".parse().unwrap();
        config.server.shutdown_grace_period = Duration::from_secs(3);
        // Tests that shut down with connections open ask them all at once.
        config.server.drain_window = Duration::ZERO;
        config.apps = vec![test_app()];
        tweak(&mut config);
        let config = config.validate().expect("test config is valid");
        let listeners = Listeners::bind(&config).await.expect("bind");
        let (addr, tls, admin) = listeners.addrs();
        let server = Server::new(config).expect("build server");
        let node = server.node().clone();
        let tls_state = server.tls_reloader();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let stopped = async {
                let _ = stopped.await;
            };
            server
                .run(listeners, stopped)
                .await
                .expect("no handover in process");
        });
        Self {
            addr,
            admin: admin.expect("admin enabled"),
            tls,
            node,
            tls_state,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Trigger a graceful shutdown and wait for `run` to return.
    pub async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("server stops within the grace period")
                .unwrap();
        }
    }

    /// The WebSocket URL for `key` with an optional token.
    pub fn ws_url(&self, key: &str, token: Option<&str>) -> String {
        match token {
            Some(t) => format!("ws://{}/ws/{key}?token={t}", self.addr),
            None => format!("ws://{}/ws/{key}", self.addr),
        }
    }

    /// Connect anonymously and read the `connected` message.
    pub async fn connect(&self) -> Client {
        self.connect_with(None).await
    }

    /// Connect with a token and read the `connected` message.
    pub async fn connect_with(&self, token: Option<&str>) -> Client {
        let mut client = Client::open(&self.ws_url(APP_KEY, token), &[]).await;
        let hello = client.recv().await;
        assert_eq!(hello.kind, "connected", "{hello:?}");
        client.socket_id = hello.data["socket_id"].as_str().unwrap().to_owned();
        client
    }

    /// Open a connection that must be refused: one `error` with `code`, then close `close`.
    pub async fn expect_refused(&self, key: &str, token: Option<&str>, code: u64, close: u16) {
        let mut c = Client::open(&self.ws_url(key, token), &[]).await;
        let e = c.recv().await;
        assert_eq!(e.kind, "error");
        assert_eq!(e.data["code"], code, "{e:?}");
        c.expect_close(close).await;
    }

    /// A connection token signed with the test app's secret.
    pub fn token(&self, f: impl FnOnce(&mut TokenClaims)) -> String {
        token(f)
    }

    /// Call the native API: `(status, json body, headers)`.
    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, body, _) = http(
            self.addr,
            method,
            &format!("/api/{APP_ID}/{path}"),
            body.map(|b| b.to_string()),
            Some(SECRET),
        )
        .await;
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    /// Publish one event; asserts success.
    pub async fn publish(&self, channel: &str, event: &str, data: Value) -> Value {
        let (status, body) = self
            .api(
                "POST",
                "publish",
                Some(json!({"channel": channel, "event": event, "data": data})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// GET an admin path: `(status, body text)`.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let (status, body, _) = http(self.admin, "GET", path, None, None).await;
        (status, body)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A token for the test app.
pub fn token(f: impl FnOnce(&mut TokenClaims)) -> String {
    let mut claims = TokenClaims {
        exp: unix_secs() + 300,
        ..Default::default()
    };
    f(&mut claims);
    mint_token(&test_app(), &claims, None).expect("mint")
}

/// One HTTP/1.1 request with extra `headers`: `(status, body, headers)`.
pub async fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<String>,
    headers: &[(&str, &str)],
) -> (u16, String, http::HeaderMap) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .unwrap();
    let resp = sender.send_request(req).await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        String::from_utf8_lossy(&bytes).into_owned(),
        headers,
    )
}

/// One HTTP/1.1 request with a JSON content type: `(status, body, headers)`.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<String>,
    bearer: Option<&str>,
) -> (u16, String, http::HeaderMap) {
    let auth = bearer.map(|b| format!("Bearer {b}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("authorization", auth));
    }
    http_with(addr, method, path, body, &headers).await
}

/// A WebSocket client.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub socket_id: String,
    next_ref: u64,
}

/// How a connection ended.
#[derive(Debug)]
pub enum Ended {
    /// A close frame with this code and reason.
    Closed(u16, String),
    /// The TCP connection ended without a close frame.
    Dropped,
}

impl Client {
    /// Open a WebSocket with extra request headers (no `connected` read).
    pub async fn open(url: &str, headers: &[(&str, &str)]) -> Self {
        let mut req = url.into_client_request().unwrap();
        for (k, v) in headers {
            req.headers_mut().insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let (ws, resp) = tokio_tungstenite::connect_async(req)
            .await
            .expect("websocket connect");
        assert_eq!(resp.status(), 101);
        Self {
            ws,
            socket_id: String::new(),
            next_ref: 1,
        }
    }

    /// Send a JSON message.
    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::text(v.to_string()))
            .await
            .expect("send");
    }

    /// Send raw text.
    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::text(text.to_owned()))
            .await
            .expect("send");
    }

    /// The next server message (text frames only; transport pings are answered by the
    /// library). Fails the test after [`WAIT`].
    pub async fn recv(&mut self) -> ServerMessage {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a message")
                .expect("stream ended")
                .expect("websocket error");
            match msg {
                Message::Text(t) => {
                    return serde_json::from_str(&t).expect("server message is JSON");
                }
                Message::Close(frame) => panic!("unexpected close: {frame:?}"),
                _ => continue,
            }
        }
    }

    /// The next message of `kind`, skipping server pings.
    pub async fn recv_non_ping(&mut self) -> ServerMessage {
        loop {
            let m = self.recv().await;
            if m.kind != "ping" {
                return m;
            }
        }
    }

    /// Subscribe and return the reply (subscribe or error).
    pub async fn subscribe(&mut self, channel: &str) -> ServerMessage {
        self.subscribe_with(json!({"type": "subscribe", "channel": channel}))
            .await
    }

    /// Subscribe with a custom request (a `ref` is added) and return the reply.
    pub async fn subscribe_with(&mut self, mut request: Value) -> ServerMessage {
        let r = format!("r{}", self.next_ref);
        self.next_ref += 1;
        request["ref"] = json!(r);
        self.send(request).await;
        let reply = self.recv_non_ping().await;
        assert_eq!(
            reply.reference,
            Some(json!(r)),
            "reply to our request: {reply:?}"
        );
        reply
    }

    /// Subscribe and assert success.
    pub async fn subscribe_ok(&mut self, channel: &str) {
        let reply = self.subscribe(channel).await;
        assert_eq!(reply.kind, "subscribe", "{reply:?}");
        assert_eq!(reply.channel.as_deref(), Some(channel));
    }

    /// Assert nothing (but pings) arrives for `d`.
    pub async fn expect_silence(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Text(t)))) => {
                    let m: ServerMessage = serde_json::from_str(&t).unwrap();
                    assert_eq!(m.kind, "ping", "expected silence, got {m:?}");
                }
                Ok(Some(Ok(_))) => {}
                Ok(other) => panic!("expected silence, got {other:?}"),
            }
        }
    }

    /// Read until the connection ends; returns how, skipping any messages before it.
    pub async fn ended(&mut self) -> Ended {
        loop {
            let next = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for the connection to end");
            match next {
                Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                    return Ended::Closed(code.into(), reason.to_string());
                }
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return Ended::Dropped,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Assert the connection is closed with `code`; returns the reason.
    pub async fn expect_close(&mut self, code: u16) -> String {
        match self.ended().await {
            Ended::Closed(c, reason) => {
                assert_eq!(c, code, "close code (reason {reason:?})");
                reason
            }
            Ended::Dropped => panic!("connection dropped without close code {code}"),
        }
    }
}

/// Whether the program `tool` runs (`tool probe`). Under `CI=true` a missing tool fails
/// the test; elsewhere the caller skips, with a printed reason naming the Debian `package`.
pub fn tool_available(tool: &str, probe: &str, package: &str) -> bool {
    let found = std::process::Command::new(tool)
        .arg(probe)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{tool} is not installed (apt-get install {package})"
        );
        eprintln!("skipped: {tool} is not installed (apt-get install {package})");
    }
    found
}

/// A port that was free a moment ago (for processes that cannot report theirs).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `herald serve` process (the real binary) on free ports; killed with SIGKILL on drop if
/// still running, which is how the fault tests kill a node.
pub struct HeraldProcess {
    /// The process.
    pub child: std::process::Child,
    /// Its client listener, `127.0.0.1:port`.
    pub addr: String,
    /// Its admin listener.
    pub admin: String,
    /// Where its log (at `info`) and its banner go, when asked for.
    pub log: Option<std::path::PathBuf>,
}

impl HeraldProcess {
    /// Start `herald serve --config config` (with no `HERALD_*` or `RUST_LOG` from the test's
    /// environment) and wait until `/ready` answers 200.
    pub async fn spawn(config: &std::path::Path) -> Self {
        Self::spawn_with(config, None).await
    }

    /// As [`HeraldProcess::spawn`], with the log at `info` written to `log`.
    pub async fn spawn_logged(config: &std::path::Path, log: &std::path::Path) -> Self {
        Self::spawn_with(config, Some(log)).await
    }

    async fn spawn_with(config: &std::path::Path, log: Option<&std::path::Path>) -> Self {
        let (port, admin) = (free_port(), free_port());
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_herald"));
        for (k, _) in std::env::vars() {
            if k.starts_with("HERALD_") || k == "RUST_LOG" || k.starts_with("LISTEN_") {
                cmd.env_remove(k);
            }
        }
        // The log goes to stdout (tracing's default), beside the startup banner.
        let (stdout, stderr) = match log {
            Some(path) => {
                let file = std::fs::File::create(path).expect("log file");
                let copy = file.try_clone().expect("log file");
                (
                    std::process::Stdio::from(file),
                    std::process::Stdio::from(copy),
                )
            }
            None => (std::process::Stdio::null(), std::process::Stdio::null()),
        };
        let child = cmd
            .args(["serve", "--config"])
            .arg(config)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .args(["--log-level", if log.is_some() { "info" } else { "warn" }])
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn herald");
        let node = Self {
            child,
            addr: format!("127.0.0.1:{port}"),
            admin: format!("127.0.0.1:{admin}"),
            log: log.map(ToOwned::to_owned),
        };
        let admin: SocketAddr = node.admin.parse().unwrap();
        let deadline = tokio::time::Instant::now() + WAIT * 2;
        loop {
            if TcpStream::connect(admin).await.is_ok()
                && http(admin, "GET", "/ready", None, None).await.0 == 200
            {
                return node;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "herald process not ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What it has logged so far (with [`HeraldProcess::spawn_logged`]).
    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .unwrap_or_default()
    }

    /// `GET` on its admin listener: `(status, JSON body)`.
    pub async fn admin_json(&self, path: &str) -> (u16, Value) {
        let (status, body, _) = http(self.admin.parse().unwrap(), "GET", path, None, None).await;
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    /// Publish `data` as `event` on `channel` through the HTTP API: `(status, reply)`.
    pub async fn publish(&self, channel: &str, event: &str, data: Value) -> (u16, Value) {
        let body = serde_json::json!({"channel": channel, "event": event, "data": data});
        let (status, reply, _) = http(
            self.addr.parse().unwrap(),
            "POST",
            &format!("/api/{APP_ID}/publish"),
            Some(body.to_string()),
            Some(SECRET),
        )
        .await;
        (status, serde_json::from_str(&reply).unwrap_or(Value::Null))
    }
}

impl Drop for HeraldProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
