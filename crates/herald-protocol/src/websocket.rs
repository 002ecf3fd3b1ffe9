//! RFC 6455 WebSocket framing, for both roles, with no I/O.
//!
//! Herald frames WebSocket messages itself instead of using a WebSocket library, for two
//! measured reasons (see `BENCHMARKS.md`): an idle connection must hold no buffers at all,
//! and a server frame's bytes must be built once per publication and shared by every
//! subscriber. A server frame is unmasked, so its header depends only on the payload length:
//! the transport writes `FrameHeader` + shared payload with one vectored write.
//!
//! The [`Decoder`] turns received bytes into [`Message`]s: it unmasks in place, reassembles
//! fragments, validates UTF-8 of text messages and enforces a maximum message size before
//! buffering a payload. Every violation maps to the close code the RFC prescribes.
//!
//! The one extension is permessage-deflate (RFC 7692, see [`crate::deflate`]), when the
//! handshake negotiated it: [`Decoder::with_deflate`] then accepts RSV1 on the first frame
//! of a data message and inflates the message; [`FrameHeader::compressed`] and
//! [`encode_frame_compressed`] set RSV1 on frames sent. Otherwise every RSV bit must be zero.

use base64::Engine as _;
use bytes::{Buf, Bytes, BytesMut};
use sha1::{Digest, Sha1};

use crate::codes::CloseCode;
use crate::deflate;

/// The GUID RFC 6455 appends to the client's key.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key`.
pub fn accept_key(client_key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(client_key.trim().as_bytes());
    sha.update(ACCEPT_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// Whether a `Sec-WebSocket-Key` is well formed: base64 of exactly 16 bytes.
pub fn is_valid_client_key(client_key: &str) -> bool {
    base64::engine::general_purpose::STANDARD
        .decode(client_key.trim())
        .map(|k| k.len() == 16)
        .unwrap_or(false)
}

/// Frame opcodes (RFC 6455 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OpCode {
    /// A continuation of a fragmented message.
    Continuation = 0x0,
    /// A UTF-8 text message.
    Text = 0x1,
    /// A binary message.
    Binary = 0x2,
    /// The closing handshake.
    Close = 0x8,
    /// A ping; the peer answers with a pong carrying the same payload.
    Ping = 0x9,
    /// A pong.
    Pong = 0xA,
}

impl OpCode {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// Which side of the connection a [`Decoder`] or encoder is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Receives masked frames, sends unmasked ones.
    Server,
    /// Receives unmasked frames, sends masked ones.
    Client,
}

/// A complete message or control frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message; the bytes are valid UTF-8.
    Text(Bytes),
    /// A binary message.
    Binary(Bytes),
    /// A ping with its payload.
    Ping(Bytes),
    /// A pong with its payload.
    Pong(Bytes),
    /// A close frame with its code and reason, if it carried any.
    Close(Option<(u16, String)>),
}

/// A framing violation, with the close code the connection must be closed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    /// The close code to send (1002, 1007 or 1009).
    pub code: CloseCode,
    /// What was wrong, for logs and the close reason.
    pub reason: &'static str,
}

impl Violation {
    const fn protocol(reason: &'static str) -> Self {
        Self {
            code: CloseCode::ProtocolError,
            reason,
        }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.reason, self.code.code())
    }
}

impl std::error::Error for Violation {}

/// A message being reassembled from fragments.
#[derive(Debug)]
struct Fragmented {
    /// Text or Binary, from the first fragment.
    opcode: OpCode,
    /// The payload so far.
    data: BytesMut,
    /// How many leading bytes of a text message's `data` are known to be valid UTF-8: each
    /// fragment is checked as it arrives, so invalid text fails at once (RFC 6455 §8.1, and
    /// the connection holds no more of it), and a character cut between fragments waits.
    /// A `u32` (messages are far smaller) keeps it in the opcode's padding: every
    /// connection's decoder holds this struct.
    checked: u32,
    /// Whether the first frame had RSV1 set: `data` is then deflate, inflated when the
    /// message completes, and `checked` stays 0. A `bool` in the same padding.
    compressed: bool,
}

impl Fragmented {
    /// Check the text received since the last check; fail on bytes that can never become
    /// valid UTF-8, leave an incomplete character at the end for the next fragment.
    fn check_text(&mut self) -> Result<(), Violation> {
        // Compressed fragments are not text yet: the whole message is checked once inflated.
        if self.opcode != OpCode::Text || self.compressed {
            return Ok(());
        }
        let from = self.checked as usize;
        let valid_to = match std::str::from_utf8(&self.data[from..]) {
            Ok(_) => self.data.len(),
            Err(e) if e.error_len().is_some() => return Err(invalid_text()),
            Err(e) => from + e.valid_up_to(),
        };
        // A message past 4 GiB is refused by its size long before; re-checking from 0 is
        // merely slower.
        self.checked = u32::try_from(valid_to).unwrap_or(0);
        Ok(())
    }
}

/// Turns received bytes into messages. Holds state only while a fragmented message is open.
#[derive(Debug)]
pub struct Decoder {
    /// Which side we are: decides whether frames must be masked.
    role: Role,
    /// Whether permessage-deflate was negotiated: RSV1 then marks a compressed message.
    /// A `bool` next to `role` fits in padding: the decoder does not grow.
    deflate: bool,
    /// The largest message (after reassembly) accepted; larger gives close code 1009. A
    /// compressed message is held to it twice: compressed, and once inflated.
    max_message_size: usize,
    /// The message being reassembled, if a non-final data frame has been received.
    fragmented: Option<Fragmented>,
}

impl Decoder {
    /// A decoder for `role` accepting messages up to `max_message_size` bytes.
    pub fn new(role: Role, max_message_size: usize) -> Self {
        Self {
            role,
            deflate: false,
            max_message_size,
            fragmented: None,
        }
    }

    /// This decoder with permessage-deflate on (when the handshake negotiated it) or off.
    ///
    /// When on, RSV1 on the first frame of a text or binary message marks it compressed:
    /// it is reassembled compressed (within `max_message_size`), then inflated with
    /// [`deflate::inflate`] (within `max_message_size` again), then text is checked to be
    /// UTF-8. RSV1 on a continuation or control frame is a protocol error (1002, RFC 7692
    /// §6), as are RSV2 and RSV3 always. When off, any RSV bit is a protocol error.
    pub fn with_deflate(mut self, on: bool) -> Self {
        self.deflate = on;
        self
    }

    /// Whether a fragmented message is open: its first fragments are held here until the
    /// final one arrives.
    pub fn in_message(&self) -> bool {
        self.fragmented.is_some()
    }

    /// Decode the next message from the front of `buf`, consuming its bytes.
    ///
    /// Returns `Ok(None)` when `buf` does not yet hold a complete frame (or held only a
    /// non-final fragment, which is consumed and kept). Call repeatedly until it returns
    /// `Ok(None)`. After an `Err` the connection must be closed with the violation's code.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, Violation> {
        loop {
            let Some(frame) = self.parse_frame(buf)? else {
                return Ok(None);
            };
            if let Some(message) = self.assemble(frame)? {
                return Ok(Some(message));
            }
        }
    }

    /// A frame's FIN bit, opcode and RSV1 ("compressed"), from its first byte. The reserved
    /// bits must be zero but for RSV1 where deflate is on, and then only on the first frame
    /// of a data message (RFC 7692 §6).
    fn first_byte(&self, b0: u8) -> Result<(bool, OpCode, bool), Violation> {
        let compressed = b0 & RSV1 != 0;
        if b0 & 0x30 != 0 || (compressed && !self.deflate) {
            return Err(Violation::protocol("reserved bits set"));
        }
        let opcode = OpCode::from_u8(b0 & 0x0F).ok_or(Violation::protocol("unknown opcode"))?;
        if compressed && !matches!(opcode, OpCode::Text | OpCode::Binary) {
            return Err(Violation::protocol(
                "compressed bit on a continuation or control frame",
            ));
        }
        Ok((b0 & 0x80 != 0, opcode, compressed))
    }

    /// Parse one frame off the front of `buf`, if it is complete.
    fn parse_frame(&self, buf: &mut BytesMut) -> Result<Option<Frame>, Violation> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (buf[0], buf[1]);
        let (fin, opcode, compressed) = self.first_byte(b0)?;
        let masked = b1 & 0x80 != 0;
        match (self.role, masked) {
            (Role::Server, false) => return Err(Violation::protocol("client frame not masked")),
            (Role::Client, true) => return Err(Violation::protocol("server frame masked")),
            _ => {}
        }
        let (len, mut header_len) = match b1 & 0x7F {
            126 => {
                if buf.len() < 4 {
                    return Ok(None);
                }
                (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
            }
            127 => {
                if buf.len() < 10 {
                    return Ok(None);
                }
                let mut n = [0u8; 8];
                n.copy_from_slice(&buf[2..10]);
                let len = u64::from_be_bytes(n);
                if len >> 63 != 0 {
                    return Err(Violation::protocol("payload length has the high bit set"));
                }
                (len, 10)
            }
            n => (u64::from(n), 2),
        };
        if opcode.is_control() {
            if !fin {
                return Err(Violation::protocol("fragmented control frame"));
            }
            if len > 125 {
                return Err(Violation::protocol("control frame longer than 125 bytes"));
            }
        } else {
            let so_far = self.fragmented.as_ref().map_or(0, |f| f.data.len()) as u64;
            if so_far + len > self.max_message_size as u64 {
                return Err(Violation {
                    code: CloseCode::MessageTooBig,
                    reason: "message too big",
                });
            }
        }
        let mask = if masked {
            if buf.len() < header_len + 4 {
                return Ok(None);
            }
            let m = [
                buf[header_len],
                buf[header_len + 1],
                buf[header_len + 2],
                buf[header_len + 3],
            ];
            header_len += 4;
            Some(m)
        } else {
            None
        };
        // `len` is at most max_message_size or 125 here, so it fits a usize.
        let len = len as usize;
        if buf.len() < header_len + len {
            buf.reserve(header_len + len - buf.len());
            return Ok(None);
        }
        buf.advance(header_len);
        let mut payload = buf.split_to(len);
        if let Some(mask) = mask {
            apply_mask(&mut payload, mask);
        }
        Ok(Some(Frame {
            fin,
            opcode,
            compressed,
            payload,
        }))
    }

    /// Feed one frame to the reassembly state; return a message when one completes.
    fn assemble(&mut self, frame: Frame) -> Result<Option<Message>, Violation> {
        let Frame {
            fin,
            opcode,
            compressed,
            payload,
        } = frame;
        match opcode {
            OpCode::Ping => Ok(Some(Message::Ping(payload.freeze()))),
            OpCode::Pong => Ok(Some(Message::Pong(payload.freeze()))),
            OpCode::Close => parse_close(&payload).map(|c| Some(Message::Close(c))),
            OpCode::Text | OpCode::Binary => {
                if self.fragmented.is_some() {
                    return Err(Violation::protocol("new message inside a fragmented one"));
                }
                if fin {
                    return self.finish(opcode, payload, 0, compressed).map(Some);
                }
                let mut open = Fragmented {
                    opcode,
                    data: payload,
                    checked: 0,
                    compressed,
                };
                open.check_text()?;
                self.fragmented = Some(open);
                Ok(None)
            }
            OpCode::Continuation => {
                let Some(open) = self.fragmented.as_mut() else {
                    return Err(Violation::protocol("continuation without a message"));
                };
                open.data.extend_from_slice(&payload);
                if !fin {
                    open.check_text()?;
                    return Ok(None);
                }
                let open = self.fragmented.take().expect("checked above");
                let checked = open.checked as usize;
                self.finish(open.opcode, open.data, checked, open.compressed)
                    .map(Some)
            }
        }
    }

    /// The message's payload as a message, inflated first if `compressed`; `checked`
    /// leading bytes of (uncompressed) text are already known valid.
    fn finish(
        &self,
        opcode: OpCode,
        data: BytesMut,
        checked: usize,
        compressed: bool,
    ) -> Result<Message, Violation> {
        let data = if compressed {
            deflate::inflate(&data, self.max_message_size)?
        } else {
            data.freeze()
        };
        if opcode == OpCode::Text {
            if std::str::from_utf8(data.get(checked..).unwrap_or_default()).is_err() {
                return Err(invalid_text());
            }
            Ok(Message::Text(data))
        } else {
            Ok(Message::Binary(data))
        }
    }
}

/// The RSV1 bit of a frame's first byte: "Per-Message Compressed" under permessage-deflate
/// (RFC 7692 §6).
const RSV1: u8 = 0x40;

/// One parsed frame.
struct Frame {
    fin: bool,
    opcode: OpCode,
    /// RSV1: the first frame of a compressed message.
    compressed: bool,
    payload: BytesMut,
}

fn invalid_text() -> Violation {
    Violation {
        code: CloseCode::InvalidPayload,
        reason: "text is not valid utf-8",
    }
}

fn parse_close(payload: &[u8]) -> Result<Option<(u16, String)>, Violation> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(Violation::protocol("close payload of one byte")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            // RFC 6455 §7.4's codes an endpoint may send, the IANA-registered 1012 (service
            // restart) and 1013 (try again later), and the registered and private ranges.
            // 1014 (bad gateway) is for gateways, not clients. Found by the differential
            // fuzz target: 1012 and 1013 used to be refused.
            let valid = matches!(code, 1000..=1003 | 1007..=1013 | 3000..=4999);
            if !valid {
                return Err(Violation::protocol("invalid close code"));
            }
            let reason = std::str::from_utf8(&payload[2..]).map_err(|_| Violation {
                code: CloseCode::InvalidPayload,
                reason: "close reason is not valid utf-8",
            })?;
            Ok(Some((code, reason.to_owned())))
        }
    }
}

/// XOR `data` with the 4-byte masking key, eight bytes at a time.
pub fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    // The remainder starts at a multiple of 8, hence of 4: the key index restarts at 0.
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// A frame header, built on the stack: 2 to 14 bytes.
#[derive(Clone, Copy)]
pub struct FrameHeader {
    bytes: [u8; 14],
    len: u8,
}

impl FrameHeader {
    /// The header of a final frame with `opcode` and a payload of `payload_len` bytes, masked
    /// with `mask` when sent by a client.
    pub fn new(opcode: OpCode, payload_len: usize, mask: Option<[u8; 4]>) -> Self {
        let mut bytes = [0u8; 14];
        bytes[0] = 0x80 | opcode as u8;
        let mask_bit = if mask.is_some() { 0x80 } else { 0 };
        let mut len = if payload_len < 126 {
            bytes[1] = mask_bit | payload_len as u8;
            2
        } else if payload_len <= usize::from(u16::MAX) {
            bytes[1] = mask_bit | 126;
            bytes[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
            4
        } else {
            bytes[1] = mask_bit | 127;
            bytes[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
            10
        };
        if let Some(m) = mask {
            bytes[len..len + 4].copy_from_slice(&m);
            len += 4;
        }
        Self {
            bytes,
            len: len as u8,
        }
    }

    /// The same header with RSV1 set: the (first) frame of a permessage-deflate message
    /// whose payload is [`deflate::compress`]'s output. Only for Text and Binary frames
    /// (RFC 7692 §6), and only where deflate was negotiated.
    pub fn compressed(opcode: OpCode, payload_len: usize, mask: Option<[u8; 4]>) -> Self {
        let mut header = Self::new(opcode, payload_len, mask);
        header.bytes[0] |= RSV1;
        header
    }

    /// The header bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// Append one complete frame to `out`; masks the payload when `mask` is given (client role).
pub fn encode_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8], mask: Option<[u8; 4]>) {
    out.extend_from_slice(FrameHeader::new(opcode, payload.len(), mask).as_bytes());
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(m) = mask {
        apply_mask(&mut out[start..], m);
    }
}

/// Append one complete permessage-deflate frame to `out`: `payload` compressed, RSV1 set,
/// masked when `mask` is given (client role). For clients and tests; the server compresses a
/// publication once with [`deflate::compress`] and writes [`FrameHeader::compressed`].
/// A control or continuation opcode is written uncompressed: RFC 7692 §6 allows RSV1 only
/// on the first frame of a data message.
pub fn encode_frame_compressed(
    out: &mut Vec<u8>,
    opcode: OpCode,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) {
    if opcode.is_control() || opcode == OpCode::Continuation {
        return encode_frame(out, opcode, payload, mask);
    }
    let compressed = deflate::compress(payload);
    out.extend_from_slice(FrameHeader::compressed(opcode, compressed.len(), mask).as_bytes());
    let start = out.len();
    out.extend_from_slice(&compressed);
    if let Some(m) = mask {
        apply_mask(&mut out[start..], m);
    }
}

/// The payload of a close frame: the code, then the reason cut to fit 125 bytes.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = Vec::with_capacity(2 + cut);
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&reason.as_bytes()[..cut]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(&mut out, opcode, payload, Some([1, 2, 3, 4]));
        if !fin {
            out[0] &= 0x7F;
        }
        out
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert!(is_valid_client_key("dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!is_valid_client_key("c2hvcnQ="));
    }

    #[test]
    fn decodes_masked_text_across_partial_reads() {
        let payload = "héllo wörld, a longer text to cross the eight-byte chunks".as_bytes();
        let bytes = client_frame(OpCode::Text, true, payload);
        let mut d = Decoder::new(Role::Server, 1024);
        let mut buf = BytesMut::new();
        for (i, b) in bytes.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            let got = d.decode(&mut buf).unwrap();
            if i + 1 < bytes.len() {
                assert!(got.is_none());
            } else {
                assert_eq!(got, Some(Message::Text(Bytes::copy_from_slice(payload))));
            }
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn invalid_text_in_a_fragment_fails_at_once() {
        // Found by the differential fuzz target: the invalid first fragment used to be
        // held (and the ping after it answered) until the message ended.
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&client_frame(OpCode::Text, false, b"{\"\x87"));
        buf.extend_from_slice(&client_frame(OpCode::Ping, true, b"p"));
        let mut d = Decoder::new(Role::Server, 1024);
        let err = d.decode(&mut buf).unwrap_err();
        assert_eq!(err.code, CloseCode::InvalidPayload);
    }

    #[test]
    fn a_character_cut_between_fragments_is_text() {
        let euro = "\u{20ac}".as_bytes();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&client_frame(OpCode::Text, false, &euro[..1]));
        buf.extend_from_slice(&client_frame(OpCode::Continuation, false, &euro[1..2]));
        buf.extend_from_slice(&client_frame(OpCode::Continuation, true, &euro[2..]));
        let mut d = Decoder::new(Role::Server, 1024);
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Some(Message::Text(Bytes::from_static("\u{20ac}".as_bytes())))
        );
        // ...but an incomplete character at the end of the message is not.
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&client_frame(OpCode::Text, false, b"a"));
        buf.extend_from_slice(&client_frame(OpCode::Continuation, true, &euro[..2]));
        let err = Decoder::new(Role::Server, 1024)
            .decode(&mut buf)
            .unwrap_err();
        assert_eq!(err.code, CloseCode::InvalidPayload);
    }

    #[test]
    fn reassembles_fragments_with_interleaved_ping() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&client_frame(OpCode::Text, false, b"ab"));
        buf.extend_from_slice(&client_frame(OpCode::Ping, true, b"p"));
        buf.extend_from_slice(&client_frame(OpCode::Continuation, false, b"cd"));
        buf.extend_from_slice(&client_frame(OpCode::Continuation, true, b"e"));
        let mut d = Decoder::new(Role::Server, 1024);
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Some(Message::Ping(Bytes::from_static(b"p")))
        );
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Some(Message::Text(Bytes::from_static(b"abcde")))
        );
        assert_eq!(d.decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn enforces_size_before_buffering() {
        let mut d = Decoder::new(Role::Server, 100);
        // Only the header of a 1 MiB frame has arrived: it is rejected at once.
        let mut buf =
            BytesMut::from(FrameHeader::new(OpCode::Text, 1 << 20, Some([0; 4])).as_bytes());
        assert_eq!(
            d.decode(&mut buf).unwrap_err().code,
            CloseCode::MessageTooBig
        );
        // Fragments add up.
        let mut d = Decoder::new(Role::Server, 100);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&client_frame(OpCode::Text, false, &[b'a'; 60]));
        buf.extend_from_slice(&client_frame(OpCode::Continuation, true, &[b'a'; 60]));
        assert_eq!(
            d.decode(&mut buf).unwrap_err().code,
            CloseCode::MessageTooBig
        );
        // Exactly at the limit is fine.
        let mut d = Decoder::new(Role::Server, 100);
        let mut buf = BytesMut::from(&client_frame(OpCode::Text, true, &[b'a'; 100])[..]);
        assert!(matches!(d.decode(&mut buf), Ok(Some(Message::Text(t))) if t.len() == 100));
    }

    #[test]
    fn rejects_violations_with_the_right_codes() {
        let check = |bytes: Vec<u8>, code: CloseCode| {
            let mut d = Decoder::new(Role::Server, 1 << 16);
            let mut buf = BytesMut::from(&bytes[..]);
            assert_eq!(d.decode(&mut buf).unwrap_err().code, code, "{bytes:?}");
        };
        let mut unmasked = Vec::new();
        encode_frame(&mut unmasked, OpCode::Text, b"x", None);
        check(unmasked, CloseCode::ProtocolError);
        let mut rsv = client_frame(OpCode::Text, true, b"x");
        rsv[0] |= 0x40;
        check(rsv, CloseCode::ProtocolError);
        check(
            client_frame(OpCode::Text, true, &[0xff, 0xfe]),
            CloseCode::InvalidPayload,
        );
        check(
            client_frame(OpCode::Continuation, true, b"x"),
            CloseCode::ProtocolError,
        );
        check(
            client_frame(OpCode::Ping, false, b"x"),
            CloseCode::ProtocolError,
        );
        check(
            client_frame(OpCode::Ping, true, &[0; 126]),
            CloseCode::ProtocolError,
        );
        check(
            client_frame(OpCode::Close, true, &[0x03]),
            CloseCode::ProtocolError,
        );
        check(
            client_frame(OpCode::Close, true, &999u16.to_be_bytes()),
            CloseCode::ProtocolError,
        );
        let mut bad_op = client_frame(OpCode::Text, true, b"x");
        bad_op[0] = 0x83;
        check(bad_op, CloseCode::ProtocolError);
        let mut nested = client_frame(OpCode::Text, false, b"a");
        nested.extend(client_frame(OpCode::Text, true, b"b"));
        check(nested, CloseCode::ProtocolError);
    }

    #[test]
    fn close_frames_round_trip() {
        let mut buf = BytesMut::from(
            &client_frame(OpCode::Close, true, &close_payload(4101, "slow consumer"))[..],
        );
        let mut d = Decoder::new(Role::Server, 1024);
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Some(Message::Close(Some((4101, "slow consumer".into()))))
        );
        assert_eq!(close_payload(1000, &"é".repeat(100)).len(), 2 + 122);
    }

    #[test]
    fn registered_close_codes_are_accepted_and_reserved_ones_refused() {
        let close = |code: u16| {
            let mut buf =
                BytesMut::from(&client_frame(OpCode::Close, true, &code.to_be_bytes())[..]);
            Decoder::new(Role::Server, 1024).decode(&mut buf)
        };
        for code in [1000, 1001, 1003, 1007, 1011, 1012, 1013, 3000, 4999] {
            assert_eq!(
                close(code).unwrap(),
                Some(Message::Close(Some((code, String::new()))))
            );
        }
        for code in [0, 999, 1004, 1005, 1006, 1014, 1015, 1016, 2999, 5000] {
            assert_eq!(
                close(code).unwrap_err().code,
                CloseCode::ProtocolError,
                "{code}"
            );
        }
    }

    /// A masked client frame with RSV1 set, carrying `payload` as is.
    fn compressed_frame(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut out = client_frame(opcode, fin, payload);
        out[0] |= RSV1;
        out
    }

    fn deflate_decoder(max: usize) -> Decoder {
        Decoder::new(Role::Server, max).with_deflate(true)
    }

    #[test]
    fn deflate_keeps_the_decoder_small() {
        // Every connection holds a decoder: the flags sit in padding.
        assert!(std::mem::size_of::<Decoder>() <= 56);
        assert!(std::mem::size_of::<Option<Fragmented>>() <= 40);
    }

    #[test]
    fn decodes_compressed_messages() {
        let text = "héllo wörld ".repeat(50);
        let mut out = Vec::new();
        encode_frame_compressed(&mut out, OpCode::Text, text.as_bytes(), Some([9, 8, 7, 6]));
        assert!(out.len() < text.len() / 4);
        let mut buf = BytesMut::from(&out[..]);
        let mut d = deflate_decoder(1024);
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Some(Message::Text(Bytes::from(text.clone())))
        );
        // Fragmented, with a ping between fragments: the fragments hold compressed bytes cut
        // anywhere, which are not UTF-8 and must not be checked as such.
        let packed = deflate::compress(text.as_bytes());
        let (a, rest) = packed.split_at(3);
        let (b, c) = rest.split_at(rest.len() / 2);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&compressed_frame(OpCode::Text, false, a));
        buf.extend_from_slice(&client_frame(OpCode::Continuation, false, b));
        buf.extend_from_slice(&client_frame(OpCode::Ping, true, b"p"));
        buf.extend_from_slice(&client_frame(OpCode::Continuation, true, c));
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Some(Message::Ping(Bytes::from_static(b"p")))
        );
        assert!(d.in_message());
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Some(Message::Text(Bytes::from(text.clone())))
        );
        // Binary, and uncompressed messages still pass with deflate on.
        let mut buf = BytesMut::from(
            &compressed_frame(OpCode::Binary, true, &deflate::compress(&[0xff, 0]))[..],
        );
        buf.extend_from_slice(&client_frame(OpCode::Text, true, b"plain"));
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Some(Message::Binary(Bytes::from_static(&[0xff, 0])))
        );
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Some(Message::Text(Bytes::from_static(b"plain")))
        );
        // A client decoder reads what the server writes.
        let mut out = Vec::new();
        encode_frame_compressed(&mut out, OpCode::Text, text.as_bytes(), None);
        let mut d = Decoder::new(Role::Client, 1024).with_deflate(true);
        let mut buf = BytesMut::from(&out[..]);
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Some(Message::Text(Bytes::from(text)))
        );
    }

    #[test]
    fn rejects_compression_violations_with_the_right_codes() {
        let check = |d: &mut Decoder, bytes: Vec<u8>, code: CloseCode| {
            let mut buf = BytesMut::from(&bytes[..]);
            assert_eq!(d.decode(&mut buf).unwrap_err().code, code, "{bytes:?}");
        };
        let hello = deflate::compress(b"hello");
        // RSV1 on a continuation or a control frame.
        let mut on_continuation = compressed_frame(OpCode::Text, false, &hello);
        on_continuation.extend(compressed_frame(OpCode::Continuation, true, b""));
        check(
            &mut deflate_decoder(1024),
            on_continuation,
            CloseCode::ProtocolError,
        );
        let ping = compressed_frame(OpCode::Ping, true, b"p");
        check(&mut deflate_decoder(1024), ping, CloseCode::ProtocolError);
        // RSV1 when deflate was not negotiated; RSV2 and RSV3 always.
        let frame = compressed_frame(OpCode::Text, true, &hello);
        check(
            &mut Decoder::new(Role::Server, 1024),
            frame,
            CloseCode::ProtocolError,
        );
        for rsv in [0x20, 0x10, 0x60] {
            let mut frame = client_frame(OpCode::Text, true, b"x");
            frame[0] |= rsv;
            check(&mut deflate_decoder(1024), frame, CloseCode::ProtocolError);
        }
        // Invalid UTF-8 once inflated, whole or fragmented.
        let bad = deflate::compress(b"ok \xff\xfe");
        check(
            &mut deflate_decoder(1024),
            compressed_frame(OpCode::Text, true, &bad),
            CloseCode::InvalidPayload,
        );
        let mut fragments = compressed_frame(OpCode::Text, false, &bad[..2]);
        fragments.extend(client_frame(OpCode::Continuation, true, &bad[2..]));
        check(
            &mut deflate_decoder(1024),
            fragments,
            CloseCode::InvalidPayload,
        );
        // Not deflate at all.
        let junk = compressed_frame(OpCode::Text, true, &[0xff; 20]);
        check(&mut deflate_decoder(1024), junk, CloseCode::InvalidPayload);
        // Small compressed, too big inflated; and too big compressed.
        let bomb = deflate::compress(&[b'a'; 5000]);
        assert!(bomb.len() < 100);
        check(
            &mut deflate_decoder(1000),
            compressed_frame(OpCode::Text, true, &bomb),
            CloseCode::MessageTooBig,
        );
        let header = FrameHeader::compressed(OpCode::Text, 2000, Some([0; 4]));
        check(
            &mut deflate_decoder(1000),
            header.as_bytes().to_vec(),
            CloseCode::MessageTooBig,
        );
    }

    #[test]
    fn compressed_headers_set_rsv1() {
        assert_eq!(
            FrameHeader::compressed(OpCode::Text, 5, None).as_bytes(),
            &[0xc1, 5]
        );
        assert_eq!(
            FrameHeader::compressed(OpCode::Binary, 300, Some([1, 2, 3, 4])).as_bytes(),
            &[0xc2, 0xfe, 1, 44, 1, 2, 3, 4]
        );
        let mut out = Vec::new();
        encode_frame_compressed(&mut out, OpCode::Ping, b"p", None);
        assert_eq!(out, [0x89, 1, b'p']);
    }

    #[test]
    fn server_headers_for_each_length_class() {
        assert_eq!(
            FrameHeader::new(OpCode::Text, 5, None).as_bytes(),
            &[0x81, 5]
        );
        assert_eq!(
            FrameHeader::new(OpCode::Text, 126, None).as_bytes(),
            &[0x81, 126, 0, 126]
        );
        assert_eq!(
            FrameHeader::new(OpCode::Binary, 70_000, None).as_bytes(),
            &[0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]
        );
        // A client decoder reads what a server encodes.
        let mut out = Vec::new();
        encode_frame(&mut out, OpCode::Text, &[b'z'; 300], None);
        let mut d = Decoder::new(Role::Client, 1024);
        let mut buf = BytesMut::from(&out[..]);
        assert!(matches!(d.decode(&mut buf), Ok(Some(Message::Text(t))) if t.len() == 300));
    }
}
