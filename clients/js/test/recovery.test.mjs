// Reconnect, recovery, token expiry and fallback against the real `herald` binary, with real
// faults: a TCP proxy cut under the client, the server closing with 4200, Herald restarted.

import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { connect as netConnect } from 'node:net';
import { after, before, test } from 'node:test';
import WebSocket, { WebSocketServer } from 'ws';
import { Herald } from '../dist/index.js';
import {
  api, appToml, connected, eventually, jwt, next, publish, sleep, startHerald, tcpProxy,
} from './helpers.mjs';

let server;
before(async () => {
  server = await startHerald(appToml({ extra: '[apps.jwt]\nleeway = "0s"' }));
});
after(async () => { await server?.stop(); });

const make = (options) => new Herald({ key: 'app-key', WebSocket, rememberTransport: 'none', minDelay: 50, maxDelay: 500, ...options });

/** Publish 1..total on `channel` with small random pauses. */
async function publishNumbers(target, channel, total) {
  for (let n = 1; n <= total; n++) {
    await publish(target, channel, 'n', n);
    if (Math.random() < 0.05) await sleep(Math.random() * 20);
  }
}

for (const transport of ['websocket', 'sse', 'polling']) {
  test(`${transport}: 1500 publications arrive once each, in order, through cuts and 4200 closes`, async () => {
    const proxy = await tcpProxy(server.port);
    const channel = `numbers.${transport}.${Date.now()}`;
    const herald = make({ url: proxy.url, transports: [transport], token: jwt({ sub: `reader-${transport}` }) });
    const got = [];
    const unrecovered = [];
    const sub = herald.subscribe(channel);
    sub.bind('n', (n) => got.push(n));
    sub.on('unrecovered', (u) => unrecovered.push(u));
    herald.connect();
    await next(sub, 'subscribed');
    let faults = 0;
    let publishing = true;
    const chaos = (async () => {
      while (publishing) {
        await sleep(150 + Math.random() * 250);
        if (!publishing) break;
        if (faults % 3 === 2) await api(server, 'POST', `/users/reader-${transport}/disconnect`, { reconnect: true });
        else proxy.cut();
        faults++;
      }
    })();
    await publishNumbers(server, channel, 1500);
    publishing = false;
    await chaos;
    await eventually(() => got.length >= 1500, 20_000, `all 1500 (have ${got.length})`);
    await sleep(200);
    assert.ok(faults >= 3, `faults injected: ${faults}`);
    assert.deepEqual(unrecovered, []);
    assert.equal(got.length, 1500);
    assert.deepEqual(got, Array.from({ length: 1500 }, (_, i) => i + 1));
    herald.disconnect();
    await proxy.close();
  });
}

test('memory history and a Herald restart: the subscription is told "not recovered" with epoch_changed', async () => {
  const own = await startHerald();
  const herald = make({ url: own.url });
  const sub = herald.subscribe('feed');
  sub.bind('n', () => {});
  herald.connect();
  await next(sub, 'subscribed');
  await publish(own, 'feed', 'n', 1);
  await eventually(() => sub.position?.offset === 1);
  const unrecovered = next(sub, 'unrecovered');
  await own.restart();
  await publish(own, 'feed', 'n', 2);
  const u = await unrecovered;
  assert.equal(u.reason, 'epoch_changed');
  assert.equal(typeof u.epoch, 'string');
  herald.disconnect();
  await own.stop();
});

test('history in Redis survives a Herald restart: recovered, nothing missing', async (t) => {
  const up = await new Promise((res) => {
    const s = netConnect(6379, '127.0.0.1', () => { s.destroy(); res(true); }).on('error', () => res(false));
  });
  if (!up) {
    if (process.env.CI === 'true') assert.fail('Redis is not running on 127.0.0.1:6379');
    return t.skip('Redis is not running on 127.0.0.1:6379');
  }
  const prefix = `herald-client-test-${process.pid}-${Date.now()}`;
  const own = await startHerald(appToml({ top: `[broker]\nkind = "redis"\n[redis]\nprefix = "${prefix}"\n` }));
  const herald = make({ url: own.url });
  const channel = 'feed.redis';
  const got = [];
  const sub = herald.subscribe(channel);
  sub.bind('n', (n) => got.push(n));
  const unrecovered = [];
  sub.on('unrecovered', (u) => unrecovered.push(u));
  herald.connect();
  await next(sub, 'subscribed');
  for (let n = 1; n <= 5; n++) await publish(own, channel, 'n', n);
  await eventually(() => got.length === 5);
  const recovered = next(sub, 'subscribed', 15_000);
  await own.stop();
  await own.restart();
  // Published while the client was away (it reconnects within its backoff).
  for (let n = 6; n <= 10; n++) await publish(own, channel, 'n', n);
  assert.equal((await recovered).recovered, true);
  await eventually(() => got.length === 10);
  assert.deepEqual(got, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  assert.deepEqual(unrecovered, []);
  herald.disconnect();
  await own.stop();
});

test('an expired connection token is replaced from getToken and every subscription kept', async () => {
  let issued = 0;
  const getToken = async () => { issued++; return jwt({ sub: 'ann', exp: Math.floor(Date.now() / 1000) + 2 }); };
  const herald = make({ url: server.url, getToken });
  const first = herald.subscribe('kept.1');
  const got = [];
  first.bind('n', (n) => got.push(n));
  herald.connect();
  await next(first, 'subscribed');
  assert.equal(issued, 1);
  await publish(server, 'kept.1', 'n', 1);
  // Past `exp` by the server's clock, which counts whole seconds.
  await sleep(3100);
  // The token has expired: a new subscribe is refused with 202, and the client fetches a
  // fresh token and reconnects by itself.
  const second = herald.subscribe('kept.2');
  second.bind('n', (n) => got.push(n * 10));
  await next(second, 'subscribed', 5000);
  assert.equal(issued, 2);
  assert.equal(first.state, 'subscribed');
  await publish(server, 'kept.1', 'n', 2);
  await publish(server, 'kept.2', 'n', 3);
  await eventually(() => got.length === 3);
  assert.deepEqual(got, [1, 2, 30]);
  herald.disconnect();
});

test('an enforced token expiry is met by refreshing on the open connection: no reconnect', async () => {
  const own = await startHerald(appToml({
    extra: '[apps.jwt]\nleeway = "0s"\n[apps.token_expiry]\nenforce = true\ngrace = "3s"',
  }));
  let issued = 0;
  const getToken = async () => { issued++; return jwt({ sub: 'ann', exp: Math.floor(Date.now() / 1000) + 2 }); };
  const herald = make({ url: own.url, getToken });
  const sessions = [];
  herald.on('connected', (c) => sessions.push(c.socketId));
  const sub = herald.subscribe('refreshed.1');
  const got = [];
  sub.bind('n', (n) => got.push(n));
  herald.connect();
  await next(sub, 'subscribed');
  // Each token lasts two seconds; the server hints at expiry and the client refreshes.
  await sleep(7000);
  assert.ok(issued >= 3, `tokens fetched: ${issued}`);
  assert.equal(sessions.length, 1, `one connection all along: ${sessions}`);
  await publish(own, 'refreshed.1', 'n', 1);
  await eventually(() => got.length === 1);
  herald.disconnect();
  await own.stop();
});

test('WebSocket refused: the default order falls back to SSE; later it moves back to WebSocket when it works', async () => {
  let blocked = true;
  // A WebSocket that fails like one a proxy refuses, while `blocked`.
  class MaybeWebSocket extends WebSocket {
    constructor(url) { super(blocked ? url.replace(/\/ws\//, '/nope/') : url); }
  }
  const herald = make({ url: server.url, WebSocket: MaybeWebSocket, upgradeInterval: 500 });
  const channel = `upgrade.${Date.now()}`;
  const sub = herald.subscribe(channel);
  const got = [];
  sub.bind('n', (n) => got.push(n));
  const transports = [];
  herald.on('connected', (c) => transports.push(c.transport));
  herald.connect();
  await eventually(() => herald.transport === 'sse' && sub.state === 'subscribed', 10_000, 'on sse');
  await publish(server, channel, 'n', 1);
  await eventually(() => got.length === 1);
  blocked = false;
  await eventually(() => herald.transport === 'websocket' && sub.state === 'subscribed', 5000, 'moved to websocket');
  await publish(server, channel, 'n', 2);
  await eventually(() => got.length === 2);
  assert.deepEqual(got, [1, 2]);
  assert.deepEqual(transports, ['sse', 'websocket']);
  herald.disconnect();
});

test('the transport that worked is remembered and tried first next time', async () => {
  const store = new Map();
  globalThis.sessionStorage = { getItem: (k) => store.get(k) ?? null, setItem: (k, v) => store.set(k, v) };
  try {
    const first = new Herald({ url: server.url, key: 'app-key', transports: ['websocket', 'polling'], upgradeInterval: 0 });
    first.connect(); // no WebSocket constructor in Node 20: falls back to polling
    await connected(first, 'polling');
    first.disconnect();
    assert.equal(store.get('herald:transport:app-key'), 'polling');
    const tried = [];
    const second = new Herald({
      url: server.url, key: 'app-key', WebSocket, transports: ['websocket', 'polling'], upgradeInterval: 0,
      fetch: (url, init) => { tried.push(new URL(url).pathname.split('/')[1]); return fetch(url, init); },
    });
    second.connect();
    await connected(second, 'polling');
    assert.equal(tried[0], 'poll', 'polling first, no WebSocket attempt');
    second.disconnect();
  } finally {
    delete globalThis.sessionStorage;
  }
});

test('a bad server never crashes the client: malformed frames are ignored, a truncated SSE stream reconnects', async () => {
  // A WebSocket server that says nonsense between valid messages.
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' });
  wss.on('connection', (ws) => {
    ws.send(JSON.stringify({ type: 'connected', data: { socket_id: '1.1', ping_interval: 25 } }));
    ws.on('message', (raw) => {
      const msg = JSON.parse(String(raw));
      if (msg.type !== 'subscribe') return;
      for (const bad of ['{"type":', 'not json', '{"type":"from-the-future","data":1}', '[1,2]', '{"type":"event","channel":"c"}']) ws.send(bad);
      ws.send(JSON.stringify({ type: 'subscribe', channel: 'c', event: 'subscribed', data: {}, ref: msg.ref }));
      ws.send(JSON.stringify({ type: 'event', channel: 'c', event: 'x', data: 'ok' }));
    });
  });
  await new Promise((r) => wss.once('listening', r));
  const herald = make({ url: `http://127.0.0.1:${wss.address().port}`, transports: ['websocket'] });
  const sub = herald.subscribe('c');
  const got = [];
  sub.bind('x', (d) => got.push(d));
  herald.connect();
  await eventually(() => got.length === 1);
  assert.deepEqual(got, ['ok']);
  assert.equal(herald.state, 'connected');
  herald.disconnect();
  await new Promise((r) => wss.close(r));

  // An SSE server whose stream is cut mid-event, every time.
  let streams = 0;
  const http = createServer((req, res) => {
    if (req.method !== 'GET') return res.writeHead(202).end('{}');
    streams++;
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.write(`data: ${JSON.stringify({ type: 'connected', data: { socket_id: '1.1', session: 's', ping_interval: 25 } })}\n\n`);
    res.end('data: {"type":"event","chan');
  });
  await new Promise((r) => http.listen(0, '127.0.0.1', r));
  const sse = make({ url: `http://127.0.0.1:${http.address().port}`, transports: ['sse'] });
  const states = [];
  sse.on('state', (s) => states.push(s.current));
  sse.connect();
  await eventually(() => streams >= 3, 5000, 'reconnects after truncated streams');
  assert.ok(states.includes('reconnecting'));
  sse.disconnect();
  await new Promise((r) => http.close(r));
});

test('long-polling: a session whose buffer overflows gets a resync; the client recovers, or says it cannot', async () => {
  // A buffer of 30 messages; a resync recovers at most half of it per channel.
  const own = await startHerald(appToml({ top: '[long_poll]\nmax_buffered_messages = 30\n' }));
  let slow = false;
  // While `slow`, each poll waits before it is sent: a throttled tab that lets the buffer fill.
  const slowPolls = async (url, init) => {
    if (slow && /\?cursor=/.test(url)) await sleep(700);
    return fetch(url, init);
  };
  const herald = make({ url: own.url, transports: ['polling'], fetch: slowPolls });
  const channels = ['burst.a', 'burst.b', 'burst.c'];
  const got = Object.fromEntries(channels.map((c) => [c, []]));
  const recovered = [];
  const unrecovered = [];
  for (const c of channels) {
    const sub = herald.subscribe(c);
    sub.bind('n', (n) => got[c].push(n));
    sub.on('subscribed', (r) => r.recovered !== undefined && recovered.push([c, r.recovered]));
    sub.on('unrecovered', (u) => unrecovered.push([c, u.reason]));
  }
  herald.connect();
  await eventually(() => channels.every((c) => herald.channel(c).state === 'subscribed'));

  // 33 publications over three channels overflow the buffer; each channel missed 11 or
  // fewer, within what a resync replays: everything arrives, in order.
  slow = true;
  for (let n = 1; n <= 11; n++) for (const c of channels) await publish(own, c, 'n', n);
  slow = false;
  const all = Array.from({ length: 11 }, (_, i) => i + 1);
  await eventually(() => channels.every((c) => got[c].length >= 11), 10_000, 'all 33');
  await sleep(200);
  for (const c of channels) assert.deepEqual(got[c], all, c);
  assert.ok(recovered.length >= 1 && recovered.every(([, r]) => r === true), JSON.stringify(recovered));
  assert.deepEqual(unrecovered, []);

  // 40 on one channel: more than a resync may replay. The application is told, with the
  // reason, and live delivery continues.
  slow = true;
  for (let n = 12; n <= 51; n++) await publish(own, 'burst.a', 'n', n);
  slow = false;
  await eventually(() => unrecovered.length === 1, 10_000, 'told it cannot recover');
  assert.deepEqual(unrecovered, [['burst.a', 'too_many']]);
  await publish(own, 'burst.a', 'n', 52);
  await eventually(() => got['burst.a'].at(-1) === 52);
  herald.disconnect();
  await own.stop();
});
