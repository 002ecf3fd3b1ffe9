// Webhooks, received by a local HTTP server and verified with the SDK's own check.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  appToml, client, connected, eventually, sdk, startHerald, subscribed, webhookReceiver,
} from './helpers.mjs';

let server;
let hooks;
before(async () => {
  hooks = await webhookReceiver();
  server = await startHerald(appToml({
    tables: `[[apps.webhooks]]
url = "${hooks.url}"
`,
  }));
});
after(async () => {
  await server.stop();
  await hooks.close();
});

/** Every verified event received so far. */
function events() {
  const backend = sdk(server);
  return hooks.requests.flatMap((r) => {
    const hook = backend.webhook({ headers: r.headers, rawBody: r.rawBody });
    assert.equal(hook.isValid(), true, 'signature verifies with the SDK');
    return hook.getEvents();
  });
}

const has = (pred) => eventually(() => events().find(pred));

test('occupied, member added, client event, member removed, vacated: signed and verified', async () => {
  const a = client(server, { presence: { user_id: 'ann' } });
  const b = client(server, { presence: { user_id: 'bob' } });
  await connected(a);
  await connected(b);
  const ra = await subscribed(a, 'presence-hooks');
  await subscribed(b, 'presence-hooks');
  await has((e) => e.name === 'channel_occupied' && e.channel === 'presence-hooks');
  await has((e) => e.name === 'member_added' && e.user_id === 'bob');
  ra.trigger('client-ping', { n: 1 });
  const ce = await has((e) => e.name === 'client_event' && e.event === 'client-ping');
  assert.equal(ce.user_id, 'ann');
  assert.equal(ce.socket_id, a.connection.socket_id);
  assert.deepEqual(JSON.parse(ce.data), { n: 1 });
  b.disconnect();
  await has((e) => e.name === 'member_removed' && e.user_id === 'bob');
  a.disconnect();
  await has((e) => e.name === 'channel_vacated' && e.channel === 'presence-hooks');

  const r = hooks.requests[0];
  assert.equal(r.headers['x-pusher-key'], 'app-key');
  const body = JSON.parse(r.rawBody);
  assert.equal(typeof body.time_ms, 'number');
  assert.ok(Array.isArray(body.events));
});

test('a cache miss is reported', async () => {
  const c = client(server);
  await connected(c);
  c.subscribe('cache-empty');
  await has((e) => e.name === 'cache_miss' && e.channel === 'cache-empty');
  c.disconnect();
});
