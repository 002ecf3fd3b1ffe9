// The device-fleet demo (examples/device-fleet) started with its one command, in Chromium:
// the tiles update live, the badge reads connected-live, and a screenshot is saved.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { test } from 'node:test';
import { HERALD_BIN, freePort, sleep } from './helpers.mjs';

const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
const repo = resolve(import.meta.dirname, '../../..');

test('the device-fleet demo runs with its one command and its tiles update live', { timeout: 240_000 }, async (t) => {
  if (!existsSync(CHROMIUM)) {
    if (process.env.CI === 'true') assert.fail(`${CHROMIUM} is missing`);
    return t.skip(`${CHROMIUM} is not installed`);
  }
  const ports = { FLEET_PORT: await freePort(), HERALD_PORT: await freePort(), ADMIN_PORT: await freePort(), FLEET_BACKEND_PORT: await freePort() };
  const env = { ...process.env, HERALD_BIN, FLEET_DEVICES: '200' };
  for (const [k, v] of Object.entries(ports)) env[k] = String(v);
  const demo = spawn(join(repo, 'examples/device-fleet/run'), { env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  let output = '';
  demo.stdout.on('data', (d) => { output += d; });
  demo.stderr.on('data', (d) => { output += d; });
  const { chromium } = await import('playwright-core');
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--headless', '--no-sandbox'] });
  try {
    const url = `http://127.0.0.1:${ports.FLEET_PORT}/`;
    for (let i = 0; ; i++) {
      try { if ((await fetch(url)).ok && output.includes('open http')) break; } catch { /* starting */ }
      if (demo.exitCode !== null || i > 900) assert.fail(`the demo did not start:\n${output}`);
      await sleep(200);
    }
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const errors = [];
    page.on('pageerror', (e) => errors.push(e));
    await page.goto(url);
    await page.waitForFunction(() => document.querySelector('#status')?.textContent === 'connected-live', null, { timeout: 15_000 });
    assert.equal(await page.$$eval('[data-device]', (tiles) => tiles.length), 200);
    // Every tile shows its device's state (loaded from the backend), and updates keep coming.
    await page.waitForFunction(() => [...document.querySelectorAll('[data-device] span')].every((s) => s.textContent !== '…'), null, { timeout: 15_000 });
    const before = await page.$$eval('[data-device]', (tiles) => tiles.map((el) => el.dataset.offset).join());
    await page.waitForFunction(() => Number(document.querySelector('#updates').textContent) >= 20, null, { timeout: 30_000 });
    const after = await page.$$eval('[data-device]', (tiles) => tiles.map((el) => el.dataset.offset).join());
    assert.notEqual(after, before, 'tiles changed while watched');
    assert.match(await page.textContent('#latency'), /^\d+ ms$/);
    const dir = join(repo, 'target', 'screenshots');
    mkdirSync(dir, { recursive: true });
    await page.screenshot({ path: join(dir, 'device-fleet.png') });
    t.diagnostic(`screenshot: ${join(dir, 'device-fleet.png')}`);
    assert.deepEqual(errors, []);
  } finally {
    await browser.close();
    process.kill(-demo.pid, 'SIGTERM');
    await new Promise((r) => (demo.exitCode !== null ? r() : demo.once('exit', r)));
  }
});
