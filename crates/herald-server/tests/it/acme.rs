//! `[server.tls.acme]` against a real ACME server: Pebble, Let's Encrypt's test CA, with its
//! challenge test server answering DNS so the test domain resolves to 127.0.0.1. Pebble
//! validates the TLS-ALPN-01 challenge by connecting to Herald's TLS listener.
//!
//! Under `CI=true` a missing `pebble` fails these tests; elsewhere they are skipped with a
//! printed reason.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{APP_ID, APP_KEY, HeraldProcess, SECRET, free_port, http};

const DOMAIN: &str = "herald.test";

fn pebble_available() -> bool {
    crate::harness::tool_available("pebble", "-h", "pebble")
}

/// Kill on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running Pebble with its DNS: where its directory is, and the PEM of the root its own
/// HTTPS API is signed by (for Herald's `ca_file`).
struct Pebble {
    process: Option<Process>,
    _dns: Process,
    directory: String,
    management: std::net::SocketAddr,
    api_ca: PathBuf,
    api_ca_der: Vec<u8>,
}

impl Pebble {
    /// Start Pebble validating TLS-ALPN-01 on `tls_port`.
    async fn start(dir: &Path, tls_port: u16) -> Self {
        // Pebble's own HTTPS certificate, from a CA made here.
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        let api_ca = dir.join("pebble-ca.pem");
        std::fs::write(&api_ca, ca.pem()).unwrap();
        std::fs::write(dir.join("pebble-cert.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.join("pebble-key.pem"), key.serialize_pem()).unwrap();
        let (api, management, dns_port) = (free_port(), free_port(), free_port());
        let config = json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{api}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": dir.join("pebble-cert.pem"),
            "privateKey": dir.join("pebble-key.pem"),
            "httpPort": free_port(),
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
        let dns = Process(
            Command::new("pebble-challtestsrv")
                .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
                .args(["-management", &format!("127.0.0.1:{}", free_port())])
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start pebble-challtestsrv"),
        );
        let mut pebble = Self {
            process: None,
            _dns: dns,
            directory: format!("https://127.0.0.1:{api}/dir"),
            management: format!("127.0.0.1:{management}").parse().unwrap(),
            api_ca,
            api_ca_der: ca.der().to_vec(),
        };
        pebble.process = Some(Process(
            Command::new("pebble")
                .args(["-config"])
                .arg(dir.join("pebble.json"))
                .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .env("PEBBLE_AUTHZREUSE", "0")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start pebble"),
        ));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", api)).await.is_err() {
            assert!(Instant::now() < deadline, "pebble did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        pebble
    }

    /// The root Pebble signs issued certificates with (from its management API).
    async fn issuing_root(&self) -> Vec<u8> {
        let pem = https_get(self.management, &self.api_ca_der, "localhost", "/roots/0").await;
        let der = rustls_pemfile::certs(&mut pem.as_bytes())
            .next()
            .expect("a root")
            .expect("PEM");
        der.to_vec()
    }

    fn stop(&mut self) {
        self.process = None;
    }
}

fn client_config(root_der: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(root_der.to_vec())).unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// GET over HTTPS/1.0, trusting `root_der`: the body.
async fn https_get(addr: std::net::SocketAddr, root_der: &[u8], name: &str, path: &str) -> String {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = TlsConnector::from(client_config(root_der))
        .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
        .await
        .expect("TLS to pebble");
    tls.write_all(format!("GET {path} HTTP/1.0\r\nHost: {name}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    tls.read_to_string(&mut response).await.ok();
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// Connect to Herald's TLS listener as `DOMAIN`, trusting `root_der`: the stream and the
/// leaf certificate it presented.
async fn connect(
    addr: std::net::SocketAddr,
    root_der: &[u8],
) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, Vec<u8>), std::io::Error> {
    let tcp = TcpStream::connect(addr).await?;
    let stream = TlsConnector::from(client_config(root_der))
        .connect(ServerName::try_from(DOMAIN).unwrap(), tcp)
        .await?;
    let leaf = stream.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    Ok((stream, leaf))
}

/// Wait until `/status` satisfies `ok`.
async fn wait_status(node: &HeraldProcess, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, s) = node.admin_json("/status").await;
        assert_eq!(code, 200);
        if ok(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: {}", s["tls"]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `herald serve` with `[server.tls.acme]` pointed at `pebble`, logging to `dir/herald.log`.
async fn start_herald(pebble: &Pebble, dir: &Path, tls_port: u16, cache: &Path) -> HeraldProcess {
    let config = dir.join("herald.toml");
    // `renew_before` of a century: Pebble's certificates are long-lived, and this makes
    // every check (each second) a renewal.
    std::fs::write(
        &config,
        format!(
            r#"[server.tls]
listen = "127.0.0.1:{tls_port}"
[server.tls.acme]
domains = ["{DOMAIN}"]
contact = ["ops@herald.test"]
directory = "{directory}"
cache_dir = "{cache}"
renew_before = "36500days"
check_interval = "1s"
ca_file = "{ca}"
[[apps]]
id = "{APP_ID}"
key = "{APP_KEY}"
secret = "{SECRET}"
"#,
            directory = pebble.directory,
            cache = cache.display(),
            ca = pebble.api_ca.display(),
        ),
    )
    .unwrap();
    HeraldProcess::spawn_logged(&config, &dir.join("herald.log")).await
}

async fn next_text<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message in time")
            .expect("open")
            .expect("frame")
        {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] != "ping" {
                    return v;
                }
            }
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_is_obtained_renewed_under_a_live_wss_connection_and_kept_when_the_ca_fails()
{
    if !pebble_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let tls_port = free_port();
    let mut pebble = Pebble::start(dir.path(), tls_port).await;
    let cache = dir.path().join("acme");
    let node = start_herald(&pebble, dir.path(), tls_port, &cache).await;
    let tls_addr: std::net::SocketAddr = format!("127.0.0.1:{tls_port}").parse().unwrap();

    // Obtained at startup.
    let first = wait_status(&node, "a certificate is issued", |s| {
        s["tls"]["acme"]["issued"].as_u64() >= Some(1)
    })
    .await;
    assert!(first["tls"]["certificate"]["expires_in_seconds"].as_i64() > Some(86_400));
    let root = pebble.issuing_root().await;
    let (stream, leaf_before) = connect(tls_addr, &root)
        .await
        .expect("wss trusts Pebble's root");
    let (mut ws, resp) =
        tokio_tungstenite::client_async(format!("wss://{DOMAIN}/ws/{APP_KEY}"), stream)
            .await
            .expect("wss handshake");
    assert_eq!(resp.status(), 101);
    assert_eq!(next_text(&mut ws).await["type"], "connected");
    ws.send(Message::text(
        json!({"type": "subscribe", "channel": "live"}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(next_text(&mut ws).await["type"], "subscribe");
    let (_, metrics, _) = http(node.admin.parse().unwrap(), "GET", "/metrics", None, None).await;
    assert!(
        metrics.contains("herald_tls_certificate_expiry_seconds "),
        "expiry in /metrics"
    );
    for (file, mode) in [
        ("account.json", 0o600),
        ("cert.pem", 0o600),
        ("key.pem", 0o600),
        ("", 0o700),
    ] {
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(cache.join(file))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(m, mode, "{file} is private");
    }

    // Renewed: a new handshake sees a new certificate, the open connection keeps receiving.
    let issued = first["tls"]["acme"]["issued"].as_u64().unwrap();
    wait_status(&node, "a renewal", |s| {
        s["tls"]["acme"]["issued"].as_u64() > Some(issued)
    })
    .await;
    let (_, leaf_after) = connect(tls_addr, &root)
        .await
        .expect("a handshake after the renewal");
    assert_ne!(leaf_after, leaf_before, "the certificate changed");
    assert_eq!(node.publish("live", "tick", json!({"n": 1})).await.0, 200);
    let event = next_text(&mut ws).await;
    assert_eq!(
        (&event["type"], &event["data"]["n"]),
        (&json!("event"), &json!(1)),
        "{event}"
    );

    // The CA goes away: the renewal fails, the error is in /status and the log, and the
    // certificate in use keeps serving new and open connections.
    pebble.stop();
    let failed = wait_status(&node, "a failed renewal", |s| {
        s["tls"]["acme"]["last_error"].is_string()
    })
    .await;
    let error = failed["tls"]["acme"]["last_error"].as_str().unwrap();
    assert!(
        error.contains(&pebble.directory) || error.contains("127.0.0.1"),
        "the CA's address in {failed}"
    );
    let log = node.log_text();
    let logged = log
        .lines()
        .find(|l| l.contains("ACME: could not obtain a certificate"))
        .unwrap_or_else(|| panic!("the failure is logged:\n{log}"));
    assert!(logged.contains("ERROR"), "{logged}");
    assert!(
        logged.contains(error),
        "the log carries the same error as /status: {logged} / {error}"
    );
    let (_, metrics, _) = http(node.admin.parse().unwrap(), "GET", "/metrics", None, None).await;
    assert!(
        metrics.contains("herald_acme_last_attempt_failed 1"),
        "{metrics}"
    );
    let (_, serving) = connect(tls_addr, &root)
        .await
        .expect("the old certificate still serves");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, later) = connect(tls_addr, &root).await.expect("and keeps serving");
    assert_eq!(later, serving, "nothing replaces it while the CA is gone");
    assert_eq!(node.publish("live", "tick", json!({"n": 2})).await.0, 200);
    assert_eq!(
        next_text(&mut ws).await["data"]["n"],
        2,
        "the open wss connection still receives"
    );
}
