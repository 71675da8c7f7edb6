// Recovery: a client whose TCP connection is cut gets exactly what it missed on reconnect,
// with the JSON and the Protobuf build of centrifuge-js.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  FORMATS,
  TcpProxy,
  connectClient,
  startServer,
  subscribe,
  uniqueChannel,
  waitEvent,
  waitFor,
  waitForCount,
} from './harness.mjs';

/**
 * Subscribes through a cuttable proxy, cuts the TCP connection, publishes 10 messages
 * through the API while the client is away, restores the network and checks that
 * centrifuge-js recovers exactly those 10, in order, with `recovered: true`.
 * `earlier` publications are made before the client subscribes (0 = a fresh channel).
 */
async function cutAndRecover(t, { earlier, format }) {
  const server = await startServer({ t });
  const proxy = await TcpProxy.start(server.port, { t });
  const channel = uniqueChannel('recover');

  for (let i = 0; i < earlier; i++) {
    await server.apiOk('publish', { channel, data: { n: `earlier-${i}` } });
  }

  const { client } = await connectClient(`ws://127.0.0.1:${proxy.port}/connection/websocket`, { t, format });
  const { sub, ctx: firstCtx, publications } = await subscribe(client, channel, { recoverable: true });
  assert.equal(firstCtx.recoverable, true, 'subscription is recoverable');
  assert.equal(firstCtx.wasRecovering, false);
  assert.equal(firstCtx.streamPosition?.offset, earlier);

  // Something live first, so the client holds a non-zero position when the cut happens.
  const { epoch } = await server.apiOk('publish', { channel, data: { n: 0 } });
  assert.ok(epoch, 'publish result carries the stream epoch');
  await waitForCount(publications, 1, { message: 'live publication before the cut' });
  assert.equal(publications[0].offset, earlier + 1);

  const subscribedEvents = [];
  sub.on('subscribed', (ctx) => subscribedEvents.push(ctx));
  const connecting = waitEvent(client, 'connecting', { message: 'client notices the cut' });
  proxy.cut();
  await connecting;
  assert.equal(sub.state, 'subscribing');

  // Wait until the server has dropped the session, so these are not delivered live.
  await waitFor(async () => (await server.metric('tidings_connections')) === 0, {
    message: 'server to drop the cut connection',
  });
  for (let n = 1; n <= 10; n++) {
    await server.apiOk('publish', { channel, data: { n } });
  }
  assert.equal(publications.length, 1, 'nothing arrives while the connection is cut');

  const resubscribed = waitEvent(sub, 'subscribed', { timeout: 8_000, message: 'resubscribe after restore' });
  proxy.restore();
  const ctx = await resubscribed;
  assert.equal(ctx.wasRecovering, true);
  assert.equal(ctx.recovered, true, `subscribed context: ${JSON.stringify(ctx)}`);
  assert.equal(ctx.hasRecoveredPublications, true);
  assert.equal(ctx.streamPosition?.epoch, epoch, 'same stream epoch');

  await waitForCount(publications, 11, { message: 'recovered publications' });

  // A marker published after recovery proves no stragglers or duplicates follow.
  await server.apiOk('publish', { channel, data: { n: 'marker' } });
  const n = (p) => format.read(p.data).n;
  await waitFor(() => publications.some((p) => n(p) === 'marker'), { message: 'marker publication' });

  const missed = publications.slice(1, -1);
  assert.deepEqual(missed.map(n), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  assert.deepEqual(
    missed.map((p) => p.offset),
    Array.from({ length: 10 }, (_, i) => earlier + 2 + i),
  );
  assert.equal(publications.length, 12, `all publications: ${JSON.stringify(publications.map(n))}`);
  assert.equal(publications.at(-1).offset, earlier + 12);
  assert.equal(subscribedEvents.length, 1);
  assert.ok(proxy.accepted >= 2, 'the client reconnected through the proxy');
}

for (const format of FORMATS) {
  test(`recovery after a cut TCP connection delivers exactly the missed publications in order with recovered: true [${format.name}]`, { timeout: 20_000 }, async (t) => {
    await cutAndRecover(t, { earlier: 0, format });
  });

  test(`recovery after a cut TCP connection also works on a channel that had history before subscribing [${format.name}]`, { timeout: 20_000 }, async (t) => {
    await cutAndRecover(t, { earlier: 3, format });
  });
}
