// The load-balancer configurations of docs/scaling.md, run for real: two Herald nodes on one
// Redis behind Debian's nginx and HAProxy, each configured with the block the docs show
// (only the addresses and the TLS listener are changed, by the code below, so a change to the
// docs is a change to what this tests; HAProxy's health checks also run every 500 ms instead
// of 2 s, so a restarted node is back in seconds). Through each proxy: native and Pusher WebSockets, SSE
// that is not buffered, long-polling and pusher-js's HTTP fallback that stay on one node, and
// X-Forwarded-For, which counts against the per-IP limit when the proxy is trusted and is
// ignored when it is not.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import WebSocket from 'ws';
import { Herald } from '../dist/index.js';
import { APP, appToml, connected, freePort, next, nextEvent, publish, sleep, startHerald } from './helpers.mjs';

const NGINX = process.env.NGINX_BIN ?? '/usr/sbin/nginx';
const HAPROXY = process.env.HAPROXY_BIN ?? '/usr/sbin/haproxy';
const SCALING = join(import.meta.dirname, '../../../docs/scaling.md');

/** The fenced block of `lang` in docs/scaling.md. */
function documented(lang) {
  const text = readFileSync(SCALING, 'utf8');
  const m = text.match(new RegExp('```' + lang + '\\n([\\s\\S]*?)```'));
  assert.ok(m, `docs/scaling.md has a ${lang} block`);
  return m[1];
}

/** The docs' upstream servers (10.0.0.11–13) become the two local nodes. */
function nodesFor(config, nodes, line) {
  const lines = config.split('\n');
  const out = [];
  let n = 0;
  for (const l of lines) {
    const m = l.match(/10\.0\.0\.1(\d):6001/);
    if (!m) { out.push(l); continue; }
    const i = Number(m[1]) - 1;
    if (i < nodes.length) out.push(line(l, nodes[i]));
    n += 1;
  }
  assert.ok(n >= nodes.length, 'the documented config names its nodes');
  return out.join('\n');
}

function nginxConf(dir, port, nodes) {
  let site = documented('nginx');
  site = nodesFor(site, nodes, (l, node) => l.replace(/10\.0\.0\.1\d:6001/, `127.0.0.1:${node.port}`));
  site = site.replace(/listen 443 ssl;/, `listen 127.0.0.1:${port};`).replace(/^\s*server_name .*$/m, '');
  return `
${process.getuid?.() === 0 ? 'user root;' : ''}
worker_processes 1;
master_process off;
daemon off;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
${site}
}
`;
}

function haproxyConf(port, nodes) {
  let conf = documented('haproxy');
  conf = nodesFor(conf, nodes, (l, node) => l
    .replace(/10\.0\.0\.1\d:6001/, `127.0.0.1:${node.port}`)
    .replace(/check port 9601/, `check port ${node.adminPort} inter 500ms`));
  return conf.replace(/bind :443 ssl crt \S+/, `bind 127.0.0.1:${port}`);
}

/** Run `cmd` until stopped; resolves once `port` accepts connections. */
async function daemon(cmd, args, port) {
  const proc = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  proc.stderr.on('data', (d) => { stderr += d; });
  process.once('exit', () => proc.kill('SIGKILL'));
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`${cmd} exited ${proc.exitCode}: ${stderr}`);
    const up = await new Promise((res) => {
      const s = createConnection({ host: '127.0.0.1', port }, () => { s.end(); res(true); });
      s.on('error', () => res(false));
    });
    if (up) break;
    if (Date.now() > deadline) throw new Error(`${cmd} did not start: ${stderr}`);
    await sleep(25);
  }
  return {
    stop: async () => {
      if (proc.exitCode === null) {
        proc.kill('SIGKILL');
        await new Promise((r) => proc.once('exit', r));
      }
    },
  };
}

async function startNginx(nodes) {
  const dir = mkdtempSync(join(tmpdir(), 'herald-lb-nginx-'));
  mkdirSync(join(dir, 'logs'));
  const port = await freePort();
  writeFileSync(join(dir, 'nginx.conf'), nginxConf(dir, port, nodes));
  const d = await daemon(NGINX, ['-p', dir, '-c', join(dir, 'nginx.conf')], port);
  return { ...d, port, url: `http://127.0.0.1:${port}` };
}

async function startHaproxy(nodes) {
  const dir = mkdtempSync(join(tmpdir(), 'herald-lb-haproxy-'));
  const port = await freePort();
  writeFileSync(join(dir, 'haproxy.cfg'), haproxyConf(port, nodes));
  const d = await daemon(HAPROXY, ['-db', '-f', join(dir, 'haproxy.cfg')], port);
  // Wait until the health checks have found both nodes up.
  await sleep(1500);
  return { ...d, port, url: `http://127.0.0.1:${port}` };
}

/** Two nodes on one Redis; `trusted` lists the proxy as trusted (or not). */
async function startNodes({ trusted, ports = [{}, {}] }) {
  const prefix = `lb-${process.pid}-${Date.now()}`;
  const top = `
[server]
trusted_proxies = ${trusted ? '["127.0.0.1/32"]' : '[]'}

[broker]
kind = "redis"

[redis]
url = "redis://127.0.0.1:6379"
prefix = "${prefix}"

[limits]
max_connections_per_ip = 2
`;
  const toml = appToml({ top });
  return [await startHerald(toml, ports[0]), await startHerald(toml, ports[1])];
}

const ws = (base, path, headers = {}) => new Promise((res, rej) => {
  const socket = new WebSocket(base.replace('http', 'ws') + path, { headers });
  const messages = [];
  socket.on('message', (d) => messages.push(JSON.parse(d.toString())));
  socket.once('open', () => res({ socket, messages }));
  socket.once('error', rej);
});

const within = (ms, p, what) => Promise.race([
  p, new Promise((_, rej) => setTimeout(() => rej(new Error(`${what}: not within ${ms} ms`)), ms)),
]);

const available = existsSync(NGINX) && existsSync(HAPROXY);
function requireProxies(t) {
  if (available) return true;
  if (process.env.CI === 'true') assert.fail(`${NGINX} and ${HAPROXY} are required: install nginx-light and haproxy`);
  t.skip('nginx or haproxy is not installed');
  return false;
}

let nodes = [];
const proxies = {};
before(async () => {
  if (!available) return;
  nodes = await startNodes({ trusted: true });
  proxies.nginx = await startNginx(nodes);
  proxies.haproxy = await startHaproxy(nodes);
});
after(async () => {
  for (const p of Object.values(proxies)) await p.stop();
  for (const n of nodes) await n.stop();
});

for (const name of ['nginx', 'haproxy']) {
  test(`${name}: native and Pusher WebSockets, through either node`, async (t) => {
    if (!requireProxies(t)) return;
    const base = proxies[name].url;
    const native = await ws(base, `/ws/${APP.key}`);
    native.socket.send(JSON.stringify({ type: 'subscribe', channel: `lb-${name}` }));
    const pusher = await ws(base, `/app/${APP.key}?protocol=7&client=js&version=8.6.0`);
    pusher.socket.send(JSON.stringify({ event: 'pusher:subscribe', data: { channel: `lb-${name}` } }));
    await within(5000, (async () => {
      while (!native.messages.some((m) => m.event === 'subscribed')
        || !pusher.messages.some((m) => m.event === 'pusher_internal:subscription_succeeded')) await sleep(20);
    })(), 'subscribed');
    // Published on one node; the subscribers may be on either: Redis carries it.
    await publish(nodes[0], `lb-${name}`, 'hello', { via: name });
    await within(5000, (async () => {
      while (!native.messages.some((m) => m.event === 'hello') || !pusher.messages.some((m) => m.event === 'hello')) await sleep(20);
    })(), 'delivered');
    native.socket.close();
    pusher.socket.close();
  });

  for (const transport of ['sse', 'polling']) {
    test(`${name}: ${transport} stays on one node and is not held back`, async (t) => {
      if (!requireProxies(t)) return;
      const client = new Herald({
        url: proxies[name].url, key: APP.key, WebSocket, transports: [transport], rememberTransport: 'none',
      });
      const states = [];
      client.on('state', (st) => states.push(st.current));
      try {
        client.connect();
        await connected(client, transport);
        const sub = client.subscribe(`lb-${name}-${transport}`);
        const got = nextEvent(sub, 'tick');
        await next(sub, 'subscribed');
        const sent = Date.now();
        await publish(nodes[1], `lb-${name}-${transport}`, 'tick', { n: 1 });
        await got;
        // Not buffered by the proxy: it arrives at once, not at the next heartbeat.
        assert.ok(Date.now() - sent < 1000, `arrived after ${Date.now() - sent} ms`);
        // A subscribe sent after the session opened reached the node holding the session
        // (sticky): it is answered, and its channel delivers.
        const second = client.subscribe(`lb-${name}-${transport}-2`);
        const got2 = nextEvent(second, 'tock');
        await next(second, 'subscribed');
        await publish(nodes[0], `lb-${name}-${transport}-2`, 'tock', { n: 2 });
        await got2;
        // One session throughout: a request routed to the other node would have ended it
        // (404) and made the client reconnect.
        assert.deepEqual(states, ['connecting', 'connected']);
      } finally {
        client.disconnect();
      }
    });
  }

}

/** Open and hold WebSockets with `headers` until one is refused (or `max` are open). */
async function holdUntilRefused(base, path, headers, max = 6) {
  const held = [];
  for (let i = 0; i < max; i += 1) {
    const socket = new WebSocket(base.replace('http', 'ws') + path, { headers });
    const outcome = await new Promise((res) => {
      let timer;
      socket.on('error', () => {});
      socket.on('close', (code) => { clearTimeout(timer); res(code); });
      socket.once('open', () => { timer = setTimeout(() => res('open'), 300); });
    });
    if (outcome !== 'open') return { held, refused: outcome };
    held.push(socket);
  }
  return { held, refused: null };
}

const closeAll = (sockets) => sockets.forEach((s) => s.terminate());

/**
 * Per-IP limits (2 per node here, so 4 across the two) count the address X-Forwarded-For
 * names when the proxy is in `trusted_proxies`, and the proxy's own address when it is not.
 */
test('X-Forwarded-For: counted per client behind a trusted proxy, ignored behind an untrusted one', async (t) => {
  if (!requireProxies(t)) return;
  const path = `/ws/${APP.key}`;
  const ann = { 'x-forwarded-for': '203.0.113.7' };
  const bob = { 'x-forwarded-for': '198.51.100.9' };
  for (const trusted of [true, false]) {
    if (!trusted) {
      // The same nodes, on the same ports, without the proxy among the trusted.
      const ports = nodes.map((n) => ({ port: n.port, adminPort: n.adminPort }));
      for (const n of nodes) await n.stop();
      nodes = await startNodes({ trusted: false, ports });
      await sleep(1500); // HAProxy's checks find them up again
    }
    for (const name of ['nginx', 'haproxy']) {
      const base = proxies[name].url;
      const a = await holdUntilRefused(base, path, ann);
      assert.equal(a.refused, 4100, `${name}, trusted=${trusted}: the fifth of one address is over its limit`);
      assert.ok(a.held.length >= 2 && a.held.length <= 4, `${name}: ${a.held.length} held`);
      const b = await holdUntilRefused(base, path, bob, 1);
      if (trusted) {
        assert.equal(b.refused, null, `${name}: another address behind a trusted proxy is its own client`);
      } else {
        assert.equal(b.refused, 4100, `${name}: behind an untrusted proxy every client is the proxy's address`);
      }
      closeAll([...a.held, ...b.held]);
      await sleep(300);
    }
  }
});
