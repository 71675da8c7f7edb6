// Slow consumer: a client that stops reading is cut off with 3008 "slow" once its bounded
// queue overflows, and nobody else notices.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  WebSocket,
  connectClient,
  startServer,
  subscribe,
  uniqueChannel,
  waitEvent,
  waitFor,
  withTimeout,
} from './harness.mjs';

/**
 * A `ws` WebSocket whose TCP socket can be paused, so it stops reading like a stalled
 * consumer. While paused, `ws` itself cannot resume the socket behind our back.
 */
class PausableWebSocket extends WebSocket {
  static instances = [];

  constructor(...args) {
    super(...args);
    PausableWebSocket.instances.push(this);
  }

  pauseReading() {
    const socket = this._socket;
    assert.ok(socket, 'socket is open');
    this._realResume = socket.resume;
    socket.resume = function resumeBlocked() {
      return this;
    };
    socket.pause();
  }

  resumeReading() {
    const socket = this._socket;
    if (socket && this._realResume) {
      socket.resume = this._realResume;
      this._realResume = undefined;
      socket.resume();
    }
  }
}

const MESSAGE_BYTES = 64 * 1024;
const MAX_MESSAGES = 400; // ~26 MB: far beyond what socket buffers and the queue can hold

test('slow consumer is disconnected with 3008 while a healthy client receives every publication', { timeout: 45_000 }, async (t) => {
  const server = await startServer({ t, env: { TIDINGS_CLIENT_QUEUE_MAX_SIZE: String(256 * 1024) } });
  const channel = uniqueChannel('firehose');

  const { client: healthy } = await connectClient(server.wsUrl, { t });
  const h = await subscribe(healthy, channel);

  PausableWebSocket.instances = [];
  const { client: slow } = await connectClient(server.wsUrl, { t, websocket: PausableWebSocket });
  const s = await subscribe(slow, channel);
  assert.equal(PausableWebSocket.instances.length, 1);
  const slowSocket = PausableWebSocket.instances[0];
  t.after(() => slowSocket.resumeReading());

  const slowEvents = [];
  slow.on('connecting', (ctx) => slowEvents.push({ event: 'connecting', ...ctx }));
  slow.on('disconnected', (ctx) => slowEvents.push({ event: 'disconnected', ...ctx }));
  const slowLeft = waitEvent(slow, 'state', {
    timeout: 30_000,
    filter: (ctx) => ctx.newState !== 'connected',
    message: 'slow client to leave state connected',
  });
  slowLeft.catch(() => {});

  slowSocket.pauseReading();
  const before = await server.metric('tidings_disconnects_total', { code: '3008' });
  assert.equal(before, 0);

  const filler = 'x'.repeat(MESSAGE_BYTES);
  let published = 0;
  let slowDisconnected = false;
  while (published < MAX_MESSAGES) {
    await server.apiOk('publish', { channel, data: { seq: published, filler } });
    published += 1;
    if (published % 10 === 0) {
      // Keep the healthy client close behind, so only the paused one falls behind.
      await waitFor(() => h.publications.length >= published - 10, {
        timeout: 5_000,
        message: `healthy client to keep up (${h.publications.length}/${published})`,
      });
      if ((await server.metric('tidings_disconnects_total', { code: '3008' })) >= 1) {
        slowDisconnected = true;
        break;
      }
    }
  }
  assert.ok(slowDisconnected, `no 3008 disconnect after ${published} publications of ${MESSAGE_BYTES} bytes`);
  assert.equal(await server.metric('tidings_disconnects_total', { code: '3008' }), 1, 'only the slow client was cut');

  // The healthy client got everything, in order, and is still connected.
  await waitFor(() => h.publications.length === published, {
    timeout: 10_000,
    message: `healthy client to receive all ${published} publications (has ${h.publications.length})`,
  });
  assert.deepEqual(
    h.publications.map((p) => p.data.seq),
    Array.from({ length: published }, (_, i) => i),
  );
  assert.ok(h.publications.every((p) => p.data.filler.length === MESSAGE_BYTES));
  assert.equal(healthy.state, 'connected');
  assert.equal(h.sub.state, 'subscribed');

  // Once it reads again the slow client learns it was cut off.
  slowSocket.resumeReading();
  const left = await withTimeout(slowLeft, 20_000, 'slow client state change');
  assert.notEqual(left.newState, 'connected');
  assert.ok(s.publications.length < published, 'the slow client did not get everything');
  await waitFor(() => slowEvents.length > 0, { message: 'slow client connecting/disconnected event' });
  const first = slowEvents[0];
  // The close frame comes after whatever was already in the socket buffers.
  assert.equal(first.code, 3008, `slow client event: ${JSON.stringify(first)}`);
  assert.equal(first.reason, 'slow');
  assert.equal(first.event, 'connecting', '3008 is a reconnect code');
});
