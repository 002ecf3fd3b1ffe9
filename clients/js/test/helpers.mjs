// Shared helpers for the client's tests: a real `herald serve`, tokens, the HTTP API, a TCP
// proxy that can cut every connection, and waiting with deadlines (never fixed sleeps, except
// to prove that something does NOT happen).

import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer as netServer, connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

export const APP = { id: 'app-1', key: 'app-key', secret: 'app-secret-123' };
export const WAIT_MS = 10_000;

export const HERALD_BIN = process.env.HERALD_BIN
  ? resolve(process.env.HERALD_BIN)
  : resolve(import.meta.dirname, '../../../target/debug/herald');

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Every server a test starts dies with the test process, even when the test fails before its
// own cleanup runs.
const children = new Set();
process.on('exit', () => { for (const c of children) c.kill('SIGKILL'); });

/** A free TCP port on 127.0.0.1. */
export function freePort() {
  return new Promise((res, rej) => {
    const s = netServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

/**
 * The test app's TOML: client events on, plus `extra` keys, and history on every channel, deep
 * enough (10,000 publications, all recoverable at once) that a client cut off for a few
 * seconds while publications arrive at a thousand a second recovers them all.
 */
export function appToml({ extra = '', tables = '', top = '' } = {}) {
  return `${top}
[[apps]]
id = "${APP.id}"
key = "${APP.key}"
secret = "${APP.secret}"
client_events = true
${extra}

[apps.limits]
max_recovery_publications = 10000

[[apps.history]]
pattern = "*"
size = 10000
${tables}
`;
}

/**
 * Start `herald serve` with `toml` on `port` (a free one by default); resolves once /ready
 * answers. `restart()` stops it and starts it again on the same ports.
 */
export async function startHerald(toml = appToml(), { port, adminPort, env = {} } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'herald-client-'));
  const config = join(dir, 'herald.toml');
  writeFileSync(config, toml);
  port ??= await freePort();
  adminPort ??= await freePort();
  let proc;
  let stderr = '';
  async function launch() {
    proc = spawn(
      HERALD_BIN,
      ['serve', '--config', config, '--listen', `127.0.0.1:${port}`, '--admin-listen', `127.0.0.1:${adminPort}`, '--log-level', 'warn'],
      {
        stdio: ['ignore', 'ignore', 'pipe'],
        // HERALD_* variables are configuration to herald (HERALD_BIN would be an unknown key).
        env: { ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('HERALD_'))), ...env },
      },
    );
    proc.stderr.on('data', (d) => { stderr += d; });
    children.add(proc);
    proc.once('exit', () => children.delete(proc));
    const deadline = Date.now() + 15_000;
    for (;;) {
      if (proc.exitCode !== null) throw new Error(`herald exited ${proc.exitCode}: ${stderr}`);
      try {
        const r = await fetch(`http://127.0.0.1:${adminPort}/ready`);
        if (r.status === 200) return;
      } catch { /* not listening yet */ }
      if (Date.now() > deadline) throw new Error(`herald not ready: ${stderr}`);
      await sleep(50);
    }
  }
  async function stop() {
    if (proc && proc.exitCode === null) {
      proc.kill('SIGTERM');
      await new Promise((r) => proc.once('exit', r));
    }
  }
  await launch();
  return {
    port,
    adminPort,
    url: `http://127.0.0.1:${port}`,
    stop,
    async restart() {
      await stop();
      await launch();
    },
    get stderr() { return stderr; },
  };
}

/** An HS256 JWT signed with the app secret; `exp` five minutes ahead unless given. */
export function jwt(claims = {}) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const head = b64({ alg: 'HS256', typ: 'JWT' });
  const body = b64({ exp: Math.floor(Date.now() / 1000) + 300, ...claims });
  const sig = createHmac('sha256', APP.secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

/** Call the HTTP API; resolves with the JSON answer, throwing on a non-2xx status. */
export async function api(server, method, path, body) {
  const res = await fetch(`${server.url}/api/${APP.id}${path}`, {
    method,
    headers: { authorization: `Bearer ${APP.secret}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
  return text ? JSON.parse(text) : {};
}

export const publish = (server, channel, event, data, extra = {}) =>
  api(server, 'POST', '/publish', { channel, event, data, ...extra });

/** Subscribers of `channel` on the server now (0 when it has none). */
export async function subscribers(server, channel) {
  const info = await api(server, 'GET', `/channels/${encodeURIComponent(channel)}`);
  return info.subscribers ?? 0;
}

/** Poll `f` until it returns a truthy value. */
export async function eventually(f, ms = WAIT_MS, what = 'condition') {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`${what} not met in time`);
    await sleep(20);
  }
}

/** Resolve with the next value `emitter.on(name)` gives, or reject after a wait. */
export function next(emitter, name, ms = WAIT_MS, test = () => true) {
  return new Promise((res, rej) => {
    const t = setTimeout(() => { off(); rej(new Error(`timed out waiting for ${name}`)); }, ms);
    const off = emitter.on(name, (v) => {
      if (!test(v)) return;
      clearTimeout(t);
      off();
      res(v);
    });
  });
}

/** Resolve with the next application event `event` bound on `target`: `{data, meta}`. */
export function nextEvent(target, event, ms = WAIT_MS) {
  return new Promise((res, rej) => {
    const t = setTimeout(() => { off(); rej(new Error(`timed out waiting for event ${event}`)); }, ms);
    const off = target.bind(event, (data, meta) => {
      clearTimeout(t);
      off();
      res({ data, meta });
    });
  });
}

/** Resolve once the client is connected (on `transport`, if given). */
export function connected(client, transport, ms = WAIT_MS) {
  return eventually(() => client.state === 'connected' && (!transport || client.transport === transport), ms, `connected on ${transport ?? 'any'}`);
}

/**
 * A TCP proxy to `target` on 127.0.0.1: `cut()` destroys every connection through it (the
 * network failing under a client); `pause()`/`resume()` refuse new connections meanwhile.
 */
export async function tcpProxy(targetPort) {
  const sockets = new Set();
  let paused = false;
  const server = netServer((client) => {
    if (paused) return client.destroy();
    const upstream = netConnect(targetPort, '127.0.0.1');
    sockets.add(client).add(upstream);
    const done = () => { client.destroy(); upstream.destroy(); sockets.delete(client); sockets.delete(upstream); };
    client.on('error', done).on('close', done);
    upstream.on('error', done).on('close', done);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const port = server.address().port;
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    cut() { for (const s of sockets) s.destroy(); sockets.clear(); },
    pause() { paused = true; this.cut(); },
    resume() { paused = false; },
    close: () => new Promise((r) => { for (const s of sockets) s.destroy(); server.close(r); }),
  };
}
