//! permessage-deflate (RFC 7692), the protocol half: negotiation, compressing a message and
//! inflating a received one, with no I/O and no per-connection state.
//!
//! Herald answers every accepted offer with [`EXTENSION_RESPONSE`], which asks for no context
//! takeover in both directions (a server may add `client_no_context_takeover` even when the
//! client did not offer it, RFC 7692 §7.1.1.2). So every message is compressed and inflated
//! on its own:
//! - an idle connection holds no deflate window or state (zlib's are ~256 KiB to compress
//!   and ~40 KiB to inflate), so compression does not change what a connection costs;
//! - [`compress`] runs once per publication and every subscriber sends the same bytes, as it
//!   does with uncompressed frames.
//!
//! The deflate work is flate2's (zlib-rs backend); this module only frames it as RFC 7692
//! says: raw deflate, a sync flush ending each message, the `00 00 ff ff` tail stripped by
//! the sender and appended back by the receiver.

use std::cell::RefCell;
use std::thread::LocalKey;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::codes::CloseCode;
use crate::websocket::Violation;

/// The `Sec-WebSocket-Extensions` response header value for an accepted offer. It never
/// changes: no context takeover both ways, and both windows at the default 15 bits.
pub const EXTENSION_RESPONSE: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The compression level of [`compress`], chosen by `measure_levels` below (release build,
/// zlib-rs, the 2-core dev machine; best of 5 batches, ±10 % between runs). Compressed size
/// and time per message:
///
/// | message | level 1 | level 3 | level 6 |
/// | --- | --- | --- | --- |
/// | Pusher `device.status`, 1535 B | 846 B (55 %), 6.0 µs | 647 B (42 %), 15 µs | 644 B, 17 µs |
/// | Pusher chat message, 1322 B | 1052 B (80 %), 7.3 µs | 788 B (60 %), 17 µs | 788 B, 19 µs |
///
/// Level 1 is zlib-rs's "quick" strategy (static Huffman codes only): 2.5 times faster, but
/// 13 to 20 points of the original size larger, on every subscriber's bytes, while the time
/// is paid once per publication. Levels 2 to 9 are within 2 points of each other; 3 is as
/// small as 6 to 0.1 point and 5 to 10 % faster. (Reusing the state saves ~5 µs a message: a
/// fresh one each time takes 21 µs. Inflating either message takes ~4 µs.)
const LEVEL: u32 = 3;

/// What a sync flush ends with, an empty stored block: RFC 7692 §7.2.1 has the sender strip
/// it and §7.2.2 has the receiver append it back.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The LZ77 window, 2^15 bytes: what is used when no `*_max_window_bits` is negotiated.
const WINDOW: usize = 1 << 15;

/// The least an inflated buffer grows by at once, so a large message is not inflated in
/// many tiny steps.
const CHUNK: usize = 16 * 1024;

/// How many deflate streams (each ended by a block with BFINAL set, RFC 7692 §7.2.3.4) one
/// message may hold. Each new stream copies up to 32 KiB of window: the bound keeps a
/// message of empty final blocks from costing that copy per two bytes received.
const MAX_STREAMS: u32 = 16;

thread_local! {
    /// This thread's compressor, reset before each message. A deflate state with a 15-bit
    /// window is ~256 KiB (zlib: 2^(windowBits+2) + 2^(memLevel+9) bytes): a fresh one per
    /// publication would add ~5 µs to the ~15 µs of compressing a small event (measured,
    /// see [`LEVEL`]) and churn the allocator with large blocks, and one per connection is
    /// what no context takeover avoids.
    static COMPRESSOR: RefCell<Compress> = RefCell::new(new_compressor());
    /// This thread's decompressor (window and tables, ~40 KiB), reset before each message,
    /// for the same reason.
    static DECOMPRESSOR: RefCell<Decompress> = RefCell::new(new_decompressor());
}

fn new_compressor() -> Compress {
    Compress::new(Compression::new(LEVEL), false)
}

fn new_decompressor() -> Decompress {
    Decompress::new(false)
}

/// Run `f` on this thread's reused state in `key`, or on a fresh one when the thread's is
/// not available (the thread is exiting, or `f` is re-entered): never a panic.
fn with_reused<S: 'static, R>(
    key: &'static LocalKey<RefCell<S>>,
    fresh: fn() -> S,
    mut f: impl FnMut(&mut S) -> R,
) -> R {
    match key.try_with(|cell| cell.try_borrow_mut().ok().map(|mut state| f(&mut state))) {
        Ok(Some(done)) => done,
        _ => f(&mut fresh()),
    }
}

/// Whether the server accepts permessage-deflate, given the values of every
/// `Sec-WebSocket-Extensions` request header. Each value may list several extensions
/// separated by commas, each with `;`-separated parameters.
///
/// The first permessage-deflate offer the server can honour is accepted; it is answered with
/// [`EXTENSION_RESPONSE`]. An offer is declined (RFC 7692 §7: "MUST decline") when it has an
/// unknown or repeated parameter or an invalid value, and also when it has
/// `server_max_window_bits`: accepting that requires echoing it in the response
/// (§7.1.2.1), which is fixed, and a smaller window for one client would forfeit the one
/// compression shared by every subscriber. Other extensions are ignored.
pub fn negotiate<'a>(offers: impl IntoIterator<Item = &'a str>) -> bool {
    offers
        .into_iter()
        .flat_map(|value| value.split(','))
        .any(acceptable)
}

/// The parameters RFC 7692 §7.1 defines for an offer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Param {
    /// The server must not reuse its window across messages: it never does.
    ServerNoContextTakeover,
    /// The client will not reuse its window across messages: asked for anyway.
    ClientNoContextTakeover,
    /// A limit on the server's window: declined (see [`negotiate`]).
    ServerMaxWindowBits,
    /// The client may use a smaller window: any window inflates with a 15-bit one.
    ClientMaxWindowBits,
}

impl Param {
    fn parse(name: &str) -> Option<Self> {
        [
            ("server_no_context_takeover", Self::ServerNoContextTakeover),
            ("client_no_context_takeover", Self::ClientNoContextTakeover),
            ("server_max_window_bits", Self::ServerMaxWindowBits),
            ("client_max_window_bits", Self::ClientMaxWindowBits),
        ]
        .into_iter()
        .find_map(|(known, param)| name.eq_ignore_ascii_case(known).then_some(param))
    }
}

/// Whether one extension of an offer is a permessage-deflate offer the server can honour.
fn acceptable(extension: &str) -> bool {
    let mut parts = extension.split(';');
    let name = parts.next().unwrap_or_default().trim();
    if !name.eq_ignore_ascii_case("permessage-deflate") {
        return false;
    }
    let mut seen = 0u8;
    parts.all(|part| {
        let (name, value) = match part.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim())),
            None => (part.trim(), None),
        };
        let Some(param) = Param::parse(name) else {
            return false;
        };
        let bit = 1 << param as u8;
        if seen & bit != 0 {
            return false;
        }
        seen |= bit;
        match (param, value) {
            (Param::ServerNoContextTakeover | Param::ClientNoContextTakeover, None) => true,
            (Param::ClientMaxWindowBits, None) => true,
            (Param::ClientMaxWindowBits, Some(value)) => window_bits(value).is_some(),
            _ => false,
        }
    })
}

/// A `*_max_window_bits` value: a decimal 8 to 15 without leading zeros (RFC 7692 §7.1.2),
/// as a token or a quoted string (RFC 6455 §9.1, which allows `\` escapes in the latter).
fn window_bits(value: &str) -> Option<u8> {
    let (digits, quoted) = match value.strip_prefix('"') {
        Some(rest) => (rest.strip_suffix('"')?, true),
        None => (value, false),
    };
    let mut bytes = digits.bytes();
    let mut n = 0u8;
    let mut count = 0;
    while let Some(mut b) = bytes.next() {
        if quoted && b == b'\\' {
            b = bytes.next()?;
        }
        if !b.is_ascii_digit() || (count == 0 && b == b'0') || count == 2 {
            return None;
        }
        n = n * 10 + (b - b'0');
        count += 1;
    }
    (8..=15).contains(&n).then_some(n)
}

/// `payload` compressed as one permessage-deflate message: raw deflate with a 15-bit window,
/// ended by a sync flush whose `00 00 ff ff` tail is removed (RFC 7692 §7.2.1). Send it in
/// frames whose first has RSV1 set ([`crate::websocket::FrameHeader::compressed`]); the
/// bytes depend only on `payload`, so one call serves every connection.
pub fn compress(payload: &[u8]) -> Bytes {
    let out = with_reused(&COMPRESSOR, new_compressor, |c| {
        deflate_with(c, payload).or_else(|_| {
            // Only a broken state fails: start over with a new one.
            *c = new_compressor();
            deflate_with(c, payload)
        })
    });
    Bytes::from(out.unwrap_or_else(|_| stored(payload)))
}

/// Compress `payload` with `c`, reset first, into a sync-flushed message with its tail
/// stripped.
fn deflate_with(c: &mut Compress, payload: &[u8]) -> Result<Vec<u8>, flate2::CompressError> {
    c.reset();
    // Event JSON compresses to well under half; the loop grows the buffer when it does not.
    let mut out = Vec::with_capacity(payload.len() / 2 + 64);
    loop {
        if out.len() == out.capacity() {
            out.reserve(out.capacity());
        }
        let rest = payload.get(c.total_in() as usize..).unwrap_or_default();
        c.compress_vec(rest, &mut out, FlushCompress::Sync)?;
        // The flush is complete once all input is taken and the output was not filled.
        if c.total_in() as usize >= payload.len() && out.len() < out.capacity() {
            break;
        }
    }
    if out.ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
    Ok(out)
}

/// `payload` as stored (uncompressed) deflate blocks: valid permessage-deflate data, the
/// fallback should the compressor fail. An empty message is the single byte `00`
/// (RFC 7692 §7.2.3.6).
fn stored(payload: &[u8]) -> Vec<u8> {
    let blocks = payload.len() / usize::from(u16::MAX) + 1;
    let mut out = Vec::with_capacity(payload.len() + 5 * blocks);
    for block in payload.chunks(usize::from(u16::MAX)) {
        // `chunks` keeps every block at most u16::MAX bytes long.
        let len = block.len() as u16;
        out.push(0x00); // BFINAL 0, BTYPE 00 (stored), padding to the byte boundary.
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    if payload.is_empty() {
        out.push(0x00);
    }
    out
}

/// Inflate one received permessage-deflate message (the payloads of its frames, joined).
///
/// Appends the `00 00 ff ff` tail (RFC 7692 §7.2.2) and inflates with a 15-bit window, which
/// decodes whatever window the client used. The output never holds more than
/// `max_size + 1` bytes: a message inflating past `max_size` fails with 1009 as soon as it
/// does, so a small deflate bomb costs at most `max_size` of memory and the time to inflate
/// that much. Data that is not deflate fails with 1007, as the `ws` npm package does (RFC
/// 7692 names no code; RFC 6455 §7.4.1 gives 1007 to data inconsistent with its message).
pub fn inflate(payload: &[u8], max_size: usize) -> Result<Bytes, Violation> {
    with_reused(&DECOMPRESSOR, new_decompressor, |d| {
        inflate_with(d, payload, max_size)
    })
    .map(Bytes::from)
}

/// Inflate `payload` + [`TAIL`] with `d`, reset first, into at most `max_size` bytes.
fn inflate_with(d: &mut Decompress, payload: &[u8], max_size: usize) -> Result<Vec<u8>, Violation> {
    d.reset(false);
    let input_len = payload.len() + TAIL.len();
    // One byte past the bound is enough to know it is passed.
    let limit = max_size.saturating_add(1);
    let mut out = Vec::with_capacity(payload.len().saturating_mul(4).min(limit));
    // Input taken by the streams before the current one, and how many there were.
    let (mut earlier, mut streams) = (0, 1);
    loop {
        let taken = earlier + d.total_in() as usize;
        let (input, flush) = match payload.get(taken..) {
            Some(rest) if !rest.is_empty() => (rest, FlushDecompress::None),
            _ => {
                let rest = TAIL.get(taken.saturating_sub(payload.len())..);
                (rest.unwrap_or_default(), FlushDecompress::Sync)
            }
        };
        grow(&mut out, limit);
        let before = (d.total_in(), d.total_out());
        let status = d
            .decompress_vec(input, &mut out, flush)
            .map_err(|_| corrupt())?;
        if out.len() > max_size {
            return Err(Violation {
                code: CloseCode::MessageTooBig,
                reason: "message too big",
            });
        }
        let taken = earlier + d.total_in() as usize;
        match status {
            // A final block ends the message, unless more of the payload follows it.
            Status::StreamEnd if taken >= payload.len() => return Ok(out),
            Status::StreamEnd => {
                if streams == MAX_STREAMS {
                    return Err(corrupt());
                }
                (earlier, streams) = (taken, streams + 1);
                next_stream(d, &out)?;
            }
            // The sync flush is complete once all input is taken and output space is left.
            _ if taken >= input_len && out.len() < out.capacity() => return Ok(out),
            _ if (d.total_in(), d.total_out()) == before => return Err(corrupt()),
            _ => {}
        }
    }
}

/// Make room in `out` for the next inflate step: as much as it holds (so it doubles) and at
/// least [`CHUNK`], but never more than `limit` bytes in all.
fn grow(out: &mut Vec<u8>, limit: usize) {
    if out.len() < out.capacity() {
        return;
    }
    let room = out.len().max(CHUNK).min(limit.saturating_sub(out.len()));
    out.reserve_exact(room);
}

/// Start the next deflate stream of a message: the blocks after a final block may still
/// refer back to the message's earlier bytes, so those become the window.
fn next_stream(d: &mut Decompress, out: &[u8]) -> Result<(), Violation> {
    d.reset(false);
    let window = &out[out.len().saturating_sub(WINDOW)..];
    if !window.is_empty() {
        d.set_dictionary(window).map_err(|_| corrupt())?;
    }
    Ok(())
}

fn corrupt() -> Violation {
    Violation {
        code: CloseCode::InvalidPayload,
        reason: "invalid compressed data",
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use serde_json::json;

    use super::*;

    /// A realistic Pusher `device.status` event (~1.5 KB): the protocol double-encodes, so
    /// `data` is a JSON string with escaped quotes.
    fn device_status() -> String {
        let units = [
            ("temp_c", "°C"),
            ("humidity", "%"),
            ("pressure", "hPa"),
            ("vibration", "g"),
            ("supply", "V"),
            ("current", "A"),
            ("rssi", "dBm"),
            ("co2", "ppm"),
        ];
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % 100_000
        };
        let readings: Vec<_> = units
            .iter()
            .map(|(sensor, unit)| {
                json!({
                    "sensor": sensor,
                    "value": next() as f64 / 97.0,
                    "unit": unit,
                    "at": format!("2024-05-17T09:41:{:02}.{:03}Z", next() % 60, next() % 1000),
                    "ok": next() % 10 != 0,
                })
            })
            .collect();
        let data = json!({
            "device_id": "dev-0042",
            "serial": "SN-7F3A-91C2-0042",
            "fleet_id": 42,
            "model": "TX-400 gateway",
            "firmware": "4.12.3-rc2+build.8841 (2024-04-30, 9f2c1ab)",
            "online": true,
            "charging": false,
            "battery_pct": 73.4,
            "uptime_s": 1_234_567,
            "seq": 918_273,
            "location": {"lat": 52.520_008, "lon": 13.404_954, "accuracy_m": 4.7, "fix": "3d"},
            "reported_at": "2024-05-17T09:41:07.123Z",
            "readings": readings,
            "alerts": [{"code": "door_open", "since": "2024-05-17T09:38:52Z", "level": "warn"}],
            "tags": ["north-depot", "cold-chain", "priority"],
        });
        json!({"event": "device.status", "channel": "private-fleet.42", "data": data.to_string()})
            .to_string()
    }

    /// A realistic Pusher chat message (~1.2 KB) with ~600 characters of English text.
    fn chat_message() -> String {
        let body = "Morning all! Quick update on the venue for Thursday: the conference room \
            on the third floor is booked for the whole afternoon, so we can start at two \
            instead of half past. I have asked facilities to set up the projector and the \
            long table by the window. Could everyone bring their laptop charged? The Wi-Fi \
            there drops when too many people stream at once, so please download the slides \
            beforehand. Maria will bring coffee and something to eat, and Tom offered to \
            take notes. If you cannot make it, tell me by Wednesday evening and I will set \
            up a call for you. Thanks, and see you there!";
        let data = json!({
            "id": "msg_01HY3K9V2Q8F7T6R5N4M3B2A1Z",
            "room_id": 7,
            "user": {
                "id": 1842,
                "name": "Amelia Hartmann",
                "handle": "amelia.h",
                "avatar": "https://cdn.example.com/avatars/1842/5f2c9a.png",
                "roles": ["member", "moderator"],
            },
            "body": body,
            "sent_at": "2024-05-17T08:02:41.508Z",
            "edited": false,
            "reply_to": "msg_01HY3J0C7W5D4S3A2Q1P0O9I8U",
            "mentions": [{"id": 77, "handle": "tom"}],
            "reactions": [
                {"emoji": "thumbs_up", "count": 3, "by": [77, 203, 1190]},
                {"emoji": "coffee", "count": 1, "by": [412]},
            ],
            "thread": {"id": "thr_8812", "replies": 4, "last_reply_at": "2024-05-17T08:11:09Z"},
            "client_msg_id": "c-5d1f0e7a-9b3c-4f0e-8a7d-2e6b1c9f4a30",
        });
        json!({"event": "message.sent", "channel": "presence-room.7", "data": data.to_string()})
            .to_string()
    }

    /// What a standard streaming raw inflate (flate2's `DeflateDecoder`, flushed like Node's
    /// `inflateRaw` in the `ws` package) makes of a message.
    fn standard_inflate(message: &[u8]) -> Vec<u8> {
        let mut d = flate2::write::DeflateDecoder::new(Vec::new());
        d.write_all(message).unwrap();
        d.write_all(&TAIL).unwrap();
        d.flush().unwrap();
        d.get_ref().clone()
    }

    #[test]
    fn negotiation() {
        let ok = |offers: &[&str]| negotiate(offers.iter().copied());
        assert!(!ok(&[]));
        assert!(ok(&["permessage-deflate"]));
        // Chrome and the `ws` npm package offer this.
        assert!(ok(&["permessage-deflate; client_max_window_bits"]));
        assert!(ok(&[
            "Permessage-Deflate ;Client_Max_Window_Bits = 10 ; server_no_context_takeover"
        ]));
        assert!(ok(&[
            "permessage-deflate; client_no_context_takeover; client_max_window_bits=\"9\""
        ]));
        assert!(ok(&["permessage-deflate; client_max_window_bits=\"1\\5\""]));
        // A smaller server window cannot be honoured; the next offer can.
        assert!(!ok(&["permessage-deflate; server_max_window_bits=10"]));
        assert!(ok(&[
            "permessage-deflate; server_max_window_bits=10, permessage-deflate"
        ]));
        assert!(ok(&[
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate"
        ]));
        // Even 15 is declined: accepting it requires echoing it (RFC 7692 §7.1.2.1).
        assert!(!ok(&["permessage-deflate; server_max_window_bits=15"]));
        // Unknown, repeated or malformed parameters decline the offer.
        assert!(!ok(&["permessage-deflate; x=1"]));
        assert!(!ok(&["permessage-deflate;"]));
        assert!(!ok(&[
            "permessage-deflate; client_max_window_bits; client_max_window_bits"
        ]));
        assert!(!ok(&[
            "permessage-deflate; client_no_context_takeover; CLIENT_NO_CONTEXT_TAKEOVER"
        ]));
        assert!(!ok(&["permessage-deflate; server_no_context_takeover=1"]));
        for bad in ["7", "16", "08", "", "\"10", "\"\"", "1a", "100", "+9"] {
            let offer = format!("permessage-deflate; client_max_window_bits={bad}");
            assert!(!ok(&[&offer]), "{offer}");
        }
        // Other extensions are ignored.
        assert!(!ok(&["x-webkit-deflate-frame"]));
        assert!(ok(&[
            "x-webkit-deflate-frame, permessage-deflate; client_max_window_bits"
        ]));
    }

    #[test]
    fn round_trips_and_decodes_with_a_standard_inflate() {
        let big = "all work and no play makes jack a dull boy\n".repeat(5000);
        for payload in [device_status(), chat_message(), String::new(), big] {
            let compressed = compress(payload.as_bytes());
            assert!(!compressed.ends_with(&TAIL));
            assert_eq!(standard_inflate(&compressed), payload.as_bytes());
            let inflated = inflate(&compressed, payload.len()).unwrap();
            assert_eq!(inflated, payload.as_bytes());
        }
        assert_eq!(&compress(b"")[..], &[0x00]);
        // Incompressible input grows the output buffer.
        let mut seed = 1u32;
        let noise: Vec<u8> = (0..200_000)
            .map(|_| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (seed >> 16) as u8
            })
            .collect();
        assert_eq!(inflate(&compress(&noise), noise.len()).unwrap(), noise);
    }

    #[test]
    fn stored_fallback_is_valid() {
        let long = vec![7u8; 70_000];
        for payload in [&b""[..], b"Hello", &long] {
            let out = stored(payload);
            assert_eq!(standard_inflate(&out), payload);
            assert_eq!(inflate(&out, payload.len()).unwrap(), payload);
        }
    }

    #[test]
    fn inflates_the_rfc_examples() {
        let hello = |payload: &[u8]| inflate(payload, 5).unwrap();
        // §7.2.3.1, §7.2.3.3 (stored), §7.2.3.4 (BFINAL set, then an empty block),
        // §7.2.3.5 (two blocks).
        assert_eq!(hello(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]), "Hello");
        let stored = [
            0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
        ];
        assert_eq!(hello(&stored), "Hello");
        assert_eq!(
            hello(&[0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00]),
            "Hello"
        );
        let two = [
            0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xca, 0xc9, 0xc9, 0x07, 0x00,
        ];
        assert_eq!(hello(&two), "Hello");
        // A whole stream ended by a final block, as a zlib `finish` makes it.
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b"Hello").unwrap();
        assert_eq!(hello(&e.finish().unwrap()), "Hello");
        // Blocks after a final block may refer back past it.
        let mut two_streams = vec![0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        two_streams.extend_from_slice(&[0xf2, 0x00, 0x11, 0x00, 0x00]);
        assert_eq!(inflate(&two_streams, 10).unwrap(), "HelloHello");
        // But not without end.
        let empty_finals: Vec<u8> = [0x03, 0x00].repeat(MAX_STREAMS as usize + 1);
        assert_eq!(
            inflate(&empty_finals, 10).unwrap_err().code,
            CloseCode::InvalidPayload
        );
    }

    #[test]
    fn inflates_a_smaller_client_window() {
        let payload = chat_message().repeat(40);
        let mut c = Compress::new_with_window_bits(Compression::default(), false, 9);
        let mut out = Vec::with_capacity(payload.len() + 1024);
        c.compress_vec(payload.as_bytes(), &mut out, FlushCompress::Sync)
            .unwrap();
        assert_eq!(c.total_in() as usize, payload.len());
        assert!(out.ends_with(&TAIL));
        out.truncate(out.len() - TAIL.len());
        assert_eq!(inflate(&out, payload.len()).unwrap(), payload.as_bytes());
    }

    #[test]
    fn stops_a_deflate_bomb_at_the_bound() {
        let bomb = compress(&vec![0u8; 10 << 20]);
        assert!(bomb.len() < 20 << 10, "{}", bomb.len());
        let err = inflate(&bomb, 64 << 10).unwrap_err();
        assert_eq!(
            err,
            Violation {
                code: CloseCode::MessageTooBig,
                reason: "message too big"
            }
        );
        // Exactly at the bound is fine, one byte under is not.
        let exact = compress(&[b'a'; 1000]);
        assert_eq!(inflate(&exact, 1000).unwrap().len(), 1000);
        assert_eq!(
            inflate(&exact, 999).unwrap_err().code,
            CloseCode::MessageTooBig
        );
        assert_eq!(inflate(&compress(b""), 0).unwrap(), "");
    }

    #[test]
    fn corrupt_input_is_an_error_not_a_panic() {
        let err = inflate(&[0xff; 32], 1024).unwrap_err();
        assert_eq!(
            err,
            Violation {
                code: CloseCode::InvalidPayload,
                reason: "invalid compressed data"
            }
        );
        // Random bytes and mangled messages never panic and never pass the bound.
        let good = compress(device_status().as_bytes());
        let mut seed = 0x9e37_79b9_u32;
        for i in 0..3000 {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let mut input = good.to_vec();
            if i % 2 == 0 {
                input.truncate(seed as usize % (good.len() + 1));
            }
            let at = seed as usize % input.len().max(1);
            if let Some(b) = input.get_mut(at) {
                *b ^= (seed >> 24) as u8 | 1;
            }
            if i % 3 == 0 {
                input = seed.to_le_bytes().repeat(i % 50);
            }
            if let Ok(out) = inflate(&input, 2000) {
                assert!(out.len() <= 2000);
            }
        }
    }

    #[test]
    #[ignore = "measurement: cargo test --release -p herald-protocol -- --ignored --nocapture"]
    #[allow(
        clippy::disallowed_types,
        reason = "wall time of a CPU-bound loop; this crate has no tokio"
    )]
    fn measure_levels() {
        use std::time::{Duration, Instant};
        /// The least time per call of `f` over 5 batches of 10 000: the least noisy figure.
        fn time(mut f: impl FnMut()) -> Duration {
            (0..5)
                .map(|_| {
                    let start = Instant::now();
                    for _ in 0..10_000 {
                        f();
                    }
                    start.elapsed() / 10_000
                })
                .min()
                .unwrap_or_default()
        }
        let mut c = new_compressor();
        let reset = time(|| drop(std::hint::black_box(deflate_with(&mut c, b""))));
        eprintln!("reset + empty message, level {LEVEL}: {reset:?}");
        for (name, payload) in [("device.status", device_status()), ("chat", chat_message())] {
            let payload = payload.as_bytes();
            for level in [1, 2, 3, 4, 6, 9] {
                let mut c = Compress::new(Compression::new(level), false);
                let size = deflate_with(&mut c, payload).unwrap().len();
                let per = time(|| drop(std::hint::black_box(deflate_with(&mut c, payload))));
                let ratio = 100.0 * size as f64 / payload.len() as f64;
                let len = payload.len();
                eprintln!("{name} {len} B, level {level}: {size} B ({ratio:.1} %), {per:?}");
            }
            let fresh = time(|| {
                drop(std::hint::black_box(deflate_with(
                    &mut new_compressor(),
                    payload,
                )))
            });
            eprintln!("{name}, level {LEVEL}, fresh state each time: {fresh:?}");
            let compressed = compress(payload);
            let per = time(|| drop(std::hint::black_box(inflate(&compressed, 1 << 20))));
            eprintln!("{name}, inflate: {per:?}");
        }
    }
}
