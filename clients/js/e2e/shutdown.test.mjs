// Graceful shutdown: SIGTERM tells every client 3001 "shutdown" and the process exits in time.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { RawClient, connectClient, startServer, subscribe, uniqueChannel, waitEvent, withTimeout } from './harness.mjs';

test('SIGTERM disconnects clients with 3001 shutdown and the server exits within shutdown.timeout', { timeout: 20_000 }, async (t) => {
  const server = await startServer({ t, env: { TIDINGS_SHUTDOWN_TIMEOUT: '3s' } });
  const channel = uniqueChannel('bye');

  const { client } = await connectClient(server.wsUrl, { t });
  await subscribe(client, channel);
  const raw = await RawClient.open(server.wsUrl, { t });
  const connectReply = await raw.call({ connect: {} });
  assert.ok(connectReply.connect);

  const connecting = waitEvent(client, 'connecting', { timeout: 5_000, message: 'client to see the shutdown' });
  const startedAt = Date.now();
  server.signal('SIGTERM');

  const ctx = await connecting;
  assert.equal(ctx.code, 3001, `connecting context: ${JSON.stringify(ctx)}`);
  assert.equal(ctx.reason, 'shutdown');

  const closed = await withTimeout(raw.closed, 5_000, 'raw client close');
  assert.equal(closed.code, 3001, `raw close: ${JSON.stringify(closed)}`);
  assert.equal(closed.reason, 'shutdown');

  const { code, signal } = await server.waitExit(5_000);
  const tookMs = Date.now() - startedAt;
  assert.ok(tookMs <= 4_000, `exited after ${tookMs} ms, shutdown.timeout is 3 s`);
  assert.equal(signal, null, 'exited by itself, not killed by the signal');
  assert.equal(code, 0, `exit code ${code}\nstderr:\n${server.stderr}`);

  // It stopped listening: no new connection is accepted.
  await assert.rejects(
    fetch(`${server.httpUrl}/health`, { signal: AbortSignal.timeout(2_000) }),
    'the listener is closed',
  );
});
