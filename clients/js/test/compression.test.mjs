// permessage-deflate (RFC 7692) on the native endpoint `/ws/{key}`, checked on the wire: the
// client connects through the wiretap of the Pusher tests (tests/pusher/wiretap.mjs), a TCP
// proxy that records the offered and accepted `Sec-WebSocket-Extensions` and every frame's
// header, so the tests see which messages went compressed (RSV1 set) and their sizes, not only
// that the client decoded them. The client: in Node on `ws` (which offers deflate by default
// and compresses what it sends above 1 KiB), and its browser build in headless Chromium.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import WebSocket from 'ws';
import { Herald } from '../dist/index.js';
import { appToml, connected, eventually, jwt, next, nextEvent, publish, startHerald } from './helpers.mjs';
import { messages, startWiretap } from '../../../tests/pusher/wiretap.mjs';
import { ACCEPTED, CHROMIUM, NOTE, assertWellFormed, deviceStatus, requireChromium, tapped } from '../../../tests/pusher/deflate-checks.mjs';

const bytes = (v) => Buffer.byteLength(JSON.stringify(v));

let server;
let tap;
before(async () => {
  server = await startHerald(appToml()); // compression on by default, threshold 256
  tap = await startWiretap(server.port);
});
after(async () => {
  await tap?.close();
  await server?.stop();
});

/** The uncompressed size of the large publication's message, measured with compression off. */
let plainSize;

test('native client in Node on ws: compression off gives the plain size to compare with', async () => {
  // Herald's own messages carry an id and a timestamp, so their size is measured here, on an
  // app with compression disabled, rather than computed.
  const off = await startHerald(appToml({ tables: '[apps.compression]\nenabled = false' }));
  const offTap = await startWiretap(off.port);
  const herald = new Herald({ url: `http://127.0.0.1:${offTap.port}`, key: 'app-key', WebSocket, transports: ['websocket'], rememberTransport: 'none' });
  try {
    herald.connect();
    await connected(herald, 'websocket');
    const wire = tapped(offTap, 0, '/ws/');
    assert.match(wire.offered, /^permessage-deflate\b/, 'ws offered deflate');
    assert.equal(wire.extensions, null, 'compression disabled: not accepted');
    const sub = herald.subscribe('fleet');
    await next(sub, 'subscribed');
    const status = deviceStatus();
    const got = nextEvent(sub, 'device.status');
    await publish(off, 'fleet', 'device.status', status);
    assert.deepEqual((await got).data, status);
    const all = messages(wire.frames);
    assert.ok(all.every((m) => !m.rsv1), JSON.stringify(all));
    plainSize = all.at(-1).length;
    assert.ok(plainSize > bytes(status), `the message (${plainSize} B) holds the data (${bytes(status)} B)`);
    assertWellFormed(wire);
  } finally {
    herald.disconnect();
    await offTap.close();
    await off.stop();
  }
});

test('native client in Node on ws: large publications and client events go compressed both ways, small ones plain', async () => {
  const token = (sub) => jwt({ sub, channels: ['private-*'] });
  const make = (sub) => new Herald({
    url: `http://127.0.0.1:${tap.port}`, key: 'app-key', token: token(sub), WebSocket, transports: ['websocket'], rememberTransport: 'none',
  });
  const since = tap.connections.length;
  const ann = make('ann');
  ann.connect();
  await connected(ann, 'websocket');
  const wa = tapped(tap, since, '/ws/');
  const bob = make('bob');
  bob.connect();
  await connected(bob, 'websocket');
  const wb = tapped(tap, since + 1, '/ws/');
  try {
    for (const w of [wa, wb]) {
      assert.match(w.offered, /^permessage-deflate\b/);
      assert.equal(w.status, 101);
      assert.equal(w.extensions, ACCEPTED);
    }

    // A large publication: intact, compressed, in at most half its data's bytes.
    const sub = ann.subscribe('fleet');
    await next(sub, 'subscribed');
    const status = deviceStatus();
    let before = messages(wa.frames).length;
    const got = nextEvent(sub, 'device.status');
    await publish(server, 'fleet', 'device.status', status);
    assert.deepEqual((await got).data, status);
    const big = messages(wa.frames).slice(before);
    assert.equal(big.length, 1, JSON.stringify(big));
    assert.equal(big[0].rsv1, true, 'the large publication was sent compressed');
    assert.ok(big[0].length * 2 < bytes(status), `compressed to ${big[0].length} B, data ${bytes(status)} B`);
    console.log(`# native client/ws in Node: publication ${plainSize ?? '?'} B -> ${big[0].length} B on the wire`
      + `${plainSize ? ` (${(100 * big[0].length / plainSize).toFixed(0)} %)` : ''}`);

    // A small one: intact, plain.
    before = messages(wa.frames).length;
    const small = nextEvent(sub, 'ok');
    await publish(server, 'fleet', 'ok', { ok: true });
    assert.deepEqual((await small).data, { ok: true });
    const plain = messages(wa.frames).slice(before);
    assert.equal(plain.length, 1, JSON.stringify(plain));
    assert.equal(plain[0].rsv1, false, 'under the threshold: plain');

    // A ~1.5 KB client event from bob: ws compresses it, Herald inflates it and relays it
    // to ann compressed.
    const pa = ann.subscribe('private-fleet.1');
    const pb = bob.subscribe('private-fleet.1');
    await Promise.all([next(pa, 'subscribed'), next(pb, 'subscribed')]);
    const whisper = {
      ...deviceStatus(7),
      note: NOTE,
    };
    const fromBob = messages(wb.clientFrames).length;
    before = messages(wa.frames).length;
    const heard = nextEvent(pa, 'client-status');
    assert.equal(pb.whisper('status', whisper), true);
    const { data, meta } = await heard;
    assert.deepEqual(data, whisper);
    assert.equal(meta.userId, 'bob', 'relayed with the sender');
    const sent = messages(wb.clientFrames).slice(fromBob);
    assert.equal(sent.length, 1, JSON.stringify(sent));
    assert.equal(sent[0].rsv1, true, 'ws sent the client event compressed');
    // Replies may pass meanwhile (ann's client leaves `fleet` once its last listener is
    // gone, and the short `unsubscribed` comes back plain): look at the large messages.
    const relayed = messages(wa.frames).slice(before).filter((m) => m.rsv1 || m.length >= 256);
    assert.equal(relayed.length, 1, JSON.stringify(messages(wa.frames).slice(before)));
    assert.equal(relayed[0].rsv1, true, 'Herald relayed it compressed');
    console.log(`# native client event: ${bytes(whisper)} B of data -> ${sent[0].length} B from the client, ${relayed[0].length} B relayed`);

    // Replies (connected, subscribed) are never compressed: on ann's connection only the
    // large publication and the relayed client event are.
    assert.equal(messages(wa.frames).filter((m) => m.rsv1).length, 2, JSON.stringify(messages(wa.frames)));
    for (const w of [wa, wb]) assertWellFormed(w);
  } finally {
    ann.disconnect();
    bob.disconnect();
  }
});

/** A page server: the browser build and the test page (its `start()` takes the server's URL). */
async function pageServer() {
  const files = {
    '/herald.iife.js': join(import.meta.dirname, '../dist/herald.iife.js'),
    '/client.html': join(import.meta.dirname, 'pages/client.html'),
  };
  const http = createServer((req, res) => {
    const file = files[req.url];
    if (!file) return res.writeHead(404).end();
    return res.writeHead(200, { 'content-type': file.endsWith('.html') ? 'text/html' : 'text/javascript' }).end(readFileSync(file));
  });
  await new Promise((r) => http.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${http.address().port}/client.html`, close: () => new Promise((r) => http.close(r)) };
}

test('native browser build in headless Chromium: a large publication arrives compressed and intact', async (t) => {
  if (!requireChromium(t)) return;
  const { chromium } = await import('playwright-core');
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--headless', '--no-sandbox'] });
  const pages = await pageServer();
  const since = tap.connections.length;
  try {
    const page = await browser.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(e));
    await page.goto(pages.url);
    await page.evaluate((url) => window.start({ url, transports: ['websocket'] }), `http://127.0.0.1:${tap.port}`);
    await page.evaluate(() => window.listen('fleet'));
    await eventually(() => page.evaluate(() => window.events.some((e) => e[0] === 'subscribed')), 10_000, 'subscribed');
    const wire = tapped(tap, since, '/ws/');
    assert.match(wire.offered, /^permessage-deflate\b/);
    console.log(`# Chromium offered: ${wire.offered}`);
    assert.equal(wire.extensions, ACCEPTED);

    const before = messages(wire.frames).length;
    const status = deviceStatus(3);
    await publish(server, 'fleet', 'device.status', status);
    await publish(server, 'fleet', 'ok', { ok: true });
    await eventually(() => page.evaluate(() => window.log.fleet.length === 2), 10_000, 'both publications');
    assert.deepEqual(await page.evaluate(() => window.log.fleet), [status, { ok: true }]);

    const sent = messages(wire.frames).slice(before);
    assert.equal(sent.length, 2, JSON.stringify(sent));
    assert.equal(sent[0].rsv1, true, 'the large publication was sent compressed');
    assert.ok(sent[0].length * 2 < bytes(status), `compressed to ${sent[0].length} B, data ${bytes(status)} B`);
    assert.equal(sent[1].rsv1, false, 'the small one plain');
    console.log(`# native client in Chromium: publication ~${plainSize ?? '?'} B -> ${sent[0].length} B on the wire`);
    // Chromium compresses what it sends when it may: its subscribe request went compressed,
    // and Herald understood it (the subscription succeeded).
    assert.ok(messages(wire.clientFrames).some((m) => m.rsv1), `Chromium's messages: ${JSON.stringify(messages(wire.clientFrames))}`);
    assertWellFormed(wire);
    assert.deepEqual(errors, []);
    assert.deepEqual((await page.evaluate(() => window.events)).filter((e) => e[0] === 'error'), []);
  } finally {
    await browser.close();
    await pages.close();
  }
});
