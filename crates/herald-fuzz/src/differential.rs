//! Herald's RFC 6455 decoder against `tungstenite`'s on the same bytes (server side: client
//! frames must be masked). Both must give the same messages, in order, and agree on whether
//! the bytes break the protocol, up to the first close (after which a server stops reading).

use std::io::{self, Read, Write};

use bytes::BytesMut;
use herald_protocol::websocket::{Decoder, Message, Role};
use tungstenite::protocol::{Role as TRole, WebSocket, WebSocketConfig};

use crate::MAX_MESSAGE;

/// How a decoding ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The bytes ran out (possibly mid-frame).
    Incomplete,
    /// A close frame was decoded (nothing after it counts).
    Closed,
    /// The bytes break the protocol (any close code).
    Violation,
}

/// A message both decoders can report.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
}

/// The differential target.
pub fn run(data: &[u8]) {
    let mut ours = normalise(herald(data));
    let mut theirs = normalise(tungstenite(data));
    // One decoder may refuse a frame from its header alone (an unmasked client frame, say)
    // while the other waits for the payload first. Give the waiting one the rest of any
    // frame it could be reading; it must then refuse too, after the same messages.
    let padded = || {
        let mut more = data.to_vec();
        more.resize(data.len() + MAX_MESSAGE + 16, 0);
        more
    };
    match (&ours.1, &theirs.1) {
        (End::Violation, End::Incomplete) => theirs = normalise(tungstenite(&padded())),
        (End::Incomplete, End::Violation) => ours = normalise(herald(&padded())),
        _ => {}
    }
    assert_eq!(ours, theirs, "herald and tungstenite disagree");
}

/// tungstenite reports a close frame it refuses (a code RFC 6455 does not allow, a
/// one-byte payload) as the 1002 close it answers with; Herald reports a violation. The
/// same rule is applied to both sides, so a client's own 1002 close with that reason
/// compares equal too.
fn normalise((mut seen, end): (Vec<Seen>, End)) -> (Vec<Seen>, End) {
    let refused = Seen::Close(Some((1002, "Protocol violation".to_owned())));
    if end == End::Closed && seen.last() == Some(&refused) {
        seen.pop();
        return (seen, End::Violation);
    }
    (seen, end)
}

fn herald(data: &[u8]) -> (Vec<Seen>, End) {
    let mut decoder = Decoder::new(Role::Server, MAX_MESSAGE);
    let mut buf = BytesMut::from(data);
    let mut seen = Vec::new();
    loop {
        match decoder.decode(&mut buf) {
            Ok(Some(message)) => {
                let close = matches!(message, Message::Close(_));
                seen.push(match message {
                    Message::Text(t) => Seen::Text(t.to_vec()),
                    Message::Binary(b) => Seen::Binary(b.to_vec()),
                    Message::Ping(p) => Seen::Ping(p.to_vec()),
                    Message::Pong(p) => Seen::Pong(p.to_vec()),
                    Message::Close(c) => Seen::Close(c),
                });
                if close {
                    return (seen, End::Closed);
                }
            }
            Ok(None) => return (seen, End::Incomplete),
            Err(_) => return (seen, End::Violation),
        }
    }
}

/// A stream that reads `data` once and swallows writes (tungstenite answers pings).
struct Bytes<'a> {
    data: &'a [u8],
}

impl Read for Bytes<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.data.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

impl Write for Bytes<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn tungstenite(data: &[u8]) -> (Vec<Seen>, End) {
    let mut config = WebSocketConfig::default();
    config.max_message_size = Some(MAX_MESSAGE);
    config.max_frame_size = Some(MAX_MESSAGE);
    let mut ws = WebSocket::from_raw_socket(Bytes { data }, TRole::Server, Some(config));
    let mut seen = Vec::new();
    loop {
        match ws.read() {
            Ok(message) => {
                let close = message.is_close();
                seen.push(match message {
                    tungstenite::Message::Text(t) => Seen::Text(t.as_bytes().to_vec()),
                    tungstenite::Message::Binary(b) => Seen::Binary(b.to_vec()),
                    tungstenite::Message::Ping(p) => Seen::Ping(p.to_vec()),
                    tungstenite::Message::Pong(p) => Seen::Pong(p.to_vec()),
                    tungstenite::Message::Close(frame) => Seen::Close(
                        frame.map(|f| (u16::from(f.code), f.reason.as_str().to_owned())),
                    ),
                    // Only produced for a client's own frames, never read from a socket.
                    tungstenite::Message::Frame(_) => continue,
                });
                if close {
                    return (seen, End::Closed);
                }
            }
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                return (seen, End::Incomplete);
            }
            Err(_) => return (seen, End::Violation),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The differential's first finding (`regressions/websocket_differential/`): an unmasked
    /// client frame's header alone. Herald refuses it from the header, tungstenite waits for
    /// the payload; given the payload, tungstenite refuses it too.
    #[test]
    fn a_refusal_from_the_header_matches_a_refusal_after_the_payload() {
        let header_only = [0x02, 0x68, 0x69, 0x69];
        assert_eq!(herald(&header_only).1, End::Violation);
        assert_eq!(tungstenite(&header_only).1, End::Incomplete);
        run(&header_only);
    }
}
