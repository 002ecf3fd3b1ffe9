//! Clients for Herald's HTTP transports (SSE and long-polling), hand-written like the rest of
//! the tool so their own cost stays small: one TCP connection each, requests written into a
//! reused buffer, responses parsed in place.

use std::io;
use std::net::IpAddr;

use bytes::{Buf, Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::target::{Frame, Target, Transport};
use crate::wsclient::tcp_connect_from;

/// One HTTP/1.1 connection.
pub struct HttpConn {
    stream: TcpStream,
    buf: BytesMut,
    host: String,
}

/// A response head: status and how the body is framed.
struct Head {
    status: u16,
    content_length: Option<usize>,
    chunked: bool,
}

impl HttpConn {
    /// Connect to the target.
    pub async fn connect(
        target: &Target,
        source: Option<IpAddr>,
        port_hint: u16,
    ) -> io::Result<Self> {
        Ok(Self {
            stream: tcp_connect_from(target.addr, source, port_hint).await?,
            buf: BytesMut::with_capacity(8192),
            host: target.addr.to_string(),
        })
    }

    async fn fill(&mut self) -> io::Result<()> {
        if self.stream.read_buf(&mut self.buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        Ok(())
    }

    async fn send(&mut self, method: &str, path: &str, extra: &str) -> io::Result<()> {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\n{extra}\r\n",
            self.host
        );
        self.stream.write_all(req.as_bytes()).await
    }

    async fn head(&mut self) -> io::Result<Head> {
        loop {
            if let Some(end) = memchr::memmem::find(&self.buf, b"\r\n\r\n") {
                let text = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.advance(end + 4);
                let mut lines = text.lines();
                let status = lines
                    .next()
                    .and_then(|l| l.split(' ').nth(1))
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| io::Error::other("bad status line"))?;
                let mut head = Head {
                    status,
                    content_length: None,
                    chunked: false,
                };
                for line in lines {
                    let Some((k, v)) = line.split_once(':') else {
                        continue;
                    };
                    let v = v.trim();
                    if k.eq_ignore_ascii_case("content-length") {
                        head.content_length = v.parse().ok();
                    } else if k.eq_ignore_ascii_case("transfer-encoding") {
                        head.chunked = v.eq_ignore_ascii_case("chunked");
                    }
                }
                return Ok(head);
            }
            self.fill().await?;
        }
    }

    /// A whole response: status and body (Content-Length framed).
    pub async fn request(&mut self, method: &str, path: &str) -> io::Result<(u16, Bytes)> {
        self.send(method, path, "").await?;
        let head = self.head().await?;
        let len = head.content_length.unwrap_or(0);
        while self.buf.len() < len {
            self.fill().await?;
        }
        Ok((head.status, self.buf.split_to(len).freeze()))
    }

    /// Open a streamed response (SSE); then read it with [`HttpConn::next_chunk`].
    pub async fn open_stream(&mut self, path: &str) -> io::Result<u16> {
        self.send("GET", path, "Accept: text/event-stream\r\n")
            .await?;
        let head = self.head().await?;
        if !head.chunked {
            return Err(io::Error::other("stream is not chunked"));
        }
        Ok(head.status)
    }

    /// The next chunk of a chunked body; `None` at its end.
    pub async fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            if let Some(line_end) = memchr::memmem::find(&self.buf, b"\r\n") {
                let size_text = std::str::from_utf8(&self.buf[..line_end]).unwrap_or("");
                let size =
                    usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                        .map_err(|_| io::Error::other("bad chunk size"))?;
                if self.buf.len() >= line_end + 2 + size + 2 {
                    self.buf.advance(line_end + 2);
                    let data = self.buf.split_to(size).freeze();
                    self.buf.advance(2);
                    return Ok((size > 0).then_some(data));
                }
            }
            self.fill().await?;
        }
    }
}

/// Splits an SSE byte stream into the `data` of its events (comments and other fields are
/// dropped).
#[derive(Default)]
pub struct SseParser {
    pending: BytesMut,
}

impl SseParser {
    /// Feed bytes; call `f` with the data of every complete event.
    pub fn feed(&mut self, bytes: &[u8], mut f: impl FnMut(&[u8])) {
        self.pending.extend_from_slice(bytes);
        let mut data = Vec::new();
        while let Some(end) = memchr::memmem::find(&self.pending, b"\n\n") {
            let event = self.pending.split_to(end + 2);
            data.clear();
            for line in event[..end].split(|b| *b == b'\n') {
                if let Some(d) = line.strip_prefix(b"data: ") {
                    if !data.is_empty() {
                        data.push(b'\n');
                    }
                    data.extend_from_slice(d);
                }
            }
            if !data.is_empty() {
                f(&data);
            }
        }
    }
}

/// A subscribed client on an HTTP transport.
pub struct HttpClient {
    conn: HttpConn,
    /// SSE: the event parser. Long-polling: `None`.
    sse: Option<SseParser>,
    /// Long-polling: the poll path without the cursor, and the cursor.
    poll: Option<(String, u64)>,
    /// Messages read during setup after the last ack.
    pending: Vec<Bytes>,
}

impl HttpClient {
    /// Open a session subscribed to `channels` and wait for every subscribe ack.
    pub async fn setup(
        target: &Target,
        source: Option<IpAddr>,
        port_hint: u16,
        channels: &[String],
    ) -> io::Result<Self> {
        let mut conn = HttpConn::connect(target, source, port_hint).await?;
        let query = Target::channel_query(channels);
        let mut client = match target.transport {
            Transport::Sse => {
                let status = conn
                    .open_stream(&format!("/sse/{}?{query}", target.app_key))
                    .await?;
                if status != 200 {
                    return Err(io::Error::other(format!("sse answered {status}")));
                }
                Self {
                    conn,
                    sse: Some(SseParser::default()),
                    poll: None,
                    pending: Vec::new(),
                }
            }
            _ => {
                let (status, body) = conn
                    .request("POST", &format!("/poll/{}?{query}", target.app_key))
                    .await?;
                if status != 200 {
                    return Err(io::Error::other(format!("poll open answered {status}")));
                }
                let session = session_of(&body)?;
                Self {
                    conn,
                    sse: None,
                    poll: Some((format!("/poll/{}/{session}?cursor=", target.app_key), 0)),
                    pending: Vec::new(),
                }
            }
        };
        let mut acks = 0;
        while acks < channels.len() {
            let mut texts = Vec::new();
            client
                .read_texts(|t| texts.push(Bytes::copy_from_slice(t)))
                .await?;
            for t in texts {
                match target.classify(&t) {
                    Frame::Subscribed => acks += 1,
                    Frame::Error => {
                        return Err(io::Error::other(format!(
                            "server refused: {}",
                            String::from_utf8_lossy(&t[..t.len().min(200)])
                        )));
                    }
                    _ if acks == channels.len() => client.pending.push(t),
                    _ => {}
                }
            }
        }
        Ok(client)
    }

    /// Messages read during setup and not yet handled.
    pub fn take_pending(&mut self) -> Vec<Bytes> {
        std::mem::take(&mut self.pending)
    }

    /// Wait for the next chunk (SSE) or poll answer (long-polling) and call `f` with each
    /// message in it.
    pub async fn read_texts(&mut self, mut f: impl FnMut(&[u8])) -> io::Result<()> {
        if let Some(parser) = &mut self.sse {
            let Some(chunk) = self.conn.next_chunk().await? else {
                return Err(io::Error::other("stream ended"));
            };
            parser.feed(&chunk, &mut f);
            return Ok(());
        }
        let (path, cursor) = self.poll.as_mut().expect("a long-poll client");
        let (status, body) = self.conn.request("GET", &format!("{path}{cursor}")).await?;
        if status != 200 {
            return Err(io::Error::other(format!("poll answered {status}")));
        }
        let answer: PollAnswer<'_> = serde_json::from_slice(&body)
            .map_err(|e| io::Error::other(format!("bad poll answer: {e}")))?;
        *cursor = answer.cursor;
        for m in answer.messages {
            f(m.get().as_bytes());
        }
        Ok(())
    }
}

/// A long-poll answer.
#[derive(Deserialize)]
pub struct PollAnswer<'a> {
    /// The cursor for the next poll.
    pub cursor: u64,
    /// The messages, as raw JSON.
    #[serde(borrow)]
    pub messages: Vec<&'a RawValue>,
}

/// The session id in a long-poll `open` answer.
pub fn session_of(body: &[u8]) -> io::Result<String> {
    #[derive(Deserialize)]
    struct Open {
        session: String,
    }
    serde_json::from_slice::<Open>(body)
        .map(|o| o.session)
        .map_err(|e| io::Error::other(format!("bad open answer: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_are_split_and_joined() {
        let mut p = SseParser::default();
        let mut got = Vec::new();
        p.feed(
            b": heartbeat\n\nid: a:1:e\ndata: {\"x\":\ndata: 1}\n\ndata: {\"y\"",
            |d| {
                got.push(String::from_utf8(d.to_vec()).unwrap());
            },
        );
        p.feed(b":2}\n\n", |d| {
            got.push(String::from_utf8(d.to_vec()).unwrap())
        });
        assert_eq!(got, vec!["{\"x\":\n1}", "{\"y\":2}"]);
    }
}
