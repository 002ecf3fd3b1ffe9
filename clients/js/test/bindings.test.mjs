// In headless Chromium against the real binary, pages served from their own origin: the Vue
// and React bindings (components show live data and presence in the DOM, and unmounting them
// leaves no subscription behind, as the server's channel API says), the HTTP transports
// across origins, and the browser's offline and online events.

import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { build } from 'esbuild';
import WebSocket from 'ws';
import { Herald } from '../dist/index.js';
import { api, eventually, jwt, publish, startHerald, subscribers } from './helpers.mjs';

const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
const here = import.meta.dirname;

/** Bundle `pages/{app}` with the package's own dist (as an app would get it from npm). */
async function bundle(app) {
  const root = mkdtempSync(join(tmpdir(), `herald-${app}-`));
  await build({
    entryPoints: [join(here, 'pages', app)],
    outfile: join(root, 'app.js'),
    bundle: true,
    format: 'esm',
    minify: true,
    alias: {
      '@herald/client/vue': join(here, '../dist/vue.js'),
      '@herald/client/react': join(here, '../dist/react.js'),
      '@herald/client': join(here, '../dist/index.js'),
    },
    define: { 'process.env.NODE_ENV': '"production"', __VUE_OPTIONS_API__: 'false', __VUE_PROD_DEVTOOLS__: 'false', __VUE_PROD_HYDRATION_MISMATCH_DETAILS__: 'false' },
    logLevel: 'warning',
  });
  copyFileSync(join(here, 'pages/app.html'), join(root, 'index.html'));
  const server = createServer((req, res) => {
    const file = new URL(req.url, 'http://x').pathname === '/app.js' ? 'app.js' : 'index.html';
    res.writeHead(200, { 'content-type': file.endsWith('.js') ? 'text/javascript' : 'text/html' });
    res.end(readFileSync(join(root, file)));
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${server.address().port}`, close: () => new Promise((r) => server.close(r)) };
}

/** A page on its own origin that loads the browser build, and nothing else. */
async function iifeSite() {
  const iife = readFileSync(join(here, '../dist/herald.iife.js'));
  const server = createServer((req, res) => {
    if (req.url === '/herald.iife.js') return res.writeHead(200, { 'content-type': 'text/javascript' }).end(iife);
    res.writeHead(200, { 'content-type': 'text/html' }).end('<!doctype html><script src="/herald.iife.js"></script>');
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${server.address().port}/`, close: () => new Promise((r) => server.close(r)) };
}

let herald;
let browser;
before(async () => {
  herald = await startHerald();
  if (!existsSync(CHROMIUM)) return;
  const { chromium } = await import('playwright-core');
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--headless', '--no-sandbox'] });
});
after(async () => {
  await browser?.close();
  await herald?.stop();
});

for (const framework of ['vue', 'react']) {
  test(`${framework}: components show live data and presence, and unmount leaving no subscription`, async (t) => {
    if (!existsSync(CHROMIUM)) {
      if (process.env.CI === 'true') assert.fail(`${CHROMIUM} is missing: install Debian's chromium package`);
      return t.skip(`${CHROMIUM} is not installed`);
    }
    const site = await bundle(`${framework}-app.js`);
    const page = await browser.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(e));
    try {
      const token = jwt({ sub: `viewer-${framework}`, channels: ['presence-*'] });
      await page.goto(`${site.url}/?herald=${encodeURIComponent(herald.url)}&token=${token}`);
      await page.waitForFunction(() => document.querySelector('#status')?.textContent === 'connected-live', null, { timeout: 10_000 });
      await eventually(async () => (await subscribers(herald, 'devices.1')) === 1 && (await subscribers(herald, 'devices.2')) === 1);

      await publish(herald, 'devices.1', 'status', { state: 'online' });
      await publish(herald, 'devices.2', 'status', { state: 'fault' });
      await page.waitForFunction(() => document.querySelector('[data-device="2"]')?.textContent === '2: fault', null, { timeout: 5000 });
      assert.equal(await page.textContent('[data-device="1"]'), '1: online');

      // Another user joins the presence channel: the list shows both.
      const other = new Herald({ url: herald.url, key: 'app-key', WebSocket, token: jwt({ sub: 'zed', channels: ['presence-*'] }), rememberTransport: 'none' });
      other.connect();
      other.subscribe('presence-room').bindAll(() => {});
      await page.waitForFunction(() => document.querySelectorAll('#members li').length === 2, null, { timeout: 5000 });
      const names = await page.$$eval('#members li', (lis) => lis.map((li) => li.textContent).sort());
      assert.deepEqual(names, [`viewer-${framework}`, 'zed']);
      other.disconnect();
      await page.waitForFunction(() => document.querySelectorAll('#members li').length === 1, null, { timeout: 5000 });

      // Unmount: every channel the components held is left, on the server too.
      await page.evaluate(() => window.unmountAll());
      await eventually(async () => (await subscribers(herald, 'devices.1')) === 0 && (await subscribers(herald, 'devices.2')) === 0
        && (await subscribers(herald, 'presence-room')) === 0, 5000, 'no subscription left');
      assert.equal(await page.evaluate(() => herald.state), 'connected', 'the connection itself stays');
      assert.deepEqual((await api(herald, 'GET', '/channels')).channels, []);
      assert.deepEqual(errors, []);
    } finally {
      await page.close();
      await site.close();
    }
  });
}

test('from a page on another origin, SSE and long-polling work with a token (CORS, preflight included)', async (t) => {
  if (!existsSync(CHROMIUM)) {
    if (process.env.CI === 'true') assert.fail(`${CHROMIUM} is missing`);
    return t.skip(`${CHROMIUM} is not installed`);
  }
  const site = await iifeSite();
  const page = await browser.newPage();
  try {
    await page.goto(site.url);
    for (const transport of ['sse', 'polling']) {
      const channel = `private-cors.${transport}`;
      await page.evaluate(({ url, token, transport, channel }) => {
        window.got = [];
        window.client = new Herald({ url, key: 'app-key', token, transports: [transport], rememberTransport: 'none' });
        window.client.subscribe(channel).bind('n', (d) => window.got.push(d));
        window.client.connect();
      }, { url: herald.url, token: jwt({ sub: 'cors', channels: ['private-cors.*'] }), transport, channel });
      await eventually(async () => (await subscribers(herald, channel)) === 1, 10_000, `${transport} subscribed`);
      await publish(herald, channel, 'n', 1);
      await page.waitForFunction(() => window.got.length === 1, null, { timeout: 5000 });
      assert.equal(await page.evaluate(() => window.client.transport), transport);
      await page.evaluate(() => window.client.disconnect());
    }
  } finally {
    await page.close();
    await site.close();
  }
});

test('offline: the page says so and waits; online: it reconnects at once and recovers', async (t) => {
  if (!existsSync(CHROMIUM)) {
    if (process.env.CI === 'true') assert.fail(`${CHROMIUM} is missing`);
    return t.skip(`${CHROMIUM} is not installed`);
  }
  const site = await iifeSite();
  const context = await browser.newContext();
  const page = await context.newPage();
  try {
    await page.goto(site.url);
    await page.evaluate((url) => {
      window.got = [];
      window.statuses = [];
      window.client = new Herald({ url, key: 'app-key', rememberTransport: 'none' });
      window.client.on('status', (s) => window.statuses.push(s));
      window.client.subscribe('offline-feed').bind('n', (d) => window.got.push(d));
      window.client.connect();
    }, herald.url);
    await page.waitForFunction(() => window.client.status === 'connected-live' && window.client.channel('offline-feed').state === 'subscribed');
    await context.setOffline(true);
    await page.waitForFunction(() => window.client.status === 'offline', null, { timeout: 5000 });
    await eventually(async () => (await subscribers(herald, 'offline-feed')) === 0, 5000, 'the session ended');
    await publish(herald, 'offline-feed', 'n', 1); // missed while offline: recovered from history
    await context.setOffline(false);
    await page.waitForFunction(() => window.client.status === 'connected-live', null, { timeout: 5000 });
    await page.waitForFunction(() => window.got.length === 1, null, { timeout: 5000 });
    await publish(herald, 'offline-feed', 'n', 2);
    await page.waitForFunction(() => window.got.length === 2, null, { timeout: 5000 });
    assert.deepEqual(await page.evaluate(() => window.got), [1, 2]);
    const statuses = await page.evaluate(() => window.statuses);
    assert.deepEqual(statuses.slice(-2), ['offline', 'connected-live'], `${statuses}`);
  } finally {
    await context.close();
    await site.close();
  }
});
