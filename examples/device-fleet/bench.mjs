// Publish → screen latency of the dashboard, at 200 devices, in headless Chromium. Not a test:
// it starts the demo (./run) with the simulator's load running, opens the page, and times
// probe publications on random devices from the HTTP API call to the DOM change
// (a MutationObserver on the tile's `data-offset`), matched by the offset the publish answer
// gives. The baseline, measured in the same run and page, is the same publication's arrival
// at the client (before Vue renders), so the ratio is what rendering adds.
//
//   node bench.mjs [--samples 1000] [--rounds 3] [--rate 20]
// Prints one line per round and a summary: median and range of p50 and p99 across rounds.

import { spawn } from 'node:child_process';
import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';

const { values: o } = parseArgs({
  options: {
    samples: { type: 'string', default: '1000' },
    rounds: { type: 'string', default: '3' },
    rate: { type: 'string', default: '20' },
    chromium: { type: 'string', default: process.env.CHROMIUM_BIN ?? '/usr/bin/chromium' },
  },
});
const ports = { page: 8380, herald: 6301, admin: 9801, backend: 6381 };
const devices = 200;
const herald = `http://127.0.0.1:${ports.herald}`;

const demo = spawn(`${import.meta.dirname}/run`, {
  env: { ...process.env, FLEET_DEVICES: String(devices), FLEET_PORT: String(ports.page), HERALD_PORT: String(ports.herald), ADMIN_PORT: String(ports.admin), FLEET_BACKEND_PORT: String(ports.backend) },
  stdio: ['ignore', 'ignore', 'inherit'],
  detached: true,
});
const stopDemo = () => { try { process.kill(-demo.pid, 'SIGTERM'); } catch { /* gone */ } };
process.on('exit', stopDemo);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
for (let i = 0; ; i++) {
  try { if ((await fetch(`http://127.0.0.1:${ports.page}/`)).ok && (await fetch(`http://127.0.0.1:${ports.admin}/ready`)).ok) break; } catch { /* starting */ }
  if (i > 600) throw new Error('the demo did not start');
  await sleep(200);
}

const browser = await chromium.launch({ executablePath: o.chromium, args: ['--headless', '--no-sandbox'] });
const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
await page.goto(`http://127.0.0.1:${ports.page}/`);
await page.waitForFunction(() => document.querySelector('#status')?.textContent === 'connected-live', null, { timeout: 30_000 });
await page.waitForFunction((n) => document.querySelectorAll('[data-device]').length === n, devices);
// In the page: when each (device, offset) reached the client, and when its tile changed.
await page.evaluate(() => {
  const now = () => performance.timeOrigin + performance.now();
  window.arrived = new Map();
  window.shown = new Map();
  for (const sub of [...document.querySelectorAll('[data-device]')].map((el) => herald.channel(`devices.${el.dataset.device}`))) {
    sub.bindAll((_, meta) => window.arrived.set(`${sub.channel}:${meta.offset}`, now()));
  }
  new MutationObserver((records) => {
    const t = now();
    for (const r of records) window.shown.set(`devices.${r.target.dataset.device}:${r.target.dataset.offset}`, t);
  }).observe(document.querySelector('#grid'), { attributes: true, subtree: true, attributeFilter: ['data-offset'] });
});

const pct = (xs, p) => xs[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))];
const rounds = [];
for (let round = 1; round <= Number(o.rounds); round++) {
  const sent = [];
  for (let i = 0; i < Number(o.samples); i++) {
    const channel = `devices.${Math.floor(Math.random() * devices)}`;
    const t0 = performance.timeOrigin + performance.now();
    const res = await fetch(`${herald}/api/fleet/publish`, {
      method: 'POST',
      headers: { authorization: 'Bearer fleet-secret', 'content-type': 'application/json' },
      body: JSON.stringify({ channel, event: 'status', data: { state: 'busy', battery: Math.floor(Math.random() * 100), probe: `${round}.${i}` } }),
    });
    const answer = await res.json();
    sent.push({ key: `${channel}:${answer.positions[channel].offset}`, t0 });
    await sleep(1000 / Number(o.rate));
  }
  await sleep(500);
  const seen = await page.evaluate((keys) => keys.map((k) => [window.arrived.get(k), window.shown.get(k)]), sent.map((s) => s.key));
  const dom = [];
  const msg = [];
  seen.forEach(([a, d], i) => {
    if (a !== undefined) msg.push(a - sent[i].t0);
    if (d !== undefined) dom.push(d - sent[i].t0);
  });
  dom.sort((a, b) => a - b);
  msg.sort((a, b) => a - b);
  const r = { round, samples: sent.length, missing: sent.length - dom.length, dom50: pct(dom, 50), dom99: pct(dom, 99), msg50: pct(msg, 50), msg99: pct(msg, 99), max: dom.at(-1) };
  rounds.push(r);
  console.log(`round ${round}: ${r.samples} probes (${r.missing} not shown); publish→DOM p50 ${r.dom50.toFixed(1)} ms, p99 ${r.dom99.toFixed(1)} ms, max ${r.max.toFixed(1)} ms; publish→client (baseline) p50 ${r.msg50.toFixed(1)} ms, p99 ${r.msg99.toFixed(1)} ms`);
}
const med = (k) => [...rounds.map((r) => r[k])].sort((a, b) => a - b)[Math.floor(rounds.length / 2)];
const range = (k) => `${Math.min(...rounds.map((r) => r[k])).toFixed(1)}–${Math.max(...rounds.map((r) => r[k])).toFixed(1)}`;
console.log(`\n${devices} devices, ${o.samples} probes × ${o.rounds} rounds at ${o.rate}/s, simulator running:`);
console.log(`publish→DOM    p50 median ${med('dom50').toFixed(1)} ms (range ${range('dom50')}), p99 median ${med('dom99').toFixed(1)} ms (range ${range('dom99')})`);
console.log(`publish→client p50 median ${med('msg50').toFixed(1)} ms (range ${range('msg50')}), p99 median ${med('msg99').toFixed(1)} ms (range ${range('msg99')})`);
console.log(`ratio DOM/client at p50: ${(med('dom50') / med('msg50')).toFixed(2)}×, at p99: ${(med('dom99') / med('msg99')).toFixed(2)}×`);
await browser.close();
stopDemo();
process.exit(0);
