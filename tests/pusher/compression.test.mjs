// permessage-deflate (RFC 7692) on the Pusher endpoint `/app/{key}`, checked on the wire: every
// client connects through a wiretap (./wiretap.mjs), a TCP proxy that records the offered and
// accepted `Sec-WebSocket-Extensions` and every frame's header, so the tests see which
// messages went compressed (RSV1 set) and how many bytes they took, not only that the clients
// decoded them.
//
// Clients: pusher-js in Node (as shipped, and on the `ws` package), a raw `ws` client, and
// Laravel Echo with pusher-js's browser build in headless Chromium (Debian's). The native
// protocol's client is tested the same way in clients/js/test/compression.test.mjs.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { join } from 'node:path';
import PusherJs from 'pusher-js';
import WebSocket from 'ws';
import {
  APP, WAIT_MS, appToml, client, connected, once, sdk, startHerald, subscribed,
} from './helpers.mjs';
import {
  MAX_FRAMES, messages, newRecord, requestParser, responseParser, startWiretap,
} from './wiretap.mjs';
import {
  ACCEPTED, CHROMIUM, NOTE, assertWellFormed, deviceStatus, requireChromium, tapped,
} from './deflate-checks.mjs';

/** The bytes of the Pusher message Herald sends for an SDK trigger (data is a JSON string). */
const pusherMessageBytes = (channel, event, data) => Buffer.byteLength(JSON.stringify({ event, channel, data: JSON.stringify(data) }));

/**
 * pusher-js in Node on the `ws` package, whose client offers permessage-deflate by default
 * (`permessage-deflate; client_max_window_bits`) and compresses what it sends above 1 KiB.
 * pusher-js 8's Node build ships faye-websocket, which offers no extension (the first test
 * shows it), so the constructor is swapped through `Pusher.Runtime` for as long as `f` runs.
 */
async function onWs(f) {
  const original = PusherJs.Runtime.getWebSocketAPI;
  PusherJs.Runtime.getWebSocketAPI = () => WebSocket;
  try { return await f(); } finally { PusherJs.Runtime.getWebSocketAPI = original; }
}

/** A pusher-js client for Herald `server` connecting through `tap`, with its tap record. */
async function tappedClient(server, tap) {
  const since = tap.connections.length;
  // helpers.client() connects to the port it is given (the tap's) and signs channel
  // authorisations locally with the SDK.
  const c = await connected(client({ port: tap.port }, { authorizer: sdk(server) }));
  return { c, wire: tapped(tap, since, '/app/') };
}

/**
 * Trigger `data` as `event` on `channel` and wait for `ch` to receive it; resolves with the
 * wire messages the server sent on `wire` meanwhile (there should be just the one).
 */
async function triggerAndReceive(server, ch, wire, channel, event, data) {
  const before = messages(wire.frames).length;
  const got = once(ch, event);
  await sdk(server).trigger(channel, event, data);
  const received = (await got).data;
  // The tap parses each chunk before forwarding it: the frame is recorded by now.
  return { received, sent: messages(wire.frames).slice(before) };
}

let server;
let tap;
before(async () => {
  server = await startHerald(appToml()); // compression on by default, threshold 256
  tap = await startWiretap(server.port);
});
after(async () => {
  await tap.close();
  await server.stop();
});

test('wiretap: frame headers with 7-, 16- and 64-bit lengths, cut anywhere or several in one chunk', async () => {
  // Proves the instrument before the tests rely on it. A 101 response then frames of every
  // length encoding (one fragmented message, control frames), fed to the parser whole, one
  // byte at a time, and in pseudo-random cuts.
  const frame = (b0, length) => {
    let head;
    if (length < 126) head = Buffer.from([b0, length]);
    else if (length < 65536) head = Buffer.from([b0, 126, length >> 8, length & 0xff]);
    else {
      head = Buffer.alloc(10);
      head[0] = b0;
      head[1] = 127;
      head.writeBigUInt64BE(BigInt(length), 2);
    }
    return Buffer.concat([head, Buffer.alloc(length, 0x61)]);
  };
  const head = 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n'
    + 'Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n\r\n';
  const bytes = Buffer.concat([
    Buffer.from(head), frame(0xc1, 5), frame(0x81, 0), frame(0x01, 300), frame(0x89, 2), frame(0x80, 70000), frame(0x88, 2),
  ]);
  const want = [
    { fin: true, rsv1: true, opcode: 1, length: 5 }, { fin: true, rsv1: false, opcode: 1, length: 0 },
    { fin: false, rsv1: false, opcode: 1, length: 300 }, { fin: true, rsv1: false, opcode: 9, length: 2 },
    { fin: true, rsv1: false, opcode: 0, length: 70000 }, { fin: true, rsv1: false, opcode: 8, length: 2 },
  ];
  let seed = 7;
  const random = () => { seed = (seed * 1103515245 + 12345) % 2 ** 31; return seed; };
  const cuts = {
    whole: () => bytes.length,
    bytewise: () => 1,
    random: () => 1 + (random() % 23),
    'random large': () => 1 + (random() % 5000),
  };
  for (const [name, size] of Object.entries(cuts)) {
    const conn = newRecord();
    const feed = responseParser(conn);
    for (let at = 0; at < bytes.length;) {
      const n = size();
      feed(bytes.subarray(at, at + n));
      at += n;
    }
    assert.equal(conn.status, 101, name);
    assert.equal(conn.extensions, 'permessage-deflate; server_no_context_takeover', name);
    assert.deepEqual(conn.frames.map(({ fin, rsv1, opcode, length }) => ({ fin, rsv1, opcode, length })), want, name);
    assert.deepEqual(conn.errors, [], name);
    assert.deepEqual(messages(conn.frames), [
      { opcode: 1, rsv1: true, length: 5, frames: 1 }, { opcode: 1, rsv1: false, length: 0, frames: 1 },
      { opcode: 1, rsv1: false, length: 70300, frames: 2 },
    ], name);
  }

  // Masked (client) frames: the 4-byte mask key is part of the header, not of the payload.
  const request = newRecord();
  const feedRequest = requestParser(request);
  const masked = Buffer.concat([Buffer.from([0xc1, 0x80 | 126, 0x01, 0x00, 1, 2, 3, 4]), Buffer.alloc(256), Buffer.from([0x81, 0x83, 9, 9, 9, 9, 1, 2, 3])]);
  feedRequest(Buffer.from('GET /app/k HTTP/1.1\r\nUpgrade: websocket\r\nSec-WebSocket-Extensions: permessage-deflate\r\nSec-WebSocket-Extensions: x-other\r\n\r\n'));
  for (const b of masked) feedRequest(Buffer.from([b]));
  assert.equal(request.offered, 'permessage-deflate, x-other', 'repeated headers join as one list');
  assert.deepEqual(request.clientFrames.map(({ rsv1, masked: m, length }) => ({ rsv1, masked: m, length })),
    [{ rsv1: true, masked: true, length: 256 }, { rsv1: false, masked: true, length: 3 }]);

  // Bounded: past MAX_FRAMES frames are counted, not kept.
  const many = newRecord();
  const feedMany = responseParser(many);
  feedMany(Buffer.from('HTTP/1.1 101 Switching Protocols\r\n\r\n'));
  feedMany(Buffer.concat(Array.from({ length: MAX_FRAMES + 500 }, () => frame(0x81, 1))));
  assert.equal(many.frames.length, MAX_FRAMES);
  assert.equal(many.framesSeen, MAX_FRAMES + 500);

  // And through the proxy, the bytes arrive unchanged, in both directions.
  const { createServer: netServer, connect } = await import('node:net');
  let upstreamGot = null;
  const upstream = netServer((s) => {
    s.once('data', (req) => {
      upstreamGot = req;
      s.write(bytes.subarray(0, 100));
      s.end(bytes.subarray(100));
    });
  });
  await new Promise((r) => upstream.listen(0, '127.0.0.1', r));
  const proxy = await startWiretap(upstream.address().port);
  try {
    const sock = connect(proxy.port, '127.0.0.1');
    const chunks = [];
    const ended = new Promise((r) => sock.on('end', r));
    sock.on('data', (d) => chunks.push(d));
    const req = Buffer.from('GET /app/x HTTP/1.1\r\nUpgrade: websocket\r\n\r\n');
    sock.write(req);
    await Promise.race([ended, new Promise((_, rej) => setTimeout(() => rej(new Error('proxy: no end')), WAIT_MS))]);
    assert.ok(upstreamGot.equals(req), 'client to server unchanged');
    assert.ok(Buffer.concat(chunks).equals(bytes), 'server to client unchanged');
    assert.equal(proxy.connections.length, 1);
    assert.deepEqual(proxy.connections[0].frames.slice(0, 6).map(({ fin, rsv1, opcode, length }) => ({ fin, rsv1, opcode, length })), want);
    sock.destroy();
  } finally {
    await proxy.close();
    await new Promise((r) => upstream.close(r));
  }
});

test('pusher-js in Node as shipped (faye-websocket) offers no permessage-deflate: plain frames, events intact', async () => {
  // What an unmodified pusher-js 8 gets in Node: its Node build bundles faye-websocket
  // without the deflate extension, so it offers none, and Herald sends everything
  // uncompressed, which must still work. If a pusher-js release starts offering deflate, this
  // test fails on the first assertion: then pusher-js in Node gets compression as is.
  const { c, wire } = await tappedClient(server, tap);
  try {
    assert.equal(wire.offered, null, 'pusher-js (faye-websocket) sent no Sec-WebSocket-Extensions');
    assert.equal(wire.status, 101);
    assert.equal(wire.extensions, null, 'nothing offered, nothing accepted');
    const ch = await subscribed(c, 'devices.plain');
    const status = deviceStatus(1);
    const { received, sent } = await triggerAndReceive(server, ch, wire, 'devices.plain', 'device.status', status);
    assert.deepEqual(received, status);
    assert.equal(sent.length, 1);
    assert.equal(sent[0].rsv1, false);
    assert.equal(sent[0].length, pusherMessageBytes('devices.plain', 'device.status', status), 'the plain message, byte for byte');
    assert.ok(messages(wire.frames).every((m) => !m.rsv1), 'no frame of this connection is compressed');
    assertWellFormed(wire);
  } finally {
    c.disconnect();
  }
});

test('pusher-js in Node on ws: large publications and client events go compressed both ways, small ones plain', async () => {
  await onWs(async () => {
    const { c: a, wire: wa } = await tappedClient(server, tap);
    const { c: b, wire: wb } = await tappedClient(server, tap);
    try {
      // The handshake: ws offers deflate; Herald answers with its fixed parameters.
      for (const w of [wa, wb]) {
        assert.match(w.offered, /^permessage-deflate\b/);
        assert.equal(w.status, 101);
        assert.equal(w.extensions, ACCEPTED);
      }

      // A large publication arrives intact, and went compressed: RSV1 set, and at most half
      // the bytes of the message it inflates to.
      const ch = await subscribed(a, 'devices');
      const status = deviceStatus();
      const plain = pusherMessageBytes('devices', 'device.status', status);
      assert.ok(plain > 1400 && plain < 1700, `a ~1.5 KB message (${plain} bytes)`);
      const big = await triggerAndReceive(server, ch, wa, 'devices', 'device.status', status);
      assert.deepEqual(big.received, status);
      assert.equal(big.sent.length, 1, `one message: ${JSON.stringify(big.sent)}`);
      assert.equal(big.sent[0].rsv1, true, 'the large publication was sent compressed');
      assert.ok(big.sent[0].length * 2 < plain, `compressed ${big.sent[0].length} of ${plain} bytes`);
      console.log(`# pusher-js/ws in Node: publication ${plain} B -> ${big.sent[0].length} B on the wire (${(100 * big.sent[0].length / plain).toFixed(0)} %)`);

      // A small one (under the 256-byte threshold) arrives intact, uncompressed.
      const small = await triggerAndReceive(server, ch, wa, 'devices', 'ok', { ok: true });
      assert.deepEqual(small.received, { ok: true });
      assert.equal(small.sent.length, 1);
      assert.equal(small.sent[0].rsv1, false, 'under the threshold: plain');
      assert.equal(small.sent[0].length, pusherMessageBytes('devices', 'ok', { ok: true }));

      // Replies (connection_established, subscription_succeeded) are never compressed: the
      // large publication is the only compressed message on this connection.
      assert.deepEqual(messages(wa.frames).map((m) => m.rsv1).filter(Boolean).length, 1, JSON.stringify(messages(wa.frames)));

      // A ~1.5 KB client event from b on a private channel: ws compresses it (over its own
      // 1 KiB threshold), Herald inflates it, relays it, and a receives it intact; compressed
      // again, since it is over Herald's threshold.
      const pa = await subscribed(a, 'private-devices.42');
      const pb = await subscribed(b, 'private-devices.42');
      const whisper = { ...deviceStatus(7), note: NOTE };
      const whisperBytes = Buffer.byteLength(JSON.stringify({ event: 'client-status', channel: 'private-devices.42', data: whisper }));
      const fromB = messages(wb.clientFrames).length;
      const toA = messages(wa.frames).length;
      const got = once(pa, 'client-status');
      assert.equal(pb.trigger('client-status', whisper), true);
      assert.deepEqual((await got).data, whisper);
      const sentByB = messages(wb.clientFrames).slice(fromB);
      assert.equal(sentByB.length, 1, JSON.stringify(sentByB));
      assert.equal(sentByB[0].rsv1, true, 'ws sent the client event compressed');
      assert.ok(sentByB[0].length * 2 < whisperBytes, `client compressed ${sentByB[0].length} of ${whisperBytes} bytes`);
      const relayed = messages(wa.frames).slice(toA);
      assert.equal(relayed.length, 1, JSON.stringify(relayed));
      assert.equal(relayed[0].rsv1, true, 'Herald relayed the client event compressed');
      console.log(`# pusher-js/ws client event: ${whisperBytes} B -> ${sentByB[0].length} B from the client, ${relayed[0].length} B relayed`);
      for (const w of [wa, wb]) assertWellFormed(w);
    } finally {
      a.disconnect();
      b.disconnect();
    }
  });
});

test('compression disabled for the app: the same offer is not accepted, nothing goes compressed, events arrive', async () => {
  // The sub-table comes after the app's keys: appToml puts `tables` last in [[apps]].
  const off = await startHerald(appToml({ tables: '[apps.compression]\nenabled = false' }));
  const offTap = await startWiretap(off.port);
  try {
    await onWs(async () => {
      const { c: a, wire: wa } = await tappedClient(off, offTap);
      const { c: b, wire: wb } = await tappedClient(off, offTap);
      try {
        for (const w of [wa, wb]) {
          assert.match(w.offered, /^permessage-deflate\b/, 'ws offered deflate');
          assert.equal(w.status, 101);
          assert.equal(w.extensions, null, 'and Herald did not accept it');
        }
        const ch = await subscribed(a, 'devices');
        const status = deviceStatus();
        const big = await triggerAndReceive(off, ch, wa, 'devices', 'device.status', status);
        assert.deepEqual(big.received, status);
        assert.equal(big.sent[0].rsv1, false);
        assert.equal(big.sent[0].length, pusherMessageBytes('devices', 'device.status', status), 'the plain message, byte for byte');
        const small = await triggerAndReceive(off, ch, wa, 'devices', 'ok', { ok: true });
        assert.deepEqual(small.received, { ok: true });

        const pa = await subscribed(a, 'private-devices.42');
        const pb = await subscribed(b, 'private-devices.42');
        const whisper = { ...deviceStatus(7), note: NOTE };
        const got = once(pa, 'client-status');
        pb.trigger('client-status', whisper);
        assert.deepEqual((await got).data, whisper);

        for (const w of [wa, wb]) {
          assert.ok([...messages(w.frames), ...messages(w.clientFrames)].every((m) => !m.rsv1), 'no RSV1 either way');
          assertWellFormed(w);
        }
      } finally {
        a.disconnect();
        b.disconnect();
      }
    });
  } finally {
    await offTap.close();
    await off.stop();
  }
});

/**
 * A bare Pusher-protocol client on `ws` through the tap (for offers pusher-js cannot make):
 * resolves once connected, with `wire` (its tap record), `subscribe(channel)`,
 * `next(event)` (the next message of that event) and `close()`.
 */
async function rawPusher(options = {}) {
  const since = tap.connections.length;
  const ws = new WebSocket(`ws://127.0.0.1:${tap.port}/app/${APP.key}?protocol=7`, options);
  const inbox = [];
  let wake = () => {};
  ws.on('message', (d) => { inbox.push(JSON.parse(d)); wake(); });
  const next = async (event) => {
    const deadline = Date.now() + WAIT_MS;
    for (;;) {
      const i = inbox.findIndex((m) => m.event === event);
      if (i >= 0) return inbox.splice(i, 1)[0];
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${event}`);
      await new Promise((r) => { wake = r; setTimeout(r, 100); });
    }
  };
  await next('pusher:connection_established');
  return {
    ws,
    wire: tapped(tap, since, '/app/'),
    next,
    async subscribe(channel) {
      ws.send(JSON.stringify({ event: 'pusher:subscribe', data: { channel } }));
      await next('pusher_internal:subscription_succeeded');
    },
    close: () => ws.close(),
  };
}

test('the threshold: a 255-byte message goes plain, a 256-byte one compressed', async () => {
  // docs/configuration.md: messages shorter than `threshold` bytes (encoded; 256 by default)
  // go uncompressed. The Pusher message's size is known to the byte (the plain-size
  // assertions above check it), so the boundary can be hit exactly.
  const c = await rawPusher();
  try {
    await c.subscribe('edge');
    const base = pusherMessageBytes('edge', 'e', { s: '' });
    const got = [];
    for (const size of [255, 256]) {
      const before = messages(c.wire.frames).length;
      const data = { s: 'x'.repeat(size - base) };
      assert.equal(pusherMessageBytes('edge', 'e', data), size);
      await sdk(server).trigger('edge', 'e', data);
      assert.deepEqual(JSON.parse((await c.next('e')).data), data);
      const sent = messages(c.wire.frames).slice(before);
      assert.equal(sent.length, 1);
      got.push({ size, rsv1: sent[0].rsv1, length: sent[0].length });
    }
    assert.deepEqual(got.map(({ size, rsv1 }) => ({ size, rsv1 })), [{ size: 255, rsv1: false }, { size: 256, rsv1: true }], JSON.stringify(got));
    assert.equal(got[0].length, 255);
    assertWellFormed(c.wire);
  } finally {
    c.close();
  }
});

test('an offer limiting the server window (server_max_window_bits) is declined: the connection runs plain', async () => {
  // Herald compresses each publication once for every subscriber with a 15-bit window, so it
  // declines an offer that asks for a smaller one, and must then send nothing compressed.
  const c = await rawPusher({ perMessageDeflate: { serverMaxWindowBits: 10 } });
  try {
    assert.match(c.wire.offered, /server_max_window_bits=10/);
    assert.equal(c.wire.extensions, null, 'declined');
    assert.equal(c.ws.extensions, '', 'ws runs without the extension');
    await c.subscribe('devices.window');
    const status = deviceStatus();
    await sdk(server).trigger('devices.window', 'device.status', status);
    assert.deepEqual(JSON.parse((await c.next('device.status')).data), status);
    assert.ok(messages(c.wire.frames).every((m) => !m.rsv1), JSON.stringify(messages(c.wire.frames)));
    assertWellFormed(c.wire);
  } finally {
    c.close();
  }
});

/** A page server for Echo with pusher-js's browser build, connecting to `wsPort`. */
async function echoPage(wsPort) {
  const modules = join(import.meta.dirname, 'node_modules');
  const page = `<!doctype html><html><body>
<script src="/pusher.min.js"></script>
<script src="/echo.iife.js"></script>
<script>
  const EchoClass = window.Echo.default || window.Echo;
  window.echo = new EchoClass({
    broadcaster: 'pusher', key: '${APP.key}', cluster: 'mt1',
    wsHost: '127.0.0.1', wsPort: ${wsPort}, forceTLS: false,
    enabledTransports: ['ws'], disableStats: true,
  });
  // What the page received, as JSON text, in order.
  window.got = [];
  window.echo.channel('fleet').listen('.device.status', (e) => got.push(JSON.stringify(e)))
    .listen('.ok', (e) => got.push(JSON.stringify(e)));
  window.ready = () => !!window.echo.connector.pusher.channel('fleet')?.subscribed;
</script></body></html>`;
  const files = {
    '/pusher.min.js': join(modules, 'pusher-js/dist/web/pusher.min.js'),
    '/echo.iife.js': join(modules, 'laravel-echo/dist/echo.iife.js'),
  };
  const http = createServer((req, res) => {
    if (req.url === '/') return res.writeHead(200, { 'content-type': 'text/html' }).end(page);
    if (files[req.url]) return res.writeHead(200, { 'content-type': 'text/javascript' }).end(readFileSync(files[req.url]));
    return res.writeHead(404).end();
  });
  await new Promise((r) => http.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${http.address().port}/`, close: () => new Promise((r) => http.close(r)) };
}

test('Echo in headless Chromium: Chromium offers deflate, a large event arrives compressed and intact', async (t) => {
  if (!requireChromium(t)) return;
  const { chromium } = await import('playwright-core');
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--headless', '--no-sandbox'] });
  const pages = await echoPage(tap.port);
  const since = tap.connections.length;
  try {
    const page = await browser.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(e));
    await page.goto(pages.url);
    await page.waitForFunction(() => window.ready(), null, { timeout: 10000 });
    const wire = tapped(tap, since, '/app/');
    // Chromium's own offer, and Herald's answer.
    assert.match(wire.offered, /^permessage-deflate\b/);
    console.log(`# Chromium offered: ${wire.offered}`);
    assert.equal(wire.extensions, ACCEPTED);

    const before = messages(wire.frames).length;
    const status = deviceStatus(3);
    await sdk(server).trigger('fleet', 'device.status', status);
    await sdk(server).trigger('fleet', 'ok', { ok: true });
    await page.waitForFunction(() => window.got.length === 2, null, { timeout: 10000 });
    const got = await page.evaluate(() => window.got);
    assert.deepEqual(got.map((s) => JSON.parse(s)), [status, { ok: true }]);

    const sent = messages(wire.frames).slice(before);
    assert.equal(sent.length, 2, JSON.stringify(sent));
    const plain = pusherMessageBytes('fleet', 'device.status', status);
    assert.equal(sent[0].rsv1, true, 'the large event was sent compressed');
    assert.ok(sent[0].length * 2 < plain, `compressed ${sent[0].length} of ${plain} bytes`);
    assert.equal(sent[1].rsv1, false, 'the small one plain');
    console.log(`# Echo in Chromium: publication ${plain} B -> ${sent[0].length} B on the wire (${(100 * sent[0].length / plain).toFixed(0)} %)`);
    // Chromium compresses what it sends when it may: its pusher:subscribe went compressed,
    // and Herald understood it (the subscription succeeded).
    assert.ok(messages(wire.clientFrames).some((m) => m.rsv1), `Chromium's messages: ${JSON.stringify(messages(wire.clientFrames))}`);
    assertWellFormed(wire);
    assert.deepEqual(errors, []);
  } finally {
    await browser.close();
    await pages.close();
  }
});
