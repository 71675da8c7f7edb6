// Protocol-level checks with a raw `ws` connection, where centrifuge-js would hide the
// frames (errors it turns into state changes, pings it answers by itself).

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { RawClient, startServer, uniqueChannel, waitFor, withTimeout } from './harness.mjs';

async function connectRaw(server, t) {
  const raw = await RawClient.open(server.wsUrl, { t });
  const reply = await raw.call({ connect: { name: 'e2e-raw' } });
  assert.equal(reply.error, undefined, `connect failed: ${JSON.stringify(reply)}`);
  return { raw, reply };
}

test('raw protocol: connect reply carries client, version, ping and pong', { timeout: 15_000 }, async (t) => {
  const server = await startServer({ t });
  const { reply } = await connectRaw(server, t);
  assert.equal(reply.id, 1);
  const c = reply.connect;
  assert.ok(c, `connect result missing: ${JSON.stringify(reply)}`);
  assert.equal(typeof c.client, 'string');
  assert.match(c.client, /^[0-9a-f-]{36}$/, 'client id is a UUID');
  assert.equal(typeof c.version, 'string');
  assert.equal(c.ping, 25, 'default ping interval is 25 seconds');
  assert.equal(c.pong, true);
});

test('raw protocol: subscribe to an unknown namespace replies error 102', { timeout: 15_000 }, async (t) => {
  const server = await startServer({ t });
  const { raw } = await connectRaw(server, t);
  const reply = await raw.call({ subscribe: { channel: 'nosuchnamespace:room' } });
  assert.equal(reply.subscribe, undefined, `unexpected result: ${JSON.stringify(reply)}`);
  assert.equal(reply.error?.code, 102, `reply: ${JSON.stringify(reply)}`);
  assert.equal(reply.error?.message, 'unknown channel');

  // The connection stays usable after the error.
  const ok = await raw.call({ subscribe: { channel: uniqueChannel('after-error') } });
  assert.ok(ok.subscribe, `subscribe after error: ${JSON.stringify(ok)}`);
  assert.equal(raw.closeInfo, null);
});

test('raw protocol: subscribing twice to the same channel replies error 105', { timeout: 15_000 }, async (t) => {
  const server = await startServer({ t });
  const { raw } = await connectRaw(server, t);
  const channel = uniqueChannel('dup');
  const first = await raw.call({ subscribe: { channel } });
  assert.ok(first.subscribe, `first subscribe: ${JSON.stringify(first)}`);
  const second = await raw.call({ subscribe: { channel } });
  assert.equal(second.subscribe, undefined, `unexpected result: ${JSON.stringify(second)}`);
  assert.equal(second.error?.code, 105, `reply: ${JSON.stringify(second)}`);
  assert.equal(second.error?.message, 'already subscribed');
  assert.equal(raw.closeInfo, null, 'error 105 does not close the connection');
});

test('raw protocol: subscribe to a fresh recoverable channel reports its stream position with an epoch', { timeout: 15_000 }, async (t) => {
  const server = await startServer({ t });
  const { raw } = await connectRaw(server, t);
  const channel = uniqueChannel('fresh');
  const reply = await raw.call({ subscribe: { channel, recoverable: true } });
  const res = reply.subscribe;
  assert.ok(res, `reply: ${JSON.stringify(reply)}`);
  assert.equal(res.recoverable, true);
  assert.equal(res.offset ?? 0, 0);
  // Centrifugo creates the stream on first use, so even an empty channel has an epoch the
  // client can later recover against.
  assert.equal(typeof res.epoch, 'string', `subscribe result: ${JSON.stringify(res)}`);
  assert.ok(res.epoch.length > 0, `subscribe result: ${JSON.stringify(res)}`);

  // The epoch stays the same once publications arrive.
  const published = await server.apiOk('publish', { channel, data: { x: 1 } });
  assert.equal(published.epoch, res.epoch);
});

test('raw protocol: server pings, an answering client stays, a silent one is closed with 3012', { timeout: 20_000 }, async (t) => {
  const server = await startServer({
    t,
    env: { TIDINGS_CLIENT_PING_INTERVAL: '1s', TIDINGS_CLIENT_PONG_TIMEOUT: '500ms' },
  });

  const polite = await connectRaw(server, t);
  assert.equal(polite.reply.connect.ping, 1);
  assert.equal(polite.reply.connect.pong, true);
  let pings = 0;
  polite.raw.ws.on('message', (data) => {
    for (const line of data.toString().split('\n')) {
      if (line.trim() === '{}') {
        pings += 1;
        polite.raw.ws.send('{}');
      }
    }
  });

  const silent = await connectRaw(server, t);
  // Never answers: the server gives up after ping interval + pong timeout.
  const closed = await withTimeout(silent.raw.closed, 6_000, 'silent client to be closed');
  assert.equal(closed.code, 3012, `close frame: ${JSON.stringify(closed)}`);
  assert.equal(closed.reason, 'no pong');
  assert.ok(silent.raw.pushes.some((p) => Object.keys(p).length === 0), 'the silent client was pinged first');

  await waitFor(() => pings >= 2, { timeout: 4_000, message: 'two pings at the answering client' });
  assert.equal(polite.raw.closeInfo, null, 'the answering client is still connected');
});

test('raw protocol: a frame over the message size limit closes with 1009', { timeout: 15_000 }, async (t) => {
  const server = await startServer({ t });
  const { raw } = await connectRaw(server, t);
  const big = JSON.stringify({ id: 2, publish: { channel: uniqueChannel('big'), data: { blob: 'x'.repeat(70_000) } } });
  raw.ws.send(big);
  const closed = await withTimeout(raw.closed, 5_000, 'close after oversized frame');
  assert.equal(closed.code, 1009, `close frame: ${JSON.stringify(closed)}`);
});
