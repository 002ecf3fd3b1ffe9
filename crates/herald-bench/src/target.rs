//! [`Target`]: the server under test, and how to speak to it in its protocol.
//!
//! Two protocols are spoken: Herald's native protocol (Herald, the floor broadcaster and the
//! Node `ws` baseline) and the Pusher Channels protocol v7 (Soketi, Sockudo, Reverb, and
//! Herald once it speaks Pusher). Everything protocol-specific lives here.

use std::fmt::Write as _;

use hmac::{Hmac, Mac};
use md5::{Digest as _, Md5};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The client protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Herald's native JSON protocol: `/ws/{key}`, `POST /api/{app}/publish`.
    Native,
    /// Pusher Channels protocol v7: `/app/{key}`, `POST /apps/{id}/events` with signatures.
    Pusher,
}

/// How clients connect (Herald's native protocol only, for the HTTP ones).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// WebSocket.
    #[default]
    Ws,
    /// Server-Sent Events (`GET /sse/{key}`).
    Sse,
    /// Long-polling (`/poll/{key}`).
    LongPoll,
}

/// The server under test.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    /// Client protocol.
    pub protocol: Protocol,
    /// Client transport.
    #[serde(default)]
    pub transport: Transport,
    /// `host:port` of the WebSocket and HTTP API listener.
    pub addr: std::net::SocketAddr,
    /// App id (API paths).
    pub app_id: String,
    /// App key (client URLs).
    pub app_key: String,
    /// App secret (API authentication).
    pub secret: String,
    /// WebSocket clients offer permessage-deflate.
    #[serde(default)]
    pub deflate: bool,
    /// What measured payloads look like.
    #[serde(default)]
    pub payload_kind: PayloadKind,
    /// With `deflate`: read the markers of one compressed delivery in this many.
    #[serde(default = "one")]
    pub inflate_every: u32,
}

fn one() -> u32 {
    1
}

/// What a measured payload looks like. Compression depends on it: padding compresses to
/// nothing, real events do not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PayloadKind {
    /// The markers padded with `x` to `--payload` bytes.
    #[default]
    Pad,
    /// A device status of about 1.5 KB: ids, a firmware string, battery, fifteen sensor
    /// readings with varying values and timestamps.
    Device,
    /// A chat message of about 1.3 KB: ids, the author, an 850-character body of English
    /// words, mentions and reactions.
    Chat,
}

/// What a received text frame is, as far as the load tool cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// The connection greeting.
    Connected,
    /// A subscription acknowledgement.
    Subscribed,
    /// A server heartbeat that needs an answer.
    Ping,
    /// An error or refusal.
    Error,
    /// A measured delivery: sequence number and send time (µs since the Unix epoch).
    Delivery(u64, u64),
    /// Anything else.
    Other,
}

impl Target {
    /// The WebSocket request path.
    pub fn ws_path(&self) -> String {
        match self.protocol {
            Protocol::Native => format!("/ws/{}", self.app_key),
            Protocol::Pusher => format!(
                "/app/{}?protocol=7&client=js&version=8.4.0&flash=false",
                self.app_key
            ),
        }
    }

    /// Query parameters naming `channels` (HTTP transports).
    pub fn channel_query(channels: &[String]) -> String {
        channels
            .iter()
            .map(|c| format!("channel={c}"))
            .collect::<Vec<_>>()
            .join("&")
    }

    /// The subscribe message for `channel`.
    pub fn subscribe_message(&self, channel: &str) -> String {
        match self.protocol {
            Protocol::Native => format!(r#"{{"type":"subscribe","channel":"{channel}"}}"#),
            Protocol::Pusher => {
                format!(r#"{{"event":"pusher:subscribe","data":{{"channel":"{channel}"}}}}"#)
            }
        }
    }

    /// The answer to a server heartbeat.
    pub fn pong_message(&self) -> &'static str {
        match self.protocol {
            Protocol::Native => r#"{"type":"pong"}"#,
            Protocol::Pusher => r#"{"event":"pusher:pong","data":{}}"#,
        }
    }

    /// Classify a received text frame.
    pub fn classify(&self, text: &[u8]) -> Frame {
        if let Some(d) = delivery(text) {
            return Frame::Delivery(d.0, d.1);
        }
        let has = |needle: &[u8]| memmem(text, needle);
        match self.protocol {
            Protocol::Native => {
                if has(br#""type":"connected""#) {
                    Frame::Connected
                } else if has(br#""type":"subscribe""#) {
                    Frame::Subscribed
                } else if has(br#""type":"ping""#) {
                    Frame::Ping
                } else if has(br#""type":"error""#) {
                    Frame::Error
                } else {
                    Frame::Other
                }
            }
            Protocol::Pusher => {
                if has(b"pusher:connection_established") {
                    Frame::Connected
                } else if has(b"pusher_internal:subscription_succeeded") {
                    Frame::Subscribed
                } else if has(b"pusher:ping") {
                    Frame::Ping
                } else if has(b"pusher:error") || has(b"pusher:subscription_error") {
                    Frame::Error
                } else {
                    Frame::Other
                }
            }
        }
    }

    /// An HTTP publish of `data` (a JSON object text) as event `event` to `channels`:
    /// `(path with query, body, bearer token)`.
    pub fn publish_request(
        &self,
        channels: &[&str],
        event: &str,
        data: &str,
    ) -> (String, Vec<u8>, Option<String>) {
        let list = channels
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(",");
        match self.protocol {
            Protocol::Native => {
                let body = format!(r#"{{"channels":[{list}],"event":"{event}","data":{data}}}"#);
                (
                    format!("/api/{}/publish", self.app_id),
                    body.into_bytes(),
                    Some(self.secret.clone()),
                )
            }
            Protocol::Pusher => {
                let data_string = serde_json::to_string(data).expect("a str serialises");
                let body =
                    format!(r#"{{"name":"{event}","channels":[{list}],"data":{data_string}}}"#);
                let path = format!("/apps/{}/events", self.app_id);
                let query = pusher_query(
                    &self.app_key,
                    &self.secret,
                    "POST",
                    &path,
                    body.as_bytes(),
                    unix_secs(),
                );
                (format!("{path}?{query}"), body.into_bytes(), None)
            }
        }
    }
}

/// The signed query string of a Pusher HTTP API request.
pub fn pusher_query(
    key: &str,
    secret: &str,
    method: &str,
    path: &str,
    body: &[u8],
    timestamp: u64,
) -> String {
    let body_md5 = hex(&Md5::digest(body));
    let params =
        format!("auth_key={key}&auth_timestamp={timestamp}&auth_version=1.0&body_md5={body_md5}");
    let to_sign = format!("{method}\n{path}\n{params}");
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(to_sign.as_bytes());
    let signature = hex(&mac.finalize().into_bytes());
    format!("{params}&auth_signature={signature}")
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Seconds since the Unix epoch.
pub fn unix_secs() -> u64 {
    unix_micros() / 1_000_000
}

/// Microseconds since the Unix epoch: the clock every send and receive time uses.
pub fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl Target {
    /// The payload of measured message `seq`: padded to about `size` bytes, or a realistic
    /// event of the target's payload kind.
    pub fn payload(&self, seq: u64, size: usize) -> String {
        match self.payload_kind {
            PayloadKind::Pad => payload(seq, size),
            PayloadKind::Device => device_status(seq),
            PayloadKind::Chat => chat_message(seq),
        }
    }
}

/// A small deterministic generator: the same `seq` gives the same event.
struct Rng(u64);

impl Rng {
    fn new(seq: u64) -> Self {
        Self(seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A device status event (see [`PayloadKind::Device`]).
pub fn device_status(seq: u64) -> String {
    let mut r = Rng::new(seq);
    let t = unix_micros();
    let ms = t / 1000;
    let mut s = format!(
        r#"{{"hb_seq":{seq},"hb_t":{t},"device_id":"dev-{:04}","site":"warehouse-{}","firmware":"2.{}.{}-rc{}","battery":{:.2},"online":true,"rssi":-{},"sensors":["#,
        r.below(10_000),
        ["north", "south", "east", "west"][r.below(4) as usize],
        r.below(20),
        r.below(10),
        r.below(5),
        r.below(10_000) as f64 / 10_000.0,
        40 + r.below(50),
    );
    for i in 0..15 {
        if i > 0 {
            s.push(',');
        }
        // Plausible readings: 18-30 °C, 30-70 %, 990-1030 hPa, two decimals.
        let (kind, unit, base, span) = [
            ("temp", "celsius", 18.0, 12.0),
            ("humidity", "percent", 30.0, 40.0),
            ("pressure", "hpa", 990.0, 40.0),
        ][i % 3];
        let _ = write!(
            s,
            r#"{{"sensor":"{kind}-{i}","value":{:.2},"unit":"{unit}","ok":{},"sampled_at":{}}}"#,
            base + span * r.below(10_000) as f64 / 10_000.0,
            r.below(10) != 0,
            ms - r.below(5000),
        );
    }
    s.push_str("]}");
    s
}

/// Words chat bodies are made of.
const WORDS: &[&str] = &[
    "the",
    "a",
    "we",
    "you",
    "I",
    "it",
    "is",
    "are",
    "was",
    "be",
    "have",
    "do",
    "will",
    "can",
    "not",
    "and",
    "but",
    "or",
    "so",
    "if",
    "when",
    "then",
    "that",
    "this",
    "there",
    "here",
    "meeting",
    "deploy",
    "release",
    "tomorrow",
    "today",
    "morning",
    "afternoon",
    "team",
    "customer",
    "order",
    "invoice",
    "shipment",
    "warehouse",
    "dashboard",
    "server",
    "update",
    "please",
    "thanks",
    "great",
    "sure",
    "maybe",
    "later",
    "check",
    "review",
    "merge",
    "branch",
    "ticket",
    "issue",
    "fixed",
    "broken",
    "again",
    "quickly",
    "before",
    "after",
    "lunch",
    "coffee",
    "weekend",
    "Monday",
    "Friday",
    "numbers",
    "report",
    "budget",
    "plan",
    "design",
    "mobile",
    "browser",
    "login",
    "password",
    "email",
    "call",
    "video",
    "link",
    "photo",
    "document",
    "draft",
    "final",
    "version",
    "question",
    "answer",
    "idea",
    "problem",
];

/// A chat message event (see [`PayloadKind::Chat`]).
pub fn chat_message(seq: u64) -> String {
    let mut r = Rng::new(seq);
    let t = unix_micros();
    let mut body = String::new();
    while body.len() < 850 {
        if !body.is_empty() {
            body.push(if r.below(9) == 0 { '.' } else { ',' });
            body.push(' ');
        }
        for w in 0..(3 + r.below(8)) {
            if w > 0 {
                body.push(' ');
            }
            body.push_str(WORDS[r.below(WORDS.len() as u64) as usize]);
        }
    }
    let user = r.below(100_000);
    format!(
        r#"{{"hb_seq":{seq},"hb_t":{t},"id":"msg-{:016x}","room":"presence-room.{}","user":{{"id":{user},"name":"User {user}","avatar":"https://cdn.example.com/avatars/{user}.png","role":"member"}},"body":"{body}.","sent_at":{},"edited":false,"mentions":[{},{}],"reactions":{{"thumbs_up":{},"heart":{}}},"reply_to":"msg-{:016x}","client_id":"{:08x}-{:04x}"}}"#,
        r.next(),
        r.below(50),
        t / 1000,
        r.below(100_000),
        r.below(100_000),
        r.below(10),
        r.below(5),
        r.next(),
        r.next() as u32,
        r.below(65_536),
    )
}

/// The payload of measured message `seq`, padded to about `size` bytes.
pub fn payload(seq: u64, size: usize) -> String {
    let t = unix_micros();
    let head = format!(r#"{{"hb_seq":{seq},"hb_t":{t},"pad":""#);
    let pad = size.saturating_sub(head.len() + 2);
    let mut s = String::with_capacity(head.len() + pad + 2);
    s.push_str(&head);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    s
}

/// Find `hb_seq` and `hb_t` in a frame, whatever its protocol's encoding (a Pusher `data` is
/// a JSON string, so the fields appear as `\"hb_seq\":…`).
pub fn delivery(text: &[u8]) -> Option<(u64, u64)> {
    let at = memchr::memmem::find(text, b"hb_seq")? + b"hb_seq".len();
    let seq = parse_number(&text[at..])?;
    // hb_t follows hb_seq closely: search only the next few bytes.
    let near = &text[at..text.len().min(at + 40)];
    let t = number_after(near, b"hb_t")?;
    Some((seq, t))
}

fn number_after(text: &[u8], name: &[u8]) -> Option<u64> {
    let at = memchr::memmem::find(text, name)? + name.len();
    parse_number(&text[at..])
}

/// The decimal number starting within the first 4 bytes of `rest` (after `":` or `\":`).
fn parse_number(rest: &[u8]) -> Option<u64> {
    let start = rest.iter().take(4).position(u8::is_ascii_digit)?;
    let mut n: u64 = 0;
    let mut any = false;
    for b in &rest[start..] {
        if !b.is_ascii_digit() {
            break;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        any = true;
    }
    any.then_some(n)
}

fn memmem(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pusher_signature_matches_the_documented_example() {
        // The worked example of the Pusher HTTP API documentation.
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        let q = pusher_query(
            "278d425bdf160c739803",
            "7ad3773142a6692b25b8",
            "POST",
            "/apps/3/events",
            body,
            1353088179,
        );
        assert!(
            q.contains("body_md5=ec365a775a4cd0599faeb73354201b6f"),
            "{q}"
        );
        assert!(
            q.ends_with(
                "auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
            ),
            "{q}"
        );
    }

    #[test]
    fn realistic_payloads_are_json_of_their_size_and_carry_the_markers() {
        for (p, lo, hi) in [
            (device_status(7), 1300, 1700),
            (chat_message(7), 1100, 1500),
        ] {
            let v: serde_json::Value = serde_json::from_str(&p).expect("valid JSON");
            assert_eq!(v["hb_seq"], 7);
            assert!((lo..=hi).contains(&p.len()), "{} bytes: {p}", p.len());
            assert_eq!(delivery(p.as_bytes()).map(|d| d.0), Some(7));
        }
        assert_ne!(device_status(1), device_status(2), "values vary");
    }

    #[test]
    fn finds_measurements_in_both_encodings() {
        let p = payload(42, 100);
        assert!(p.len() >= 99 && p.len() <= 101, "{}", p.len());
        let native = format!(r#"{{"type":"event","data":{p}}}"#);
        let (seq, t) = delivery(native.as_bytes()).unwrap();
        assert_eq!(seq, 42);
        assert!(t > 1_600_000_000_000_000);
        let pusher = format!(
            r#"{{"event":"e","channel":"c","data":{}}}"#,
            serde_json::to_string(&p).unwrap()
        );
        assert_eq!(delivery(pusher.as_bytes()).unwrap().0, 42);
        assert_eq!(delivery(br#"{"type":"ping"}"#), None);
    }
}
