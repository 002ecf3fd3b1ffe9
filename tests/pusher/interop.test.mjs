// One hub, two protocols: Pusher publishes reach native clients, native publishes reach
// pusher-js, and presence is shared.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import {
  APP, appToml, client, collect, connected, eventually, jwt, once, sdk, startHerald, subscribed,
} from './helpers.mjs';

let server;
before(async () => { server = await startHerald(appToml()); });
after(async () => { await server.stop(); });

/** A native-protocol client: every message it receives, and a way to send. */
async function native(token) {
  const ws = new WebSocket(`ws://127.0.0.1:${server.port}/ws/${APP.key}${token ? `?token=${token}` : ''}`);
  const messages = [];
  ws.on('message', (m) => messages.push(JSON.parse(m.toString())));
  await new Promise((res, rej) => { ws.once('open', res); ws.once('error', rej); });
  await eventually(() => messages.find((m) => m.type === 'connected'));
  return {
    messages,
    send: (m) => ws.send(JSON.stringify(m)),
    close: () => ws.close(),
    next: (pred) => eventually(() => messages.find(pred)),
  };
}

test('an SDK trigger reaches a native client, with JSON data parsed', async () => {
  const n = await native();
  n.send({ type: 'subscribe', channel: 'mixed', ref: 1 });
  await n.next((m) => m.type === 'subscribe' && m.ref === 1);
  await sdk(server).trigger('mixed', 'hello', { from: 'pusher-sdk' });
  const ev = await n.next((m) => m.type === 'event' && m.event === 'hello');
  assert.deepEqual(ev.data, { from: 'pusher-sdk' });
  n.close();
});

test('a native API publish reaches pusher-js', async () => {
  const c = await connected(client(server));
  const ch = await subscribed(c, 'mixed2');
  const got = once(ch, 'from-native');
  const r = await fetch(`${server.url}/api/${APP.id}/publish`, {
    method: 'POST',
    headers: { authorization: `Bearer ${APP.secret}`, 'content-type': 'application/json' },
    body: JSON.stringify({ channel: 'mixed2', event: 'from-native', data: { n: 1 } }),
  });
  assert.equal(r.status, 200);
  assert.deepEqual((await got).data, { n: 1 });
  c.disconnect();
});

test('presence is shared between a native JWT client and pusher-js', async () => {
  const c = await connected(client(server, { presence: { user_id: 'pat', user_info: { via: 'pusher' } } }));
  const room = await subscribed(c, 'presence-shared');
  const added = collect(room, 'pusher:member_added');
  const n = await native(jwt({ sub: 'nat', channels: ['presence-*'], info: { via: 'native' } }));
  n.send({ type: 'subscribe', channel: 'presence-shared', ref: 2 });
  const sync = await n.next((m) => m.type === 'presence' && m.event === 'sync');
  assert.deepEqual(sync.data.members.map((m) => m.user_id).sort(), ['nat', 'pat']);
  await eventually(() => added.length === 1);
  assert.equal(added[0].data.id, 'nat');
  assert.deepEqual(added[0].data.info, { via: 'native' });
  assert.equal(room.members.count, 2);
  // A pusher-js client event reaches the native member with its sender.
  room.trigger('client-wave', { hi: true });
  const wave = await n.next((m) => m.event === 'client-wave');
  assert.equal(wave.user_id, 'pat');
  c.disconnect();
  await n.next((m) => m.type === 'presence' && m.event === 'left');
  n.close();
});
