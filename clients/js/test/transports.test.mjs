// The client in Node against the real `herald` binary, on each transport: the application
// code is the same whatever carries it.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { Herald } from '../dist/index.js';
import { api, connected, eventually, jwt, next, nextEvent, publish, sleep, startHerald, subscribers } from './helpers.mjs';

let server;
before(async () => { server = await startHerald(); });
after(async () => { await server?.stop(); });

const make = (transport, options = {}) => new Herald({
  url: server.url, key: 'app-key', WebSocket, transports: [transport], rememberTransport: 'none', ...options,
});

for (const transport of ['websocket', 'sse', 'polling']) {
  describe(`over ${transport}`, () => {
    test('publications arrive in order, with their metadata, and direct messages too', async () => {
      const herald = make(transport, { token: jwt({ sub: 'ann' }) });
      const states = [];
      herald.on('state', (s) => states.push(s.current));
      herald.connect();
      await connected(herald, transport);
      assert.equal(herald.status, { websocket: 'connected-live', sse: 'connected-sse', polling: 'connected-poll' }[transport]);
      assert.equal(herald.userId, 'ann');
      assert.match(herald.socketId, /^\d+\.\d+$/);

      const sub = herald.subscribe(`news.${transport}`);
      const got = [];
      sub.bind('story', (data, meta) => got.push({ data, meta }));
      const all = [];
      sub.bindAll((data, meta) => all.push(meta.event));
      await next(sub, 'subscribed');
      for (let i = 1; i <= 20; i++) await publish(server, `news.${transport}`, i % 2 ? 'story' : 'other', { i });
      await eventually(() => all.length === 20);
      assert.deepEqual(got.map((g) => g.data.i), [1, 3, 5, 7, 9, 11, 13, 15, 17, 19]);
      assert.equal(got[0].meta.channel, `news.${transport}`);
      assert.equal(got[0].meta.event, 'story');
      assert.equal(typeof got[0].meta.offset, 'number');
      assert.ok(got[0].meta.timestamp > 0);

      const direct = nextEvent(herald, 'note');
      await api(server, 'POST', '/users/ann/events', { event: 'note', data: { hi: 1 } });
      assert.deepEqual((await direct).data, { hi: 1 });

      herald.disconnect();
      assert.deepEqual(states, ['connecting', 'connected', 'disconnected']);
    });

    test('unsubscribing the last listener leaves the channel', async () => {
      const herald = make(transport);
      herald.connect();
      const channel = `leave.${transport}`;
      const sub = herald.subscribe(channel);
      const offA = sub.bind('x', () => {});
      const offB = sub.bind('y', () => {});
      await next(sub, 'subscribed');
      assert.equal(await subscribers(server, channel), 1);
      offA();
      await sleep(100);
      assert.equal(await subscribers(server, channel), 1, 'one listener is left');
      offB();
      await eventually(async () => (await subscribers(server, channel)) === 0);
      assert.equal(herald.channel(channel), undefined);
      herald.disconnect();
    });

    test('presence: members, joined, left; client events reach the other member', async () => {
      const channel = `presence-room.${transport}`;
      const token = (sub) => jwt({ sub, channels: ['presence-*'], info: { name: sub.toUpperCase() } });
      const ann = make(transport, { token: token('ann') });
      // Bob is on a WebSocket whatever Ann is on: both ways across transports.
      const bob = make('websocket', { token: token('bob') });
      ann.connect();
      const annRoom = ann.subscribe(channel);
      // Held by a listener for the whole test: the transient ones below come and go, and
      // unbinding a channel's last listener would leave it.
      annRoom.bindAll(() => {});
      await next(annRoom, 'members');
      assert.deepEqual([...annRoom.members.keys()], ['ann']);

      const joined = next(annRoom, 'joined');
      bob.connect();
      const bobRoom = bob.subscribe(channel);
      bobRoom.bindAll(() => {});
      const members = await next(bobRoom, 'members');
      assert.deepEqual([...members.keys()].sort(), ['ann', 'bob']);
      assert.deepEqual(await joined, { userId: 'bob', info: { name: 'BOB' } });

      const typing = nextEvent(bobRoom, 'client-typing');
      assert.equal(annRoom.whisper('typing', { on: true }), true);
      const { data, meta } = await typing;
      assert.deepEqual(data, { on: true });
      assert.equal(meta.userId, 'ann');
      const back = nextEvent(annRoom, 'client-typing');
      bobRoom.trigger('client-typing', { on: false });
      assert.deepEqual((await back).data, { on: false });

      const left = next(annRoom, 'left');
      bob.disconnect();
      assert.equal((await left).userId, 'bob');
      assert.deepEqual([...annRoom.members.keys()], ['ann']);
      ann.disconnect();
    });

    test('a refused subscribe reaches the subscription as a typed error', async () => {
      const herald = make(transport, { token: jwt({ sub: 'ann', channels: ['private-mine.*'] }) });
      herald.connect();
      const sub = herald.subscribe('private-theirs.1');
      const error = await next(sub, 'error');
      assert.equal(error.kind, 'server');
      assert.equal(error.code, 205);
      assert.equal(error.reason, 'channel_not_allowed');
      assert.equal(error.channel, 'private-theirs.1');
      assert.equal(sub.state, 'unsubscribed');
      const ok = herald.subscribe('private-mine.1');
      await next(ok, 'subscribed');
      herald.disconnect();
    });
  });
}

test('subscription tokens come from getSubscriptionToken, for private and presence channels only', async () => {
  const asked = [];
  const herald = make('websocket', {
    token: jwt({ sub: 'ann' }),
    getSubscriptionToken: async (channel) => { asked.push(channel); return jwt({ sub: 'ann', channel }); },
  });
  herald.connect();
  const a = herald.subscribe('private-orders.42');
  const b = herald.subscribe('public-feed');
  await Promise.all([next(a, 'subscribed'), next(b, 'subscribed')]);
  assert.deepEqual(asked, ['private-orders.42']);
  herald.disconnect();
});

test('a refused connection gives up with the close code, typed, whatever the transport', async () => {
  for (const transport of ['websocket', 'sse', 'polling']) {
    const herald = make(transport, { token: 'not-a-jwt' });
    const error = next(herald, 'error');
    herald.connect();
    const e = await error;
    assert.equal(e.kind, 'closed', transport);
    assert.equal(e.code, 4004, transport);
    assert.equal(herald.state, 'failed', transport);
    assert.equal(herald.status, 'failed');
  }
  const wrongKey = new Herald({ url: server.url, key: 'nope', WebSocket, transports: ['sse'], rememberTransport: 'none' });
  const error = next(wrongKey, 'error');
  wrongKey.connect();
  assert.equal((await error).code, 4001);
});

test('an HTTP session batches what is sent in one tick into one POST', async () => {
  const posts = [];
  const counting = (url, init) => {
    if (init?.method === 'POST' && /\/poll\/app-key\/[0-9a-f]{32}$/.test(url)) posts.push(JSON.parse(init.body).length);
    return fetch(url, init);
  };
  const herald = make('polling', { fetch: counting });
  const subs = Array.from({ length: 30 }, (_, i) => herald.subscribe(`batch.${i}`));
  herald.connect();
  await Promise.all(subs.map((s) => next(s, 'subscribed')));
  assert.deepEqual(posts, [30], 'thirty subscribes, one POST');
  herald.disconnect();
});
