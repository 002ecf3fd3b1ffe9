//! HTTP plumbing shared by every route: the body type, JSON and error responses, request
//! body reading within its bounds, query parameters and credentials.

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_core::Refusal;
use herald_protocol::ErrorCode;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The response body type of every route (boxed, so streaming routes can share it).
pub type Body = BoxBody<Bytes, Infallible>;

/// A complete body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}

/// A JSON response.
pub fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Body> {
    let body = serde_json::to_vec(value).expect("response types serialise");
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: u16,
    name: &'static str,
    message: &'a str,
}

/// The JSON error response for `refusal`, with its catalogue status:
/// `{"error":{"code":302,"name":"payload_too_large","message":"…"}}`.
pub fn error(refusal: &Refusal) -> Response<Body> {
    let status = StatusCode::from_u16(refusal.code.http_status())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json(
        status,
        &ErrorBody {
            error: ErrorDetail {
                code: refusal.code.code(),
                name: refusal.code.name(),
                message: &refusal.message,
            },
        },
    )
}

/// An error response with a `Retry-After` header (for 429).
pub fn error_retry(refusal: &Refusal, retry_after_secs: u64) -> Response<Body> {
    let mut resp = error(refusal);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    resp
}

/// A shorthand for an error response from a code and message.
pub fn fail(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Response<Body> {
    error(&Refusal::new(code, message))
}

/// Reads request bodies within three bounds, so that no client can make the server hold
/// memory it has not agreed to: each body's size (`max`, 413 beyond), the time a body may
/// take to arrive once its headers are in (`server.body_timeout`, 408 after), and the bytes
/// all bodies being read or handled may hold together (`server.max_body_memory`, 503 when
/// it is spent). Callers authenticate what they can from the head first, so an unknown
/// client never gets this far.
#[derive(Debug)]
pub struct BodyReader {
    /// Time a body may take to arrive, from the end of its headers.
    timeout: Duration,
    /// What is left of `server.max_body_memory`, one permit per byte. A body reserves its
    /// declared length before the first byte is read (and grows its reservation as an
    /// undeclared, chunked body arrives); the reservation lives as long as the body.
    budget: Arc<Semaphore>,
}

/// A request body, holding its share of the body memory budget until it is dropped.
#[derive(Debug)]
pub struct RequestBody {
    /// The bytes.
    bytes: Bytes,
    /// This body's reservation in [`BodyReader::budget`].
    _reserved: OwnedSemaphorePermit,
}

impl RequestBody {
    /// The bytes, giving the reservation back (for a body handed on to a bounded queue
    /// that accounts for it).
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }
}

impl std::ops::Deref for RequestBody {
    type Target = Bytes;

    fn deref(&self) -> &Bytes {
        &self.bytes
    }
}

impl BodyReader {
    /// A reader allowing `timeout` per body and `memory` bytes for all bodies together.
    pub fn new(timeout: Duration, memory: usize) -> Self {
        Self {
            timeout,
            budget: Arc::new(Semaphore::new(memory.min(Semaphore::MAX_PERMITS))),
        }
    }

    /// Read a request body of at most `max` bytes.
    pub async fn read(
        &self,
        req: Request<hyper::body::Incoming>,
        max: usize,
    ) -> Result<RequestBody, Response<Body>> {
        let too_large = || {
            fail(
                ErrorCode::PayloadTooLarge,
                format!("request body is larger than {max} bytes"),
            )
        };
        let declared = match req.headers().get(header::CONTENT_LENGTH) {
            None => 0,
            Some(v) => match v.to_str().ok().and_then(|v| v.parse::<usize>().ok()) {
                Some(n) if n > max => return Err(too_large()),
                Some(n) => n,
                None => return Err(fail(ErrorCode::InvalidRequest, "invalid Content-Length")),
            },
        };
        let mut reserved = self.reserve(declared)?;
        // One timer for the whole body, registered only if a frame is not ready at once.
        let deadline = tokio::time::sleep(self.timeout);
        tokio::pin!(deadline);
        let mut body = req.into_body();
        // Most bodies arrive as one frame: keep it without copying; concatenate otherwise.
        let mut first: Option<Bytes> = None;
        let mut rest: Vec<u8> = Vec::new();
        let mut total = 0usize;
        loop {
            let next = tokio::select! {
                biased;
                frame = body.frame() => Ok(frame),
                () = &mut deadline => Err(()),
            };
            let frame = match next {
                Err(()) => {
                    return Err(fail(
                        ErrorCode::RequestTimeout,
                        format!(
                            "the request body did not arrive within {} ms",
                            self.timeout.as_millis()
                        ),
                    ));
                }
                Ok(None) => break,
                Ok(Some(Err(_))) => {
                    return Err(fail(
                        ErrorCode::InvalidRequest,
                        "could not read the request body",
                    ));
                }
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            total += data.len();
            if total > max {
                return Err(too_large());
            }
            let held = reserved.num_permits();
            if total > held {
                reserved.merge(self.reserve(total - held)?);
            }
            match &first {
                None if rest.is_empty() => first = Some(data),
                _ => {
                    if let Some(f) = first.take() {
                        rest.extend_from_slice(&f);
                    }
                    rest.extend_from_slice(&data);
                }
            }
        }
        Ok(RequestBody {
            bytes: first.unwrap_or_else(|| Bytes::from(rest)),
            _reserved: reserved,
        })
    }

    /// Take `bytes` from the budget, or answer 503 when it is spent.
    fn reserve(&self, bytes: usize) -> Result<OwnedSemaphorePermit, Response<Body>> {
        u32::try_from(bytes)
            .ok()
            .and_then(|n| self.budget.clone().try_acquire_many_owned(n).ok())
            .ok_or_else(|| {
                error_retry(
                    &Refusal::new(
                        ErrorCode::Overloaded,
                        "too many request bodies are being received; retry shortly",
                    ),
                    1,
                )
            })
    }
}

/// The first value of query parameter `name`, percent-decoded.
pub fn query_param<B>(req: &Request<B>, name: &str) -> Option<String> {
    let query = req.uri().query()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The token of an `Authorization: Bearer …` header.
pub fn bearer<B>(req: &Request<B>) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// A header's value as text, if present and valid.
pub fn header_str<'a, B>(req: &'a Request<B>, name: &str) -> Option<&'a str> {
    req.headers().get(name)?.to_str().ok()
}

/// Whether a comma-separated header contains `token` (case-insensitive).
pub fn header_has_token<B>(req: &Request<B>, name: &str, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}
