//! [`Publisher`]: one keep-alive HTTP/1.1 connection to the server's publish API.
//!
//! Requests are written by hand into a reused buffer and responses parsed in place: the load
//! tool shares the machine with the server it measures, so its own cost per request must be
//! small (a general HTTP client cost more CPU than the server's whole request handling).
//! One request at a time per connection (no pipelining), as backends send them.

use std::io;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::target::Target;
use crate::wsclient::tcp_connect;

/// A keep-alive publish connection (reopened when the server closes it: Soketi answers
/// every API request with `Connection: close`).
pub struct Publisher {
    stream: Option<TcpStream>,
    target: Target,
    out: Vec<u8>,
    buf: BytesMut,
}

/// A parsed response: status and whether the server will close the connection.
struct Response {
    status: u16,
    close: bool,
    error_body: bool,
}

impl Publisher {
    /// Open the connection.
    pub async fn connect(target: &Target) -> io::Result<Self> {
        Ok(Self {
            stream: Some(tcp_connect(target.addr, None).await?),
            target: target.clone(),
            out: Vec::with_capacity(1024),
            buf: BytesMut::with_capacity(4096),
        })
    }

    /// Publish `data` (JSON object text) as `event` on `channels`; returns the HTTP status,
    /// or 599 when a 200 answer carries an error body (Soketi reports errors that way).
    pub async fn publish(&mut self, channels: &[&str], event: &str, data: &str) -> io::Result<u16> {
        let (path, body, bearer) = self.target.publish_request(channels, event, data);
        self.out.clear();
        self.out.extend_from_slice(b"POST ");
        self.out.extend_from_slice(path.as_bytes());
        self.out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        self.out
            .extend_from_slice(self.target.addr.to_string().as_bytes());
        self.out
            .extend_from_slice(b"\r\nContent-Type: application/json\r\nContent-Length: ");
        self.out
            .extend_from_slice(body.len().to_string().as_bytes());
        if let Some(token) = bearer {
            self.out.extend_from_slice(b"\r\nAuthorization: Bearer ");
            self.out.extend_from_slice(token.as_bytes());
        }
        self.out.extend_from_slice(b"\r\n\r\n");
        self.out.extend_from_slice(&body);
        for attempt in 0..2 {
            if self.stream.is_none() {
                self.stream = Some(tcp_connect(self.target.addr, None).await?);
                self.buf.clear();
            }
            match self.round_trip().await {
                Ok(r) => {
                    if r.close {
                        self.stream = None;
                    }
                    return Ok(if r.status == 200 && r.error_body {
                        599
                    } else {
                        r.status
                    });
                }
                // A keep-alive connection the server closed while idle: retry once, fresh.
                Err(e) if attempt == 0 => {
                    let _ = e;
                    self.stream = None;
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the loop returns")
    }

    async fn round_trip(&mut self) -> io::Result<Response> {
        let stream = self.stream.as_mut().expect("connected");
        stream.write_all(&self.out).await?;
        let head_end = loop {
            if let Some(i) = memchr::memmem::find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            self.buf.reserve(4096);
            if stream.read_buf(&mut self.buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        };
        let head = &self.buf[..head_end];
        let status = head
            .get(9..12)
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other("malformed status line"))?;
        let mut length = None;
        let mut chunked = false;
        let mut close = false;
        for line in head.split(|b| *b == b'\n').skip(1) {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = line.iter().position(|b| *b == b':') else {
                continue;
            };
            let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
            if name.eq_ignore_ascii_case(b"content-length") {
                length = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse::<usize>().ok());
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                chunked = value.eq_ignore_ascii_case(b"chunked");
            } else if name.eq_ignore_ascii_case(b"connection") {
                close = value.eq_ignore_ascii_case(b"close");
            }
        }
        self.buf.advance(head_end);
        let body = if chunked {
            self.read_chunked().await?
        } else {
            let length = length.unwrap_or(0);
            while self.buf.len() < length {
                let stream = self.stream.as_mut().expect("connected");
                if stream.read_buf(&mut self.buf).await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
            self.buf.split_to(length)
        };
        let error_body = memchr::memmem::find(&body, b"\"error\"").is_some();
        Ok(Response {
            status,
            close,
            error_body,
        })
    }

    async fn read_chunked(&mut self) -> io::Result<BytesMut> {
        let mut body = BytesMut::new();
        loop {
            let line_end = loop {
                if let Some(i) = memchr::memmem::find(&self.buf, b"\r\n") {
                    break i;
                }
                let stream = self.stream.as_mut().expect("connected");
                if stream.read_buf(&mut self.buf).await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            };
            let size_text = std::str::from_utf8(&self.buf[..line_end]).map_err(io::Error::other)?;
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(io::Error::other)?;
            self.buf.advance(line_end + 2);
            while self.buf.len() < size + 2 {
                let stream = self.stream.as_mut().expect("connected");
                if stream.read_buf(&mut self.buf).await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
            body.extend_from_slice(&self.buf[..size]);
            self.buf.advance(size + 2);
            if size == 0 {
                return Ok(body);
            }
        }
    }
}
