// The client's browser build in headless Chromium (Debian's), behind real nginx proxies:
// the fallback a network forces, and loss-free delivery of 5,000 publications while the test
// breaks the connection every way it can.

import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { APP, api, appToml, eventually, jwt, sleep, startHerald } from './helpers.mjs';
import { nginxInstalled, startNginx } from './nginx.mjs';

const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';

/** Skip (or, under CI, fail) when Chromium or nginx is missing. */
function requireTools(t) {
  const missing = [[existsSync(CHROMIUM), `${CHROMIUM} (apt-get install chromium)`], [nginxInstalled(), 'nginx (apt-get install nginx-light)']]
    .filter(([ok]) => !ok).map(([, what]) => what);
  if (!missing.length) return true;
  if (process.env.CI === 'true') assert.fail(`missing: ${missing.join(', ')}`);
  t.skip(`missing: ${missing.join(', ')}`);
  return false;
}

/** A directory nginx serves: the test pages and the client's browser build. */
function pageRoot() {
  const root = mkdtempSync(join(tmpdir(), 'herald-pages-'));
  copyFileSync(join(import.meta.dirname, '../dist/herald.iife.js'), join(root, 'herald.iife.js'));
  copyFileSync(join(import.meta.dirname, 'pages/client.html'), join(root, 'client.html'));
  return root;
}

let browser;
// One browser profile for every page, as a user's browser has: a closing tab's last requests
// (the long-polling DELETE, sent with keepalive) outlive the tab, as they do for users.
let context;
async function openPage(url, options = {}) {
  context ??= await browser.newContext();
  const page = await context.newPage();
  page.on('pageerror', (e) => { throw e; });
  await page.goto(`${url}/client.html`);
  await page.evaluate((o) => window.start(o), options);
  return page;
}
const transportOf = (page) => page.evaluate(() => herald.transport);
const logOf = (page, channel) => page.evaluate((c) => window.log[c] ?? [], channel);
const eventsOf = (page) => page.evaluate(() => window.events);

/** Publish 1..total on `channel` in batches of ten, about a thousand a second; `at(n)` runs
 * (awaited) before publication n, for faults at chosen points. */
async function publishNumbers(server, channel, total, at = async () => {}) {
  for (let n = 1; n <= total; n += 10) {
    for (let k = n; k < n + 10; k++) await at(k);
    const events = [];
    for (let k = n; k < Math.min(n + 10, total + 1); k++) events.push({ channel, event: 'n', data: k });
    for (;;) {
      try {
        await api(server, 'POST', '/batch', { events });
        break;
      } catch (e) {
        // Herald is restarting: the batch was not accepted; send it again.
        if (!/fetch failed|ECONNREFUSED|500/.test(String(e.message) + String(e.cause))) throw e;
        await sleep(50);
      }
    }
    await sleep(8);
  }
}

/** Wait for 1..total on `channel` in the page, then check each arrived exactly once, in order,
 * with no "not recovered" event; resolves with the page's lifecycle events. */
async function assertExactlyOnce(page, channel, total) {
  await eventually(async () => (await logOf(page, channel)).length >= total, 30_000, `all ${total}`).catch(async (e) => {
    const got = await logOf(page, channel);
    const state = await page.evaluate((c) => [herald.state, herald.transport, herald.channel(c)?.state, herald.channel(c)?.position], channel);
    throw new Error(`${e.message}: ${got.length} arrived, the last ${JSON.stringify(got.slice(-3))}; client ${JSON.stringify(state)}; events ${JSON.stringify(await eventsOf(page))}`);
  });
  await sleep(300); // anything extra (a duplicate) would arrive now
  const got = await logOf(page, channel);
  assert.equal(got.length, total);
  assert.ok(got.every((v, i) => v === i + 1), `exactly 1..${total}, in order`);
  const events = await eventsOf(page);
  assert.deepEqual(events.filter((e) => e[0] === 'unrecovered'), []);
  return events;
}

describe('in Chromium behind nginx', { concurrency: false }, () => {
  let server;
  let root;
  before(async () => {
    if (!existsSync(CHROMIUM) || !nginxInstalled()) return;
    server = await startHerald(appToml());
    root = pageRoot();
    const { chromium } = await import('playwright-core');
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--headless', '--no-sandbox'] });
  });
  after(async () => {
    await browser?.close();
    await server?.stop();
  });

  for (const [mode, expected] of [['no-upgrade', 'sse'], ['buffering', 'polling']]) {
    test(`a proxy that ${mode === 'no-upgrade' ? 'does not pass the upgrade' : 'also buffers responses'}: the page ends on ${expected}, and everything works`, async (t) => {
      if (!requireTools(t)) return;
      const proxy = await startNginx({ upstream: server.port, root, mode });
      try {
        const token = (sub) => jwt({ sub, channels: ['presence-*'], info: { name: sub } });
        const ann = await openPage(proxy.url, { token: token('ann') });
        const bob = await openPage(proxy.url, { token: token('bob') });
        for (const page of [ann, bob]) {
          await eventually(async () => (await transportOf(page)) === expected, 15_000, `on ${expected}`).catch(async (e) => { throw new Error(`${e.message}: ${JSON.stringify(await eventsOf(page))}`); });
        }
        const attempts = (await eventsOf(ann)).filter((e) => e[0] === 'connected').map((e) => e[1]);
        assert.deepEqual(attempts, [expected], 'one session, on the transport that works');

        // Publications in order.
        const channel = `feed.${mode}`;
        await ann.evaluate((c) => window.listen(c, 'n'), channel);
        await eventually(async () => (await eventsOf(ann)).some((e) => e[0] === 'subscribed' && e[1] === channel));
        await publishNumbers(server, channel, 50);
        await eventually(async () => (await logOf(ann, channel)).length === 50);
        assert.deepEqual(await logOf(ann, channel), Array.from({ length: 50 }, (_, i) => i + 1));

        // Presence, and a client event from one page to the other.
        const room = `presence-room.${mode}`;
        await ann.evaluate((c) => window.listen(c, 'client-typing'), room);
        await eventually(async () => (await eventsOf(ann)).some((e) => e[0] === 'subscribed' && e[1] === room));
        await bob.evaluate((c) => window.listen(c, 'client-typing'), room);
        await eventually(async () => (await eventsOf(ann)).some((e) => e[0] === 'joined' && e[2] === 'bob'));
        await eventually(async () => JSON.stringify(await bob.evaluate((c) => window.members(c), room)) === '["ann","bob"]');
        assert.equal(await ann.evaluate((c) => herald.channel(c).whisper('typing', { from: 'ann' }), room), true);
        await eventually(async () => (await logOf(bob, room)).length === 1);
        assert.deepEqual(await logOf(bob, room), [{ from: 'ann' }]);
        // Closing the tab as a user does (unload handlers run): its session ends at once, even on
        // long-polling, whose server side would otherwise wait for the session to expire.
        await bob.close({ runBeforeUnload: true });
        await eventually(async () => (await eventsOf(ann)).some((e) => e[0] === 'left' && e[2] === 'bob'), 15_000, 'bob left').catch(async (e) => {
          throw new Error(`${e.message}: ann saw ${JSON.stringify(await eventsOf(ann))}; server: ${JSON.stringify(await api(server, 'GET', `/channels/${room}`))}`);
        });
        await ann.close();
      } finally {
        await proxy.stop();
      }
    });
  }

  test('5,000 numbered publications arrive exactly once, in order, through a killed proxy, 4200 and a transport switch', async (t) => {
    if (!requireTools(t)) return;
    const proxy = await startNginx({ upstream: server.port, root, mode: 'upgrade' });
    try {
      const page = await openPage(proxy.url, { token: jwt({ sub: 'reader' }), upgradeInterval: 0 });
      await eventually(async () => (await transportOf(page)) === 'websocket', 10_000, 'on websocket');
      const channel = `numbers.${Date.now()}`;
      await page.evaluate((c) => window.listen(c, 'n'), channel);
      await eventually(async () => (await eventsOf(page)).some((e) => e[0] === 'subscribed'));
      // Each fault hits a live session: the one before it has been recovered from.
      const live = () => eventually(() => page.evaluate((c) => herald.state === 'connected' && herald.channel(c).state === 'subscribed', channel), 15_000, 'live again');
      await publishNumbers(server, channel, 5000, async (n) => {
        if ([1000, 2000, 3000, 4000].includes(n)) await live();
        if (n === 1000 || n === 4000) {
          await proxy.kill(); // every connection through the proxy drops
          await sleep(300);
          await proxy.start();
        } else if (n === 2000) {
          await api(server, 'POST', '/users/reader/disconnect', { reconnect: true }); // 4200
        } else if (n === 3000) {
          // The network changes under the page: now a proxy that does not pass WebSockets.
          await proxy.kill();
          await proxy.start('no-upgrade');
        }
      });
      const events = await assertExactlyOnce(page, channel, 5000);
      const transports = events.filter((e) => e[0] === 'connected').map((e) => e[1]);
      assert.ok(transports.length >= 5, `reconnected after every fault: ${transports}`);
      assert.equal(transports[0], 'websocket');
      assert.equal(transports.at(-1), 'sse', `switched transport: ${transports}`);
      await page.close();
    } finally {
      await proxy.stop();
    }
  });

  test('again with Herald restarted, on a Redis broker: history survives, the page recovers, nothing missing', async (t) => {
    if (!requireTools(t)) return;
    const prefix = `herald-client-browser-${process.pid}-${Date.now()}`;
    const redisHerald = await startHerald(appToml({ top: `[broker]\nkind = "redis"\n[redis]\nprefix = "${prefix}"\n` }));
    const proxy = await startNginx({ upstream: redisHerald.port, root, mode: 'upgrade' });
    try {
      const page = await openPage(proxy.url, { token: jwt({ sub: 'reader' }) });
      const channel = 'numbers.redis';
      await page.evaluate((c) => window.listen(c, 'n'), channel);
      await eventually(async () => (await eventsOf(page)).some((e) => e[0] === 'subscribed'));
      await publishNumbers(redisHerald, channel, 5000, async (n) => {
        if (n === 1000) await api(redisHerald, 'POST', '/users/reader/disconnect', { reconnect: true }); // 4200
        if (n === 2500) await redisHerald.restart();
      });
      const events = await assertExactlyOnce(page, channel, 5000);
      assert.deepEqual(events.filter((e) => e[0] === 'subscribed').map((e) => e[2]), [null, true, true], 'joined, then recovered after 4200 and after the restart');
      await page.close();
    } finally {
      await proxy.stop();
      await redisHerald.stop();
    }
  });

  test('memory history and a Herald restart: the page is told "not recovered" with epoch_changed', async (t) => {
    if (!requireTools(t)) return;
    const own = await startHerald(appToml());
    const proxy = await startNginx({ upstream: own.port, root, mode: 'upgrade' });
    try {
      const page = await openPage(proxy.url);
      await page.evaluate(() => window.listen('feed', 'n'));
      await eventually(async () => (await eventsOf(page)).some((e) => e[0] === 'subscribed'));
      await api(own, 'POST', '/publish', { channel: 'feed', event: 'n', data: 1 });
      await eventually(async () => (await logOf(page, 'feed')).length === 1);
      await own.restart();
      await api(own, 'POST', '/publish', { channel: 'feed', event: 'n', data: 2 });
      await eventually(async () => (await eventsOf(page)).some((e) => e[0] === 'unrecovered'), 15_000, 'unrecovered');
      assert.deepEqual((await eventsOf(page)).find((e) => e[0] === 'unrecovered'), ['unrecovered', 'feed', 'epoch_changed']);
      await page.close();
    } finally {
      await proxy.stop();
      await own.stop();
    }
  });
});

// Keep the app id in one place: the page uses the key, the API the id.
assert.equal(APP.key, 'app-key');
