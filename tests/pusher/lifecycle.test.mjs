// Connection lifecycle webhooks (connection_opened, connection_closed) across two nodes on
// Redis, verified with the Pusher SDK's own check; a node killed with SIGKILL has each of its
// connections reported closed exactly once, by the node that cleans up after it.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createConnection } from 'node:net';
import {
  appToml, client, connected, eventually, sdk, sleep, startHerald, webhookReceiver,
} from './helpers.mjs';

async function redisUp() {
  return new Promise((resolve) => {
    const s = createConnection({ host: '127.0.0.1', port: 6379 }, () => { s.end(); resolve(true); });
    s.on('error', () => resolve(false));
  });
}

let nodes = [];
let hooks;
let skip = null;
before(async () => {
  if (!(await redisUp())) {
    if (process.env.CI === 'true') throw new Error('Redis is not reachable at 127.0.0.1:6379, and CI=true');
    skip = 'Redis is not reachable at 127.0.0.1:6379';
    return;
  }
  hooks = await webhookReceiver();
  const toml = `[broker]
kind = "redis"
[redis]
prefix = "herald-lifecycle-${process.pid}-${Date.now()}"
[cluster]
heartbeat_interval = "200ms"
node_ttl = "1s"
${appToml({
    tables: `[[apps.webhooks]]
url = "${hooks.url}"
event_types = ["connection_opened", "connection_closed"]
`,
  })}`;
  nodes = [await startHerald(toml), await startHerald(toml)];
});
after(async () => {
  for (const n of nodes) await n.stop();
  if (hooks) await hooks.close();
});

/** Every verified connection event so far. */
function events() {
  const backend = sdk(nodes[0]);
  return hooks.requests.flatMap((r) => {
    const hook = backend.webhook({ headers: r.headers, rawBody: r.rawBody });
    assert.equal(hook.isValid(), true, 'every webhook verifies with the SDK');
    return hook.getEvents();
  });
}

const of = (name, socketId) => events().filter((e) => e.name === name && e.socket_id === socketId);

test('opened and closed on two nodes; a killed node\'s connections are closed once each', async (t) => {
  if (skip) { t.skip(skip); return; }
  const [a, b] = nodes;
  const onA = [client(a), client(a), client(a)];
  const onB = [client(b), client(b), client(b), client(b)];
  for (const c of [...onA, ...onB]) await connected(c);
  const ids = (list) => list.map((c) => c.connection.socket_id);
  const [idsA, idsB] = [ids(onA), ids(onB)];
  // Every connection is announced once, with how it connected; no address by default.
  for (const id of [...idsA, ...idsB]) {
    const opened = await eventually(() => of('connection_opened', id)[0]);
    assert.equal(opened.protocol, 'pusher');
    assert.equal(opened.transport, 'websocket');
    assert.equal(typeof opened.opened_at_ms, 'number');
    assert.equal(opened.client_ip, undefined, 'the client address is off by default');
  }

  // One closes on each node.
  onA[0].disconnect();
  onB[0].disconnect();
  for (const id of [idsA[0], idsB[0]]) {
    const closed = await eventually(() => of('connection_closed', id)[0]);
    assert.equal(closed.reason, 'client');
    assert.ok([1000, null].includes(closed.close_code), JSON.stringify(closed));
    assert.ok(closed.duration_ms >= 0);
  }

  // Node B dies: the three it still held are reported closed by node A.
  await sleep(500); // one heartbeat has written B's records
  await b.kill();
  for (const id of idsB.slice(1)) {
    const lost = await eventually(() => of('connection_closed', id)[0], 10000);
    assert.equal(lost.reason, 'node_lost', JSON.stringify(lost));
  }
  await sleep(2000); // nothing more comes
  for (const id of idsB) {
    assert.equal(of('connection_opened', id).length, 1, `${id} opened once`);
    assert.equal(of('connection_closed', id).length, 1, `${id} closed exactly once`);
  }
  for (const id of idsA.slice(1)) {
    assert.equal(of('connection_closed', id).length, 0, `${id} on the live node is still open`);
  }
  for (const c of onA.slice(1)) c.disconnect();
  for (const id of idsA.slice(1)) await eventually(() => of('connection_closed', id)[0]);
  for (const c of onB) c.disconnect();
});
