// Two nodes joined through a private redis-server, with the real centrifuge-js client:
// the stream (or the long-poll session) lives on node A while every other request of
// the client lands on node B, as behind a load balancer without sticky sessions.
// Node B forwards them to node A through Redis.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';

import { LongPollSocket } from '@tidings/long-poll';
import { EventSource } from 'eventsource';

import { JSON_FORMAT, PROTOBUF_FORMAT, newClient, startServer, subscribe, uniqueChannel, waitEvent, waitForCount } from './harness.mjs';

const REDIS = ['/usr/bin/redis-server', '/usr/local/bin/redis-server'].find((p) => existsSync(p));

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

async function waitListening(port) {
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    const ok = await new Promise((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`redis-server did not listen on ${port}`);
}

describe('two nodes on Redis, requests landing on the other node', () => {
  let redis;
  let nodeA;
  let nodeB;

  before(async () => {
    assert.ok(REDIS, 'redis-server is not installed (scripts/test.sh installs it)');
    const port = await freePort();
    redis = spawn(REDIS, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
      stdio: 'ignore',
    });
    await waitListening(port);
    const env = {
      TIDINGS_ENGINE_TYPE: 'redis',
      TIDINGS_ENGINE_REDIS_ADDRESS: `redis://127.0.0.1:${port}`,
      TIDINGS_ENGINE_REDIS_PREFIX: `e2e${process.pid}`,
      TIDINGS_NODE_INFO_PUBLISH_INTERVAL: '300ms',
      TIDINGS_LONG_POLL_HOLD: '1s',
    };
    nodeA = await startServer({ env });
    nodeB = await startServer({ env });
  });

  after(async () => {
    await nodeA?.stop();
    await nodeB?.stop();
    redis?.kill('SIGKILL');
  });

  async function roundTrip(t, client, format = JSON_FORMAT) {
    const connected = waitEvent(client, 'connected', { message: 'connect' });
    client.connect();
    await connected;
    const channel = uniqueChannel('cluster');
    const { sub, publications } = await subscribe(client, channel);
    await sub.publish(format.data({ from: 'the client' }));
    await nodeB.apiOk('publish', { channel, data: { from: 'the API of node B' } });
    await waitForCount(publications, 2, { message: 'publications' });
    assert.deepEqual(
      publications.map((p) => format.read(p.data).from),
      ['the client', 'the API of node B'],
    );
    const presence = await sub.presence();
    assert.equal(Object.keys(presence.clients).length, 1);
  }

  test('SSE: stream on node A, commands posted to node B', async (t) => {
    const a = nodeA.httpUrl;
    const b = nodeB.httpUrl;
    const client = newClient([{ transport: 'sse', endpoint: `${a}/connection/sse` }], {
      t,
      eventsource: EventSource,
      emulationEndpoint: `${b}/emulation`,
    });
    await roundTrip(t, client);
  });

  test('HTTP streaming: stream on node A, commands posted to node B', async (t) => {
    const client = newClient([{ transport: 'http_stream', endpoint: `${nodeA.httpUrl}/connection/http_stream` }], {
      t,
      emulationEndpoint: `${nodeB.httpUrl}/emulation`,
    });
    await roundTrip(t, client);
  });

  test('HTTP streaming with the Protobuf build: stream on node A, commands posted to node B', async (t) => {
    const client = newClient([{ transport: 'http_stream', endpoint: `${nodeA.httpUrl}/connection/http_stream` }], {
      t,
      format: PROTOBUF_FORMAT,
      emulationEndpoint: `${nodeB.httpUrl}/emulation`,
    });
    await roundTrip(t, client, PROTOBUF_FORMAT);
  });

  test('long polling: session opened on node A, polls and commands through node B', async (t) => {
    const a = new URL(nodeA.httpUrl);
    const b = new URL(nodeB.httpUrl);
    let forwarded = 0;
    // Everything but the opening POST goes to node B.
    const balancer = (url, init) => {
      const u = new URL(url);
      const opening = init.method === 'POST' && u.pathname === '/connection/long_poll';
      if (!opening) {
        u.host = b.host;
        forwarded += 1;
      } else {
        u.host = a.host;
      }
      return fetch(u, init);
    };
    const client = newClient(`ws://${a.host}/connection/long_poll`, {
      t,
      websocket: LongPollSocket.withOptions({ fetch: balancer }),
    });
    await roundTrip(t, client);
    assert.ok(forwarded > 3, `requests sent to node B: ${forwarded}`);
  });
});
