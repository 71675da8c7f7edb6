// One behaviour, every transport: each scenario below is written once and run with the
// real centrifuge-js client over WebSocket, SSE and HTTP streaming (bidirectional
// emulation through /emulation) and Tidings' long polling (through @tidings/long-poll),
// with the JSON build, and again with the Protobuf build over the transports that carry
// Protobuf (WebSocket and HTTP streaming).
// Then the unidirectional endpoints with no SDK at all: a plain EventSource and curl.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { createInterface } from 'node:readline';
import { after, before, describe, test } from 'node:test';

import { LongPollSocket } from '@tidings/long-poll';
import { EventSource } from 'eventsource';

import {
  FORMATS,
  RPC_NO_HANDLER_CODE,
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

const HMAC_SECRET = 'e2e-transports-secret-of-at-least-32-bytes';

// Short long-poll timings so a vanished long-poll client is noticed within a test. Token
// scenarios sign with HMAC_SECRET; clients without a token stay anonymous.
const SERVER_ENV = {
  TIDINGS_LONG_POLL_HOLD: '1s',
  TIDINGS_LONG_POLL_SESSION_TIMEOUT: '2s',
  TIDINGS_CLIENT_TOKEN_HMAC_SECRET_KEY: HMAC_SECRET,
};

/** An HS256 JWT with `claims`, signed the way an application backend would. */
function jwt(claims) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const signed = `${part({ alg: 'HS256', typ: 'JWT' })}.${part(claims)}`;
  return `${signed}.${createHmac('sha256', HMAC_SECRET).update(signed).digest('base64url')}`;
}

const now = () => Math.floor(Date.now() / 1000);

// The shim gives up on a cut network after two quick retries, so centrifuge-js starts
// reconnecting (and recovering) soon.
const FastLongPollSocket = LongPollSocket.withOptions({ retries: 2, retryDelay: 100, pollTimeout: 5_000 });

/**
 * How centrifuge-js reaches `host:port` over each transport. `client(hostPort, opts)`
 * returns an unconnected client; `reported` is what its `connected` event names as the
 * transport (the long-poll shim poses as a WebSocket).
 */
const TRANSPORTS = [
  {
    name: 'websocket',
    reported: 'websocket',
    client: (hostPort, opts) => newClient(`ws://${hostPort}/connection/websocket`, opts),
  },
  {
    name: 'sse',
    reported: 'sse',
    client: (hostPort, opts) =>
      newClient([{ transport: 'sse', endpoint: `http://${hostPort}/connection/sse` }], {
        eventsource: EventSource,
        emulationEndpoint: `http://${hostPort}/emulation`,
        ...opts,
      }),
  },
  {
    name: 'http_stream',
    reported: 'http_stream',
    client: (hostPort, opts) =>
      newClient([{ transport: 'http_stream', endpoint: `http://${hostPort}/connection/http_stream` }], {
        emulationEndpoint: `http://${hostPort}/emulation`,
        ...opts,
      }),
  },
  {
    name: 'long_poll',
    reported: 'websocket',
    client: (hostPort, opts) => {
      // A fetch that notes when the client's current poll started.
      const polls = { current: null, started: 0 };
      const tracking = async (url, init) => {
        if (init.method !== 'GET') return fetch(url, init);
        const token = {};
        polls.current = token;
        polls.started = Date.now();
        try {
          return await fetch(url, init);
        } finally {
          if (polls.current === token) polls.current = null;
        }
      };
      const client = newClient(`ws://${hostPort}/connection/long_poll`, {
        websocket: FastLongPollSocket.withOptions({ fetch: tracking }),
        ...opts,
      });
      pollTracking.set(client, polls);
      return client;
    },
  },
];

const pollTracking = new WeakMap();

/**
 * Resolves once `client` is waiting for the server: always for the streaming transports;
 * for long polling once a poll has been outstanding for 100 ms, so it has reached the
 * server rather than being between two polls.
 */
function waitingOnServer(client) {
  const polls = pollTracking.get(client);
  if (!polls) return Promise.resolve();
  return waitFor(() => polls.current !== null && Date.now() - polls.started >= 100, {
    timeout: 5_000,
    message: 'a long poll held by the server',
  });
}

/**
 * Connects a client of `format` over `transport` and resolves once it is connected;
 * `options` go to the SDK (a token, getToken).
 */
async function connectOver(transport, format, hostPort, t, options = {}) {
  const client = transport.client(hostPort, { t, format, ...options });
  const connected = waitEvent(client, 'connected', { message: `connect over ${transport.name}` });
  client.connect();
  const ctx = await connected;
  return { client, ctx };
}

function hostPortOf(server) {
  return `127.0.0.1:${server.port}`;
}

// --- the scenarios, each written once --------------------------------------------------

async function connectScenario(t, transport, format, server) {
  const { client, ctx } = await connectOver(transport, format, hostPortOf(server), t);
  assert.equal(client.state, 'connected');
  assert.match(ctx.client, /\S/, 'a client id');
  assert.equal(ctx.transport, transport.reported);
}

async function publishScenario(t, transport, format, server) {
  const channel = uniqueChannel(`pub-${transport.name}`);
  const { client } = await connectOver(transport, format, hostPortOf(server), t);
  const { sub, publications } = await subscribe(client, channel);

  // From the client itself, over the transport's command path.
  await sub.publish(format.data({ text: 'from the client' }));
  await waitForCount(publications, 1, { message: 'own publication' });
  // From the server API.
  await server.apiOk('publish', { channel, data: { text: 'from the API' } });
  await waitForCount(publications, 2, { message: 'API publication' });

  assert.deepEqual(
    publications.map((p) => format.read(p.data).text),
    ['from the client', 'from the API'],
  );
  assert.deepEqual(
    publications.map((p) => p.offset),
    [1, 2],
  );
}

async function presenceScenario(t, transport, format, server) {
  const channel = uniqueChannel(`presence-${transport.name}`);
  const hostPort = hostPortOf(server);
  const alice = await connectOver(transport, format, hostPort, t);
  const a = await subscribe(alice.client, channel, { joinLeave: true });

  const bob = await connectOver(transport, format, hostPort, t);
  const joined = waitEvent(a.sub, 'join', {
    filter: (ctx) => ctx.info.client === bob.ctx.client,
    message: "bob's join at alice",
  });
  await subscribe(bob.client, channel, { joinLeave: true });
  const join = await joined;
  assert.equal(join.channel, channel);

  const presence = await a.sub.presence();
  assert.deepEqual(Object.keys(presence.clients).sort(), [alice.ctx.client, bob.ctx.client].sort());
  const stats = await a.sub.presenceStats();
  assert.equal(stats.numClients, 2);

  const left = waitEvent(a.sub, 'leave', {
    filter: (ctx) => ctx.info.client === bob.ctx.client,
    message: "bob's leave at alice",
  });
  bob.client.disconnect();
  const leave = await left;
  assert.equal(leave.channel, channel);
  await waitFor(async () => (await a.sub.presenceStats()).numClients === 1, {
    message: 'presence to drop to alice alone',
  });
}

async function historyScenario(t, transport, format, server) {
  const channel = uniqueChannel(`history-${transport.name}`);
  let epoch;
  for (let n = 1; n <= 3; n++) {
    ({ epoch } = await server.apiOk('publish', { channel, data: { n } }));
  }
  const { client } = await connectOver(transport, format, hostPortOf(server), t);
  const { sub } = await subscribe(client, channel);

  const all = await sub.history({ limit: 10 });
  assert.deepEqual(
    all.publications.map((p) => [p.offset, format.read(p.data).n]),
    [
      [1, 1],
      [2, 2],
      [3, 3],
    ],
  );
  assert.equal(all.offset, 3);
  assert.equal(all.epoch, epoch);

  const tail = await sub.history({ limit: 2, since: { offset: 1, epoch } });
  assert.deepEqual(
    tail.publications.map((p) => format.read(p.data).n),
    [2, 3],
  );
}

async function tokenScenario(t, transport, format, server) {
  const hostPort = hostPortOf(server);
  const inbox = uniqueChannel(`inbox-${transport.name}`);
  const room = uniqueChannel(`room-${transport.name}`);
  // The token names the user and one channel the server subscribes the client to.
  const client = transport.client(hostPort, {
    t,
    format,
    token: jwt({ sub: 'carol', exp: now() + 600, channels: [inbox] }),
  });
  const serverSide = waitEvent(client, 'subscribed', {
    filter: (ctx) => ctx.channel === inbox,
    message: 'the server-side subscription',
  });
  const pushed = [];
  client.on('publication', (ctx) => pushed.push(ctx));
  const connected = waitEvent(client, 'connected', { message: `connect over ${transport.name}` });
  client.connect();
  const ctx = await connected;
  await serverSide;
  assert.equal(client.getSubscription(inbox), null, 'no client-side subscription was made');

  await server.apiOk('publish', { channel: inbox, data: { note: 'for carol' } });
  await waitForCount(pushed, 1, { message: 'publication of the server-side subscription' });
  assert.equal(pushed[0].channel, inbox);
  assert.deepEqual(format.read(pushed[0].data), { note: 'for carol' });

  // The user is the one the token names, in presence as the server keeps it.
  const { sub } = await subscribe(client, room);
  const presence = await sub.presence();
  assert.equal(presence.clients[ctx.client]?.user, 'carol');
  const stats = await sub.presenceStats();
  assert.deepEqual(stats, { numClients: 1, numUsers: 1 });
}

async function rpcScenario(t, transport, format, server) {
  const { client } = await connectOver(transport, format, hostPortOf(server), t);
  // The binary registers no RPC handler: the documented error, and the connection stays.
  await assert.rejects(client.rpc('sum', format.data({ a: 1, b: 2 })), (err) => {
    assert.equal(err.code, RPC_NO_HANDLER_CODE, `rpc error: ${JSON.stringify(err)}`);
    return true;
  });
  assert.equal(client.state, 'connected');
  const { sub, publications } = await subscribe(client, uniqueChannel(`after-rpc-${transport.name}`));
  await sub.publish(format.data({ still: 'here' }));
  await waitForCount(publications, 1, { message: 'publication after the RPC error' });
}

async function refreshScenario(t, transport, format, server) {
  const channel = `$${uniqueChannel(`private-${transport.name}`)}`;
  // Both tokens live about two seconds, so the SDK renews each once: the connection with
  // `refresh`, the subscription with `sub_refresh`.
  const renewed = { connection: 0, subscription: -1 }; // the first subscription token is no renewal
  const { client } = await connectOver(transport, format, hostPortOf(server), t, {
    token: jwt({ sub: 'erin', exp: now() + 2 }),
    getToken: async () => {
      renewed.connection += 1;
      return jwt({ sub: 'erin', exp: now() + 2 });
    },
  });
  const { sub, publications } = await subscribe(client, channel, {
    getToken: async (ctx) => {
      renewed.subscription += 1;
      return jwt({ sub: 'erin', channel: ctx.channel, exp: now() + 2 });
    },
  });
  const interruptions = [];
  client.on('state', (ctx) => interruptions.push(`client ${ctx.newState}`));
  sub.on('state', (ctx) => interruptions.push(`subscription ${ctx.newState}`));

  await waitFor(() => renewed.connection >= 1 && renewed.subscription >= 1, {
    timeout: 8_000,
    message: `a refresh and a sub_refresh (so far ${JSON.stringify(renewed)})`,
  });
  await server.apiOk('publish', { channel, data: { after: 'refresh' } });
  await waitForCount(publications, 1, { message: 'publication after the renewals' });
  assert.deepEqual(format.read(publications[0].data), { after: 'refresh' });
  assert.deepEqual(interruptions, [], 'neither the connection nor the subscription was interrupted');
}

async function recoveryScenario(t, transport, format) {
  const server = await startServer({ t, env: SERVER_ENV });
  const proxy = await TcpProxy.start(server.port, { t });
  const channel = uniqueChannel(`recover-${transport.name}`);

  const { client } = await connectOver(transport, format, `127.0.0.1:${proxy.port}`, t);
  const { sub, ctx: firstCtx, publications } = await subscribe(client, channel, { recoverable: true });
  assert.equal(firstCtx.recoverable, true);

  const { epoch } = await server.apiOk('publish', { channel, data: { n: 0 } });
  await waitForCount(publications, 1, { message: 'live publication before the cut' });

  const subscribedAgain = [];
  sub.on('subscribed', (ctx) => subscribedAgain.push(ctx));
  const connecting = waitEvent(client, 'connecting', { message: 'client to notice the cut' });
  // Streaming transports lose their open connections; long polling loses its next poll.
  proxy.cut();
  await connecting;

  // The server drops the session (at once for streams, after the long-poll session
  // timeout otherwise), so what follows is missed rather than queued.
  await waitFor(async () => (await server.metric('tidings_connections')) === 0, {
    timeout: 6_000,
    message: 'server to drop the cut session',
  });
  for (let n = 1; n <= 10; n++) {
    await server.apiOk('publish', { channel, data: { n } });
  }
  assert.equal(publications.length, 1, 'nothing arrives while the network is cut');

  const resubscribed = waitEvent(sub, 'subscribed', { timeout: 8_000, message: 'resubscribe after restore' });
  proxy.restore();
  const ctx = await resubscribed;
  assert.equal(ctx.wasRecovering, true);
  assert.equal(ctx.recovered, true, `subscribed context: ${JSON.stringify(ctx)}`);
  assert.equal(ctx.streamPosition?.epoch, epoch);

  await server.apiOk('publish', { channel, data: { n: 'marker' } });
  const n = (p) => format.read(p.data).n;
  await waitFor(() => publications.some((p) => n(p) === 'marker'), { message: 'marker after recovery' });

  assert.deepEqual(
    publications.map(n),
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 'marker'],
  );
  assert.deepEqual(
    publications.map((p) => p.offset),
    Array.from({ length: 12 }, (_, i) => i + 1),
  );
  assert.equal(subscribedAgain.length, 1);
  assert.ok(proxy.accepted >= 2, 'the client reconnected through the proxy');
}

async function shutdownScenario(t, transport, format) {
  const server = await startServer({ t, env: { ...SERVER_ENV, TIDINGS_SHUTDOWN_TIMEOUT: '2s' } });
  // Through a proxy that outlives the server, to count the reconnect attempts.
  const proxy = await TcpProxy.start(server.port, { t });
  const channel = uniqueChannel(`bye-${transport.name}`);
  const { client } = await connectOver(transport, format, `127.0.0.1:${proxy.port}`, t);
  await subscribe(client, channel);
  // A long-poll client learns of the shutdown through a poll the server holds; see the
  // test at the end for a poll that arrives after SIGTERM.
  await waitingOnServer(client);

  const connecting = waitEvent(client, 'connecting', { message: 'client to see the shutdown' });
  server.signal('SIGTERM');
  const ctx = await connecting;
  assert.equal(ctx.code, 3001, `connecting context: ${JSON.stringify(ctx)}`);
  assert.equal(ctx.reason, 'shutdown');

  const { code } = await server.waitExit(4_000);
  assert.equal(code, 0, `exit code ${code}\nstderr:\n${server.stderr}`);

  // The server is gone, so every attempt is a fresh TCP connection to the proxy.
  const before = proxy.accepted;
  await waitFor(() => proxy.accepted >= before + 2, {
    timeout: 5_000,
    message: 'two reconnect attempts after the shutdown',
  });
  assert.equal(client.state, 'connecting', 'still trying, not given up');
}

// --- every scenario over every transport ----------------------------------------------

for (const format of FORMATS) {
  for (const transport of TRANSPORTS.filter((tr) => format.transports.includes(tr.name))) {
    const tag = `${transport.name}, ${format.name}`;
    describe(`over ${tag}`, () => {
      let server;
      before(async () => {
        server = await startServer({ env: SERVER_ENV });
      });
      after(() => server?.stop());

      test(`connect [${tag}]`, { timeout: 10_000 }, (t) => connectScenario(t, transport, format, server));
      test(`subscribe and publish [${tag}]`, { timeout: 10_000 }, (t) =>
        publishScenario(t, transport, format, server),
      );
      test(`presence with join and leave [${tag}]`, { timeout: 10_000 }, (t) =>
        presenceScenario(t, transport, format, server),
      );
      test(`history [${tag}]`, { timeout: 10_000 }, (t) => historyScenario(t, transport, format, server));
      test(`connect with a token, server-side subscription, presence stats [${tag}]`, { timeout: 10_000 }, (t) =>
        tokenScenario(t, transport, format, server),
      );
      test(`RPC without a handler [${tag}]`, { timeout: 10_000 }, (t) => rpcScenario(t, transport, format, server));
      test(`refresh and sub_refresh keep the connection and subscription [${tag}]`, { timeout: 15_000 }, (t) =>
        refreshScenario(t, transport, format, server),
      );
      test(`recovery after a cut connection [${tag}]`, { timeout: 20_000 }, (t) =>
        recoveryScenario(t, transport, format),
      );
      test(`shutdown: 3001 then reconnect attempts [${tag}]`, { timeout: 15_000 }, (t) =>
        shutdownScenario(t, transport, format),
      );
    });
  }
}

// --- unidirectional, no SDK --------------------------------------------------------------

describe('unidirectional without an SDK', () => {
  let server;
  before(async () => {
    server = await startServer({ env: SERVER_ENV });
  });
  after(() => server?.stop());

  test('a plain EventSource on /connection/uni_sse receives an API publication', { timeout: 10_000 }, async (t) => {
    const channel = uniqueChannel('uni-sse');
    const connect = encodeURIComponent(JSON.stringify({ subs: { [channel]: {} } }));
    const es = new EventSource(`${server.httpUrl}/connection/uni_sse?cf_connect=${connect}`);
    t.after(() => es.close());
    const events = [];
    es.onmessage = (e) => events.push(JSON.parse(e.data));

    const connected = await waitFor(() => events.find((e) => e.connect), { message: 'the connect push' });
    assert.ok(connected.connect.subs?.[channel], `subscribed server-side: ${JSON.stringify(connected)}`);

    await server.apiOk('publish', { channel, data: { text: 'hello EventSource' } });
    const pub = await waitFor(() => events.find((e) => e.pub), { message: 'the publication' });
    assert.equal(pub.channel, channel);
    assert.deepEqual(pub.pub.data, { text: 'hello EventSource' });
    assert.equal(pub.pub.offset, 1);
  });

  test('curl -N on /connection/uni_http_stream receives an API publication', { timeout: 10_000 }, async (t) => {
    const channel = uniqueChannel('uni-http');
    const curl = spawn(
      'curl',
      [
        '-sS',
        '-N',
        '-X',
        'POST',
        '-H',
        'Content-Type: application/json',
        '--data',
        JSON.stringify({ subs: { [channel]: {} } }),
        `${server.httpUrl}/connection/uni_http_stream`,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    const exited = new Promise((resolve) => curl.once('exit', resolve));
    t.after(async () => {
      if (curl.exitCode === null && curl.signalCode === null) process.kill(curl.pid, 'SIGKILL');
      await exited;
    });
    let stderr = '';
    curl.stderr.on('data', (chunk) => {
      stderr += chunk;
    });
    const pushes = [];
    createInterface({ input: curl.stdout }).on('line', (line) => {
      if (line.trim() !== '') pushes.push(JSON.parse(line));
    });

    const connected = await waitFor(() => pushes.find((p) => p.connect), {
      message: 'the connect push from curl',
    }).catch((e) => {
      throw new Error(`${e.message}; curl stderr: ${stderr}`);
    });
    assert.ok(connected.connect.subs?.[channel], `subscribed server-side: ${JSON.stringify(connected)}`);

    await server.apiOk('publish', { channel, data: { text: 'hello curl' } });
    const pub = await waitFor(() => pushes.find((p) => p.pub), { message: 'the publication through curl' });
    assert.equal(pub.channel, channel);
    assert.deepEqual(pub.pub.data, { text: 'hello curl' });
  });
});

// --- the long-poll cursor ------------------------------------------------------------------

test('long_poll: lost poll responses lose nothing and re-sent messages are not repeated', { timeout: 15_000 }, async (t) => {
  const server = await startServer({ t, env: SERVER_ENV });
  const channel = uniqueChannel('cursor');
  // Every third poll claims an older cursor (so the server sends again what the client
  // has); every third poll that carries messages is "lost" after the server answered.
  let polls = 0;
  let previousCursor = '0';
  let staleServed = 0;
  let lost = 0;
  const unreliable = async (url, init) => {
    if (init.method !== 'GET') return fetch(url, init);
    polls += 1;
    const u = new URL(url);
    const cursor = u.searchParams.get('cursor');
    if (polls % 3 === 1 && previousCursor !== cursor) {
      u.searchParams.set('cursor', previousCursor);
      staleServed += 1;
    }
    previousCursor = cursor;
    const res = await fetch(u, init);
    const text = await res.text();
    if (polls % 3 === 2 && res.status === 200 && JSON.parse(text).messages.length > 0) {
      lost += 1;
      throw new TypeError('response lost on the way');
    }
    return { status: res.status, text: async () => text };
  };
  const client = newClient(`ws://${hostPortOf(server)}/connection/long_poll`, {
    t,
    websocket: LongPollSocket.withOptions({ fetch: unreliable, retries: 3, retryDelay: 20 }),
  });
  const connected = waitEvent(client, 'connected');
  client.connect();
  await connected;
  const { publications } = await subscribe(client, channel);

  for (let n = 1; n <= 30; n++) {
    await server.apiOk('publish', { channel, data: { n } });
    if (n % 5 === 0) await waitForCount(publications, n, { message: 'publications so far' });
  }
  await waitForCount(publications, 30, { message: 'all publications' });
  await server.apiOk('publish', { channel, data: { n: 'marker' } });
  await waitFor(() => publications.some((p) => p.data.n === 'marker'), { message: 'marker' });

  assert.deepEqual(
    publications.map((p) => p.data.n),
    [...Array.from({ length: 30 }, (_, i) => i + 1), 'marker'],
  );
  assert.ok(staleServed > 0 && lost > 0, `exercised: ${staleServed} stale cursors, ${lost} lost responses`);
  assert.equal(client.state, 'connected', 'no reconnect was needed');
});

// --- shutdown between two polls --------------------------------------------------------------

test(
  'long_poll: a poll made just after SIGTERM still collects the 3001 close',
  { timeout: 10_000 },
  async (t) => {
    const server = await startServer({ t, env: { ...SERVER_ENV, TIDINGS_SHUTDOWN_TIMEOUT: '3s', RUST_LOG: 'info' } });
    const base = `${server.httpUrl}/connection/long_poll`;
    const opened = await fetch(base, { method: 'POST', body: '{"id":1,"connect":{}}', signal: AbortSignal.timeout(5_000) });
    const { session } = await opened.json();
    const first = await (await fetch(`${base}?session=${session}&cursor=0`, { signal: AbortSignal.timeout(5_000) })).json();
    assert.ok(first.messages[0].connect, 'connect reply');

    // The client is between two polls when the server is told to stop.
    server.signal('SIGTERM');
    await waitFor(() => server.stderr.includes('shutting down'), { message: 'the server to start shutting down' });
    const res = await fetch(`${base}?session=${session}&cursor=${first.cursor}`, {
      signal: AbortSignal.timeout(5_000),
    }).catch((e) => {
      throw new Error(`the poll after SIGTERM failed: ${e.cause?.code ?? e.cause?.message ?? e.message}`);
    });
    const body = await res.json();
    assert.deepEqual(body.close, { code: 3001, reason: 'shutdown', reconnect: true });
  },
);
