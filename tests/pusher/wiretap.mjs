// A wiretap for WebSocket connections: a TCP proxy on 127.0.0.1 in front of Herald that
// forwards every byte both ways unchanged and, on the side, reads what crosses it:
// - client → server: the HTTP request head, to record the offered `Sec-WebSocket-Extensions`,
//   then (on an upgrade request) the client's frame headers, masked as RFC 6455 §5.3 has them;
// - server → client: the HTTP response head (status, and `Sec-WebSocket-Extensions` when the
//   status is 101), then every RFC 6455 frame's header: {fin, rsv1, opcode, length}.
//
// So a test can assert what went over the wire, e.g. that a publication was sent compressed
// (RSV1 set on its first frame, RFC 7692 §6) and how many bytes its payload took.
// Only headers are read: payloads are neither unmasked, inflated nor kept.
//
// Bounded: the parser never holds more than what it needs to finish the current item, a head
// (at most MAX_HEAD bytes) or a frame header (at most 14 bytes); payload bytes are counted and
// skipped, never kept. At most MAX_FRAMES frames are recorded per connection (the count goes
// on in `framesSeen`), and the proxy keeps working whatever the parser thinks of the bytes.

import { createServer, connect } from 'node:net';

/** The most frames recorded per connection. */
export const MAX_FRAMES = 1000;
/** The longest HTTP head the parser waits for; beyond it the connection is marked `unparsed`. */
const MAX_HEAD = 16 * 1024;

/** RFC 6455 §5.2 opcodes, for readable assertions and messages. */
export const OPCODES = { continuation: 0, text: 1, binary: 2, close: 8, ping: 9, pong: 10 };

/** The value of header `name` (case-insensitive) in an HTTP head's lines, or null. */
function header(lines, name) {
  const prefix = `${name.toLowerCase()}:`;
  // Several headers of one name are one comma-separated list (RFC 9110 §5.3).
  const values = lines.filter((l) => l.toLowerCase().startsWith(prefix)).map((l) => l.slice(prefix.length).trim());
  return values.length ? values.join(', ') : null;
}

/**
 * An incremental parser for one direction's bytes: an HTTP head first, then WebSocket frame
 * headers. `onHead(lines)` gets the head's lines and returns whether frames follow; each
 * frame's header goes to `onFrame(frame)`; what cannot be parsed goes to `conn.errors`.
 */
function streamParser(conn, { onHead, onFrame }) {
  let state = 'head'; // 'head' → 'frames' (or 'done': nothing more to read)
  let pending = Buffer.alloc(0); // an incomplete head or frame header, never more
  let skip = 0; // payload bytes of the current frame still to come: counted, not kept

  function feedFrames(chunk) {
    let at = 0;
    while (at < chunk.length) {
      if (skip > 0) {
        // Inside a payload: jump over what this chunk holds of it.
        const n = Math.min(skip, chunk.length - at);
        skip -= n;
        at += n;
        continue;
      }
      // A frame header: 2 bytes, plus 2 or 8 of extended length, plus 4 of mask if masked.
      // Its length is known once its first 2 bytes are: take from the chunk just enough to
      // complete it (it may be split across chunks), never more than 14 bytes.
      let need = headerLength(pending);
      while (pending.length < need && at < chunk.length) {
        const take = Math.min(need - pending.length, chunk.length - at);
        pending = Buffer.concat([pending, chunk.subarray(at, at + take)]);
        at += take;
        need = headerLength(pending);
      }
      if (pending.length < need) return; // the rest comes in the next chunk
      const b0 = pending[0];
      const b1 = pending[1];
      let length = b1 & 0x7f;
      if (length === 126) length = pending.readUInt16BE(2);
      else if (length === 127) {
        const big = pending.readBigUInt64BE(2);
        // RFC 6455 §5.2: the most significant bit MUST be 0. Past 2^53 a Number loses
        // precision; no test sends that much: record an error and stop reading.
        if (big > BigInt(Number.MAX_SAFE_INTEGER)) {
          conn.errors.push(`frame length ${big} is out of range`);
          state = 'done';
          return;
        }
        length = Number(big);
      }
      const frame = {
        fin: (b0 & 0x80) !== 0,
        rsv1: (b0 & 0x40) !== 0,
        rsv2: (b0 & 0x20) !== 0,
        rsv3: (b0 & 0x10) !== 0,
        opcode: b0 & 0x0f,
        masked: (b1 & 0x80) !== 0,
        length,
      };
      onFrame(frame);
      pending = Buffer.alloc(0);
      skip = length;
    }
  }

  return function feed(chunk) {
    if (state === 'done') return;
    if (state === 'head') {
      pending = Buffer.concat([pending, chunk]);
      const end = pending.indexOf('\r\n\r\n');
      if (end < 0) {
        if (pending.length > MAX_HEAD) {
          conn.errors.push('HTTP head too long, or not HTTP');
          pending = Buffer.alloc(0);
          state = 'done';
        }
        return;
      }
      const lines = pending.subarray(0, end).toString('latin1').split('\r\n');
      const rest = pending.subarray(end + 4);
      pending = Buffer.alloc(0);
      if (!onHead(lines)) {
        state = 'done';
        return;
      }
      state = 'frames';
      chunk = rest;
    }
    feedFrames(chunk);
  };
}

/**
 * How long the frame header starting with `bytes` is: 2, 4 or 10 bytes, plus 4 when the
 * mask bit is set. With fewer than 2 bytes known, 2 (the least it can be).
 */
function headerLength(bytes) {
  if (bytes.length < 2) return 2;
  const len7 = bytes[1] & 0x7f;
  const masked = (bytes[1] & 0x80) !== 0;
  return 2 + (len7 === 126 ? 2 : len7 === 127 ? 8 : 0) + (masked ? 4 : 0);
}

/**
 * The parser of a connection's client → server bytes: fills `conn.request`, `conn.offered`,
 * then `conn.clientFrames`/`clientFramesSeen`. Returns `feed(chunk)`. (Exported for tests.)
 */
export function requestParser(conn) {
  return streamParser(conn, {
    onHead(lines) {
      conn.request = lines[0];
      conn.offered = header(lines.slice(1), 'sec-websocket-extensions');
      // Frames follow an upgrade request (once the server has answered 101: a client
      // sends none before).
      return /websocket/i.test(header(lines.slice(1), 'upgrade') ?? '');
    },
    onFrame(frame) {
      conn.clientFramesSeen += 1;
      if (conn.clientFrames.length < MAX_FRAMES) conn.clientFrames.push(frame);
    },
  });
}

/**
 * The parser of a connection's server → client bytes: fills `conn.status`,
 * `conn.extensions`, then `conn.frames`/`framesSeen`. Returns `feed(chunk)`. (Exported for
 * tests: feed it chunks cut anywhere.)
 */
export function responseParser(conn) {
  return streamParser(conn, {
    onHead(lines) {
      conn.status = Number(lines[0].split(' ')[1]);
      if (conn.status !== 101) return false;
      conn.extensions = header(lines.slice(1), 'sec-websocket-extensions');
      return true;
    },
    onFrame(frame) {
      conn.framesSeen += 1;
      if (conn.frames.length < MAX_FRAMES) conn.frames.push(frame);
    },
  });
}

/** A new connection record (see startWiretap). */
export function newRecord() {
  return {
    request: null,
    offered: null,
    status: null,
    extensions: null,
    frames: [],
    framesSeen: 0,
    clientFrames: [],
    clientFramesSeen: 0,
    errors: [],
  };
}

/**
 * Start a wiretap in front of `upstreamPort` on 127.0.0.1. Resolves with
 * `{port, connections, close()}`; `connections` gets one record per accepted connection, in
 * order:
 * `{request, offered, status, extensions, frames, framesSeen, clientFrames, clientFramesSeen,
 * errors}`, where `request` is the request line, `offered` the client's
 * `Sec-WebSocket-Extensions` (null if none), `status` the response's status code,
 * `extensions` the server's `Sec-WebSocket-Extensions` on a 101 (null otherwise), `frames`
 * the server's frames and `clientFrames` the client's, each `{fin, rsv1, rsv2, rsv3, opcode,
 * masked, length}` (`length`: the payload's, as sent, i.e. compressed if RSV1), the first
 * MAX_FRAMES of them; `*Seen` count them all.
 */
export async function startWiretap(upstreamPort) {
  const connections = [];
  const sockets = new Set();
  const server = createServer((client) => {
    const conn = newRecord();
    connections.push(conn);
    const upstream = connect(upstreamPort, '127.0.0.1');
    sockets.add(client).add(upstream);
    const done = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('error', done).on('close', done);
    upstream.on('error', done).on('close', done);

    const readRequest = requestParser(conn);
    const readResponse = responseParser(conn);
    // Forward unchanged (with back-pressure, by pipe); the parsers look at the same chunks
    // first (these listeners are added before pipe's), so a frame is recorded before the
    // client can have it. A parser fault is recorded once and ends that parser, never the
    // forwarding.
    const tap = (parse) => {
      let broken = false;
      return (chunk) => {
        if (broken) return;
        try { parse(chunk); } catch (e) { broken = true; conn.errors.push(String(e)); }
      };
    };
    client.on('data', tap(readRequest));
    upstream.on('data', tap(readResponse));
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: server.address().port,
    connections,
    close: () => new Promise((r) => {
      for (const s of sockets) s.destroy();
      server.close(() => r());
    }),
  };
}

/**
 * The data messages in `frames` (a connection's `frames` or `clientFrames`), control frames
 * left out: `{opcode, rsv1, length, frames}` each, where `rsv1` is the first frame's (RFC 7692
 * §6.1: it marks the whole message compressed), `length` the payload bytes of all its frames,
 * as sent, and `frames` how many there were (a fragmented message has continuations).
 */
export function messages(frames) {
  const out = [];
  let current = null;
  for (const f of frames) {
    if (f.opcode >= 8) continue; // control frames may come between fragments
    if (f.opcode === OPCODES.continuation && current) {
      current.length += f.length;
      current.frames += 1;
    } else {
      current = { opcode: f.opcode, rsv1: f.rsv1, length: f.length, frames: 1 };
      out.push(current);
    }
    if (f.fin) current = null;
  }
  return out;
}
