//! The history part of the native HTTP API (routed from `api.rs`, same bearer-secret auth):
//!
//! | Method | Path | What |
//! |---|---|---|
//! | GET | `channels/{name}/history` | stored publications: `limit`, `since`/`until` (offsets), `since_time`/`until_time` (ms) |
//! | DELETE | `channels/{name}/history` | clear the channel's history; the next publication starts a new epoch |
//! | GET | `stats` | the app's stored-history totals and connection figures |

use std::sync::Arc;

use herald_core::history::HistoryQuery;
use herald_core::{App, Protocol, Refusal};
use herald_protocol::{ChannelName, ErrorCode};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use crate::http::{Body, error, fail, json as json_response, query_param};
use crate::server::Shared;

/// Most publications one history request returns.
pub const MAX_HISTORY_LIMIT: usize = 1000;
/// Publications returned when `limit` is not given.
pub const DEFAULT_HISTORY_LIMIT: usize = 100;

fn number(req: &Request<Incoming>, name: &str) -> Result<Option<u64>, Refusal> {
    query_param(req, name)
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                Refusal::new(
                    ErrorCode::InvalidRequest,
                    format!("{name} must be a non-negative integer"),
                )
            })
        })
        .transpose()
}

fn history_channel(app: &App, name: &str) -> Result<ChannelName, Refusal> {
    let channel = ChannelName::new(name)
        .map_err(|e| Refusal::new(ErrorCode::InvalidChannel, e.to_string()))?;
    if app.history_policy(channel.as_str()).is_none() {
        return Err(Refusal::new(
            ErrorCode::NotFound,
            "this channel keeps no history: no [[apps.history]] rule matches it",
        ));
    }
    Ok(channel)
}

/// `GET channels/{name}/history`.
pub async fn read(
    shared: &Arc<Shared>,
    app: &App,
    req: &Request<Incoming>,
    name: &str,
) -> Response<Body> {
    let result = async {
        let channel = history_channel(app, name)?;
        let limit = number(req, "limit")?.map_or(DEFAULT_HISTORY_LIMIT, |n| n as usize);
        if limit > MAX_HISTORY_LIMIT {
            return Err(Refusal::new(
                ErrorCode::InvalidRequest,
                format!("limit must be at most {MAX_HISTORY_LIMIT}"),
            ));
        }
        let query = HistoryQuery {
            after_offset: number(req, "since")?,
            until_offset: number(req, "until")?,
            since_ms: number(req, "since_time")?,
            until_ms: number(req, "until_time")?,
            limit,
        };
        let page = shared
            .node
            .read_history(app, &channel, &query)
            .await
            .map_err(|e| Refusal::new(ErrorCode::Internal, e.to_string()))?;
        Ok((channel, page))
    }
    .await;
    let (channel, page) = match result {
        Ok(r) => r,
        Err(r) => return error(&r),
    };
    // Each publication exactly as a native subscriber receives it.
    let mut out = Vec::with_capacity(128 + page.publications.len() * 128);
    out.extend_from_slice(b"{\"channel\":");
    herald_protocol::json::write_str(&mut out, channel.as_str());
    out.extend_from_slice(b",\"offset\":");
    herald_protocol::json::write_u64(&mut out, page.top.offset);
    out.extend_from_slice(b",\"epoch\":");
    herald_protocol::json::write_str(&mut out, &page.top.epoch);
    out.extend_from_slice(b",\"first_offset\":");
    herald_protocol::json::write_u64(&mut out, page.first_offset);
    out.extend_from_slice(b",\"truncated\":");
    out.extend_from_slice(if page.truncated { b"true" } else { b"false" });
    out.extend_from_slice(b",\"publications\":[");
    let mut first = true;
    for p in &page.publications {
        if let Some(bytes) = p.encoded(Protocol::Native) {
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(bytes);
        }
    }
    out.extend_from_slice(b"]}");
    let mut resp = Response::new(crate::http::full(out));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// `DELETE channels/{name}/history`.
pub async fn clear(shared: &Arc<Shared>, app: &App, name: &str) -> Response<Body> {
    let channel = match history_channel(app, name) {
        Ok(c) => c,
        Err(r) => return error(&r),
    };
    match shared.node.clear_history(app, &channel).await {
        Ok(cleared) => json_response(StatusCode::OK, &json!({ "cleared": cleared })),
        Err(e) => fail(ErrorCode::Internal, e.to_string()),
    }
}

/// `GET stats`.
pub async fn stats(shared: &Arc<Shared>, app: &App) -> Response<Body> {
    match shared.node.history_stats(Some(app)).await {
        Ok(h) => json_response(
            StatusCode::OK,
            &json!({
                "connections": app.connections(),
                "history": {
                    "streams": h.streams,
                    "publications": h.publications,
                    "bytes": h.bytes,
                },
            }),
        ),
        Err(e) => fail(ErrorCode::Internal, e.to_string()),
    }
}
