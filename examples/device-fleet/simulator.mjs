// The fleet: N devices (default 200), each changing state a few times a minute, published
// through Herald's HTTP API on `devices.{id}`. Half of the reports repeat the device's current
// state, as real devices do; Herald's `dedupe_window` drops those (the answer lists them as
// `unchanged`), so dashboards only see changes.
//
// It is also the fleet's backend: `GET /fleet` on --port answers every device's current
// state, which a dashboard loads once (and again if it ever misses events), as a Laravel app
// would serve it from its database.
//
//   node simulator.mjs [--devices 200] [--url http://127.0.0.1:6001] [--port 6081]

import { createServer } from 'node:http';
import { parseArgs } from 'node:util';

const { values: o } = parseArgs({
  options: {
    devices: { type: 'string', default: process.env.FLEET_DEVICES ?? '200' },
    url: { type: 'string', default: process.env.HERALD_URL ?? 'http://127.0.0.1:6001' },
    app: { type: 'string', default: 'fleet' },
    secret: { type: 'string', default: 'fleet-secret' },
    // Reports per device per minute (each a change or a repeat).
    rate: { type: 'string', default: '6' },
    port: { type: 'string', default: process.env.FLEET_BACKEND_PORT ?? '6081' },
  },
});
const devices = Number(o.devices);
const STATES = ['online', 'idle', 'busy', 'charging', 'offline', 'fault'];
// `seq` counts each device's changes: a repeat carries the same one, so it is the same data.
const state = Array.from({ length: devices }, (_, i) => ({ state: STATES[i % 4], battery: 100 - (i % 60), seq: 0 }));
const stats = { sent: 0, unchanged: 0, failed: 0 };

async function publish(events) {
  try {
    const res = await fetch(`${o.url}/api/${o.app}/batch`, {
      method: 'POST',
      headers: { authorization: `Bearer ${o.secret}`, 'content-type': 'application/json' },
      body: JSON.stringify({ events }),
    });
    if (!res.ok) throw new Error(`${res.status} ${await res.text()}`);
    for (const r of (await res.json()).results) stats.unchanged += r.unchanged?.length ?? 0;
    stats.sent += events.length;
  } catch (e) {
    stats.failed += events.length;
    if (stats.failed === events.length) console.error(`simulator: publish failed (${e.message}); retrying`);
  }
}

/** One report: half the time the same state again, otherwise a change. */
function report(id) {
  const d = state[id];
  if (Math.random() < 0.5) {
    d.state = STATES[Math.floor(Math.random() * STATES.length)];
    d.battery = Math.max(0, Math.min(100, d.battery + Math.round((Math.random() - 0.6) * 10)));
    d.seq++;
  }
  return { channel: `devices.${id}`, event: 'status', data: { ...d } };
}

// Every 100 ms, a tenth of a second's worth of reports, in batches of ten.
const perTick = (devices * Number(o.rate)) / 600;
let carry = 0;
setInterval(() => {
  carry += perTick;
  const events = [];
  for (; carry >= 1; carry--) events.push(report(Math.floor(Math.random() * devices)));
  for (let i = 0; i < events.length; i += 10) void publish(events.slice(i, i + 10));
}, 100);
// Every device's state once at the start, so tiles fill at once.
for (let i = 0; i < devices; i += 10) {
  void publish(Array.from({ length: Math.min(10, devices - i) }, (_, k) => ({ channel: `devices.${i + k}`, event: 'status', data: { ...state[i + k] } })));
}
setInterval(() => {
  console.log(`simulator: ${devices} devices; ${stats.sent} reports sent, ${stats.unchanged} dropped as unchanged, ${stats.failed} failed`);
}, 10_000);
createServer((req, res) => {
  if (new URL(req.url, 'http://x').pathname !== '/fleet') return res.writeHead(404).end();
  res.writeHead(200, { 'content-type': 'application/json', 'access-control-allow-origin': '*' });
  res.end(JSON.stringify({ devices: state }));
}).listen(Number(o.port), '127.0.0.1');
console.log(`simulator: ${devices} devices reporting ${o.rate}/min each to ${o.url}; snapshot at http://127.0.0.1:${o.port}/fleet`);
