// The Vue and React bindings in headless Chromium against the real binary: components show
// live data and presence in the DOM, and unmounting them leaves no subscription behind (the
// server's channel API says so).

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
