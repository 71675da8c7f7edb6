// Subscription tokens with the real centrifuge-js client, JSON and Protobuf builds:
// `getToken` on a subscription to a `$` channel, the SDK's own `sub_refresh` when the
// token runs out, and a token for somebody else ending the connection with 3500.
// (transports.test.mjs runs the connection's `refresh` and `sub_refresh` over every
// transport.)

import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { test } from 'node:test';

import { FORMATS, connectClient, startServer, subscribe, uniqueChannel, waitEvent, waitFor, waitForCount } from './harness.mjs';

const HMAC_SECRET = 'e2e-auth-secret-of-at-least-32-bytes';

function b64url(value) {
  return Buffer.from(JSON.stringify(value)).toString('base64url');
}

/** An HS256 JWT with `claims`, signed here the way an application backend would. */
function jwt(claims) {
  const head = b64url({ alg: 'HS256', typ: 'JWT' });
  const body = b64url(claims);
  const sig = createHmac('sha256', HMAC_SECRET).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

const now = () => Math.floor(Date.now() / 1000);

for (const format of FORMATS) {
  test(`getToken on a subscription admits to a $ channel and the SDK renews it with sub_refresh [${format.name}]`, { timeout: 20_000 }, async (t) => {
    const server = await startServer({ t, env: { TIDINGS_CLIENT_TOKEN_HMAC_SECRET_KEY: HMAC_SECRET } });
    const channel = `$${uniqueChannel('inbox')}`;
    const { client } = await connectClient(server.wsUrl, { t, format, token: jwt({ sub: 'alice', exp: now() + 600 }) });

    const asked = [];
    const { sub, publications } = await subscribe(client, channel, {
      // Short-lived tokens, so the SDK has to come back for a new one.
      getToken: async (ctx) => {
        asked.push(ctx.channel);
        return jwt({ sub: 'alice', channel: ctx.channel, exp: now() + 2 });
      },
    });
    assert.equal(sub.state, 'subscribed');
    assert.deepEqual(asked, [channel]);
    // A renewal keeps the subscription as it is; a resubscribe would pass through
    // 'subscribing'.
    const states = [];
    sub.on('state', (ctx) => states.push(ctx.newState));

    // The SDK calls getToken again when the ttl runs out and sends sub_refresh.
    await waitFor(() => asked.length >= 2, { timeout: 8_000, message: 'a second getToken call (sub_refresh)' });
    await waitFor(() => sub.state === 'subscribed', { message: 'subscription still subscribed after refresh' });
    assert.deepEqual(states, [], 'the subscription was never interrupted');

    await server.apiOk('publish', { channel, data: { after: 'refresh' } });
    await waitForCount(publications, 1, { message: 'publication after the refresh' });
    assert.deepEqual(format.read(publications[0].data), { after: 'refresh' });
  });

  test(`a $ channel without a token is refused; a token for another user closes the connection with 3500 [${format.name}]`, { timeout: 15_000 }, async (t) => {
    const server = await startServer({ t, env: { TIDINGS_CLIENT_TOKEN_HMAC_SECRET_KEY: HMAC_SECRET } });
    const channel = `$${uniqueChannel('vault')}`;
    const { client } = await connectClient(server.wsUrl, { t, format, token: jwt({ sub: 'alice', exp: now() + 600 }) });

    const bare = client.newSubscription(channel);
    const refused = waitEvent(bare, 'unsubscribed', { message: 'subscription refused without a token' });
    bare.subscribe();
    const unsub = await refused;
    assert.equal(unsub.code, 103, 'permission denied');
    client.removeSubscription(bare);

    const disconnected = waitEvent(client, 'disconnected', { message: 'disconnect after a token for bob' });
    const stolen = client.newSubscription(channel, {
      getToken: async (ctx) => jwt({ sub: 'bob', channel: ctx.channel, exp: now() + 600 }),
    });
    stolen.subscribe();
    const ctx = await disconnected;
    assert.equal(ctx.code, 3500);
    const channels = await server.apiOk('channels', {});
    assert.equal(channels.channels[channel], undefined, 'nothing was subscribed');
  });

}
