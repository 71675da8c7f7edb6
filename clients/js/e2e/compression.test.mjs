// permessage-deflate with the real clients: centrifuge-js (JSON and Protobuf builds)
// and socket.io-client over Node's `ws`, which offers permessage-deflate by default, and
// a plain `ws` client on uni_websocket. Each checks that compression was agreed, that
// the data arrives identical, and that the bytes the socket read are clearly fewer than
// the bytes the application received (so the frames really were compressed).

import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';

import { chromium } from 'playwright-core';
import { io } from 'socket.io-client';

import { CHROMIUM, CHROMIUM_ARGS } from './demo-harness.mjs';

import { FORMATS, WebSocket, newClient, startServer, subscribe, uniqueChannel, waitFor } from './harness.mjs';

/** Tidings with compression on every WebSocket door, or off with `compression: false`. */
async function startCompressing(t, { compression = true } = {}) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'tidings-deflate-'));
  const file = path.join(dir, 'config.json');
  writeFileSync(
    file,
    JSON.stringify({
      client: { allow_anonymous_connect_without_token: true, allowed_origins: ['*'] },
      websocket: { compression, compression_min_size: 64 },
      uni_websocket: { enabled: true, compression },
      socketio: { enabled: true },
      channel: {
        without_namespace: {
          allow_subscribe_for_client: true,
          allow_subscribe_for_anonymous: true,
          allow_publish_for_client: true,
          allow_publish_for_anonymous: true,
        },
      },
    }),
  );
  return startServer({ t, args: ['--config', file] });
}

/** A JSON object of about 10 KB with one changing field. */
function bigObject(n) {
  const fields = {};
  for (let i = 0; i < 300; i++) fields[`key${i}`] = `value-${i}-${(i * 7919) % 1000}`;
  return { ...fields, n };
}

/** A `ws` class that records its instances, so the test can read what they agreed and read. */
function recordingSocket() {
  const sockets = [];
  class Recording extends WebSocket {
    constructor(...args) {
      super(...args);
      sockets.push(this);
    }
  }
  return { Recording, sockets };
}

const bytesRead = (ws) => (ws._socket ? ws._socket.bytesRead : 0);

for (const format of FORMATS) {
  test(`centrifuge-js (${format.name}) gets identical publications over a compressed WebSocket`, { timeout: 30_000 }, async (t) => {
    const server = await startCompressing(t);
    const { Recording, sockets } = recordingSocket();
    const client = newClient(server.wsUrl, { t, format, websocket: Recording });
    const channel = uniqueChannel('deflate');
    client.connect();
    const { publications } = await subscribe(client, channel);
    assert.equal(sockets.length, 1);
    assert.match(sockets[0].extensions, /permessage-deflate/, 'compression agreed');
    const before = bytesRead(sockets[0]);
    const sent = [];
    for (let n = 1; n <= 20; n++) {
      const value = bigObject(n);
      sent.push(value);
      await server.apiOk('publish', { channel, data: value });
    }
    await waitFor(() => publications.length >= 20, { message: '20 publications' });
    assert.deepEqual(
      publications.map((ctx) => format.read(ctx.data)),
      sent,
    );
    const wire = bytesRead(sockets[0]) - before;
    const plain = sent.reduce((sum, v) => sum + JSON.stringify(v).length, 0);
    assert.ok(wire < plain * 0.7, `${wire} bytes on the wire for ${plain} bytes of data: not compressed`);
  });
}

test('a client that does not offer permessage-deflate talks uncompressed to the same server', { timeout: 20_000 }, async (t) => {
  const server = await startCompressing(t);
  const ws = new WebSocket(server.wsUrl, { perMessageDeflate: false });
  t.after(() => ws.terminate());
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  assert.equal(ws.extensions, '');
  ws.send(JSON.stringify({ id: 1, connect: {} }));
  const [reply] = await new Promise((resolve) => ws.once('message', (...a) => resolve(a)));
  assert.equal(JSON.parse(reply.toString()).id, 1);
});

test('with compression off the server agrees to none', { timeout: 20_000 }, async (t) => {
  const server = await startCompressing(t, { compression: false });
  const ws = new WebSocket(server.wsUrl);
  t.after(() => ws.terminate());
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  assert.equal(ws.extensions, '');
});

test('uni_websocket compresses the pushes a plain ws client reads', { timeout: 20_000 }, async (t) => {
  const server = await startCompressing(t);
  const channel = uniqueChannel('uni-deflate');
  const ws = new WebSocket(server.wsUrl.replace('/connection/websocket', '/connection/uni_websocket'));
  t.after(() => ws.terminate());
  const messages = [];
  ws.on('message', (data) => messages.push(JSON.parse(data.toString())));
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  assert.match(ws.extensions, /permessage-deflate/);
  ws.send(JSON.stringify({ subs: { [channel]: {} } }));
  await waitFor(() => messages.some((m) => m.connect), { message: 'the connect push' });
  const before = bytesRead(ws);
  const value = bigObject(7);
  await server.apiOk('publish', { channel, data: value });
  await waitFor(() => messages.some((m) => m.pub), { message: 'the publication push' });
  const push = messages.find((m) => m.pub);
  assert.equal(push.channel, channel);
  assert.deepEqual(push.pub.data, value);
  const wire = bytesRead(ws) - before;
  assert.ok(wire < JSON.stringify(value).length * 0.7, `${wire} bytes on the wire: not compressed`);
});

test('socket.io-client over a compressed WebSocket receives room events intact', { timeout: 20_000 }, async (t) => {
  const server = await startCompressing(t);
  const room = uniqueChannel('sio-deflate');
  const socket = io(server.httpUrl, {
    transports: ['websocket'],
    reconnection: false,
    timeout: 5_000,
    perMessageDeflate: { threshold: 0 },
  });
  t.after(() => socket.close());
  await new Promise((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('connect_error', reject);
  });
  const ws = socket.io.engine.transport.ws;
  assert.match(ws.extensions, /permessage-deflate/, 'compression agreed');
  assert.deepEqual(await socket.timeout(5_000).emitWithAck('tidings:join', { room }), { ok: true, room });
  const got = [];
  socket.on('state', (value, n) => got.push([value, n]));
  const before = bytesRead(ws);
  const sent = [bigObject(1), bigObject(2), bigObject(3)];
  for (const [i, value] of sent.entries()) {
    // {event, args} data reaches Socket.IO clients as that event (docs/socketio.md).
    await server.apiOk('publish', { channel: room, data: { event: 'state', args: [value, i] } });
  }
  await waitFor(() => got.length >= 3, { message: "three 'state' events" });
  assert.deepEqual(
    got,
    sent.map((value, i) => [value, i]),
  );
  const wire = bytesRead(ws) - before;
  const plain = sent.reduce((sum, v) => sum + JSON.stringify(v).length, 0);
  assert.ok(wire < plain * 0.7, `${wire} bytes on the wire for ${plain} bytes: not compressed`);
});

test('Chromium agrees to permessage-deflate and reads compressed publications', { timeout: 60_000 }, async (t) => {
  const server = await startCompressing(t);
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true, timeout: 30_000 });
  t.after(() => browser.close().catch(() => {}));
  const page = await browser.newPage();
  const channel = uniqueChannel('browser-deflate');
  // The browser's own WebSocket, speaking the JSON protocol as centrifuge-js does.
  const extensions = await page.evaluate(
    ({ url, channel }) =>
      new Promise((resolve, reject) => {
        const ws = new WebSocket(url);
        window.got = [];
        ws.onerror = () => reject(new Error('WebSocket error'));
        ws.onopen = () => {
          ws.send(`${JSON.stringify({ id: 1, connect: {} })}\n${JSON.stringify({ id: 2, subscribe: { channel } })}`);
        };
        ws.onmessage = (e) => {
          for (const line of String(e.data).split('\n')) {
            const reply = JSON.parse(line);
            if (reply.id === 2) resolve(ws.extensions);
            if (reply.push && reply.push.pub) window.got.push(reply.push.pub.data);
          }
        };
      }),
    { url: server.wsUrl, channel },
  );
  assert.match(extensions, /permessage-deflate/, 'Chromium agreed to compression');
  const value = bigObject(42);
  await server.apiOk('publish', { channel, data: value });
  await page.waitForFunction(() => window.got.length > 0, null, { timeout: 10_000 });
  assert.deepEqual(await page.evaluate(() => window.got[0]), value);
});
