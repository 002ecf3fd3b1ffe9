//! Requests Herald makes to the apps' own backends: webhooks, the connect and subscribe
//! proxies, and JWKS fetches. One small HTTP/1.1 client (hyper over TCP, or rustls with the
//! system's roots for `https`), one connection per request, a deadline on the whole
//! exchange, and a bound on the answer's size.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tracing::warn;

/// A parsed backend URL: made once, by configuration validation.
#[derive(Debug, Clone)]
pub struct HttpTarget {
    /// `https`: connect with TLS.
    tls: bool,
    /// The host to connect to (and to verify the certificate for).
    host: String,
    /// The port, from the URL or the scheme's default.
    port: u16,
    /// The `Host` header, and the name in logs (never the path, which may hold a token).
    pub authority: String,
    /// The path and query.
    path: String,
}

impl HttpTarget {
    /// Parse an `http://` or `https://` URL with a host.
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("{e}"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("the scheme must be http or https".into()),
        };
        let host = uri
            .host()
            .ok_or("no host")?
            .trim_matches(['[', ']'])
            .to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default();
        let path = uri
            .path_and_query()
            .map_or("/".to_owned(), |p| p.as_str().to_owned());
        Ok(Self {
            tls,
            host,
            port,
            authority,
            path,
        })
    }

    /// Whether requests go over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The port requests go to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The path and query requests go to.
    pub fn path(&self) -> &str {
        &self.path
    }
}

/// What a backend answered.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body (at most the size asked for).
    pub body: Bytes,
}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// No answer within the deadline.
    #[error("timed out")]
    Timeout,
    /// Connecting, TLS, HTTP or an answer larger than allowed.
    #[error("{0}")]
    Failed(String),
}

/// Send `method` to `target` with `headers` and `body`; the answer, read within `timeout`
/// (the whole exchange) and at most `max_body` bytes.
pub async fn request(
    target: &HttpTarget,
    method: http::Method,
    headers: &[(&str, &str)],
    body: Bytes,
    timeout: Duration,
    max_body: usize,
) -> Result<Answer, RequestError> {
    let mut builder = http::Request::builder()
        .method(method)
        .uri(target.path.as_str())
        .header(http::header::HOST, target.authority.as_str());
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder
        .body(Full::new(body))
        .map_err(|e| RequestError::Failed(e.to_string()))?;
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        if target.tls {
            let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                .map_err(|e| format!("invalid server name: {e}"))?;
            let tls = tokio_rustls::TlsConnector::from(client_tls())
                .connect(name, tcp)
                .await
                .map_err(|e| format!("tls: {e}"))?;
            send(TokioIo::new(tls), request, max_body).await
        } else {
            send(TokioIo::new(tcp), request, max_body).await
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result.map_err(RequestError::Failed),
        Err(_) => Err(RequestError::Timeout),
    }
}

async fn send<IO>(
    io: IO,
    request: http::Request<Full<Bytes>>,
    max_body: usize,
) -> Result<Answer, String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("http: {e}"))?;
    // Dropped with this function's future (a timeout): the connection goes with it.
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let _abort = AbortOnDrop(conn);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("http: {e}"))?;
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), max_body)
        .collect()
        .await
        .map_err(|e| format!("answer: {e}"))?
        .to_bytes();
    Ok(Answer { status, body })
}

/// Aborts the connection task when the request is done or dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The TLS client configuration for backends: the system's root certificates.
fn client_tls() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let loaded = rustls_native_certs::load_native_certs();
            for cert in loaded.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                warn!("no system root certificates found; https backends will fail");
            }
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}
