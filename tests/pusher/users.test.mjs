// User authentication: pusher.signin(), sendToUser, terminateUserConnections, and the
// "authorized connections" timeout.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { appToml, client, connected, eventually, once, sdk, startHerald } from './helpers.mjs';

const servers = [];
const clients = [];
after(async () => {
  clients.forEach((c) => c.disconnect());
  await Promise.all(servers.map((s) => s.stop()));
});

async function serve(toml) {
  const s = await startHerald(toml);
  servers.push(s);
  return s;
}

test('signin, sendToUser and terminateUserConnections', async () => {
  const server = await serve(appToml());
  const make = async () => {
    const c = client(server, { user: { id: 'zed', user_info: { name: 'Zed' } } });
    clients.push(c);
    await connected(c);
    const signedIn = once(c, 'pusher:signin_success');
    c.signin();
    await signedIn;
    return c;
  };
  const tab1 = await make();
  const tab2 = await make();
  // pusher-js subscribes to #server-to-user-zed after signing in; give it a moment.
  const got1 = new Promise((res) => tab1.user.bind('welcome', res));
  const got2 = new Promise((res) => tab2.user.bind('welcome', res));
  await eventually(async () => {
    await sdk(server).sendToUser('zed', 'welcome', { msg: 'hi' });
    return Promise.race([Promise.all([got1, got2]), new Promise((r) => setTimeout(() => r(false), 200))]);
  });
  assert.deepEqual(await got1, { msg: 'hi' });
  assert.deepEqual(await got2, { msg: 'hi' });

  // Terminate: both connections are closed by the server.
  const closed = [tab1, tab2].map((c) => new Promise((res) => c.connection.bind('error', res)));
  await sdk(server).terminateUserConnections('zed');
  const errors = await Promise.all(closed);
  errors.forEach((e) => assert.equal(e.data?.code, 4009, JSON.stringify(e)));
  assert.notEqual(tab1.connection.state, 'connected');
});

test('a signin with a bad signature gets pusher:error and no user', async () => {
  const server = await serve(appToml());
  const c = client(server, { authorizer: sdk(server, { secret: 'definitely-wrong' }) });
  clients.push(c);
  await connected(c);
  const err = once(c, 'pusher:error');
  c.signin();
  const { data } = await err;
  assert.match(JSON.stringify(data), /signature|unauthor/i);
});

test('unsigned connections are closed with 4009 after user_authentication_timeout', async () => {
  const server = await serve(appToml({ extra: 'user_authentication_timeout = "1s"' }));
  const c = client(server);
  clients.push(c);
  await connected(c);
  // pusher-js reports the close code as a PusherError and, for 4000-4099, stops reconnecting.
  const closed = new Promise((res) => c.connection.bind('error', (e) => res(e)));
  const result = await Promise.race([closed, new Promise((r) => setTimeout(() => r('timeout'), 5000))]);
  assert.notEqual(result, 'timeout');
  assert.equal(result.data?.code, 4009, JSON.stringify(result));
  // A signed-in client on the same server stays connected.
  const ok = client(server);
  clients.push(ok);
  await connected(ok);
  const signed = once(ok, 'pusher:signin_success');
  ok.signin();
  await signed;
  await new Promise((r) => setTimeout(r, 1500));
  assert.equal(ok.connection.state, 'connected');
});
