// Laravel's `redis` broadcast driver, without an HTTP bridge: a raw Redis PUBLISH in exactly
// Laravel's format reaches Laravel Echo (pusher-js), and `socket` leaves out the sender's own
// connection (Laravel's `->toOthers()`). Two Herald nodes share Redis; only one ingests.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import EchoModule from 'laravel-echo';
import PusherJs from 'pusher-js';
import { APP, appToml, eventually, sdk, sleep, startHerald } from './helpers.mjs';

const Echo = EchoModule.default ?? EchoModule;
const REDIS = { host: '127.0.0.1', port: 6379 };
const PREFIX = `laravel_test_${process.pid}_${Date.now()}_`;

/** PUBLISH over RESP, as phpredis/predis send it; resolves with the receiver count. */
function redisPublish(channel, payload) {
  return new Promise((res, rej) => {
    const s = connect(REDIS, () => {
      const arg = (a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`;
      s.write(`*3\r\n${arg('PUBLISH')}${arg(channel)}${arg(payload)}`);
    });
    s.once('data', (d) => { s.end(); res(Number(d.toString().slice(1).trim())); });
    s.once('error', rej);
  });
}

async function redisUp() {
  try { await redisPublish('herald-probe', 'x'); return true; } catch { return false; }
}

let nodes = [];
let skip = null;
before(async () => {
  if (!(await redisUp())) {
    if (process.env.CI === 'true') throw new Error('Redis is not reachable at 127.0.0.1:6379, and CI=true');
    skip = 'Redis is not reachable at 127.0.0.1:6379';
    return;
  }
  const toml = `[broker]
kind = "redis"
[redis]
prefix = "herald-js-${process.pid}-${Date.now()}"
[cluster]
heartbeat_interval = "200ms"
node_ttl = "2s"
[[laravel_ingest]]
app = "${APP.id}"
prefix = "${PREFIX}"
channels = ["private-*", "orders*"]
${appToml()}`;
  nodes = [await startHerald(toml), await startHerald(toml)];
});
after(async () => { for (const n of nodes) await n.stop(); });

function echo(server) {
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

test('a Laravel Redis broadcast reaches Echo on every node, except the sender with toOthers()', async (t) => {
  if (skip) { t.skip(skip); return; }
  const [a, b] = [echo(nodes[0]), echo(nodes[1])];
  const gotA = [];
  const gotB = [];
  a.private('orders.1').listen('OrderShipped', (e) => gotA.push(e));
  b.private('orders.1').listen('OrderShipped', (e) => gotB.push(e));
  await eventually(() => a.connector.pusher.channel('private-orders.1')?.subscribed
    && b.connector.pusher.channel('private-orders.1')?.subscribed);

  // What Laravel's RedisBroadcaster sends for `broadcast(new OrderShipped($order))`.
  const broadcast = (id, socket) => JSON.stringify({
    event: 'App\\Events\\OrderShipped',
    data: { order: { id }, socket },
    socket,
  });
  const channel = `${PREFIX}private-orders.1`;
  // Exactly one node holds the ingest lease: Redis reports one subscriber.
  let n = 0;
  await eventually(async () => (await redisPublish(channel, broadcast(n++, null))) === 1, 10000);
  await eventually(() => gotA.length > 0 && gotB.length > 0);
  const first = gotA[0].order.id;
  assert.deepEqual(gotB[0], { order: { id: first }, socket: null });

  // ->toOthers(): the X-Socket-ID of the request that triggered it.
  const sender = a.socketId();
  assert.equal(await redisPublish(channel, broadcast(1000, sender)), 1);
  await eventually(() => gotB.some((e) => e.order.id === 1000));
  await sleep(300);
  assert.ok(!gotA.some((e) => e.order.id === 1000), 'the sender is left out');
  // Nothing arrived twice although two nodes share the Redis.
  const ids = gotB.map((e) => e.order.id);
  assert.deepEqual(ids, [...new Set(ids)]);
  a.disconnect();
  b.disconnect();
});
