// pusher-js's HTTP fallback (`xhr_streaming`, `xhr_polling`) in a real headless Chromium,
// through Laravel Echo 2: when the WebSocket cannot be used — a real nginx that does not
// forward the upgrade, or a browser without `window.WebSocket` — Echo moves to HTTP by
// itself, with configuration alone, and everything a Laravel front end uses keeps working:
// public and private events, presence with a WebSocket peer, whispers both ways, user
// sign-in and sendToUser, and reconnecting after the proxy restarts.
//
// The page is served by a Node page server (the browser builds and Laravel-like
// /broadcasting/auth and /broadcasting/user-auth endpoints) on its own origin, so every
// pusher-js request to Herald or nginx is cross-origin and goes through a CORS preflight.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import EchoModule from 'laravel-echo';
import PusherJs from 'pusher-js';
import { APP, appToml, sdk, startHerald } from './helpers.mjs';
import { nginxInstalled, startNginx, NGINX } from '../../clients/js/test/nginx.mjs';

const Echo = EchoModule.default ?? EchoModule;
const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
/** pusher-js tries the WebSocket first and HTTP only after ~5 s; a fallback connect may take 5–20 s. */
const CONNECT_MS = 30_000;
/** Anything else the page waits for. */
const WAIT_MS = 10_000;

/** The page's logged-in user (the page server's backend authorises as her) and the WebSocket peer. */
const ALICE = { user_id: 'alice', user_info: { name: 'Alice' } };
const WES = { user_id: 'wes', user_info: { name: 'Wes' } };

let server;
let browser;
let pages;
const cleanups = [];

before(async () => {
  server = await startHerald(appToml());
  pages = await pageServer();
  if (existsSync(CHROMIUM)) {
    const { chromium } = await import('playwright-core');
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--headless', '--no-sandbox'] });
  }
});

after(async () => {
  for (const f of cleanups.reverse()) await f().catch(() => {});
  await browser?.close();
  await pages?.close();
  await server?.stop();
});

/** Skip (or, under CI, fail) when a tool the test needs is not installed. */
function requires(t, { nginx = false } = {}) {
  const missing = [];
  if (!browser) missing.push(`${CHROMIUM} is not installed (apt-get install chromium)`);
  if (nginx && !nginxInstalled()) missing.push(`${NGINX} is not installed (apt-get install nginx)`);
  if (missing.length === 0) return true;
  if (process.env.CI === 'true') assert.fail(missing.join('; '));
  t.skip(missing.join('; '));
  return false;
}

// ---------------------------------------------------------------------------------------
// The page server and the page

/** Read a request's form-encoded body. */
function form(req) {
  return new Promise((res) => {
    let body = '';
    req.on('data', (d) => { body += d; });
    req.on('end', () => res(new URLSearchParams(body)));
  });
}

/**
 * The page server: the browser builds from node_modules, the page, and a backend like
 * Laravel's: /broadcasting/auth (channel auth; presence data computed here, for Alice) and
 * /broadcasting/user-auth (sign-in, as Alice).
 */
async function pageServer() {
  const modules = join(import.meta.dirname, 'node_modules');
  const backend = sdk(server);
  const files = {
    '/pusher.min.js': join(modules, 'pusher-js/dist/web/pusher.min.js'),
    '/echo.iife.js': join(modules, 'laravel-echo/dist/echo.iife.js'),
  };
  const http = createServer(async (req, res) => {
    if (req.url === '/') return res.writeHead(200, { 'content-type': 'text/html' }).end(PAGE);
    if (files[req.url]) {
      return res.writeHead(200, { 'content-type': 'text/javascript' }).end(readFileSync(files[req.url]));
    }
    if (req.method === 'POST' && req.url === '/broadcasting/auth') {
      const f = await form(req);
      const channel = f.get('channel_name');
      const auth = backend.authorizeChannel(f.get('socket_id'), channel,
        channel.startsWith('presence-') ? ALICE : undefined);
      return res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(auth));
    }
    if (req.method === 'POST' && req.url === '/broadcasting/user-auth') {
      const f = await form(req);
      const auth = backend.authenticateUser(f.get('socket_id'), { id: ALICE.user_id, user_info: ALICE.user_info });
      return res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(auth));
    }
    return res.writeHead(404).end();
  });
  await new Promise((r) => http.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${http.address().port}/`, close: () => new Promise((r) => http.close(r)) };
}

// The page: what it shows (`#events`, one line per thing that happened) is what the tests
// assert on. `start(options)` makes Echo with the test's transport options.
const PAGE = `<!doctype html><html><body>
<p>connection: <span id="state">none</span> over <span id="transport">none</span></p>
<ul id="events"></ul>
<script src="/pusher.min.js"></script>
<script src="/echo.iife.js"></script>
<script>
  Pusher.logToConsole = true;
  const EchoClass = window.Echo.default || window.Echo;
  const show = (kind) => (e) => {
    const li = document.createElement('li');
    li.textContent = kind + ':' + JSON.stringify(e);
    document.getElementById('events').appendChild(li);
  };
  const pusher = () => window.echo.connector.pusher;
  window.start = (options) => {
    window.echo = new EchoClass({
      broadcaster: 'pusher', key: '${APP.key}', cluster: 'mt1', forceTLS: false, disableStats: true,
      authEndpoint: '/broadcasting/auth',
      userAuthentication: { endpoint: '/broadcasting/user-auth', transport: 'ajax' },
      ...options,
    });
    pusher().connection.bind('state_change', () => {
      const info = window.connectionInfo();
      document.getElementById('state').textContent = info.state;
      document.getElementById('transport').textContent = info.transport;
    });
  };
  // pusher-js's connection state and the transport of the connection it is using.
  window.connectionInfo = () => {
    const c = pusher().connection;
    return { state: c.state, transport: c.connection?.transport?.name ?? null, socketId: c.socket_id ?? null };
  };
  window.subscribed = (names) => names.every((n) => pusher().channel(n)?.subscribed);
  window.listen = (tag) => {
    window.echo.channel('news.' + tag).listen('.headline', show('public'));
    window.echo.private('orders.' + tag).listen('.paid', show('private'));
    window.echo.private('chat.' + tag).listenForWhisper('typing', show('whisper'));
  };
  window.joinRoom = (tag) => window.echo.join('room.' + tag)
    .here((members) => show('here')(members.map((m) => m.name).sort()))
    .joining(show('joining'))
    .leaving(show('leaving'));
  window.whisper = (tag, data) => window.echo.private('chat.' + tag).whisper('typing', data);
  window.signin = () => {
    pusher().user.bind('notice', show('user'));
    window.echo.connector.signin();
  };
  window.signedInAs = () => pusher().user.serverToUserChannel?.subscribed && pusher().user.user_data?.id;
</script></body></html>`;

// ---------------------------------------------------------------------------------------
// Browser helpers

/**
 * A fresh browser context (its own localStorage, so pusher-js's transport cache starts
 * empty) with the page loaded. `noWebSocket` removes `window.WebSocket` before any script
 * runs. Console lines and pusher-js's requests are kept for diagnostics.
 */
async function openPage({ noWebSocket = false } = {}) {
  const context = await browser.newContext();
  cleanups.push(() => context.close());
  if (noWebSocket) {
    await context.addInitScript(() => {
      delete window.WebSocket;
      window.WebSocket = undefined;
    });
  }
  const page = await context.newPage();
  const console_ = [];
  const network = [];
  const websockets = [];
  const keep = (list, line) => { list.push(line); if (list.length > 80) list.shift(); };
  page.on('console', (m) => keep(console_, `${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => keep(console_, `pageerror: ${e.message}`));
  page.on('websocket', (ws) => {
    websockets.push(ws.url());
    ws.on('socketerror', (e) => keep(network, `ws ${ws.url()} error ${e}`));
    ws.on('close', () => keep(network, `ws ${ws.url()} closed`));
  });
  const pusherRequest = (r) => !r.url().startsWith(pages.url);
  page.on('response', (r) => {
    if (pusherRequest(r.request())) keep(network, `${r.request().method()} ${r.url()} -> ${r.status()}`);
  });
  page.on('requestfailed', (r) => {
    if (pusherRequest(r)) keep(network, `${r.method()} ${r.url()} FAILED ${r.failure()?.errorText}`);
  });
  await page.goto(pages.url);
  return { page, context, console: console_, network, websockets };
}

/** What to print when a wait on the page fails: pusher-js's state, its logs, its requests. */
async function diagnostics(h) {
  const info = await h.page.evaluate(() => window.echo && window.connectionInfo()).catch((e) => `(${e.message})`);
  const shown = await h.page.$$eval('#events li', (lis) => lis.map((li) => li.textContent)).catch(() => []);
  return [
    `pusher-js: ${JSON.stringify(info)}`,
    `page shows: ${JSON.stringify(shown)}`,
    `requests (last ${h.network.length}):`, ...h.network.map((l) => `  ${l}`),
    `console (last ${h.console.length}):`, ...h.console.map((l) => `  ${l}`),
  ].join('\n');
}

/** Wait until `fn(arg)` is truthy on the page; on timeout fail with the diagnostics. */
async function onPage(h, what, fn, arg, ms = WAIT_MS) {
  try {
    const v = await h.page.waitForFunction(fn, arg, { timeout: ms, polling: 50 });
    return v.jsonValue();
  } catch (e) {
    throw new Error(`${what} (within ${ms} ms): ${e.message.split('\n')[0]}\n${await diagnostics(h)}`, { cause: e });
  }
}

/** Wait until the page shows the line `line` in its events. */
const shows = (h, line, ms) => onPage(h, `page to show ${line}`,
  (l) => [...document.querySelectorAll('#events li')].some((li) => li.textContent === l), line, ms);

/** Start Echo on the page with `options` and wait until it is connected; its connection info. */
async function connectEcho(h, options) {
  await h.page.evaluate((o) => window.start(o), options);
  return whenConnected(h);
}

/** Wait until pusher-js on the page is connected (again); its connection info. */
const whenConnected = (h, ms = CONNECT_MS) => onPage(h, 'pusher-js to connect',
  () => { const i = window.connectionInfo(); return i.state === 'connected' && i.transport && i; }, null, ms);

// ---------------------------------------------------------------------------------------
// The WebSocket peer: Echo in Node, as Wes, over the WebSocket only

function wsEcho() {
  const backend = sdk(server);
  const e = new Echo({
    broadcaster: 'pusher',
    Pusher: PusherJs,
    key: APP.key,
    cluster: 'mt1',
    wsHost: '127.0.0.1',
    wsPort: server.port,
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, cb) => {
        try {
          cb(null, backend.authorizeChannel(socketId, channelName,
            channelName.startsWith('presence-') ? WES : undefined));
        } catch (err) { cb(err, null); }
      },
    },
  });
  cleanups.push(async () => e.disconnect());
  return e;
}

/** Resolve with `p`'s value, or fail after `ms` saying what did not happen. */
const within = (p, what, ms = WAIT_MS) => Promise.race([
  p, new Promise((_, rej) => setTimeout(() => rej(new Error(`timed out waiting for ${what}`)), ms)),
]);

/** Resolve when a pusher-js channel of `e` is subscribed. */
const wsSubscribed = (e, name) => within(new Promise((res) => {
  const check = () => (e.connector.pusher.channel(name)?.subscribed ? res() : setTimeout(check, 20));
  check();
}), `the WebSocket peer to subscribe to ${name}`);

// ---------------------------------------------------------------------------------------
// What a fallback page must be able to do

let tags = 0;
/** A fresh suffix for channel names, so tests do not see each other's (lingering) sessions. */
const freshTag = () => `t${++tags}`;

/**
 * Everything a Laravel front end does, on a page connected over a fallback transport, with a
 * WebSocket peer: public and private events from the backend SDK; presence (`here` lists
 * both, `leaving` and `joining` fire for the peer); whispers both ways; sign-in and
 * sendToUser.
 */
async function provesEverything(h) {
  const tag = freshTag();
  const backend = sdk(server);

  // Public and private events triggered by the backend SDK.
  await h.page.evaluate((t) => window.listen(t), tag);
  await onPage(h, 'the page to subscribe', (t) => window.subscribed(['news.' + t, 'private-orders.' + t, 'private-chat.' + t]), tag);
  await backend.trigger(`news.${tag}`, 'headline', { title: 'fallback works' });
  await backend.trigger(`private-orders.${tag}`, 'paid', { total: 12 });
  await shows(h, 'public:{"title":"fallback works"}');
  await shows(h, 'private:{"total":12}');

  // Presence with a WebSocket peer: Wes is in the room first, so `here` lists both; then
  // he leaves (`leaving`) and comes back, after the page, so `joining` fires.
  const peer = wsEcho();
  const room = `room.${tag}`;
  const joinAsWes = () => within(new Promise((res) => peer.join(room).here(res)), `Wes to join ${room}`);
  await joinAsWes();
  await h.page.evaluate((t) => window.joinRoom(t), tag);
  await shows(h, 'here:["Alice","Wes"]');
  peer.leave(room);
  await shows(h, 'leaving:{"name":"Wes"}');
  await joinAsWes();
  await shows(h, 'joining:{"name":"Wes"}');

  // Whispers on a private channel, both ways between the page and the WebSocket peer.
  const heard = new Promise((res) => peer.private(`chat.${tag}`).listenForWhisper('typing', res));
  await wsSubscribed(peer, `private-chat.${tag}`);
  await h.page.evaluate((t) => window.whisper(t, { from: 'alice' }), tag);
  assert.deepEqual(await within(heard, 'the page\'s whisper to reach Wes'), { from: 'alice' });
  peer.private(`chat.${tag}`).whisper('typing', { from: 'wes' });
  await shows(h, 'whisper:{"from":"wes"}');

  // Sign-in, then a message to the user from the backend.
  await h.page.evaluate(() => window.signin());
  assert.equal(await onPage(h, 'the page to sign in', () => window.signedInAs()), 'alice');
  await backend.sendToUser('alice', 'notice', { text: 'for you' });
  await shows(h, 'user:{"text":"for you"}');

  peer.disconnect();
}

/** An nginx in front of Herald that does not forward the WebSocket upgrade. */
async function noUpgradeProxy() {
  const root = mkdtempSync(join(tmpdir(), 'herald-fallback-root-'));
  const proxy = await startNginx({ upstream: server.port, root, mode: 'no-upgrade' });
  cleanups.push(() => proxy.kill());
  return proxy;
}

/** Echo's options for a page whose WebSocket and HTTP both go to `port`. */
const via = (port, enabledTransports) => ({
  wsHost: '127.0.0.1', wsPort: port, httpHost: '127.0.0.1', httpPort: port, enabledTransports,
});

/** Whether the page opened a WebSocket to Herald through `proxy` (which refused the upgrade). */
const triedWebSocketVia = (h, proxy) => h.websockets.some((u) => u.startsWith(`ws://127.0.0.1:${proxy.port}/app/`));

// ---------------------------------------------------------------------------------------
// The tests

test('behind an nginx that drops the WebSocket upgrade, Echo falls back to xhr_streaming by itself, and everything works', async (t) => {
  if (!requires(t, { nginx: true })) return;
  const proxy = await noUpgradeProxy();
  const h = await openPage();
  // Only the transport list is set; the strategy is pusher-js's default (WebSocket first).
  const info = await connectEcho(h, via(proxy.port, ['ws', 'wss', 'xhr_streaming', 'xhr_polling']));
  assert.equal(info.transport, 'xhr_streaming', await diagnostics(h));
  // It did try the WebSocket first: the upgrade failed at the proxy and it moved on.
  assert.ok(triedWebSocketVia(h, proxy), `pusher-js never tried the WebSocket: ${h.websockets}`);
  await provesEverything(h);
  assert.equal((await h.page.evaluate(() => window.connectionInfo())).transport, 'xhr_streaming');
  await h.context.close();
});

test('behind the same nginx with only polling to fall back on, Echo uses xhr_polling, and everything works', async (t) => {
  if (!requires(t, { nginx: true })) return;
  const proxy = await noUpgradeProxy();
  const h = await openPage();
  const info = await connectEcho(h, via(proxy.port, ['ws', 'wss', 'xhr_polling']));
  assert.equal(info.transport, 'xhr_polling', await diagnostics(h));
  assert.ok(triedWebSocketVia(h, proxy), `pusher-js never tried the WebSocket: ${h.websockets}`);
  await provesEverything(h);
  assert.equal((await h.page.evaluate(() => window.connectionInfo())).transport, 'xhr_polling');
  await h.context.close();
});

for (const [transport, enabled] of [
  ['xhr_streaming', ['ws', 'wss', 'xhr_streaming', 'xhr_polling']],
  ['xhr_polling', ['ws', 'wss', 'xhr_polling']],
]) {
  test(`in a browser without window.WebSocket, Echo connects straight to Herald over ${transport}, and everything works`, async (t) => {
    if (!requires(t)) return;
    const h = await openPage({ noWebSocket: true });
    assert.equal(await h.page.evaluate(() => typeof window.WebSocket), 'undefined');
    const info = await connectEcho(h, via(server.port, enabled));
    assert.equal(info.transport, transport, await diagnostics(h));
    assert.deepEqual(h.websockets, [], 'a WebSocket was opened although the browser has none');
    await provesEverything(h);
    await h.context.close();
  });
}

test('when the proxy is restarted under it, Echo reconnects over HTTP by itself and resubscribes', async (t) => {
  if (!requires(t, { nginx: true })) return;
  const proxy = await noUpgradeProxy();
  const h = await openPage();
  const before_ = await connectEcho(h, via(proxy.port, ['ws', 'wss', 'xhr_streaming', 'xhr_polling']));
  assert.equal(before_.transport, 'xhr_streaming', await diagnostics(h));
  const tag = freshTag();
  await h.page.evaluate((t_) => window.listen(t_), tag);
  await onPage(h, 'the page to subscribe', (t_) => window.subscribed(['news.' + t_]), tag);
  await sdk(server).trigger(`news.${tag}`, 'headline', { n: 1 });
  await shows(h, 'public:{"n":1}');

  // The proxy dies: its connections drop, and pusher-js notices the stream ended.
  await proxy.kill();
  await onPage(h, 'pusher-js to notice the proxy is gone',
    () => window.connectionInfo().state !== 'connected', null, 60_000);

  // The proxy comes back on the same port: pusher-js reconnects over HTTP on its own.
  await proxy.start();
  const after_ = await whenConnected(h, 60_000);
  assert.match(after_.transport, /^xhr_(streaming|polling)$/, await diagnostics(h));
  assert.notEqual(after_.socketId, before_.socketId, 'a new connection has a new socket id');
  // Echo resubscribed: an event triggered now arrives.
  await onPage(h, 'Echo to resubscribe', (t_) => window.subscribed(['news.' + t_]), tag);
  await sdk(server).trigger(`news.${tag}`, 'headline', { n: 2 });
  await shows(h, 'public:{"n":2}');
  await h.context.close();
});
