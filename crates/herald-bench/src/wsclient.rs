//! A small WebSocket client for load generation: a source-address-bound socket with
//! SO_LINGER 0, the HTTP/1.1 upgrade, masked text frames out, and batched frame decoding in.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::BytesMut;
use herald_protocol::websocket::{Decoder, Message, OpCode, Role, encode_frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Initial read buffer; it grows only for large messages.
const READ_BUFFER: usize = 4096;

/// One client connection.
pub struct WsClient {
    stream: TcpStream,
    buf: BytesMut,
    decoder: Decoder,
    mask: u32,
    /// Text messages read but not yet taken by `next_text`.
    pending: std::collections::VecDeque<bytes::Bytes>,
    /// Bytes the last read returned: a busy connection reads in larger chunks.
    last_read: usize,
    /// Bytes read from the socket since the last [`WsClient::take_bytes_read`]: the wire
    /// cost of what was received.
    bytes_read: u64,
    /// The server accepted permessage-deflate: frames with RSV1 are compressed.
    deflate: bool,
    /// Inflate the start of one compressed frame in this many; the others are only counted
    /// (see [`Received::Counted`]). 1: every one.
    inflate_every: u32,
    /// Compressed frames seen, for `inflate_every`.
    compressed_seen: u32,
}

/// What the hot receive path hands over for one text frame.
#[derive(Debug, Clone, Copy)]
pub enum Received<'a> {
    /// The frame's text (a compressed frame's first [`INFLATE_PREFIX`] bytes, inflated).
    Text(&'a [u8]),
    /// A compressed frame that was not inflated (sampling): a delivery, counted without
    /// reading its markers.
    Counted,
}

/// How much of a compressed message the hot path inflates: enough for the markers the load
/// tool looks for (`hb_seq`, `hb_t`), which lead every measured payload. A browser inflates
/// the whole message on its own CPU; doing so here for every one of 10,000 subscribers would
/// measure the load tool, which shares the server's cores.
const INFLATE_PREFIX: usize = 512;

/// Open a TCP connection from `source` (if given), with SO_LINGER 0 so closing it leaves no
/// TIME_WAIT port behind.
///
/// Binding to `(source, 0)` makes the kernel search for a free port, which gets slow (all
/// system time) as ports fill up. So with a source address the port is chosen here:
/// `port_hint` (spread by the caller) and a few neighbours on `EADDRINUSE`, and only then
/// the kernel's choice. Without a source address, `connect` picks the port per
/// destination, which is fast.
pub async fn tcp_connect(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    tcp_connect_from(addr, source, 0).await
}

/// [`tcp_connect`] with a preferred source port.
pub async fn tcp_connect_from(
    addr: SocketAddr,
    source: Option<IpAddr>,
    port_hint: u16,
) -> io::Result<TcpStream> {
    let new_socket = || -> io::Result<TcpSocket> {
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        // Zero linger: close sends RST and frees the port at once. (tokio deprecates
        // set_linger because a non-zero linger blocks the thread on drop; zero never blocks.)
        #[allow(deprecated)]
        socket.set_linger(Some(Duration::ZERO))?;
        socket.set_nodelay(true)?;
        Ok(socket)
    };
    let Some(ip) = source else {
        return new_socket()?.connect(addr).await;
    };
    if port_hint != 0 {
        for step in 0..8u16 {
            let port = PORT_BASE + (port_hint.wrapping_add(step.wrapping_mul(4099)) % PORT_SPAN);
            let socket = new_socket()?;
            match socket.bind(SocketAddr::new(ip, port)) {
                Ok(()) => match socket.connect(addr).await {
                    Ok(s) => return Ok(s),
                    Err(e)
                        if e.kind() == io::ErrorKind::AddrInUse
                            || e.kind() == io::ErrorKind::AddrNotAvailable =>
                    {
                        continue;
                    }
                    Err(e) => return Err(e),
                },
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
                Err(e) => return Err(e),
            }
        }
    }
    let socket = new_socket()?;
    socket.bind(SocketAddr::new(ip, 0))?;
    socket.connect(addr).await
}

/// Source ports chosen by the load tool: 20000..60000.
const PORT_BASE: u16 = 20_000;
const PORT_SPAN: u16 = 40_000;

impl WsClient {
    /// Connect and perform the upgrade to `path`.
    pub async fn connect(
        addr: SocketAddr,
        source: Option<IpAddr>,
        port_hint: u16,
        path: &str,
        offer_deflate: bool,
    ) -> io::Result<Self> {
        let mut stream = tcp_connect_from(addr, source, port_hint).await?;
        let key = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            rand::random::<[u8; 16]>(),
        );
        // The offer Chromium and the `ws` package make.
        let offer = if offer_deflate {
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        } else {
            ""
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buf = BytesMut::with_capacity(READ_BUFFER);
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > 16 * 1024 {
                return Err(io::Error::other("upgrade response too long"));
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed during upgrade",
                ));
            }
        };
        if !buf.starts_with(b"HTTP/1.1 101") {
            let line =
                String::from_utf8_lossy(&buf[..buf.iter().position(|b| *b == b'\r').unwrap_or(0)])
                    .into_owned();
            return Err(io::Error::other(format!("upgrade refused: {line}")));
        }
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let deflate = head.contains("\r\nsec-websocket-extensions: permessage-deflate");
        let _ = buf.split_to(head_end);
        Ok(Self {
            stream,
            buf,
            decoder: Decoder::new(Role::Client, 64 << 20).with_deflate(deflate),
            mask: rand::random::<u32>() | 1,
            pending: std::collections::VecDeque::new(),
            last_read: 0,
            bytes_read: 0,
            deflate,
            inflate_every: 1,
            compressed_seen: 0,
        })
    }

    /// Send a masked text frame.
    pub async fn send_text(&mut self, text: &str) -> io::Result<()> {
        // xorshift: a new mask per frame without a system call.
        self.mask ^= self.mask << 13;
        self.mask ^= self.mask >> 17;
        self.mask ^= self.mask << 5;
        let mut frame = Vec::with_capacity(text.len() + 14);
        encode_frame(
            &mut frame,
            OpCode::Text,
            text.as_bytes(),
            Some(self.mask.to_le_bytes()),
        );
        self.stream.write_all(&frame).await
    }

    /// Read once (waiting if nothing is buffered) and hand every complete message to `f`.
    /// Returns false when the server closed the connection.
    pub async fn read_messages(&mut self, mut f: impl FnMut(Message)) -> io::Result<bool> {
        loop {
            let mut any = false;
            loop {
                match self.decoder.decode(&mut self.buf) {
                    Ok(Some(Message::Close(_))) => return Ok(false),
                    Ok(Some(m)) => {
                        any = true;
                        f(m);
                    }
                    Ok(None) => break,
                    Err(v) => return Err(io::Error::other(v.to_string())),
                }
            }
            if any {
                return Ok(true);
            }
            self.buf
                .reserve((self.last_read * 2).clamp(READ_BUFFER, 64 * 1024));
            self.last_read = self.stream.read_buf(&mut self.buf).await?;
            if self.last_read == 0 {
                return Ok(false);
            }
        }
    }

    /// Inflate only one compressed frame in `n` (at least 1); count the others.
    pub fn inflate_every(&mut self, n: u32) {
        self.inflate_every = n.max(1);
    }

    /// Bytes read from the socket since the last call.
    pub fn take_bytes_read(&mut self) -> u64 {
        std::mem::take(&mut self.bytes_read)
    }

    /// The hot receive path: read once and call `f` with the payload of every complete
    /// unfragmented text frame, in place (no copy, no UTF-8 pass: the load tool only looks
    /// for ASCII markers); a compressed frame is passed as the first [`INFLATE_PREFIX`]
    /// bytes it inflates to. Other frames are skipped; a close ends the connection. Returns
    /// false when the server closed the connection.
    pub async fn read_texts(&mut self, mut f: impl FnMut(Received<'_>)) -> io::Result<bool> {
        loop {
            let mut consumed = 0;
            let mut any = false;
            loop {
                let rest = &self.buf[consumed..];
                if rest.len() < 2 {
                    break;
                }
                let (b0, b1) = (rest[0], rest[1]);
                if b1 & 0x80 != 0 {
                    return Err(io::Error::other("masked frame from the server"));
                }
                let (len, head) = match b1 & 0x7F {
                    126 if rest.len() >= 4 => {
                        (usize::from(u16::from_be_bytes([rest[2], rest[3]])), 4)
                    }
                    127 if rest.len() >= 10 => {
                        let mut n = [0u8; 8];
                        n.copy_from_slice(&rest[2..10]);
                        (
                            usize::try_from(u64::from_be_bytes(n)).map_err(io::Error::other)?,
                            10,
                        )
                    }
                    126 | 127 => break,
                    n => (usize::from(n), 2),
                };
                if rest.len() < head + len {
                    break;
                }
                match b0 & 0x0F {
                    0x1 if b0 & 0x80 != 0 && b0 & 0x40 != 0 && self.deflate => {
                        self.compressed_seen = self.compressed_seen.wrapping_add(1);
                        if self.compressed_seen % self.inflate_every == 0 {
                            let mut out = [0u8; INFLATE_PREFIX];
                            let n = inflate_prefix(&rest[head..head + len], &mut out)?;
                            f(Received::Text(&out[..n]));
                        } else {
                            f(Received::Counted);
                        }
                    }
                    0x1 if b0 & 0x80 != 0 => f(Received::Text(&rest[head..head + len])),
                    0x8 => return Ok(false),
                    _ => {}
                }
                any = true;
                consumed += head + len;
            }
            let _ = self.buf.split_to(consumed);
            if any {
                return Ok(true);
            }
            self.buf
                .reserve((self.last_read * 2).clamp(READ_BUFFER, 64 * 1024));
            self.last_read = self.stream.read_buf(&mut self.buf).await?;
            self.bytes_read += self.last_read as u64;
            if self.last_read == 0 {
                return Ok(false);
            }
        }
    }

    /// The next text message, skipping control frames; `None` when closed. Messages read
    /// along with it are kept for the next call (and for `take_pending`).
    pub async fn next_text(&mut self) -> io::Result<Option<bytes::Bytes>> {
        loop {
            if let Some(t) = self.pending.pop_front() {
                return Ok(Some(t));
            }
            let mut pending = std::mem::take(&mut self.pending);
            let open = self
                .read_messages(|m| {
                    if let Message::Text(t) = m {
                        pending.push_back(t);
                    }
                })
                .await?;
            self.pending = pending;
            if !open && self.pending.is_empty() {
                return Ok(None);
            }
        }
    }

    /// Text messages already read but not yet taken.
    pub fn take_pending(&mut self) -> std::collections::VecDeque<bytes::Bytes> {
        std::mem::take(&mut self.pending)
    }
}

/// Inflate the start of a compressed message into `out`: as many bytes as fit. One
/// decompressor per thread, reset per message (the server takes no context over).
fn inflate_prefix(payload: &[u8], out: &mut [u8]) -> io::Result<usize> {
    use flate2::{Decompress, FlushDecompress};
    thread_local!(static INFLATER: std::cell::RefCell<Decompress> =
        std::cell::RefCell::new(Decompress::new(false)));
    INFLATER.with_borrow_mut(|d| {
        d.reset(false);
        let mut written = 0;
        for input in [payload, &[0x00, 0x00, 0xff, 0xff][..]] {
            let before_in = d.total_in();
            let before_out = d.total_out();
            d.decompress(input, &mut out[written..], FlushDecompress::Sync)
                .map_err(io::Error::other)?;
            written += (d.total_out() - before_out) as usize;
            if written == out.len() || d.total_in() - before_in < input.len() as u64 {
                break;
            }
        }
        Ok(written)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflates_the_start_of_a_compressed_message() {
        let message = crate::target::device_status(3);
        let compressed = herald_protocol::deflate::compress(message.as_bytes());
        let mut out = [0u8; INFLATE_PREFIX];
        let n = inflate_prefix(&compressed, &mut out).unwrap();
        assert_eq!(n, INFLATE_PREFIX);
        assert_eq!(&out[..n], &message.as_bytes()[..n]);
        let short = herald_protocol::deflate::compress(b"{\"hb_seq\":1}");
        let n = inflate_prefix(&short, &mut out).unwrap();
        assert_eq!(&out[..n], b"{\"hb_seq\":1}");
    }
}
