//! Native TLS: a wss:// session through a certificate made in the test, and a certificate
//! renewal picked up without a restart.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald_protocol::native::ServerMessage;
use herald_server::config::TlsConfig;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{APP_KEY, TestServer};

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca() -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    Ca { cert, key }
}

/// A leaf certificate for localhost, signed by `ca`: (cert PEM, key PEM, cert DER).
fn leaf(ca: &Ca) -> (String, String, Vec<u8>) {
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

fn temp_dir() -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "herald-tls-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Open a TLS connection trusting `ca`; return the stream and the server's leaf DER.
async fn tls_connect(
    addr: std::net::SocketAddr,
    ca: &Ca,
) -> (tokio_rustls::client::TlsStream<TcpStream>, Vec<u8>) {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca.cert.der().to_vec()))
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let stream = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake");
    let peer = stream.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    (stream, peer)
}

async fn next<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> ServerMessage
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        Message::Text(t) => serde_json::from_str(&t).unwrap(),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn wss_session_and_certificate_reload() {
    let ca = ca();
    let dir = temp_dir();
    let (cert_pem, key_pem, first_der) = leaf(&ca);
    let cert_file = dir.join("cert.pem");
    let key_file = dir.join("key.pem");
    std::fs::write(&cert_file, &cert_pem).unwrap();
    std::fs::write(&key_file, &key_pem).unwrap();
    let server = TestServer::with(|c| {
        c.server.tls = Some(TlsConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
            reload_interval: Duration::from_millis(100),
            acme: None,
        });
    })
    .await;
    let tls_addr = server.tls.expect("tls listener");

    // A full WebSocket session over TLS.
    let (stream, peer) = tls_connect(tls_addr, &ca).await;
    assert_eq!(peer, first_der);
    let url = format!("wss://localhost/ws/{APP_KEY}");
    let (mut ws, resp) = tokio_tungstenite::client_async(url, stream)
        .await
        .expect("wss handshake");
    assert_eq!(resp.status(), 101);
    assert_eq!(next(&mut ws).await.kind, "connected");
    ws.send(Message::text(
        json!({"type": "subscribe", "channel": "secure"}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(next(&mut ws).await.kind, "subscribe");
    // Publish through the HTTPS API.
    let (https, _) = tls_connect(tls_addr, &ca).await;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(https))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post(format!("/api/{}/publish", crate::harness::APP_ID))
        .header("host", "localhost")
        .header(
            "authorization",
            format!("Bearer {}", crate::harness::SECRET),
        )
        .body(http_body_util::Full::new(bytes::Bytes::from(
            json!({"channel": "secure", "event": "over-tls", "data": {"ok": true}}).to_string(),
        )))
        .unwrap();
    assert_eq!(sender.send_request(req).await.unwrap().status(), 200);
    let m = next(&mut ws).await;
    assert_eq!(m.event.as_deref(), Some("over-tls"));
    assert_eq!(m.data, json!({"ok": true}));

    // Renew the certificate on disk: new handshakes get it, the open session lives on.
    let (cert_pem, key_pem, second_der) = leaf(&ca);
    assert_ne!(first_der, second_der);
    std::fs::write(&key_file, &key_pem).unwrap();
    std::fs::write(&cert_file, &cert_pem).unwrap();
    let mut renewed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if tls_connect(tls_addr, &ca).await.1 == second_der {
            renewed = true;
            break;
        }
    }
    assert!(renewed, "the renewed certificate was picked up");
    server.publish("secure", "still-open", json!(null)).await;
    assert_eq!(next(&mut ws).await.event.as_deref(), Some("still-open"));

    // An explicit reload (what SIGHUP does) with a broken file keeps the current certificate.
    std::fs::write(&cert_file, "garbage").unwrap();
    assert!(server.tls_state.as_ref().unwrap().reload().is_err());
    assert_eq!(tls_connect(tls_addr, &ca).await.1, second_der);
    let _ = std::fs::remove_dir_all(dir);
}

/// One POST over TLS on its own connection: the response, body unread.
async fn https_post(
    addr: std::net::SocketAddr,
    ca: &Ca,
    path: &str,
    body: String,
) -> http::Response<hyper::body::Incoming> {
    let (stream, _) = tls_connect(addr, ca).await;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .header(
            "authorization",
            format!("Bearer {}", crate::harness::SECRET),
        )
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    sender.send_request(req).await.unwrap()
}

/// pusher-js's HTTP fallback works on the TLS listener: a stream, a send, a delivery.
#[tokio::test]
async fn pusher_http_fallback_over_tls() {
    use http_body_util::BodyExt;
    let ca = ca();
    let dir = temp_dir();
    let (cert_pem, key_pem, _) = leaf(&ca);
    std::fs::write(dir.join("cert.pem"), &cert_pem).unwrap();
    std::fs::write(dir.join("key.pem"), &key_pem).unwrap();
    let server = TestServer::with(|c| {
        c.server.tls = Some(TlsConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            cert_file: dir.join("cert.pem"),
            key_file: dir.join("key.pem"),
            reload_interval: Duration::from_secs(60),
            acme: None,
        });
    })
    .await;
    let tls = server.tls.expect("tls listener");
    let base = format!("/pusher/app/{APP_KEY}/123/tlstest1");
    let mut stream = https_post(
        tls,
        &ca,
        &format!("{base}/xhr_streaming?protocol=7"),
        String::new(),
    )
    .await
    .into_body();
    let mut text = String::new();
    // Read frames until `want` has appeared.
    let mut read_until = async |text: &mut String, want: &str| {
        while !text.contains(want) {
            let frame = tokio::time::timeout(Duration::from_secs(5), stream.frame())
                .await
                .expect("a frame in time")
                .expect("the stream is open")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                text.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    };
    read_until(&mut text, "pusher:connection_established").await;
    assert!(text.starts_with("o\n"), "{text}");
    let subscribe = json!({"event": "pusher:subscribe", "data": {"channel": "secure"}}).to_string();
    let sent = https_post(
        tls,
        &ca,
        &format!("{base}/xhr_send"),
        json!([subscribe]).to_string(),
    )
    .await;
    assert_eq!(sent.status(), 204);
    read_until(&mut text, "subscription_succeeded").await;
    let publish =
        json!({"channel": "secure", "event": "over-tls", "data": {"ok": true}}).to_string();
    let published = https_post(
        tls,
        &ca,
        &format!("/api/{}/publish", crate::harness::APP_ID),
        publish,
    )
    .await;
    assert_eq!(published.status(), 200);
    read_until(&mut text, "over-tls").await;
}
