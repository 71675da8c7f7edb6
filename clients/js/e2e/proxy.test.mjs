// Backend proxies with real clients and a real backend: examples/backend-node (plain
// node:http and better-sqlite3), started in this process, with the example's Tidings
// configuration. centrifuge-js and socket.io-client sign in by cookie with no token;
// the backend allows one subscription and refuses another, rewrites and stores
// publications, answers an RPC and extends sessions through the refresh proxy.

import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';

import { io } from 'socket.io-client';

import {
  PROTOBUF_FORMAT,
  REPO_ROOT,
  WebSocket,
  connectClient,
  newClient,
  startServer,
  subscribe,
  waitEvent,
  waitFor,
  waitForCount,
} from './harness.mjs';

const EXAMPLE = path.join(REPO_ROOT, 'examples', 'backend-node');

/** A `ws` WebSocket class that sends `cookie` with the upgrade, as a browser would. */
function cookieSocket(cookie) {
  return class extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, { headers: { Cookie: cookie } });
    }
  };
}

/** The example backend on a free port, and Tidings configured for it. */
async function startBackendAndServer(t, { sessionSeconds = 600 } = {}) {
  const { createApp } = await import(path.join(EXAMPLE, 'server.mjs'));
  const dir = mkdtempSync(path.join(os.tmpdir(), 'tidings-proxy-'));
  const backend = createApp(path.join(dir, 'chat.sqlite3'), { sessionSeconds });
  const hits = [];
  backend.on('request', (req) => hits.push(req.url));
  await new Promise((resolve) => backend.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise((resolve) => backend.close(resolve)));
  const port = backend.address().port;
  const config = readFileSync(path.join(EXAMPLE, 'tidings.toml'), 'utf8').replaceAll(
    '127.0.0.1:3001',
    `127.0.0.1:${port}`,
  );
  const file = path.join(dir, 'tidings.toml');
  writeFileSync(file, config);
  const server = await startServer({ t, args: ['--config', file] });
  return { server, hits, backend };
}

test('centrifuge-js signs in by cookie; the backend allows, refuses, rewrites and answers', async (t) => {
  const { server, hits } = await startBackendAndServer(t);
  const { client: alice, ctx } = await connectClient(server.wsUrl, {
    t,
    websocket: cookieSocket('session=alice'),
  });
  assert.deepEqual(ctx.data, { welcome: 'alice' });
  assert.ok(hits.includes('/tidings/connect'));

  const lobby = await subscribe(alice, 'chat:lobby');
  // chat:admin is refused by the backend: a terminal unsubscribe with its code.
  const admin = alice.newSubscription('chat:admin');
  const refused = waitEvent(admin, 'unsubscribed', { message: 'refused subscription' });
  admin.subscribe();
  assert.equal((await refused).code, 403);

  // The backend stores the message and publishes its stored copy instead.
  await alice.publish('chat:lobby', { text: '  hello there  ' });
  await waitForCount(lobby.publications, 1, { message: 'publications' });
  const got = lobby.publications[0].data;
  assert.equal(got.text, 'hello there');
  assert.equal(got.author, 'alice');
  assert.equal(typeof got.id, 'number');
  await assert.rejects(alice.publish('chat:lobby', { text: '   ' }), (e) => e.code === 400);

  const answer = await alice.rpc('history', { room: 'chat:lobby' });
  assert.deepEqual(answer.data.messages.map((m) => m.text), ['hello there']);

  // Without the cookie the backend refuses the connection: 4501, no reconnect.
  const stranger = newClient(server.wsUrl, { t });
  const gone = waitEvent(stranger, 'disconnected', { message: 'stranger refused' });
  stranger.connect();
  assert.equal((await gone).code, 4501);
});

test('centrifuge-js in Protobuf gets the subscribe proxy answer in Protobuf', async (t) => {
  const { server, hits } = await startBackendAndServer(t);
  const { client } = await connectClient(server.wsUrl, {
    t,
    format: PROTOBUF_FORMAT,
    websocket: cookieSocket('session=carol'),
  });
  const lobby = await subscribe(client, 'chat:lobby');
  assert.ok(hits.includes('/tidings/subscribe'));
  await server.apiOk('publish', { channel: 'chat:lobby', data: { text: 'hi' } });
  await waitForCount(lobby.publications, 1, { message: 'a publication' });
  assert.deepEqual(PROTOBUF_FORMAT.read(lobby.publications[0].data), { text: 'hi' });
});

test('the refresh proxy extends a cookie session past its first expiry', async (t) => {
  const { server, hits } = await startBackendAndServer(t, { sessionSeconds: 1 });
  const { client } = await connectClient(server.wsUrl, { t, websocket: cookieSocket('session=bob') });
  const disconnected = [];
  client.on('disconnected', (ctx) => disconnected.push(ctx));
  await waitFor(() => hits.filter((u) => u === '/tidings/refresh').length >= 2, {
    timeout: 8_000,
    message: 'two refresh calls',
  });
  assert.equal(client.state, 'connected');
  assert.deepEqual(disconnected, []);
  await subscribe(client, 'chat:still-here');
});

test('socket.io-client signs in by cookie, joins and publishes through the proxies', async (t) => {
  const { server } = await startBackendAndServer(t);
  const { client: alice } = await connectClient(server.wsUrl, {
    t,
    websocket: cookieSocket('session=alice'),
  });
  const lobby = await subscribe(alice, 'chat:lobby');

  const socket = io(`${server.httpUrl}/chat`, {
    reconnection: false,
    transports: ['polling'],
    extraHeaders: { Cookie: 'session=carol' },
  });
  t.after(() => socket.close());
  await new Promise((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('connect_error', reject);
  });
  const joined = await socket.timeout(5_000).emitWithAck('tidings:join', { room: 'lobby' });
  assert.equal(joined.ok, true, JSON.stringify(joined));
  const refused = await socket.timeout(5_000).emitWithAck('tidings:join', { room: 'admin' });
  assert.equal(refused.ok, false);
  assert.equal(refused.error, 'permission denied');

  // Another socket in the room hears it (the sender does not, as with socket.to(room)).
  const listener = io(`${server.httpUrl}/chat`, {
    reconnection: false,
    transports: ['polling'],
    extraHeaders: { Cookie: 'session=tom' },
  });
  t.after(() => listener.close());
  await new Promise((resolve, reject) => {
    listener.once('connect', resolve);
    listener.once('connect_error', reject);
  });
  assert.equal((await listener.timeout(5_000).emitWithAck('tidings:join', { room: 'lobby' })).ok, true);
  const heard = [];
  listener.on('message', (msg) => heard.push(msg));
  const sent = await socket
    .timeout(5_000)
    .emitWithAck('tidings:publish', { room: 'lobby', event: 'message', args: [{ text: ' from sio ' }] });
  assert.equal(sent.ok, true, JSON.stringify(sent));
  await waitForCount(lobby.publications, 1, { message: 'publications' });
  const data = lobby.publications[0].data;
  assert.equal(data.event, 'message');
  assert.equal(data.args[0].text, 'from sio');
  assert.equal(data.args[0].author, 'carol');
  await waitForCount(heard, 1, { message: 'socket.io events' });
  assert.equal(heard[0].author, 'carol');

  // No cookie: the backend's disconnect arrives as a connect_error with its code.
  const stranger = io(`${server.httpUrl}/chat`, { reconnection: false, transports: ['polling'] });
  t.after(() => stranger.close());
  const err = await new Promise((resolve) => stranger.once('connect_error', resolve));
  assert.equal(err.data?.code, 4501, String(err));
});

test('webhooks reach the Node backend and pass Pusher\'s own check (pusher for Node)', async (t) => {
  const { server, backend } = await startBackendAndServer(t);
  const { client: bob } = await connectClient(server.wsUrl, {
    t,
    websocket: cookieSocket('session=bob'),
  });
  await subscribe(bob, 'chat:hooks');
  await bob.publish('chat:hooks', { text: 'ping' });
  const named = (name) => backend.webhookState().events.filter((e) => e.name === name);
  await waitFor(() => named('client_event').length === 1, { message: 'client_event' });
  await waitFor(() => named('member_added').length === 1, { message: 'member_added' });
  await waitFor(() => named('channel_occupied').length === 1, { message: 'channel_occupied' });
  const published = named('client_event')[0];
  assert.equal(published.channel, 'chat:hooks');
  assert.equal(published.user_id, 'bob');
  // The webhook tells what was published: the publish proxy's stored copy.
  assert.deepEqual(JSON.parse(published.data), { id: 1, author: 'bob', text: 'ping' });
  assert.deepEqual(backend.webhookState().online, [{ channel: 'chat:hooks', user_id: 'bob' }]);

  bob.disconnect();
  await waitFor(() => named('channel_vacated').length === 1, { message: 'channel_vacated' });
  await waitFor(() => named('member_removed').length === 1, { message: 'member_removed' });
  assert.deepEqual(backend.webhookState().online, []);
  // Each event once, each with its own id.
  const ids = backend.webhookState().events.map((e) => e.id);
  assert.equal(new Set(ids).size, ids.length);
});
