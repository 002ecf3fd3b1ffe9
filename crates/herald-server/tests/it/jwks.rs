//! `apps.jwt.jwks_url`: ES256 tokens verified with keys fetched from a JSON Web Key Set
//! served by a local HTTP server. A rotated key is accepted with no restart; a flood of
//! unknown `kid`s does not flood the key server; an unreachable key server keeps the keys
//! held and says so in `/status`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use herald_core::clock::unix_secs;
use herald_core::settings::JwtAlgorithm;
use herald_protocol::token::TokenClaims;
use jsonwebtoken::{EncodingKey, Header};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::harness::{APP_KEY, Client, TestServer};

/// An ES256 key with its id.
struct Key {
    kid: String,
    pair: rcgen::KeyPair,
}

impl Key {
    fn new(kid: &str) -> Self {
        Self {
            kid: kid.into(),
            pair: rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        }
    }

    /// The public key as a JWK.
    fn jwk(&self) -> Value {
        let point = self.pair.public_key_raw(); // 0x04 || x || y
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.kid,
               "x": b64(&point[1..33]), "y": b64(&point[33..65])})
    }

    /// A connection token for `user`, signed with this key (or naming `kid` instead).
    fn token(&self, user: &str, kid: Option<&str>) -> String {
        let mut header = Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(kid.unwrap_or(&self.kid).to_owned());
        let claims = TokenClaims {
            sub: Some(user.into()),
            exp: unix_secs() + 300,
            ..Default::default()
        };
        let key = EncodingKey::from_ec_pem(self.pair.serialize_pem().as_bytes()).unwrap();
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    }
}

/// The key server: the current set, how often it was fetched, and whether it is down.
#[derive(Clone, Default)]
struct KeyServer {
    set: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
}

impl KeyServer {
    async fn start(&self) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let me = me.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = stream.read(&mut buf).await;
                    me.fetches.fetch_add(1, Ordering::SeqCst);
                    if me.down.load(Ordering::SeqCst) {
                        let _ = stream
                            .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                            .await;
                        return;
                    }
                    let body = me.set.lock().to_string();
                    let _ = stream
                        .write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                                body.len()
                            )
                            .as_bytes(),
                        )
                        .await;
                });
            }
        });
        format!("http://{addr}/.well-known/jwks.json")
    }

    fn serve(&self, keys: &[&Key]) {
        *self.set.lock() = json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()});
    }
}

/// Connect with `token`: the user id of `connected`, or the refusal's code.
async fn connect(server: &TestServer, token: &str) -> Result<String, u64> {
    let mut c = Client::open(&server.ws_url(APP_KEY, Some(token)), &[]).await;
    let first = c.recv().await;
    if first.kind == "connected" {
        Ok(first.data["user_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    } else {
        Err(first.data["code"].as_u64().unwrap_or(0))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_keys_are_picked_up_without_a_restart_and_unknown_kids_do_not_flood() {
    let (k1, k2) = (Key::new("k1"), Key::new("k2"));
    let keys = KeyServer::default();
    keys.serve(&[&k1]);
    let url = keys.start().await;
    let server = TestServer::with(|c| {
        let jwt = &mut c.apps[0].jwt;
        jwt.algorithm = JwtAlgorithm::Es256;
        jwt.jwks_url = Some(url);
        jwt.jwks_min_interval = Duration::from_secs(1);
    })
    .await;

    assert_eq!(
        connect(&server, &k1.token("ann", None)).await,
        Ok("ann".into())
    );
    // A token signed by another key with a known kid does not verify.
    assert_eq!(
        connect(&server, &k2.token("eve", Some("k1"))).await,
        Err(203)
    );

    // The key is rotated at the key server: the new kid makes Herald fetch the set again.
    keys.serve(&[&k2]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        connect(&server, &k2.token("bob", None)).await,
        Ok("bob".into())
    );
    assert_eq!(
        connect(&server, &k1.token("ann", None)).await,
        Err(204),
        "k1 was rotated out"
    );

    // A flood of unknown kids: at most one fetch per jwks_min_interval (1 s).
    let before = keys.fetches.load(Ordering::SeqCst);
    let started = tokio::time::Instant::now();
    let flood: Vec<_> = (0..200)
        .map(|i| {
            let token = k2.token("mallory", Some(&format!("forged-{i}")));
            let ws = server.ws_url(APP_KEY, Some(&token));
            tokio::spawn(async move {
                let mut c = Client::open(&ws, &[]).await;
                c.recv().await.kind
            })
        })
        .collect();
    for f in flood {
        assert_eq!(f.await.unwrap(), "error");
    }
    let fetched = keys.fetches.load(Ordering::SeqCst) - before;
    let secs = started.elapsed().as_secs_f64();
    eprintln!("200 unknown kids over {secs:.1} s: {fetched} fetches");
    assert!(
        fetched as f64 <= secs.ceil() + 1.0,
        "{fetched} fetches in {secs:.1} s"
    );

    // The key server goes down: the keys held keep working, /status says what failed.
    keys.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(connect(&server, &k2.token("x", Some("k9"))).await, Err(204));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let status = loop {
        let (_, body) = server.admin_get("/status").await;
        let status: Value = serde_json::from_str(&body).unwrap();
        if status["apps"][0]["jwks"]["last_error"].is_string() {
            break status;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status["apps"][0]["jwks"]["keys"], 1, "{status}");
    assert!(
        status["apps"][0]["jwks"]["last_error"]
            .as_str()
            .unwrap()
            .contains("503")
    );
    assert_eq!(
        connect(&server, &k2.token("carol", None)).await,
        Ok("carol".into())
    );
}
