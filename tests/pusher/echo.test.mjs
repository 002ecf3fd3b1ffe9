// Laravel Echo 2 with pusher-js, as a Laravel front end uses it: in Node, and in a real
// headless Chromium (Debian's package) with the browser builds and a /broadcasting/auth
// endpoint like Laravel's.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { join } from 'node:path';
import EchoModule from 'laravel-echo';
import PusherJs from 'pusher-js';
import { APP, appToml, sdk, startHerald } from './helpers.mjs';

const Echo = EchoModule.default ?? EchoModule;
const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
let server;
before(async () => { server = await startHerald(appToml()); });
after(async () => { await server.stop(); });

function echo() {
  const backend = sdk(server);
  return new Echo({
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
      customHandler: ({ socketId, channelName }, cb) => cb(null, backend.authorizeChannel(socketId, channelName)),
    },
  });
}

const within = (p, ms = 5000) => Promise.race([
  p, new Promise((_, rej) => setTimeout(() => rej(new Error('timed out')), ms)),
]);

test('Echo in Node: public and private channels with Laravel event names', async () => {
  const e = echo();
  const shipped = new Promise((res) => e.channel('orders').listen('OrderShipped', res));
  const paid = new Promise((res) => e.private('orders.1').listen('.paid', res));
  // Wait for both subscriptions before triggering.
  const pusher = e.connector.pusher;
  await within(new Promise((res) => {
    const check = () => (pusher.channel('orders')?.subscribed && pusher.channel('private-orders.1')?.subscribed ? res() : setTimeout(check, 20));
    check();
  }));
  // Laravel broadcasts with the event's class name, namespaced App\Events by default.
  await sdk(server).trigger('orders', 'App\\Events\\OrderShipped', { id: 5 });
  await sdk(server).trigger('private-orders.1', 'paid', { total: 12 });
  assert.deepEqual(await within(shipped), { id: 5 });
  assert.deepEqual(await within(paid), { total: 12 });
  e.disconnect();
});

/** A page server: the browser builds from node_modules, the page, and /broadcasting/auth. */
async function pageServer() {
  const modules = join(import.meta.dirname, 'node_modules');
  const backend = sdk(server);
  const page = `<!doctype html><html><body><ul id="events"></ul>
<script src="/pusher.min.js"></script>
<script src="/echo.iife.js"></script>
<script>
  const EchoClass = window.Echo.default || window.Echo;
  window.echo = new EchoClass({
    broadcaster: 'pusher', key: '${APP.key}', cluster: 'mt1',
    wsHost: '127.0.0.1', wsPort: ${server.port}, forceTLS: false,
    enabledTransports: ['ws'], disableStats: true,
    authEndpoint: '/broadcasting/auth',
  });
  const show = (kind) => (e) => {
    const li = document.createElement('li');
    li.textContent = kind + ':' + JSON.stringify(e);
    document.getElementById('events').appendChild(li);
  };
  window.echo.channel('dashboard').listen('.metric', show('public'));
  window.echo.private('dashboard.7').listen('.alert', show('private'));
  window.ready = () => {
    const p = window.echo.connector.pusher;
    return !!(p.channel('dashboard') && p.channel('dashboard').subscribed
      && p.channel('private-dashboard.7') && p.channel('private-dashboard.7').subscribed);
  };
</script></body></html>`;
  const http = createServer((req, res) => {
    if (req.url === '/') return res.writeHead(200, { 'content-type': 'text/html' }).end(page);
    if (req.url === '/pusher.min.js') {
      return res.writeHead(200, { 'content-type': 'text/javascript' })
        .end(readFileSync(join(modules, 'pusher-js/dist/web/pusher.min.js')));
    }
    if (req.url === '/echo.iife.js') {
      return res.writeHead(200, { 'content-type': 'text/javascript' })
        .end(readFileSync(join(modules, 'laravel-echo/dist/echo.iife.js')));
    }
    if (req.url === '/broadcasting/auth' && req.method === 'POST') {
      let body = '';
      req.on('data', (d) => { body += d; });
      req.on('end', () => {
        const form = new URLSearchParams(body);
        const auth = backend.authorizeChannel(form.get('socket_id'), form.get('channel_name'));
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(auth));
      });
      return undefined;
    }
    return res.writeHead(404).end();
  });
  await new Promise((r) => http.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${http.address().port}/`, close: () => new Promise((r) => http.close(r)) };
}

test('Echo in headless Chromium shows events triggered by the backend', async (t) => {
  if (!existsSync(CHROMIUM)) {
    if (process.env.CI === 'true') assert.fail(`${CHROMIUM} is missing: install Debian's chromium package`);
    t.skip(`${CHROMIUM} is not installed (apt-get install chromium)`);
    return;
  }
  const { chromium } = await import('playwright-core');
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--headless', '--no-sandbox'] });
  const pages = await pageServer();
  try {
    const page = await browser.newPage();
    await page.goto(pages.url);
    await page.waitForFunction(() => window.ready(), null, { timeout: 10000 });
    await sdk(server).trigger('dashboard', 'metric', { cpu: 42 });
    await sdk(server).trigger('private-dashboard.7', 'alert', { level: 'high' });
    await page.waitForFunction(() => document.querySelectorAll('#events li').length === 2, null, { timeout: 10000 });
    const shown = await page.$$eval('#events li', (lis) => lis.map((li) => li.textContent).sort());
    assert.deepEqual(shown, ['private:{"level":"high"}', 'public:{"cpu":42}']);
  } finally {
    await browser.close();
    await pages.close();
  }
});
