//! The simulated clients of the soak: each loops until the end of the run, connecting over a
//! WebSocket, SSE or long-polling in turn, subscribing, receiving for a random lifetime, and
//! leaving: cleanly, or (on the HTTP transports, at `--abandon-share`) by hanging up in the
//! middle of a poll or a stream and never coming back.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};

use rand::Rng;
use sha2::Sha256;
use tokio::time::Instant;

use crate::httpclient::{HttpConn, PollAnswer, SseParser, session_of};
use crate::target::{Frame, Target};
use crate::wsclient::WsClient;

/// Presence channels the clients join (`presence-soak-0` …).
pub const PRESENCE_CHANNELS: usize = 5;
/// The longest a connect, an open or a poll may take before the cycle counts as failed.
const STEP_TIMEOUT: Duration = Duration::from_secs(40);
/// Error kinds counted before the rest are lumped together (the map stays small).
const MAX_ERROR_KINDS: usize = 32;

/// What every client shares: the target, the plan and the counters.
pub struct Ctx {
    /// The server.
    pub target: Target,
    /// When clients stop starting cycles, and end the ones they are in.
    pub deadline: Instant,
    /// Public channels `soak-0` … to subscribe to.
    pub channels: usize,
    /// Fraction of cycles that also join a presence channel.
    pub presence_share: f64,
    /// Fraction of HTTP-transport cycles that end by abandonment.
    pub abandon_share: f64,
    /// Shortest and longest lifetime of one cycle.
    pub lifetime: (Duration, Duration),
    /// Completed cycles per transport: ws, sse, long-poll.
    pub cycles: [AtomicU64; 3],
    /// Cycles that ended by abandoning a poll or a stream.
    pub abandoned: AtomicU64,
    /// Messages received (publications and presence events, not heartbeats).
    pub received: AtomicU64,
    /// Failed cycles, by what failed.
    pub errors: Mutex<BTreeMap<String, u64>>,
}

impl Ctx {
    fn error(&self, kind: String) {
        let mut errors = self.errors.lock();
        let key = if errors.len() < MAX_ERROR_KINDS || errors.contains_key(&kind) {
            kind
        } else {
            "other".to_owned()
        };
        *errors.entry(key).or_default() += 1;
    }
}

/// One cycle's plan.
struct Cycle {
    /// Channels to subscribe to.
    channels: Vec<String>,
    /// A connection token for the cycle's user (needed for presence).
    token: String,
    /// Until when to stay.
    until: Instant,
    /// Leave by hanging up mid-request (HTTP transports only).
    abandon: bool,
}

/// Run client `index` until the deadline.
pub async fn client(index: usize, ctx: Arc<Ctx>) {
    let mut cycle = 0usize;
    while Instant::now() < ctx.deadline {
        let transport = (index + cycle) % 3;
        let plan = plan(&ctx, index, cycle, transport != 0);
        let outcome = match transport {
            0 => ws_cycle(&ctx, &plan).await,
            1 => sse_cycle(&ctx, &plan).await,
            _ => poll_cycle(&ctx, &plan).await,
        };
        match outcome {
            Ok(()) => {
                ctx.cycles[transport].fetch_add(1, Ordering::Relaxed);
                if plan.abandon {
                    ctx.abandoned.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => {
                ctx.error(format!("{}: {e}", ["ws", "sse", "long-poll"][transport]));
                // Do not hammer a server that refuses.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        cycle += 1;
    }
}

fn plan(ctx: &Ctx, index: usize, cycle: usize, http: bool) -> Cycle {
    let mut rng = rand::rng();
    let mut channels = vec![format!("soak-{}", rng.random_range(0..ctx.channels))];
    if rng.random_bool(0.5) {
        let second = format!("soak-{}", rng.random_range(0..ctx.channels));
        if second != channels[0] {
            channels.push(second);
        }
    }
    if rng.random_bool(ctx.presence_share) {
        channels.push(format!(
            "presence-soak-{}",
            rng.random_range(0..PRESENCE_CHANNELS)
        ));
    }
    let (lo, hi) = ctx.lifetime;
    let life =
        Duration::from_millis(rng.random_range(lo.as_millis() as u64..=hi.as_millis() as u64));
    Cycle {
        channels,
        token: token(&ctx.target.secret, &format!("soak-{index}-{cycle}")),
        until: (Instant::now() + life).min(ctx.deadline),
        abandon: http && rng.random_bool(ctx.abandon_share),
    }
}

/// An HS256 connection token for `user`, allowed every channel.
fn token(secret: &str, user: &str) -> String {
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let header = b64(br#"{"alg":"HS256","typ":"JWT"}"#);
    let exp = crate::target::unix_secs() + 7200;
    let claims = b64(format!(r#"{{"sub":"{user}","exp":{exp},"channels":["*"]}}"#).as_bytes());
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("{header}.{claims}").as_bytes());
    let signature = b64(&mac.finalize().into_bytes());
    format!("{header}.{claims}.{signature}")
}

fn query(plan: &Cycle) -> String {
    format!(
        "{}&token={}",
        Target::channel_query(&plan.channels),
        plan.token
    )
}

async fn step<T>(f: impl std::future::Future<Output = io::Result<T>>) -> io::Result<T> {
    tokio::time::timeout(STEP_TIMEOUT, f)
        .await
        .map_err(|_| io::Error::other("timed out"))?
}

/// A WebSocket cycle: connect, subscribe, read (answering heartbeats) until the lifetime
/// ends, then hang up.
async fn ws_cycle(ctx: &Ctx, plan: &Cycle) -> io::Result<()> {
    let path = format!("{}?token={}", ctx.target.ws_path(), plan.token);
    let mut ws = step(WsClient::connect(
        ctx.target.addr,
        None,
        0,
        &path,
        ctx.target.deflate,
    ))
    .await?;
    for channel in &plan.channels {
        ws.send_text(&ctx.target.subscribe_message(channel)).await?;
    }
    loop {
        let left = plan.until.saturating_duration_since(Instant::now());
        let Ok(next) = tokio::time::timeout(left, ws.next_text()).await else {
            return Ok(());
        };
        let Some(text) = next? else {
            return Err(io::Error::other("closed by the server"));
        };
        match ctx.target.classify(&text) {
            Frame::Ping => ws.send_text(ctx.target.pong_message()).await?,
            Frame::Error => return Err(io::Error::other("error message")),
            Frame::Delivery(..) | Frame::Other => {
                ctx.received.fetch_add(1, Ordering::Relaxed);
            }
            Frame::Connected | Frame::Subscribed => {}
        }
    }
}

/// An SSE cycle: open the stream, read until the lifetime ends, then end the session with
/// `DELETE` or, when abandoning, just hang up.
async fn sse_cycle(ctx: &Ctx, plan: &Cycle) -> io::Result<()> {
    let key = &ctx.target.app_key;
    let mut conn = step(HttpConn::connect(&ctx.target, None, 0)).await?;
    let status = step(conn.open_stream(&format!("/sse/{key}?{}", query(plan)))).await?;
    if status != 200 {
        return Err(io::Error::other(format!("open answered {status}")));
    }
    let mut parser = SseParser::default();
    let mut session = None;
    loop {
        let left = plan.until.saturating_duration_since(Instant::now());
        let Ok(chunk) = tokio::time::timeout(left, conn.next_chunk()).await else {
            break;
        };
        let Some(chunk) = chunk? else {
            return Err(io::Error::other("stream ended by the server"));
        };
        parser.feed(&chunk, |data| {
            if session.is_none() {
                session = session_id(data);
            } else {
                ctx.received.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    if plan.abandon {
        return Ok(());
    }
    let Some(session) = session else {
        return Err(io::Error::other("no session id"));
    };
    end_session(ctx, &format!("/sse/{key}/{session}")).await
}

/// A long-polling cycle: open the session, poll until the lifetime ends, then `DELETE` it
/// or, when abandoning, start one more poll and hang up while it waits.
async fn poll_cycle(ctx: &Ctx, plan: &Cycle) -> io::Result<()> {
    let key = &ctx.target.app_key;
    let mut conn = step(HttpConn::connect(&ctx.target, None, 0)).await?;
    let (status, body) =
        step(conn.request("POST", &format!("/poll/{key}?{}", query(plan)))).await?;
    if status != 200 {
        return Err(io::Error::other(format!("open answered {status}")));
    }
    let session = session_of(&body)?;
    let mut cursor = 0u64;
    while Instant::now() < plan.until {
        let path = format!("/poll/{key}/{session}?cursor={cursor}");
        let (status, body) = step(conn.request("GET", &path)).await?;
        if status != 200 {
            return Err(io::Error::other(format!("poll answered {status}")));
        }
        let answer: PollAnswer<'_> =
            serde_json::from_slice(&body).map_err(|e| io::Error::other(e.to_string()))?;
        cursor = answer.cursor;
        let messages = answer.messages.len() as u64;
        ctx.received.fetch_add(messages, Ordering::Relaxed);
    }
    if plan.abandon {
        let path = format!("/poll/{key}/{session}?cursor={cursor}");
        // Cancelled while it waits: the connection is dropped mid-request.
        let _ = tokio::time::timeout(Duration::from_millis(300), conn.request("GET", &path)).await;
        return Ok(());
    }
    end_session(ctx, &format!("/poll/{key}/{session}")).await
}

/// `DELETE` an HTTP session on a connection of its own.
async fn end_session(ctx: &Ctx, path: &str) -> io::Result<()> {
    let mut conn = step(HttpConn::connect(&ctx.target, None, 0)).await?;
    let (status, _) = step(conn.request("DELETE", path)).await?;
    if status != 200 {
        return Err(io::Error::other(format!("DELETE answered {status}")));
    }
    Ok(())
}

/// The session id in an SSE stream's `connected` message.
fn session_id(data: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(data).ok()?;
    v["data"]["session"].as_str().map(str::to_owned)
}
