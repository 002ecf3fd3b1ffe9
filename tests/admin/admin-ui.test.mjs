// Herald's admin web UI (/ui on the admin listener) in headless Chromium, against a real
// three-node cluster on the local Redis with real WebSocket clients and a publisher running:
// the overview lists every node with the connection count its /status gives and its charts
// move; the channel list and page, the connections tab (user lookup and disconnect), the tail
// and the publish form work end to end; hostile channel names, user ids, user info, event
// names and payloads are shown as text and run nothing; without the admin credential /ui
// answers 401 while /health and /ready stay open. Screenshots of every tab land in
// tests/admin/screenshots/.
//
// Needs HERALD_BIN (or target/debug/herald), Chromium (CHROMIUM_BIN or /usr/bin/chromium) and
// Redis on 127.0.0.1:6379. Under CI=true a missing one is a failure; elsewhere the test skips.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, createHmac, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { connect as netConnect, createServer as netServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';

const CI = process.env.CI === 'true';
const HERALD_BIN = process.env.HERALD_BIN
  ? resolve(process.env.HERALD_BIN)
  : resolve(import.meta.dirname, '../../target/debug/herald');
const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const SCREENSHOTS = join(import.meta.dirname, 'screenshots');
const APP = { id: 'app', key: 'app-key', secret: 'app-secret-1234' };
const WAIT_MS = 15_000;

// Hostile strings. Herald's channel names are limited to [-a-zA-Z0-9_=@,.;], so markup can
// reach the UI through everything else: event names, payloads, user ids and presence info; the
// literal markup channel name is still fed to the channel page and the tail through the
// address, where the UI must show it as text and the server's refusal as text too.
const XSS_CHANNEL_NAME = '<img src=x onerror=window.__xss=1>';
const XSS_CHANNEL = 'xss;onerror=alert@1,.x';
const XSS_PRESENCE = 'presence-xss;room=1';
const XSS_DATA = { html: '<img src=x onerror=window.__xss=2>', script: '<script>window.__xss=6</script>' };
const XSS_EVENT = '<img src=x onerror=window.__xss=5>';
const XSS_USER = '<img src=x onerror=window.__xss=3>';
const XSS_INFO = { name: '<img src=x onerror=window.__xss=4>', bio: '"><svg onload=window.__xss=7>' };

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Poll `f` until it returns a truthy value; the error names `what` and the last value seen. */
async function eventually(f, ms = WAIT_MS, what = 'condition') {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await f();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`${what}: not met in ${ms} ms (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
    }
    await sleep(100);
  }
}

function freePort() {
  return new Promise((res, rej) => {
    const s = netServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

/** Whether Redis answers PING on 127.0.0.1:6379. */
function redisUp() {
  return new Promise((res) => {
    const sock = netConnect(6379, '127.0.0.1');
    const done = (ok) => { sock.destroy(); res(ok); };
    sock.setTimeout(2000, () => done(false));
    sock.once('error', () => done(false));
    sock.once('connect', () => sock.write('PING\r\n'));
    sock.once('data', (d) => done(String(d).startsWith('+PONG')));
  });
}

/** An HS256 JWT signed with the app secret, valid for an hour. */
function jwt(claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const head = b64({ alg: 'HS256', typ: 'JWT' });
  const body = b64({ exp: Math.floor(Date.now() / 1000) + 3600, ...claims });
  const sig = createHmac('sha256', APP.secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

// ---------------------------------------------------------------------------------------------
// The cluster

const children = new Set();
process.on('exit', () => { for (const c of children) c.kill('SIGKILL'); });

async function startNode(prefix, token) {
  const dir = mkdtempSync(join(tmpdir(), 'herald-admin-ui-'));
  const config = join(dir, 'herald.toml');
  writeFileSync(config, `[broker]
kind = "redis"

[redis]
prefix = "${prefix}"

[admin]
token = "${token}"

[[apps]]
id = "${APP.id}"
key = "${APP.key}"
secret = "${APP.secret}"

[[apps.history]]
pattern = "*"
`);
  const port = await freePort();
  const adminPort = await freePort();
  const proc = spawn(
    HERALD_BIN,
    ['serve', '--config', config, '--listen', `127.0.0.1:${port}`, '--admin-listen', `127.0.0.1:${adminPort}`, '--log-level', 'warn'],
    {
      stdio: ['ignore', 'ignore', 'pipe'],
      // HERALD_* variables are configuration to herald (HERALD_BIN would be an unknown key).
      env: Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('HERALD_'))),
    },
  );
  let stderr = '';
  proc.stderr.on('data', (d) => { stderr += d; });
  children.add(proc);
  proc.once('exit', () => children.delete(proc));
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`herald exited ${proc.exitCode}: ${stderr}`);
    try {
      const r = await fetch(`http://127.0.0.1:${adminPort}/ready`);
      if (r.status === 200) break;
    } catch { /* not listening yet */ }
    if (Date.now() > deadline) throw new Error(`herald not ready: ${stderr}`);
    await sleep(50);
  }
  return {
    port,
    adminPort,
    url: `http://127.0.0.1:${port}`,
    admin: `http://127.0.0.1:${adminPort}`,
    get stderr() { return stderr; },
    async stop() {
      if (proc.exitCode !== null) return;
      const exited = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGTERM');
      const t = setTimeout(() => proc.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(t);
    },
  };
}

/** A WebSocket client on `node`: resolves once connected and subscribed to `channels`. */
async function wsClient(node, { token, channels = [] } = {}) {
  const url = `ws://127.0.0.1:${node.port}/ws/${APP.key}${token ? `?token=${encodeURIComponent(token)}` : ''}`;
  const ws = new WebSocket(url);
  const c = { ws, node, messages: [], listeners: new Set(), closed: null };
  c.closedPromise = new Promise((r) => ws.on('close', (code, reason) => {
    c.closed = { code, reason: String(reason) };
    r(c.closed);
  }));
  ws.on('error', () => { /* the close event follows */ });
  ws.on('message', (raw) => {
    let msg;
    try { msg = JSON.parse(String(raw)); } catch { return; }
    if (msg.type === 'ping') ws.send('{"type":"pong"}');
    c.messages.push(msg);
    for (const l of c.listeners) l(msg);
  });
  /** The first message (already received or still to come) that `pred` accepts. */
  c.next = (pred, ms = WAIT_MS, what = 'message') => new Promise((res, rej) => {
    const found = c.messages.find(pred);
    if (found) return res(found);
    const t = setTimeout(() => { c.listeners.delete(l); rej(new Error(`timed out waiting for ${what}`)); }, ms);
    const l = (m) => {
      if (!pred(m)) return;
      clearTimeout(t);
      c.listeners.delete(l);
      res(m);
    };
    c.listeners.add(l);
  });
  const hello = await Promise.race([
    c.next((m) => m.type === 'connected' || m.type === 'error', WAIT_MS, 'connected'),
    c.closedPromise.then((cl) => { throw new Error(`closed before connected: ${cl.code} ${cl.reason}`); }),
  ]);
  if (hello.type !== 'connected') throw new Error(`refused: ${JSON.stringify(hello)}`);
  c.socketId = hello.data?.socket_id;
  for (const [i, channel] of channels.entries()) {
    const ref = `s${i}`;
    ws.send(JSON.stringify({ type: 'subscribe', channel, ref }));
    const reply = await c.next((m) => m.ref === ref, WAIT_MS, `subscribe ${channel}`);
    if (reply.type !== 'subscribe') throw new Error(`subscribe ${channel} refused: ${JSON.stringify(reply)}`);
  }
  return c;
}

async function publish(node, channel, event, data) {
  const res = await fetch(`${node.url}/api/${APP.id}/publish`, {
    method: 'POST',
    headers: { authorization: `Bearer ${APP.secret}`, 'content-type': 'application/json' },
    body: JSON.stringify({ channel, event, data }),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`publish ${channel}: ${res.status} ${text}`);
  return JSON.parse(text);
}

async function batch(node, events) {
  const res = await fetch(`${node.url}/api/${APP.id}/batch`, {
    method: 'POST',
    headers: { authorization: `Bearer ${APP.secret}`, 'content-type': 'application/json' },
    body: JSON.stringify({ events }),
  });
  if (!res.ok) throw new Error(`batch: ${res.status} ${await res.text()}`);
}

// ---------------------------------------------------------------------------------------------
// The suite

describe('admin UI on a three-node cluster', { concurrency: false }, () => {
  let skip = null;
  let nodes = [];
  let nodeIds = [];
  let clients = [];
  let userClients = [];
  let browser;
  let context;
  let page;
  let basic;
  let token;
  let publisher;
  let sent = 0; // ticks published
  const hits = []; // window.__xss assignments, CSP violations, unexpected dialogs
  const dialogs = [];
  const consoleErrors = [];
  const pageErrors = [];
  let expectConfirm = false;

  const ui = () => `${nodes[0].admin}/ui`;
  const authGet = (node, path) => fetch(`${node.admin}${path}`, { headers: { authorization: basic } });

  before(async () => {
    const missing = [];
    if (!existsSync(HERALD_BIN)) missing.push(`${HERALD_BIN} (cargo build -p herald-server --bin herald)`);
    if (!existsSync(CHROMIUM)) missing.push(`${CHROMIUM} (apt-get install chromium)`);
    if (!(await redisUp())) missing.push('Redis on 127.0.0.1:6379');
    if (missing.length) {
      if (CI) throw new Error(`missing: ${missing.join(', ')}`);
      skip = `missing: ${missing.join(', ')}`;
      return;
    }
    mkdirSync(SCREENSHOTS, { recursive: true });
    token = randomBytes(18).toString('base64url');
    basic = `Basic ${Buffer.from(`admin:${token}`).toString('base64')}`;
    const prefix = `herald-admin-ui-${process.pid}-${Date.now()}`;
    nodes = await Promise.all([0, 1, 2].map(() => startNode(prefix, token)));

    // Each node's id, from its own overview.
    nodeIds = await Promise.all(nodes.map(async (n) => {
      const r = await fetch(`${n.admin}/ui/api/overview`, { headers: { authorization: `Bearer ${token}` } });
      assert.equal(r.status, 200, `overview of ${n.admin} with a bearer token`);
      return (await r.json()).node_id;
    }));
    assert.equal(new Set(nodeIds).size, 3, `three distinct node ids: ${nodeIds}`);

    // Traffic: three subscribers of "news" on every node; user-1 twice on node 1 and once on
    // each other node; on node 1 a subscriber of the hostile public channel and a member of
    // the hostile presence channel.
    const spawned = [];
    for (const node of nodes) for (let i = 0; i < 3; i++) spawned.push(wsClient(node, { channels: ['news'] }));
    const userToken = jwt({ sub: 'user-1' });
    const users = [nodes[0], nodes[0], nodes[1], nodes[2]].map((node) => wsClient(node, { token: userToken, channels: ['news'] }));
    spawned.push(wsClient(nodes[0], { channels: [XSS_CHANNEL] }));
    spawned.push(wsClient(nodes[0], { token: jwt({ sub: XSS_USER, channels: ['presence-*'], info: XSS_INFO }), channels: [XSS_PRESENCE] }));
    clients = await Promise.all(spawned);
    userClients = await Promise.all(users);
    clients.push(...userClients);

    // A publisher on "news", every 200 ms, through each node in turn.
    publisher = setInterval(() => {
      sent += 1;
      publish(nodes[sent % 3], 'news', 'tick', { n: sent }).catch(() => { /* shutting down */ });
    }, 200);

    const { chromium } = await import('playwright-core');
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
    context = await browser.newContext({ httpCredentials: { username: 'admin', password: token }, viewport: { width: 1280, height: 900 } });
    page = await context.newPage();
    // Anything that would mean markup from the server ran: an assignment to window.__xss (the
    // payloads' handlers), a CSP violation (the CSP blocks inline handlers, so an injected
    // element shows up as one), a dialog nobody asked for.
    await page.exposeFunction('__xssHit', (what) => { hits.push(what); });
    await page.addInitScript(() => {
      Object.defineProperty(window, '__xss', { configurable: false, get: () => undefined, set: (v) => { window.__xssHit(`window.__xss = ${v}`); } });
      document.addEventListener('securitypolicyviolation', (e) => { window.__xssHit(`CSP violation: ${e.violatedDirective} ${e.blockedURI} ${e.sample}`); });
    });
    page.on('dialog', async (d) => {
      dialogs.push({ type: d.type(), message: d.message() });
      if (expectConfirm && d.type() === 'confirm') {
        expectConfirm = false;
        await d.accept();
      } else {
        hits.push(`unexpected ${d.type()} dialog: ${d.message()}`);
        await d.dismiss();
      }
    });
    page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
    page.on('pageerror', (e) => { pageErrors.push(String(e)); });
  });

  after(async () => {
    clearInterval(publisher);
    for (const c of clients) c.ws.terminate();
    await browser?.close();
    await Promise.all(nodes.map((n) => n.stop()));
  });

  /** No markup from the server made it into the page as markup. */
  async function assertNoInjection(where) {
    assert.deepEqual(hits, [], `${where}: nothing ran`);
    assert.deepEqual(pageErrors, [], `${where}: no uncaught errors`);
    const injected = await page.evaluate(() => document.querySelectorAll('img, svg, script:not([src]), iframe, object, embed').length);
    assert.equal(injected, 0, `${where}: no element was built from data`);
  }

  /** The rows of `testid` as {dataset, text} objects. */
  const rows = (testid) => page.$$eval(`[data-testid="${testid}"]`, (els) => els.map((e) => ({ data: { ...e.dataset }, text: e.textContent })));

  async function shot(name) {
    await page.screenshot({ path: join(SCREENSHOTS, `${name}.png`), fullPage: true });
  }

  test('without the credential /ui answers 401; /health and /ready stay open', async (t) => {
    if (skip) return t.skip(skip);
    const n1 = nodes[0];
    for (const path of ['/ui', '/ui/app.js', '/ui/app.css', '/ui/vendor/uplot/uPlot.iife.min.js', '/ui/api/overview', `/ui/api/channels?app=${APP.id}`, `/ui/api/tail?app=${APP.id}&channel=news`]) {
      const r = await fetch(`${n1.admin}${path}`);
      assert.equal(r.status, 401, `${path} without a credential`);
      assert.match(r.headers.get('www-authenticate') ?? '', /^Basic realm="Herald admin"/i, `${path}: a Basic challenge`);
      await r.body?.cancel();
      const wrong = await fetch(`${n1.admin}${path}`, { headers: { authorization: `Basic ${Buffer.from('admin:wrong').toString('base64')}` } });
      assert.equal(wrong.status, 401, `${path} with a wrong password`);
      await wrong.body?.cancel();
    }
    for (const path of ['/health', '/ready']) {
      const r = await fetch(`${n1.admin}${path}`);
      assert.equal(r.status, 200, `${path} without a credential`);
    }
    // With it: the page, under a CSP; Bearer works too.
    const r = await authGet(n1, '/ui');
    assert.equal(r.status, 200);
    assert.match(r.headers.get('content-type') ?? '', /text\/html/);
    assert.match(r.headers.get('content-security-policy') ?? '', /default-src 'none'/);
    assert.match(await r.text(), /<script type="module" src="\/ui\/app\.js">/);
    const bearer = await fetch(`${n1.admin}/ui/api/overview`, { headers: { authorization: `Bearer ${token}` } });
    assert.equal(bearer.status, 200);
    await bearer.body?.cancel();
    // POSTs need the CSRF header.
    const noHeader = await fetch(`${n1.admin}/ui/api/publish`, {
      method: 'POST',
      headers: { authorization: basic, 'content-type': 'application/json' },
      body: JSON.stringify({ app: APP.id, channel: 'news', event: 'csrf', data: null }),
    });
    assert.equal(noHeader.status, 403, 'a POST without X-Herald-Admin');
    await noHeader.body?.cancel();

    // A browser without the credential gets the 401 too.
    const anon = await browser.newContext();
    try {
      const p = await anon.newPage();
      assert.equal((await p.goto(`${n1.admin}/health`)).status(), 200);
      // Playwright cancels the login prompt: the navigation fails on the challenge. (A fetch()
      // from such a page waits on the prompt forever, so only navigations are tried here.)
      for (const path of ['/ui', '/ui/api/overview']) {
        const nav = await p.goto(`${n1.admin}${path}`, { timeout: 10_000 }).then((r) => r.status(), (e) => String(e.message));
        assert.match(String(nav), /^401$|ERR_INVALID_AUTH_CREDENTIALS/, `${path} in a browser without the credential: ${nav}`);
      }
    } finally {
      await anon.close();
    }
  });

  test('overview: every node with the connection count of its /status; the charts move', async (t) => {
    if (skip) return t.skip(skip);
    await page.goto(ui());
    await page.waitForSelector('[data-testid="node-row"]');
    // Remote nodes' figures arrive with their periodic reports: wait for them to settle.
    let seen;
    await eventually(async () => {
      const statuses = await Promise.all(nodes.map(async (n) => (await (await authGet(n, '/status')).json()).connections));
      const want = Object.fromEntries(nodeIds.map((id, i) => [id, statuses[i]]).sort());
      const got = Object.fromEntries((await page.$$eval('[data-testid="node-row"]', (els) => els.map((e) => [e.dataset.nodeId, Number(e.querySelector('[data-testid="node-connections"]').dataset.value)]))).sort());
      seen = { want, got };
      return JSON.stringify(want) === JSON.stringify(got);
    }, 20_000, 'node rows match /status').catch((e) => { throw new Error(`${e.message}; ${JSON.stringify(seen)}`); });
    const nodeRows = await rows('node-row');
    assert.equal(nodeRows.length, 3);
    assert.deepEqual(nodeRows.filter((r) => r.data.self === 'true').map((r) => r.data.nodeId), [nodeIds[0]], 'node 1 is marked as this node');
    for (const id of nodeIds) assert.ok(nodeRows.some((r) => r.text.includes(id)), `${id} shown`);
    assert.equal(await page.textContent('[data-testid="self-node"]'), nodeIds[0]);
    // The app's connections, summed over the nodes.
    const total = (await Promise.all(nodes.map(async (n) => (await (await authGet(n, '/status')).json()).connections))).reduce((a, b) => a + b, 0);
    await eventually(async () => {
      const sum = (await page.$$eval('[data-testid="by-app-row"]', (els) => els.filter((e) => e.dataset.app === 'app').map((e) => Number(e.querySelector('[data-testid="by-app-connections"]').dataset.value)))).reduce((a, b) => a + b, 0);
      return sum === total;
    }, WAIT_MS, `by-app rows sum to ${total}`);

    // The charts: more points, a later time, different pixels.
    const chartState = () => page.$$eval('[data-testid^="chart-"]', (els) => els.map((e) => ({ id: e.id, points: Number(e.dataset.points), updates: Number(e.dataset.updates), lastX: Number(e.dataset.lastX), canvas: !!e.querySelector('canvas') })));
    const hash = async (testid) => createHash('sha256').update(await page.locator(`[data-testid="${testid}"] canvas`).screenshot()).digest('hex');
    await eventually(async () => (await chartState()).every((c) => c.canvas && c.points >= 2), WAIT_MS, 'charts drawn');
    const before1 = await chartState();
    const pixels = [await hash('chart-messages'), await hash('chart-connections')];
    await sleep(3000);
    const after1 = await chartState();
    for (const [i, c] of after1.entries()) {
      assert.ok(c.updates >= before1[i].updates + 2, `${c.id} updated: ${JSON.stringify([before1[i], c])}`);
      assert.ok(c.lastX > before1[i].lastX, `${c.id} moved on in time`);
      assert.ok(c.points > before1[i].points || c.points >= 300, `${c.id} has more points`);
    }
    assert.notEqual(await hash('chart-messages'), pixels[0], 'the messages chart was redrawn differently');
    assert.notEqual(await hash('chart-connections'), pixels[1], 'the connections chart was redrawn differently');
    // The publisher's deliveries show as a positive rate, and the latency figures fill in.
    await eventually(async () => Number((await page.textContent('[data-testid="stat-rate-out"]')).replace(/[^0-9.]/g, '')) > 0, WAIT_MS, 'messages out per second > 0');
    await eventually(async () => (await page.textContent('[data-testid="latency-p50"]')) !== '–', WAIT_MS, 'latency p50 shown');
    await shot('overview');
    await page.emulateMedia({ colorScheme: 'dark' });
    await sleep(1200);
    await shot('overview-dark');
    await page.emulateMedia({ colorScheme: 'light' });
    await page.setViewportSize({ width: 420, height: 900 });
    await sleep(1200);
    await shot('overview-narrow');
    await page.setViewportSize({ width: 1280, height: 900 });
    await assertNoInjection('overview');
  });

  test('channels: the list with cluster-wide counts, a prefix search, the channel page; hostile names and data as text', async (t) => {
    if (skip) return t.skip(skip);
    await publish(nodes[1], XSS_CHANNEL, XSS_EVENT, XSS_DATA);
    await publish(nodes[2], XSS_PRESENCE, XSS_EVENT, XSS_DATA);
    await page.click('[data-testid="tab-channels"]');
    await page.waitForSelector('[data-testid="view-channels"]:not([hidden])');
    await eventually(async () => {
      const list = await rows('channel-row');
      const names = list.map((r) => r.data.channel);
      if (!names.includes('news') || !names.includes(XSS_CHANNEL) || !names.includes(XSS_PRESENCE)) return false;
      const news = await page.$$eval('[data-testid="channel-row"]', (els) => els.filter((e) => e.dataset.channel === 'news').map((e) => Number(e.querySelector('[data-testid="channel-subscriber-count"]').dataset.value))[0]);
      return news === 13;
    }, WAIT_MS, 'news (13 subscribers over three nodes) and the hostile channels listed');
    const links = await page.$$eval('[data-testid="channel-link"]', (els) => els.map((e) => e.textContent));
    assert.ok(links.includes(XSS_CHANNEL), 'the hostile name as text');
    await shot('channels');

    // Prefix search.
    await page.fill('[data-testid="channels-prefix"]', 'xss');
    await eventually(async () => {
      const names = (await rows('channel-row')).map((r) => r.data.channel);
      return names.length === 1 && names[0] === XSS_CHANNEL;
    }, WAIT_MS, 'only the xss channel under prefix "xss"');
    assert.match(page.url(), /prefix=xss/);

    // The channel page, by clicking.
    await page.click('[data-testid="channel-link"]');
    await page.waitForSelector('[data-testid="view-channel"]:not([hidden])');
    assert.equal(await page.textContent('[data-testid="channel-name"]'), XSS_CHANNEL);
    await eventually(async () => (await page.getAttribute('[data-testid="channel-subscribers"]', 'data-value')) === '1', WAIT_MS, 'one subscriber');
    await eventually(async () => (await rows('history-item')).some((r) => r.data.event === XSS_EVENT), WAIT_MS, 'the publication in the history');
    const item = await page.$$eval('[data-testid="history-item"]', (els) => els.map((e) => ({
      event: e.querySelector('[data-testid="history-item-event"]').textContent,
      data: e.querySelector('[data-testid="history-item-data"]').textContent,
    })));
    assert.equal(item[0].event, XSS_EVENT);
    assert.deepEqual(JSON.parse(item[0].data), XSS_DATA);
    assert.match(await page.textContent('[data-testid="presence-note"]'), /not a presence channel/i);
    await assertNoInjection('channel page');

    // The presence channel: its member's hostile id and info as text.
    await page.click('[data-testid="tab-channels"]');
    await page.waitForSelector('[data-testid="view-channels"]:not([hidden])');
    await page.fill('[data-testid="channels-prefix"]', '');
    await eventually(async () => (await rows('channel-row')).some((r) => r.data.channel === XSS_PRESENCE), WAIT_MS, 'the presence channel listed');
    await page.locator('[data-testid="channel-link"]', { hasText: XSS_PRESENCE }).click();
    await page.waitForSelector('[data-testid="view-channel"]:not([hidden])');
    await eventually(async () => (await rows('presence-member')).length === 1, WAIT_MS, 'one presence member');
    assert.equal(await page.textContent('[data-testid="presence-user-id"]'), XSS_USER);
    assert.deepEqual(JSON.parse(await page.textContent('[data-testid="presence-user-info"]')), XSS_INFO);
    await eventually(async () => (await rows('history-item')).some((r) => r.data.event === XSS_EVENT), WAIT_MS, 'the presence channel history');
    await shot('channel');
    await assertNoInjection('presence channel page');

    // The literal markup name (which Herald refuses) through the address: shown as text, the
    // refusal too.
    await page.goto(`${ui()}#/channel?${new URLSearchParams({ app: APP.id, channel: XSS_CHANNEL_NAME })}`);
    await page.waitForSelector('[data-testid="view-channel"]:not([hidden])');
    assert.equal(await page.textContent('[data-testid="channel-name"]'), XSS_CHANNEL_NAME);
    await eventually(async () => (await page.getAttribute('[data-testid="status"]', 'data-state')) === 'error', WAIT_MS, 'an error on the status line');
    await assertNoInjection('markup channel name');
  });

  test('tail: live publications newest first, capped at 500; the publish form delivers to subscribers', async (t) => {
    if (skip) return t.skip(skip);
    await page.goto(`${ui()}#/tail?app=${APP.id}&channel=news`);
    await page.waitForSelector('[data-testid="view-tail"]:not([hidden])');
    assert.equal(await page.inputValue('[data-testid="tail-channel"]'), 'news');
    await page.click('[data-testid="tail-start"]');
    await eventually(async () => (await page.getAttribute('[data-testid="tail-state"]', 'data-state')) === 'live', WAIT_MS, 'tail live');
    // A tick from the test's publisher, newest first.
    await eventually(async () => (await rows('tail-item')).filter((r) => r.data.event === 'tick').length >= 3, WAIT_MS, 'ticks in the tail');
    const ticks = await page.$$eval('[data-testid="tail-item"]', (els) => els.filter((e) => e.dataset.event === 'tick').map((e) => ({
      n: JSON.parse(e.querySelector('[data-testid="tail-item-data"]').textContent).n,
      offset: e.dataset.offset === '' ? null : Number(e.dataset.offset),
    })));
    assert.ok(ticks.every(({ n }) => Number.isInteger(n) && n >= 1 && n <= sent), `ticks ${JSON.stringify(ticks)} were published by the test`);
    const offsets = ticks.map((x) => x.offset);
    assert.ok(offsets.every((o) => o !== null), 'history positions shown');
    assert.deepEqual([...offsets].sort((a, b) => b - a), offsets, 'newest first');

    // The publish form: a subscriber on node 3 receives it, and the tail shows it.
    const nonce = randomBytes(6).toString('hex');
    const receiver = clients.find((c) => c.node === nodes[2] && !userClients.includes(c));
    const got = receiver.next((m) => m.type === 'event' && m.event === 'admin.hello' && m.data?.nonce === nonce, WAIT_MS, 'the form\'s publication');
    await page.fill('[data-testid="publish-event"]', 'admin.hello');
    await page.fill('[data-testid="publish-data"]', JSON.stringify({ from: 'ui', nonce }));
    await page.click('[data-testid="publish-submit"]');
    await eventually(async () => (await page.getAttribute('[data-testid="publish-result"]', 'data-state')) === 'ok', WAIT_MS, 'publish answered')
      .catch(async (e) => { throw new Error(`${e.message}: ${await page.textContent('[data-testid="publish-result"]')}`); });
    assert.match(await page.textContent('[data-testid="publish-result"]'), /"channels"/);
    const msg = await got;
    assert.equal(msg.channel, 'news');
    assert.deepEqual(msg.data, { from: 'ui', nonce });
    await eventually(async () => (await rows('tail-item')).some((r) => r.data.event === 'admin.hello'), WAIT_MS, 'the form\'s publication in the tail');
    // Invalid JSON is refused before sending.
    await page.fill('[data-testid="publish-data"]', '{not json');
    await page.click('[data-testid="publish-submit"]');
    await eventually(async () => (await page.getAttribute('[data-testid="publish-result"]', 'data-state')) === 'error', WAIT_MS, 'invalid JSON refused');
    await shot('tail');

    // At most 500 entries: 530 more publications, paced so the tail keeps up.
    for (let i = 0; i < 53; i++) {
      await batch(nodes[i % 3], Array.from({ length: 10 }, (_, k) => ({ channel: 'news', event: 'flood', data: i * 10 + k })));
      await sleep(10);
    }
    await eventually(async () => (await rows('tail-item')).filter((r) => r.data.event === 'flood').length >= 490, WAIT_MS, 'the flood in the tail');
    await sleep(500);
    assert.equal(await page.$$eval('[data-testid="tail-list"] > li', (els) => els.length), 500, 'capped at 500 entries');
    assert.equal(await page.getAttribute('[data-testid="tail-list"]', 'data-count'), '500');
    await page.click('[data-testid="tail-stop"]');
    assert.equal(await page.getAttribute('[data-testid="tail-state"]', 'data-state'), 'stopped');

    // Hostile payloads in the tail.
    await page.click('[data-testid="tail-clear"]');
    await page.fill('[data-testid="tail-channel"]', XSS_CHANNEL);
    await page.click('[data-testid="tail-start"]');
    await eventually(async () => (await page.getAttribute('[data-testid="tail-state"]', 'data-state')) === 'live', WAIT_MS, 'tail live on the hostile channel');
    // The stream may be open a moment before the tap sees the channel's publications: publish
    // until one shows.
    let lastPublish = 0;
    await eventually(async () => {
      if ((await rows('tail-item')).length) return true;
      if (Date.now() - lastPublish > 1000) {
        lastPublish = Date.now();
        await publish(nodes[1], XSS_CHANNEL, XSS_EVENT, XSS_DATA);
      }
      return false;
    }, WAIT_MS, 'the hostile publication in the tail');
    assert.ok((await rows('tail-item')).every((r) => r.data.event === XSS_EVENT));
    assert.equal(await page.textContent('[data-testid="tail-item-event"]'), XSS_EVENT);
    assert.deepEqual(JSON.parse(await page.textContent('[data-testid="tail-item-data"]')), XSS_DATA);
    await page.click('[data-testid="tail-stop"]');
    // The markup name is refused, and the refusal shown as text.
    await page.fill('[data-testid="tail-channel"]', XSS_CHANNEL_NAME);
    await page.click('[data-testid="tail-start"]');
    await eventually(async () => (await page.getAttribute('[data-testid="status"]', 'data-state')) === 'error', WAIT_MS, 'the refused tail on the status line');
    await page.fill('[data-testid="publish-event"]', XSS_EVENT);
    await page.fill('[data-testid="publish-data"]', JSON.stringify(XSS_DATA));
    await page.click('[data-testid="publish-submit"]');
    await eventually(async () => /^Failed:/.test(await page.textContent('[data-testid="publish-result"]')), WAIT_MS, 'the refused publish shown');
    assert.equal(await page.getAttribute('[data-testid="publish-result"]', 'data-state'), 'error');
    await assertNoInjection('tail');
  });

  test('connections: counts by transport and top IPs; a user lookup; disconnect closes the user on every node', async (t) => {
    if (skip) return t.skip(skip);
    await page.goto(`${ui()}#/connections?app=${APP.id}`);
    await page.waitForSelector('[data-testid="view-connections"]:not([hidden])');
    const status = await (await authGet(nodes[0], '/status')).json();
    const appCount = status.apps.find((a) => a.id === APP.id).connections;
    await eventually(async () => {
      const sum = (await page.$$eval('[data-testid="transport-row"]', (els) => els.map((e) => Number(e.querySelector('[data-testid="transport-connections"]').dataset.value)))).reduce((a, b) => a + b, 0);
      return sum === appCount;
    }, WAIT_MS, `transport rows sum to node 1's ${appCount} connections`);
    await eventually(async () => (await rows('top-ip-row')).some((r) => r.data.ip === '127.0.0.1'), WAIT_MS, '127.0.0.1 among the top IPs');
    assert.equal(await page.textContent('[data-testid="connections-node"]'), nodeIds[0]);

    await page.fill('[data-testid="user-id"]', 'user-1');
    await page.click('[data-testid="user-lookup"]');
    await eventually(async () => (await rows('user-connection-row')).length === 2, WAIT_MS, 'user-1\'s two connections on node 1');
    const socketIds = (await rows('user-connection-row')).map((r) => r.data.socketId).sort();
    assert.deepEqual(socketIds, userClients.filter((c) => c.node === nodes[0]).map((c) => c.socketId).sort());
    await shot('connections');

    const others = clients.filter((c) => !userClients.includes(c));
    expectConfirm = true;
    await page.click('[data-testid="user-disconnect"]');
    const closes = await Promise.race([
      Promise.all(userClients.map((c) => c.closedPromise)),
      sleep(WAIT_MS).then(() => { throw new Error(`not every user-1 socket closed: ${JSON.stringify(userClients.map((c) => c.closed))}`); }),
    ]);
    assert.equal(closes.length, 4, 'user-1 closed on nodes 1, 2 and 3');
    const last = dialogs.at(-1);
    assert.equal(last?.type, 'confirm');
    assert.match(last.message, /user-1/);
    await eventually(async () => {
      if ((await rows('user-connection-row')).length === 0) return true;
      await page.click('[data-testid="user-lookup"]');
      await sleep(300);
      return false;
    }, WAIT_MS, 'no connection left in the lookup');
    assert.ok(others.every((c) => c.closed === null), 'everyone else still connected');
    await assertNoInjection('connections');

    // A hostile user id in the lookup: as text.
    await page.fill('[data-testid="user-id"]', XSS_USER);
    await page.click('[data-testid="user-lookup"]');
    await eventually(async () => (await page.textContent('[data-testid="user-result-id"]')) === XSS_USER, WAIT_MS, 'the hostile user id as text');
    await assertNoInjection('user lookup');
  });

  test('nothing from the data ran, anywhere', async (t) => {
    if (skip) return t.skip(skip);
    await assertNoInjection('end');
    assert.equal(await page.evaluate(() => window.__xss), undefined);
    // The only console errors are the refused requests of the markup channel name.
    const unexpected = consoleErrors.filter((m) => !/^Failed to load resource: the server responded with a status of 4\d\d|^EventSource's response has/.test(m));
    assert.deepEqual(unexpected, [], 'console errors');
    assert.ok(dialogs.every((d) => d.type === 'confirm'), `the disconnect confirm() was the only kind of dialog: ${JSON.stringify(dialogs)}`);
  });
});
