// Fewer bytes, and no silently ignored subscribe fields: fossil deltas, tags filters and
// the "reject unrecovered" flag, each through the real centrifuge-js (JSON and Protobuf
// builds) against the built binary.

import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';

import { io } from 'socket.io-client';

import {
  FORMATS,
  JSON_FORMAT,
  TcpProxy,
  connectClient,
  newClient,
  startServer,
  subscribe,
  uniqueChannel,
  waitEvent,
  waitFor,
  waitForCount,
} from './harness.mjs';

const OPEN = {
  allow_subscribe_for_client: true,
  allow_subscribe_for_anonymous: true,
  allow_history_for_subscriber: true,
  allow_history_for_anonymous: true,
  history_size: 100,
  history_ttl: '300s',
};

/** Tidings with the namespaces these tests use, from a config file. */
async function startBytesServer(t) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'tidings-bytes-'));
  const file = path.join(dir, 'config.json');
  const config = {
    client: { allow_anonymous_connect_without_token: true },
    http_stream: { enabled: true },
    socketio: { enabled: true, connection_state_recovery: true },
    channel: {
      namespaces: [
        { name: 'cache', ...OPEN, history_size: 1, force_recovery: true, force_recovery_mode: 'cache' },
        {
          name: 'autocache',
          ...OPEN,
          history_size: 1,
          force_recovery: true,
          force_recovery_mode: 'cache',
          auto_cache_recover: true,
        },
        { name: 'rx', ...OPEN, channel_regex: '^[0-9]+$' },
        { name: 'tf', ...OPEN, force_recovery: true, allow_tags_filter: true },
        { name: 'notf', ...OPEN, force_recovery: true },
        { name: 'delta', ...OPEN, force_recovery: true, allowed_delta_types: ['fossil'] },
      ],
    },
  };
  writeFileSync(file, JSON.stringify(config));
  return startServer({ t, args: ['--config', file] });
}

/** A JSON object of about 10 KB; `n` is the field that changes. */
function bigObject(n) {
  const fields = {};
  for (let i = 0; i < 400; i++) fields[`key${i}`] = `value-${i}`;
  return { ...fields, n };
}

function transportsOf(server, format) {
  const hostPort = new URL(server.httpUrl).host;
  const all = {
    websocket: (opts) => newClient(server.wsUrl, { format, ...opts }),
    http_stream: (opts) =>
      newClient([{ transport: 'http_stream', endpoint: `http://${hostPort}/connection/http_stream` }], {
        format,
        emulationEndpoint: `http://${hostPort}/emulation`,
        ...opts,
      }),
  };
  return ['websocket', 'http_stream'].map((name) => ({ name, make: all[name] }));
}

async function connected(client) {
  const ready = waitEvent(client, 'connected', { message: 'connect' });
  client.connect();
  await ready;
  return client;
}

for (const format of FORMATS) {
  test(`${format.name}: a tagsFilter subscription gets only matching publications, live and recovered`, async (t) => {
    const server = await startBytesServer(t);
    const proxy = await TcpProxy.start(server.port, { t });
    const channel = uniqueChannel('tf:ticks');
    const { client } = await connectClient(`ws://127.0.0.1:${proxy.port}/connection/websocket`, { t, format });
    const { sub, publications } = await subscribe(client, channel, {
      tagsFilter: { op: 'or', nodes: [{ key: 'ticker', cmp: 'eq', val: 'BTC' }, { key: 'price', cmp: 'gt', val: '1000' }] },
    });
    const publish = (ticker, price, n) =>
      server.apiOk('publish', { channel, data: { n }, tags: { ticker, price: String(price) } });
    await publish('BTC', 10, 1);
    await publish('ETH', 10, 2);
    await publish('ETH', 5000, 3);
    await publish('DOGE', 1, 4);
    await publish('BTC', 1, 5);
    await waitForCount(publications, 3, { message: 'matching publications' });

    const connecting = waitEvent(client, 'connecting', { message: 'client notices the cut' });
    proxy.cut();
    await connecting;
    await waitFor(async () => (await server.metric('tidings_connections')) === 0, { message: 'session dropped' });
    await publish('ETH', 1, 6);
    await publish('BTC', 1, 7);
    await publish('XRP', 1, 8);
    const resubscribed = waitEvent(sub, 'subscribed', { timeout: 8_000, message: 'resubscribe' });
    proxy.restore();
    const ctx = await resubscribed;
    assert.equal(ctx.recovered, true);
    await publish('ETH', 2000, 9);
    await publish('ETH', 1, 10);
    await publish('BTC', 1, 11);
    await waitFor(() => publications.some((p) => format.read(p.data).n === 11), { message: 'last publication' });
    assert.deepEqual(
      publications.map((p) => format.read(p.data).n),
      [1, 3, 5, 7, 9, 11],
    );
  });

  test(`${format.name}: tagsFilter is refused with 107 where allow_tags_filter is off`, async (t) => {
    const server = await startBytesServer(t);
    const { client } = await connectClient(server.wsUrl, { t, format });
    const sub = client.newSubscription(uniqueChannel('notf:ticks'), {
      tagsFilter: { key: 'ticker', cmp: 'eq', val: 'BTC' },
    });
    // A permanent error ends the subscription with the error's code.
    const failed = waitEvent(sub, 'unsubscribed', { message: 'refused subscription' });
    sub.subscribe();
    const ctx = await failed;
    assert.equal(ctx.code, 107);
    // A malformed filter is refused the same way where filters are allowed.
    const bad = client.newSubscription(uniqueChannel('tf:ticks'), { tagsFilter: { key: 'ticker', cmp: 'like', val: 'B' } });
    const badFailed = waitEvent(bad, 'unsubscribed', { message: 'refused subscription' });
    bad.subscribe();
    assert.equal((await badFailed).code, 107);
  });
}

test('getState: a position that cannot be recovered gets 112, and the SDK reloads its state', async (t) => {
  const server = await startBytesServer(t);
  const channel = uniqueChannel('tf:state');
  await server.apiOk('publish', { channel, data: { n: 1 } });
  const top = await server.apiOk('history', { channel, limit: 0 });
  const { client } = await connectClient(server.wsUrl, { t });
  const positions = [
    { offset: 1, epoch: 'not-the-epoch' },
    { offset: top.offset, epoch: top.epoch },
  ];
  let calls = 0;
  const { ctx, publications } = await subscribe(client, channel, {
    getState: async () => positions[Math.min(calls++, 1)],
  });
  assert.equal(calls, 2, 'getState called again after the 112');
  assert.equal(ctx.recovered, true);
  await server.apiOk('publish', { channel, data: { n: 2 } });
  await waitForCount(publications, 1, { message: 'live publication' });
  assert.equal(publications[0].data.n, 2);
});

for (const format of FORMATS) {
  for (const transport of transportsOf({ httpUrl: 'http://x', wsUrl: 'ws://x' }, format)) {
    test(`${format.name} over ${transport.name}: delta 'fossil' rebuilds every publication byte for byte`, async (t) => {
      const server = await startBytesServer(t);
      const [ws, stream] = transportsOf(server, format);
      const make = transport.name === 'websocket' ? ws.make : stream.make;
      const deltaClient = await connected(make({}));
      const plainClient = await connected(make({}));
      t.after(() => deltaClient.disconnect());
      t.after(() => plainClient.disconnect());
      const channel = uniqueChannel('delta:doc');
      const withDelta = await subscribe(deltaClient, channel, { delta: 'fossil' });
      const plain = await subscribe(plainClient, channel);
      for (let n = 1; n <= 6; n++) {
        await server.apiOk('publish', { channel, data: bigObject(n), delta: n !== 4 });
      }
      await waitForCount(withDelta.publications, 6, { message: 'delta publications' });
      await waitForCount(plain.publications, 6, { message: 'plain publications' });
      // Protobuf: the bytes themselves; JSON: the SDK hands out parsed values.
      const read = (p) =>
        format.name === 'protobuf' ? Buffer.from(p.data).toString('base64') : JSON.stringify(p.data);
      assert.deepEqual(withDelta.publications.map(read), plain.publications.map(read));
      assert.deepEqual(
        withDelta.publications.map((p) => format.read(p.data).n),
        [1, 2, 3, 4, 5, 6],
      );
      const stats = withDelta.sub.deltaStats();
      // The first after subscribe is full; 4 was published without delta.
      assert.equal(stats.numFullPayloads, 2, JSON.stringify(stats));
      assert.equal(stats.numDeltaPayloads, 4, JSON.stringify(stats));
      // Each delta is a small fraction of the ~8 KB object it rebuilds.
      const full = JSON.stringify(bigObject(1)).length;
      assert.ok(stats.bytesReceived < 2 * full + (4 * full) / 20, JSON.stringify(stats));
    });
  }
}

test('json: a delta subscription recovers full publications, then takes deltas again', async (t) => {
  const server = await startBytesServer(t);
  const proxy = await TcpProxy.start(server.port, { t });
  const channel = uniqueChannel('delta:recover');
  const { client } = await connectClient(`ws://127.0.0.1:${proxy.port}/connection/websocket`, { t, format: JSON_FORMAT });
  const { sub, publications } = await subscribe(client, channel, { delta: 'fossil' });
  await server.apiOk('publish', { channel, data: bigObject(1), delta: true });
  await server.apiOk('publish', { channel, data: bigObject(2), delta: true });
  await waitForCount(publications, 2, { message: 'live publications' });

  const connecting = waitEvent(client, 'connecting', { message: 'client notices the cut' });
  proxy.cut();
  await connecting;
  await waitFor(async () => (await server.metric('tidings_connections')) === 0, { message: 'session dropped' });
  for (let n = 3; n <= 5; n++) {
    await server.apiOk('publish', { channel, data: bigObject(n), delta: true });
  }
  const resubscribed = waitEvent(sub, 'subscribed', { timeout: 8_000, message: 'resubscribe' });
  proxy.restore();
  assert.equal((await resubscribed).recovered, true);
  for (let n = 6; n <= 7; n++) {
    await server.apiOk('publish', { channel, data: bigObject(n), delta: true });
  }
  await waitForCount(publications, 7, { message: 'all publications' });
  publications.forEach((p, i) => assert.deepEqual(p.data, bigObject(i + 1)));
  assert.ok(sub.deltaStats().numDeltaPayloads >= 2, JSON.stringify(sub.deltaStats()));
});

test('cache recovery: since {} gets the latest publication on subscribe and on every resubscribe', async (t) => {
  const server = await startBytesServer(t);
  const proxy = await TcpProxy.start(server.port, { t });
  const channel = uniqueChannel('cache:now');
  for (let n = 1; n <= 3; n++) await server.apiOk('publish', { channel, data: { n } });
  const { client } = await connectClient(`ws://127.0.0.1:${proxy.port}/connection/websocket`, { t });
  const { sub, ctx, publications } = await subscribe(client, channel, { since: {} });
  assert.equal(ctx.recovered, true);
  await waitForCount(publications, 1, { message: 'the latest publication' });

  const connecting = waitEvent(client, 'connecting', { message: 'client notices the cut' });
  proxy.cut();
  await connecting;
  await waitFor(async () => (await server.metric('tidings_connections')) === 0, { message: 'session dropped' });
  for (let n = 4; n <= 6; n++) await server.apiOk('publish', { channel, data: { n } });
  const resubscribed = waitEvent(sub, 'subscribed', { timeout: 8_000, message: 'resubscribe' });
  proxy.restore();
  assert.equal((await resubscribed).recovered, true);
  await waitForCount(publications, 2, { message: 'the latest after the cut' });
  await server.apiOk('publish', { channel, data: { n: 7 } });
  await waitForCount(publications, 3, { message: 'live' });
  assert.deepEqual(publications.map((p) => p.data.n), [3, 6, 7]);
});

test('auto_cache_recover: a plain subscription and a Socket.IO room get the latest publication at once', async (t) => {
  const server = await startBytesServer(t);
  const channel = uniqueChannel('autocache:now');
  await server.apiOk('publish', { channel, data: { n: 1 } });
  await server.apiOk('publish', { channel, data: { n: 2 } });
  const { client } = await connectClient(server.wsUrl, { t });
  const { ctx, publications } = await subscribe(client, channel);
  assert.equal(ctx.wasRecovering, true);
  assert.equal(ctx.recovered, true);
  await waitForCount(publications, 1, { message: 'the latest publication' });
  assert.equal(publications[0].data.n, 2);

  const proxy = await TcpProxy.start(server.port, { t });
  // The Socket.IO namespace /autocache is the channel namespace autocache.
  const socket = io(`http://127.0.0.1:${proxy.port}/autocache`, {
    transports: ['websocket'],
    reconnectionDelay: 100,
    reconnectionDelayMax: 200,
  });
  t.after(() => socket.close());
  await waitEvent(socket, 'connect', { message: 'socket.io connect' });
  const got = [];
  socket.on('message', (...args) => got.push(args[0]));
  const room = channel.slice('autocache:'.length);
  const joined = await socket.timeout(5_000).emitWithAck('tidings:join', { room });
  assert.equal(joined.ok, true, JSON.stringify(joined));
  await waitForCount(got, 1, { message: 'the latest publication in the room' });
  assert.deepEqual(got, [{ n: 2 }]);

  // Connection state recovery in cache mode: only the latest of what was missed.
  const disconnected = waitEvent(socket, 'disconnect', { message: 'the cut' });
  proxy.cut();
  await disconnected;
  await waitFor(async () => (await server.metric('tidings_connections')) === 1, { message: 'socket dropped' });
  for (let n = 3; n <= 5; n++) await server.apiOk('publish', { channel, data: { n } });
  const reconnected = waitEvent(socket, 'connect', { timeout: 10_000, message: 'reconnect' });
  proxy.restore();
  await reconnected;
  assert.equal(socket.recovered, true);
  await waitFor(() => got.some((d) => d.n === 5), { message: 'the latest after the cut' });
  await waitForCount(publications, 4, { message: 'the centrifuge-js subscriber got everything live' });
  assert.deepEqual(got.map((d) => d.n), [2, 5]);
});

test('channel_regex: client operations on a name that does not match get 107', async (t) => {
  const server = await startBytesServer(t);
  const { client } = await connectClient(server.wsUrl, { t });
  const good = await subscribe(client, 'rx:12345');
  assert.equal(good.sub.state, 'subscribed');
  const bad = client.newSubscription('rx:abc');
  const refused = waitEvent(bad, 'unsubscribed', { message: 'refused subscription' });
  bad.subscribe();
  assert.equal((await refused).code, 107);
  await assert.rejects(client.publish('rx:abc', { n: 1 }), (e) => e.code === 107);
  // The server API is not bound by it, as in Centrifugo.
  await server.apiOk('publish', { channel: 'rx:abc', data: { n: 1 } });
});
