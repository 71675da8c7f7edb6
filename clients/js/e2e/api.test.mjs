// Server HTTP API, called with the global fetch, observed by a centrifuge-js subscriber.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';

import { REPO_ROOT, connectClient, startServer, subscribe, uniqueChannel, waitFor, waitForCount } from './harness.mjs';

const run = promisify(execFile);

test('API publish via fetch reaches a centrifuge-js subscriber', { timeout: 15_000 }, async (t) => {
  const server = await startServer({ t });
  const channel = uniqueChannel('news');
  const { client } = await connectClient(server.wsUrl, { t });
  const { publications } = await subscribe(client, channel);

  const res = await fetch(`${server.httpUrl}/api/publish`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-API-Key': server.apiKey },
    body: JSON.stringify({ channel, data: { headline: 'first' } }),
    signal: AbortSignal.timeout(5_000),
  });
  assert.equal(res.status, 200);
  const body = await res.json();
  assert.ok(body.result, `reply: ${JSON.stringify(body)}`);
  assert.equal(body.result.offset, 1, 'publish result carries the stream offset');
  assert.equal(typeof body.result.epoch, 'string');

  // The other accepted header form.
  const res2 = await fetch(`${server.httpUrl}/api/publish`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: `apikey ${server.apiKey}` },
    body: JSON.stringify({ channel, data: { headline: 'second' } }),
    signal: AbortSignal.timeout(5_000),
  });
  assert.equal(res2.status, 200);

  await waitForCount(publications, 2, { message: 'API publications at the subscriber' });
  assert.deepEqual(publications.map((p) => p.data.headline), ['first', 'second']);
  assert.equal(publications[0].channel, channel);
  assert.equal(publications[0].info, undefined, 'server-side publications carry no client info');

  await waitFor(async () => (await server.metric('tidings_api_commands_total', { method: 'publish' })) >= 2, {
    message: 'tidings_api_commands_total{method="publish"} to count both calls',
  });
});

test('API answers 401 without a valid key, 404 for an unknown method, 400 for a bad body', { timeout: 15_000 }, async (t) => {
  const server = await startServer({ t });
  const channel = uniqueChannel('guarded');

  const noKey = await server.api('publish', { channel, data: {} }, { key: null });
  assert.equal(noKey.status, 401);
  const wrongKey = await server.api('publish', { channel, data: {} }, { key: 'not-the-key' });
  assert.equal(wrongKey.status, 401);

  const unknown = await server.api('no_such_method', {});
  assert.equal(unknown.status, 404);

  const garbage = await server.api('publish', undefined, { rawBody: '{not json' });
  assert.equal(garbage.status, 400);

  // Nothing above published anything.
  const history = await server.apiOk('history', { channel, limit: -1 });
  assert.deepEqual(history.publications ?? [], []);

  const health = await fetch(`${server.httpUrl}/health`, { signal: AbortSignal.timeout(5_000) });
  assert.equal(health.status, 200);
  assert.deepEqual(await health.json(), {});
});

test('API presence, presence_stats, history and channels describe a subscribed client', { timeout: 15_000 }, async (t) => {
  const server = await startServer({ t });
  const channel = uniqueChannel('observed');
  const { client, ctx } = await connectClient(server.wsUrl, { t });
  await subscribe(client, channel);
  await server.apiOk('publish', { channel, data: { v: 1 } });

  const presence = await server.apiOk('presence', { channel });
  assert.deepEqual(Object.keys(presence.presence), [ctx.client]);
  assert.equal(presence.presence[ctx.client].client, ctx.client);

  const stats = await server.apiOk('presence_stats', { channel });
  assert.equal(stats.num_clients, 1);
  assert.equal(stats.num_users, 1);

  const history = await server.apiOk('history', { channel, limit: 10 });
  assert.deepEqual(history.publications.map((p) => p.data), [{ v: 1 }]);
  assert.equal(history.offset, 1);

  const channels = await server.apiOk('channels', {});
  assert.equal(channels.channels?.[channel]?.num_clients, 1, `channels: ${JSON.stringify(channels)}`);
});

test('example node-publish script publishes to a subscribed centrifuge-js client', { timeout: 15_000 }, async (t) => {
  const server = await startServer({ t });
  const channel = uniqueChannel('example');
  const { client } = await connectClient(server.wsUrl, { t });
  const { publications } = await subscribe(client, channel);

  const script = path.join(REPO_ROOT, 'examples', 'node-publish', 'publish.mjs');

  // Channel and data as arguments, server and key from the environment.
  const byArgs = await run(process.execPath, [script, channel, '{"text":"from args"}'], {
    env: { ...process.env, TIDINGS_URL: server.httpUrl, TIDINGS_API_KEY: server.apiKey },
    timeout: 10_000,
  });
  assert.equal(JSON.parse(byArgs.stdout).offset, 1, `script output: ${byArgs.stdout}`);

  // Everything from the environment.
  await run(process.execPath, [script], {
    env: {
      ...process.env,
      TIDINGS_URL: server.httpUrl,
      TIDINGS_API_KEY: server.apiKey,
      TIDINGS_CHANNEL: channel,
      TIDINGS_DATA: '{"text":"from env"}',
    },
    timeout: 10_000,
  });

  await waitForCount(publications, 2, { message: 'publications from the example script' });
  assert.deepEqual(publications.map((p) => p.data), [{ text: 'from args' }, { text: 'from env' }]);

  // A wrong key makes the script fail loudly.
  await assert.rejects(
    run(process.execPath, [script, channel, '"nope"'], {
      env: { ...process.env, TIDINGS_URL: server.httpUrl, TIDINGS_API_KEY: 'wrong' },
      timeout: 10_000,
    }),
    (err) => err.code === 1 && /HTTP 401/.test(err.stderr),
  );
});
