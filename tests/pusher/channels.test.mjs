// Every channel type, client events, batches, exclusion, queries and bad signatures, with
// pusher-js as the client and the `pusher` Node SDK as the backend.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  appToml, client, collect, connected, eventually, once, sdk, sleep, startHerald, subscribed,
} from './helpers.mjs';

let server;
const clients = [];
const open = (opts) => { const c = client(server, opts); clients.push(c); return connected(c); };

before(async () => {
  server = await startHerald(appToml({ extra: 'subscription_count = true' }));
});
after(async () => {
  clients.forEach((c) => c.disconnect());
  await server.stop();
});

test('public channels receive SDK triggers with the data decoded', async () => {
  const c = await open();
  assert.match(c.connection.socket_id, /^\d+\.\d+$/);
  const ch = await subscribed(c, 'orders');
  const got = once(ch, 'shipped');
  await sdk(server).trigger('orders', 'shipped', { id: 7, items: ['a'] });
  assert.deepEqual((await got).data, { id: 7, items: ['a'] });
});

test('private channels authorise through the SDK signature', async () => {
  const c = await open();
  const ch = await subscribed(c, 'private-orders.1');
  const got = once(ch, 'updated');
  await sdk(server).trigger('private-orders.1', 'updated', { status: 'paid' });
  assert.deepEqual((await got).data, { status: 'paid' });
});

test('a channel signature made with the wrong secret is refused with subscription_error', async () => {
  const c = await open({ authorizer: sdk(server, { secret: 'not-the-secret' }) });
  const ch = c.subscribe('private-secret');
  const { data } = await once(ch, 'pusher:subscription_error');
  assert.equal(data.status, 401);
  assert.equal(ch.subscribed, false);
});

test('presence: members with string and numeric ids, one member per user across connections', async () => {
  const a = await open({ presence: { user_id: 'ann', user_info: { name: 'Ann' } } });
  const room = await subscribed(a, 'presence-room');
  assert.equal(room.members.count, 1);
  assert.deepEqual(room.members.me.info, { name: 'Ann' });

  const added = collect(room, 'pusher:member_added');
  const removed = collect(room, 'pusher:member_removed');
  const b1 = await open({ presence: { user_id: 42, user_info: { name: 'Bob' } } });
  await subscribed(b1, 'presence-room');
  await eventually(() => added.length === 1);
  assert.equal(added[0].data.id, '42');
  assert.deepEqual(added[0].data.info, { name: 'Bob' });
  // Bob's second tab: no second member_added.
  const b2 = await open({ presence: { user_id: 42, user_info: { name: 'Bob' } } });
  const room2 = await subscribed(b2, 'presence-room');
  assert.equal(room2.members.count, 2);
  await sleep(200);
  assert.equal(added.length, 1);
  assert.equal(room.members.count, 2);
  // Closing one tab keeps Bob; closing the last removes him.
  b1.disconnect();
  await sleep(300);
  assert.equal(removed.length, 0);
  b2.disconnect();
  await eventually(() => removed.length === 1);
  assert.equal(removed[0].data.id, '42');
  assert.equal(room.members.count, 1);

  const users = await (await sdk(server).get({ path: '/channels/presence-room/users' })).json();
  assert.deepEqual(users, { users: [{ id: 'ann' }] });
});

test('client events reach the others, never the sender, with user_id on presence', async () => {
  const a = await open({ presence: { user_id: 'ann' } });
  const b = await open({ presence: { user_id: 'bob' } });
  const ra = await subscribed(a, 'presence-chat');
  const rb = await subscribed(b, 'presence-chat');
  const echoed = collect(ra, 'client-typing');
  const got = once(rb, 'client-typing');
  assert.equal(ra.trigger('client-typing', { on: true }), true);
  const { data, meta } = await got;
  assert.deepEqual(data, { on: true });
  assert.equal(meta.user_id, 'ann');
  await sleep(200);
  assert.equal(echoed.length, 0);

  // On a private channel too.
  const pa = await subscribed(a, 'private-doc.1');
  const pb = await subscribed(b, 'private-doc.1');
  const edit = once(pb, 'client-edit');
  pa.trigger('client-edit', { line: 3 });
  assert.deepEqual((await edit).data, { line: 3 });
});

test('encrypted channels: the SDK encrypts, pusher-js decrypts, the server passes through', async () => {
  const key = randomBytes(32).toString('base64');
  const backend = sdk(server, { encryptionMasterKeyBase64: key });
  // pusher-js's Node build includes the NaCl decryption; the backend's channel auth answer
  // carries the per-channel shared secret.
  const c = await open({ authorizer: backend });
  const ch = await subscribed(c, 'private-encrypted-vault');
  const got = once(ch, 'secret');
  await backend.trigger('private-encrypted-vault', 'secret', { pin: '1234' });
  assert.deepEqual((await got).data, { pin: '1234' });
});

test('cache channels replay the last event, or say cache_miss', async () => {
  const first = await open();
  const miss = first.subscribe('cache-prices');
  await once(miss, 'pusher:cache_miss');
  await sdk(server).trigger('cache-prices', 'price', { eur: 10 });
  const late = await open();
  const ch = late.subscribe('cache-prices');
  const { data } = await once(ch, 'price');
  assert.deepEqual(data, { eur: 10 });
  const info = await (await sdk(server).get({ path: '/channels/cache-prices', params: { info: 'cache' } })).json();
  assert.equal(info.cache.event, 'price');
});

test('batch triggers and socket exclusion', async () => {
  const a = await open();
  const b = await open();
  const cha = await subscribed(a, 'news');
  const chb = await subscribed(b, 'news');
  const gotA = collect(cha, 'story');
  const gotB = collect(chb, 'story');
  await sdk(server).triggerBatch([
    { channel: 'news', name: 'story', data: { n: 1 } },
    { channel: 'news', name: 'story', data: { n: 2 } },
  ]);
  await eventually(() => gotA.length === 2 && gotB.length === 2);
  assert.deepEqual(gotA.map((e) => e.data.n), [1, 2]);
  // Exclude a's socket: only b receives.
  await sdk(server).trigger('news', 'story', { n: 3 }, { socket_id: a.connection.socket_id });
  await eventually(() => gotB.length === 3);
  await sleep(200);
  assert.equal(gotA.length, 2);
});

test('channel queries: list with user_count, info with subscription_count', async () => {
  const a = await open({ presence: { user_id: 'q1' } });
  await subscribed(a, 'presence-lobby');
  await subscribed(a, 'stats');
  const api = sdk(server);
  const list = await (await api.get({ path: '/channels', params: { filter_by_prefix: 'presence-lobby', info: 'user_count' } })).json();
  assert.deepEqual(list.channels['presence-lobby'], { user_count: 1 });
  const info = await (await api.get({ path: '/channels/stats', params: { info: 'subscription_count' } })).json();
  assert.equal(info.occupied, true);
  assert.equal(info.subscription_count, 1);
  const trigger = await (await api.trigger('stats', 'x', {}, { info: 'subscription_count' })).json();
  assert.equal(trigger.channels.stats.subscription_count, 1);
});

test('subscription_count events reach subscribers', async () => {
  const a = await open();
  const ch = a.subscribe('counted');
  const first = await once(ch, 'pusher:subscription_count');
  assert.equal(first.data.subscription_count, 1);
  const second = once(ch, 'pusher:subscription_count');
  await subscribed(await open(), 'counted');
  assert.equal((await second).data.subscription_count, 2);
});

test('the HTTP API refuses a bad signature with 401', async () => {
  await assert.rejects(
    sdk(server, { secret: 'wrong-secret-000' }).trigger('news', 'x', {}),
    (e) => e.status === 401,
  );
});
