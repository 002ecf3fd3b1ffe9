// Shared helpers: start a real `herald serve`, make real Pusher clients and SDKs for it,
// receive webhooks, and wait for things with timeouts (never fixed sleeps, except to prove
// that something does NOT happen).

import { spawn } from 'node:child_process';
import { createServer } from 'node:http';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer as netServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createHmac } from 'node:crypto';
import PusherJs from 'pusher-js';
import PusherServer from 'pusher';

export const APP = { id: 'app-1', key: 'app-key', secret: 'app-secret-123' };
export const WAIT_MS = 5000;

const HERALD_BIN = process.env.HERALD_BIN
  ? resolve(process.env.HERALD_BIN)
  : resolve(import.meta.dirname, '../../target/debug/herald');

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

/** The app's TOML, with `extra` lines appended inside [[apps]] (before any sub-table). */
export function appToml({ extra = '', tables = '' } = {}) {
  return `[[apps]]
id = "${APP.id}"
key = "${APP.key}"
secret = "${APP.secret}"
client_events = true
webhook_delay = "0s"
${extra}
${tables}
`;
}

/** Start `herald serve` with `toml`; resolves once /ready answers 200. */
export async function startHerald(toml = appToml()) {
  const dir = mkdtempSync(join(tmpdir(), 'herald-pusher-'));
  const config = join(dir, 'herald.toml');
  writeFileSync(config, toml);
  const port = await freePort();
  const adminPort = await freePort();
  const proc = spawn(
    HERALD_BIN,
    ['serve', '--config', config, '--listen', `127.0.0.1:${port}`,
      '--admin-listen', `127.0.0.1:${adminPort}`, '--log-level', 'warn'],
    // HERALD_* variables are configuration to herald (HERALD_BIN would be an unknown key).
    {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('HERALD_'))),
    },
  );
  let stderr = '';
  proc.stderr.on('data', (d) => { stderr += d; });
  const deadline = Date.now() + 15000;
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
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGTERM');
        await new Promise((r) => proc.once('exit', r));
      }
    },
    /** SIGKILL: the node dies without cleaning up, as in a crash. */
    async kill() {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGKILL');
        await new Promise((r) => proc.once('exit', r));
      }
    },
  };
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The `pusher` server SDK pointed at `server`. */
export function sdk(server, overrides = {}) {
  return new PusherServer({
    appId: APP.id,
    key: APP.key,
    secret: APP.secret,
    host: '127.0.0.1',
    port: String(server.port),
    useTLS: false,
    ...overrides,
  });
}

/**
 * A pusher-js client for `server`. Channel authorisation and user authentication go through
 * the SDK (`authorizer`), as a Laravel backend's /broadcasting/auth would.
 */
export function client(server, { presence = { user_id: 'u1', user_info: { name: 'U1' } },
  user = { id: 'u1', user_info: { name: 'U1' } }, authorizer = sdk(server), Client = PusherJs } = {}) {
  return new Client(APP.key, {
    wsHost: '127.0.0.1',
    wsPort: server.port,
    forceTLS: false,
    enabledTransports: ['ws'],
    cluster: 'mt1',
    disableStats: true,
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, cb) => {
        try {
          const data = channelName.startsWith('presence-') ? presence : undefined;
          cb(null, authorizer.authorizeChannel(socketId, channelName, data));
        } catch (e) { cb(e, null); }
      },
    },
    userAuthentication: {
      customHandler: ({ socketId }, cb) => {
        try { cb(null, authorizer.authenticateUser(socketId, user)); } catch (e) { cb(e, null); }
      },
    },
  });
}

/** Resolve when `emitter` (a pusher-js client or channel) emits `event`; reject after a wait. */
export function once(emitter, event, ms = WAIT_MS) {
  return new Promise((res, rej) => {
    const t = setTimeout(() => { emitter.unbind(event, handler); rej(new Error(`timed out waiting for ${event}`)); }, ms);
    function handler(data, meta) {
      clearTimeout(t);
      emitter.unbind(event, handler);
      res({ data, meta });
    }
    emitter.bind(event, handler);
  });
}

/** Resolve with a connected pusher-js client. */
export async function connected(c) {
  if (c.connection.state === 'connected') return c;
  await new Promise((res, rej) => {
    const t = setTimeout(() => rej(new Error(`not connected: ${c.connection.state}`)), WAIT_MS);
    c.connection.bind('connected', () => { clearTimeout(t); res(); });
  });
  return c;
}

/** Subscribe and wait for pusher:subscription_succeeded; resolves with the channel. */
export async function subscribed(c, name) {
  const ch = c.subscribe(name);
  if (ch.subscribed) return ch;
  const ok = once(ch, 'pusher:subscription_succeeded');
  const err = once(ch, 'pusher:subscription_error').then(({ data }) => {
    throw new Error(`subscription_error on ${name}: ${JSON.stringify(data)}`);
  });
  await Promise.race([ok, err]);
  err.catch(() => {});
  return ch;
}

/** Collect every `event` on `emitter` into an array (returned), for absence checks. */
export function collect(emitter, event) {
  const got = [];
  emitter.bind(event, (data, meta) => got.push({ data, meta }));
  return got;
}

/** Poll `f` until it returns a truthy value. */
export async function eventually(f, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await sleep(25);
  }
}

/** A local webhook receiver: every request's headers and raw body. */
export async function webhookReceiver() {
  const requests = [];
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (d) => { body += d; });
    req.on('end', () => {
      requests.push({ headers: req.headers, rawBody: body });
      res.writeHead(200).end();
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${server.address().port}/hook`,
    requests,
    close: () => new Promise((r) => server.close(r)),
  };
}

/** An HS256 JWT for the native protocol, signed with the app secret. */
export function jwt(claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const head = b64({ alg: 'HS256', typ: 'JWT' });
  const body = b64({ exp: Math.floor(Date.now() / 1000) + 300, ...claims });
  const sig = createHmac('sha256', APP.secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}
