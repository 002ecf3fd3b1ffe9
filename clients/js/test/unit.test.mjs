// The client's state machine and backoff, with a scripted WebSocket and fetch in place of a
// server: every close-code class, fallback, the connect timeout, the dead-connection rule,
// and bad input.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Herald, backoffDelay, closeAdvice } from '../dist/index.js';
import { eventually, sleep } from './helpers.mjs';

/** A WebSocket whose server side the test plays. Every instance is kept in `sockets`. */
function scriptedWebSocket() {
  const sockets = [];
  class FakeSocket {
    readyState = 0;
    onmessage = null;
    onclose = null;
    onerror = null;
    sent = [];
    constructor(url) {
      this.url = url;
      this.at = Date.now();
      sockets.push(this);
    }
    // Server side:
    open(data = {}) {
      this.readyState = 1;
      this.say({ type: 'connected', data: { socket_id: '1.2', user_id: null, ping_interval: 25, ...data } });
    }
    say(msg) { this.onmessage?.({ data: typeof msg === 'string' ? msg : JSON.stringify(msg) }); }
    drop(code, reason = '') {
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }
    // Client side:
    send(text) { this.sent.push(JSON.parse(text)); }
    close() { this.readyState = 3; this.closedByClient = true; }
  }
  return { sockets, WebSocket: FakeSocket };
}

/** A fetch where every request fails as a refused connection would. */
const refusedFetch = async () => { throw new TypeError('fetch failed'); };

function client(ws, options = {}) {
  return new Herald({
    url: 'http://127.0.0.1:1', key: 'k', WebSocket: ws.WebSocket, fetch: refusedFetch,
    rememberTransport: 'none', minDelay: 20, maxDelay: 200, ...options,
  });
}

test('backoff: exponential from the minimum, capped, jittered by ±50 %', () => {
  assert.equal(backoffDelay(0, 500, 30_000, 0.5), 500);
  assert.equal(backoffDelay(3, 500, 30_000, 0.5), 4000);
  assert.equal(backoffDelay(20, 500, 30_000, 0.5), 30_000);
  assert.equal(backoffDelay(1, 500, 30_000, 0), 500);
  assert.equal(backoffDelay(1, 500, 30_000, 0.999), 1499);
  for (let i = 0; i < 100; i++) {
    const d = backoffDelay(2, 500, 30_000);
    assert.ok(d >= 1000 && d <= 3000, String(d));
  }
});

test('close codes: the three classes of docs/protocol.md', () => {
  for (const code of [1000, 1002, 1003, 1007, 1009, 4000, 4001, 4004, 4005, 4008, 4099]) assert.equal(closeAdvice(code), 'stop', String(code));
  for (const code of [1001, 4200, 4201, 4202, 4299]) assert.equal(closeAdvice(code), 'now', String(code));
  for (const code of [1006, 1011, 4100, 4101, 4102, 4103, 4199]) assert.equal(closeAdvice(code), 'backoff', String(code));
});

test('a give-up code before connected fails at once, with the server\'s reason, and never retries', async () => {
  const ws = scriptedWebSocket();
  const herald = client(ws);
  const errors = [];
  herald.on('error', (e) => errors.push(e));
  herald.connect();
  ws.sockets[0].say({ type: 'error', event: 'unauthorized', data: { code: 204, message: 'token is malformed' } });
  ws.sockets[0].drop(4004, 'unauthorized');
  assert.equal(herald.state, 'failed');
  assert.equal(errors.length, 1);
  assert.equal(errors[0].kind, 'closed');
  assert.equal(errors[0].code, 4004);
  assert.equal(errors[0].message, 'token is malformed');
  await sleep(300);
  assert.equal(ws.sockets.length, 1, 'no reconnect after 4004');
});

test('reconnect now on 4200 and 1001; back off on 4100; give up on 1000', async () => {
  const ws = scriptedWebSocket();
  const herald = client(ws, { minDelay: 400, maxDelay: 400 });
  const states = [];
  herald.on('state', (s) => states.push(s.current));
  herald.connect();
  ws.sockets[0].open();
  for (const code of [4200, 1001]) {
    const before = ws.sockets.length;
    const at = Date.now();
    ws.sockets.at(-1).drop(code);
    await eventually(() => ws.sockets.length === before + 1);
    assert.ok(Date.now() - at < 300, `${code}: reconnected within the small random delay`);
    ws.sockets.at(-1).open();
  }
  const at = Date.now();
  ws.sockets.at(-1).drop(4100);
  await eventually(() => ws.sockets.length === 4);
  assert.ok(Date.now() - at >= 190, '4100: waited the backoff (400 ms ± 50 %)');
  ws.sockets.at(-1).open();
  ws.sockets.at(-1).drop(1000);
  await sleep(500);
  assert.equal(ws.sockets.length, 4);
  assert.deepEqual(states, ['connecting', 'connected', 'reconnecting', 'connected', 'reconnecting', 'connected', 'reconnecting', 'connected', 'failed']);
});

test('repeated "reconnect now" without a successful session backs off instead of spinning', async () => {
  const ws = scriptedWebSocket();
  const herald = client(ws, { minDelay: 50, maxDelay: 1000 });
  herald.connect();
  ws.sockets[0].open();
  ws.sockets[0].drop(4201);
  for (let i = 1; i <= 4; i++) {
    await eventually(() => ws.sockets.length === i + 1);
    ws.sockets[i].drop(4201);
  }
  const gaps = ws.sockets.slice(1).map((s, i) => s.at - ws.sockets[i].at);
  assert.ok(gaps[3] > gaps[0] && gaps[3] >= 150, `gaps grow: ${gaps}`);
  herald.disconnect();
});

test('a transport that fails before connected falls through to the next at once; after the last, waits', async () => {
  const ws = scriptedWebSocket();
  const tried = [];
  const fetchLog = async (url) => { tried.push(new URL(url).pathname.split('/')[1]); throw new TypeError('refused'); };
  const herald = client(ws, { fetch: fetchLog, minDelay: 300, maxDelay: 300 });
  herald.connect();
  ws.sockets[0].drop(1006);
  await eventually(() => tried.length === 2);
  assert.deepEqual(tried, ['sse', 'poll']);
  assert.equal(herald.state, 'connecting');
  await sleep(100);
  assert.equal(ws.sockets.length, 1, 'a round of every transport, then the backoff');
  await eventually(() => ws.sockets.length === 2, 1000);
  herald.disconnect();
});

test('no connected message within connectTimeout: the next transport', async () => {
  const ws = scriptedWebSocket();
  const tried = [];
  const herald = client(ws, { connectTimeout: 150, fetch: async (url) => { tried.push(url); return new Promise(() => {}); } });
  herald.connect();
  ws.sockets[0].readyState = 1; // open, but silent (a proxy that swallows frames)
  await eventually(() => tried.length === 1, 1000);
  assert.ok(ws.sockets[0].closedByClient, 'the silent socket is closed');
  assert.match(tried[0], /\/sse\/k$/);
  // SSE delivers nothing either (a buffering proxy): long-polling.
  await eventually(() => tried.length === 2, 1000);
  assert.match(tried[1], /\/poll\/k$/);
  herald.disconnect();
});

test('a silent connection is pinged after ping_interval plus the margin, and dropped when no answer comes', async () => {
  const ws = scriptedWebSocket();
  const herald = client(ws, { pongTimeout: 100 });
  herald.connect();
  ws.sockets[0].open({ ping_interval: 0 });
  await eventually(() => ws.sockets[0].sent.some((m) => m.type === 'ping'), 1000);
  // Any message counts as the answer.
  ws.sockets[0].say({ type: 'pong' });
  await sleep(150);
  assert.equal(ws.sockets.length, 1);
  // Now nothing answers: dead, reconnect.
  await eventually(() => ws.sockets.length === 2, 1000);
  assert.ok(ws.sockets[0].closedByClient);
  herald.disconnect();
});

test('the server\'s ping is answered with pong', () => {
  const ws = scriptedWebSocket();
  const herald = client(ws);
  herald.connect();
  ws.sockets[0].open();
  ws.sockets[0].say({ type: 'ping' });
  assert.deepEqual(ws.sockets[0].sent.at(-1), { type: 'pong' });
  herald.disconnect();
});

test('bad input is ignored: malformed JSON, unknown types, missing fields, wrong shapes', () => {
  const ws = scriptedWebSocket();
  const herald = client(ws);
  herald.connect();
  const sock = ws.sockets[0];
  sock.open();
  const sub = herald.subscribe('c');
  const got = [];
  sub.bindAll((d) => got.push(d));
  const ref = sock.sent.find((m) => m.type === 'subscribe').ref;
  for (const bad of ['{', 'null', '[]', '"x"', '{"type":5}', '{"type":"brand-new"}', '{"type":"event"}',
    '{"type":"presence","channel":"c","event":"sync","data":{"members":"no"}}', '{"type":"subscribe","ref":99}',
    '{"type":"resync","data":"c"}', '{"type":"error"}']) {
    sock.say(bad);
  }
  sock.say({ type: 'subscribe', channel: 'c', event: 'subscribed', data: { offset: 1, epoch: 'e' }, ref });
  sock.say({ type: 'event', channel: 'c', event: 'x', data: 1, offset: 2, epoch: 'e' });
  sock.say({ type: 'event', channel: 'c', event: 'x', data: 'dup', offset: 2, epoch: 'e' });
  sock.say({ type: 'event', channel: 'c', event: 'x', data: 3, offset: 3, epoch: 'e' });
  assert.equal(herald.state, 'connected');
  assert.deepEqual(got, [1, 3]);
  herald.disconnect();
});

test('status follows state and transport; subscriptions are kept across disconnect()', () => {
  const ws = scriptedWebSocket();
  const herald = client(ws);
  const statuses = [];
  herald.on('status', (s) => statuses.push(s));
  const sub = herald.subscribe('kept');
  herald.connect();
  ws.sockets[0].open();
  assert.equal(ws.sockets[0].sent[0].channel, 'kept');
  herald.disconnect();
  herald.connect();
  ws.sockets[1].open();
  assert.equal(ws.sockets[1].sent[0].channel, 'kept', 'rejoined on the next connect');
  assert.equal(sub.state, 'subscribing');
  herald.disconnect();
  assert.deepEqual(statuses, ['connecting', 'connected-live', 'disconnected', 'connecting', 'connected-live', 'disconnected']);
});

test('size: the core browser bundle is at most 8 KiB minified and gzipped', async () => {
  const { readFileSync } = await import('node:fs');
  const { gzipSync } = await import('node:zlib');
  const BUDGET = 8 * 1024; // the same as build.mjs's, which refuses to build above it
  const size = gzipSync(readFileSync(new URL('../dist/herald.iife.js', import.meta.url)), { level: 9 }).length;
  assert.ok(size <= BUDGET, `${size} bytes gzipped; the budget is ${BUDGET}`);
});
