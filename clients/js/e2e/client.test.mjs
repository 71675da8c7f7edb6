// Core client behaviour, exercised through the real centrifuge-js client: every scenario
// runs once with the JSON build and once with the Protobuf build (FORMATS in harness.mjs).

import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { test } from 'node:test';

import {
  FORMATS,
  connectClient,
  newClient,
  startServer,
  subscribe,
  uniqueChannel,
  waitEvent,
  waitFor,
  waitForCount,
} from './harness.mjs';

const HMAC_SECRET = 'e2e-hmac-secret';

function b64url(value) {
  return Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');
}

/** An HS256 connection token for `user`, signed here so the test does not depend on `tidings token`. */
function connectionToken(user, secret = HMAC_SECRET) {
  const head = b64url({ alg: 'HS256', typ: 'JWT' });
  const body = b64url({ sub: user, exp: Math.floor(Date.now() / 1000) + 600 });
  const sig = createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

for (const format of FORMATS) {
  test(`connect: client receives a client id and reaches state connected [${format.name}]`, { timeout: 15_000 }, async (t) => {
    const server = await startServer({ t });
    const client = newClient(server.wsUrl, { t, format });
    const states = [];
    client.on('state', (ctx) => states.push(ctx.newState));
    const connected = waitEvent(client, 'connected');
    client.connect();
    const ctx = await connected;

    assert.equal(typeof ctx.client, 'string');
    assert.ok(ctx.client.length > 0, 'client id is not empty');
    assert.equal(ctx.transport, 'websocket');
    assert.equal(client.state, 'connected');
    assert.deepEqual(states, ['connecting', 'connected']);

    await waitFor(async () => (await server.metric('tidings_connections')) === 1, {
      message: 'tidings_connections gauge to read 1',
    });
  });

  test(`subscribe and client publish: every subscriber receives the publication [${format.name}]`, { timeout: 15_000 }, async (t) => {
    const server = await startServer({ t });
    const channel = uniqueChannel('chat');
    const { client: alice, ctx: aliceCtx } = await connectClient(server.wsUrl, { t, format });
    const { client: bob } = await connectClient(server.wsUrl, { t, format });

    const a = await subscribe(alice, channel);
    const b = await subscribe(bob, channel);
    assert.equal(a.ctx.channel, channel);
    assert.equal(a.sub.state, 'subscribed');
    assert.equal(b.sub.state, 'subscribed');

    await a.sub.publish(format.data({ text: 'hello', n: 1 }));

    await waitForCount(b.publications, 1, { message: 'publication at bob' });
    await waitForCount(a.publications, 1, { message: 'publication at alice (the publisher)' });
    for (const pub of [a.publications[0], b.publications[0]]) {
      assert.equal(pub.channel, channel);
      assert.deepEqual(format.read(pub.data), { text: 'hello', n: 1 });
      assert.equal(pub.info?.client, aliceCtx.client, 'publication carries the publisher client info');
      assert.equal(pub.offset, 1, 'first publication of a channel with history has offset 1');
    }
  });

  test(`presence lists subscribers and presence_stats counts clients and users [${format.name}]`, { timeout: 15_000 }, async (t) => {
    const server = await startServer({ t, env: { TIDINGS_CLIENT_TOKEN_HMAC_SECRET_KEY: HMAC_SECRET } });
    const channel = uniqueChannel('room');

    const conns = [];
    for (const user of ['alice', 'alice', 'bob']) {
      const { client, ctx } = await connectClient(server.wsUrl, { t, format, token: connectionToken(user) });
      const { sub } = await subscribe(client, channel);
      conns.push({ user, client, id: ctx.client, sub });
    }

    const presence = await conns[0].sub.presence();
    const ids = Object.keys(presence.clients).sort();
    assert.deepEqual(ids, conns.map((c) => c.id).sort());
    for (const c of conns) {
      const info = presence.clients[c.id];
      assert.equal(info.client, c.id);
      assert.equal(info.user, c.user);
    }

    const stats = await conns[2].sub.presenceStats();
    assert.deepEqual(stats, { numClients: 3, numUsers: 2 });

    // The client-level call answers the same as the subscription-level one.
    const viaClient = await conns[1].client.presenceStats(channel);
    assert.deepEqual(viaClient, { numClients: 3, numUsers: 2 });

    // Bob leaves: one user and one client fewer.
    conns[2].sub.unsubscribe();
    await waitFor(
      async () => {
        const s = await conns[0].sub.presenceStats();
        return s.numClients === 2 && s.numUsers === 1;
      },
      { message: 'presence_stats to drop to 2 clients / 1 user' },
    );
    const after = await conns[0].sub.presence();
    assert.deepEqual(Object.keys(after.clients).sort(), [conns[0].id, conns[1].id].sort());
  });

  test(`join and leave events are delivered between two clients [${format.name}]`, { timeout: 15_000 }, async (t) => {
    const server = await startServer({ t });
    const channel = uniqueChannel('lobby');
    const { client: alice } = await connectClient(server.wsUrl, { t, format });
    const a = await subscribe(alice, channel, { joinLeave: true });

    const { client: bob, ctx: bobCtx } = await connectClient(server.wsUrl, { t, format });
    const joined = waitEvent(a.sub, 'join', {
      filter: (ctx) => ctx.info.client === bobCtx.client,
      message: "bob's join at alice",
    });
    const b = await subscribe(bob, channel, { joinLeave: true });
    const join = await joined;
    assert.equal(join.channel, channel);
    assert.equal(join.info.client, bobCtx.client);
    assert.equal(join.info.user, '');

    const left = waitEvent(a.sub, 'leave', {
      filter: (ctx) => ctx.info.client === bobCtx.client,
      message: "bob's leave at alice",
    });
    b.sub.unsubscribe();
    const leave = await left;
    assert.equal(leave.channel, channel);
    assert.equal(leave.info.client, bobCtx.client);

    // Subscribing again and then disconnecting produces a join and a leave as well.
    const rejoined = waitEvent(a.sub, 'join', {
      filter: (ctx) => ctx.info.client === bobCtx.client,
      message: "bob's second join at alice",
    });
    const resubscribed = waitEvent(b.sub, 'subscribed', { message: 'bob resubscribed' });
    b.sub.subscribe();
    await resubscribed;
    await rejoined;
    const leftAgain = waitEvent(a.sub, 'leave', {
      filter: (ctx) => ctx.info.client === bobCtx.client,
      message: "bob's leave when his connection closes",
    });
    bob.disconnect();
    await leftAgain;
  });

  test(`history honours limit, since and reverse [${format.name}]`, { timeout: 15_000 }, async (t) => {
    const server = await startServer({ t });
    const channel = uniqueChannel('feed');
    const { client } = await connectClient(server.wsUrl, { t, format });
    const { sub, publications } = await subscribe(client, channel);

    for (let i = 1; i <= 10; i++) {
      await server.apiOk('publish', { channel, data: { i } });
    }
    await waitForCount(publications, 10, { message: 'live publications' });

    const offsets = (res) => res.publications.map((p) => p.offset);
    const values = (res) => res.publications.map((p) => format.read(p.data).i);

    // No limit: only the stream position.
    const top = await sub.history();
    assert.equal(top.publications.length, 0);
    assert.equal(top.offset, 10);
    assert.equal(typeof top.epoch, 'string');
    assert.ok(top.epoch.length > 0, 'epoch is not empty');

    const all = await sub.history({ limit: -1 });
    assert.deepEqual(offsets(all), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    assert.deepEqual(values(all), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    assert.equal(all.offset, 10);
    assert.equal(all.epoch, top.epoch);

    const first3 = await sub.history({ limit: 3 });
    assert.deepEqual(offsets(first3), [1, 2, 3]);

    const last3 = await sub.history({ limit: 3, reverse: true });
    assert.deepEqual(offsets(last3), [10, 9, 8]);

    const after4 = await sub.history({ limit: 3, since: { offset: 4, epoch: top.epoch } });
    assert.deepEqual(offsets(after4), [5, 6, 7]);

    const before8 = await sub.history({ limit: 3, since: { offset: 8, epoch: top.epoch }, reverse: true });
    assert.deepEqual(offsets(before8), [7, 6, 5]);

    const rest = await sub.history({ limit: -1, since: { offset: 7, epoch: top.epoch } });
    assert.deepEqual(offsets(rest), [8, 9, 10]);

    // The client-level call over the same channel.
    const viaClient = await client.history(channel, { limit: 2, reverse: true });
    assert.deepEqual(values(viaClient), [10, 9]);
  });

  test(`subscribing to an unknown namespace ends the subscription with code 102 [${format.name}]`, { timeout: 15_000 }, async (t) => {
    const server = await startServer({ t });
    const { client } = await connectClient(server.wsUrl, { t, format });
    const sub = client.newSubscription('nosuchnamespace:room');
    const unsubscribed = waitEvent(sub, 'unsubscribed', { message: 'unsubscribed after error' });
    sub.subscribe();
    const ctx = await unsubscribed;
    assert.equal(ctx.code, 102);
    assert.equal(sub.state, 'unsubscribed');
    assert.equal(client.state, 'connected', 'the connection survives a subscribe error');
  });

}
