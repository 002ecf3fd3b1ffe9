//! HTTP plumbing shared by every route: the body type, JSON and error responses, request
//! body limits, query parameters and credentials.

use std::borrow::Cow;
use std::convert::Infallible;

use bytes::Bytes;
use herald_core::Refusal;
use herald_protocol::ErrorCode;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use serde::Serialize;

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

/// Read a request body of at most `max` bytes; 413 beyond.
pub async fn read_body(
    req: Request<hyper::body::Incoming>,
    max: usize,
) -> Result<Bytes, Response<Body>> {
    // Most bodies arrive as one frame: keep it without copying; concatenate otherwise.
    let mut body = Limited::new(req.into_body(), max);
    let mut first: Option<Bytes> = None;
    let mut rest: Vec<u8> = Vec::new();
    let result = loop {
        match body.frame().await {
            None => break Ok(()),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
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
            }
            Some(Err(e)) => break Err(e),
        }
    };
    match result.map(|()| first.unwrap_or_else(|| Bytes::from(rest))) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(fail(
            ErrorCode::PayloadTooLarge,
            format!("request body is larger than {max} bytes"),
        )),
        Err(_) => Err(fail(
            ErrorCode::InvalidRequest,
            "could not read the request body",
        )),
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
