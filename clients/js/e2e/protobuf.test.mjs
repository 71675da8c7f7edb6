// JSON and Protobuf clients in one channel, with both builds of centrifuge-js: each sees
// the other's publications, bytes that are not JSON reach Protobuf subscribers exactly
// (live and from history, over WebSocket and HTTP streaming), and a JSON subscriber that
// would be sent such bytes is disconnected with 3506, as Centrifugo does.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  JSON_FORMAT,
  PROTOBUF_FORMAT,
  connectClient,
  startServer,
  subscribe,
  uniqueChannel,
  waitEvent,
  waitFor,
  waitForCount,
} from './harness.mjs';

/** A Protobuf client over HTTP streaming (with /emulation for its commands). */
function httpStreamEndpoint(server) {
  return {
    url: [{ transport: 'http_stream', endpoint: `${server.httpUrl}/connection/http_stream` }],
    options: { emulationEndpoint: `${server.httpUrl}/emulation` },
  };
}

test('JSON and Protobuf clients in one channel receive each other\'s publications', { timeout: 15_000 }, async (t) => {
  const server = await startServer({ t });
  const channel = uniqueChannel('mixed');
  const { client: jsonClient, ctx: jsonCtx } = await connectClient(server.wsUrl, { t, format: JSON_FORMAT });
  const { client: pbClient, ctx: pbCtx } = await connectClient(server.wsUrl, { t, format: PROTOBUF_FORMAT });
  const stream = httpStreamEndpoint(server);
  const { client: pbStream } = await connectClient(stream.url, { t, format: PROTOBUF_FORMAT, ...stream.options });

  const j = await subscribe(jsonClient, channel);
  const p = await subscribe(pbClient, channel);
  const s = await subscribe(pbStream, channel);

  await j.sub.publish({ from: 'json', n: 1 });
  await p.sub.publish(PROTOBUF_FORMAT.data({ from: 'protobuf', n: 2 }));
  await server.apiOk('publish', { channel, data: { from: 'api', n: 3 } });

  const expected = [
    { from: 'json', n: 1 },
    { from: 'protobuf', n: 2 },
    { from: 'api', n: 3 },
  ];
  for (const [who, received, format] of [
    ['JSON', j.publications, JSON_FORMAT],
    ['Protobuf over WebSocket', p.publications, PROTOBUF_FORMAT],
    ['Protobuf over HTTP streaming', s.publications, PROTOBUF_FORMAT],
  ]) {
    await waitForCount(received, 3, { message: `publications at the ${who} client` });
    assert.deepEqual(
      received.map((pub) => format.read(pub.data)),
      expected,
      `${who} client`,
    );
    assert.deepEqual(
      received.map((pub) => pub.offset),
      [1, 2, 3],
    );
    assert.deepEqual(
      received.map((pub) => pub.info?.client),
      [jsonCtx.client, pbCtx.client, undefined],
      `${who} client: who published`,
    );
  }

  // What a Protobuf client published is JSON to the server API as well.
  const history = await server.apiOk('history', { channel, limit: 10 });
  assert.deepEqual(history.publications[1].data, { from: 'protobuf', n: 2 });
});

test('a binary payload round-trips exactly between Protobuf clients; a JSON subscriber gets 3506', { timeout: 15_000 }, async (t) => {
  const server = await startServer({ t });
  const channel = uniqueChannel('binary');
  // Bytes that are not UTF-8, let alone JSON: every byte value, and a zero in front.
  const payload = new Uint8Array(257);
  for (let i = 0; i < 256; i++) payload[i + 1] = 255 - i;

  const { client: publisher } = await connectClient(server.wsUrl, { t, format: PROTOBUF_FORMAT });
  const { client: viaWs } = await connectClient(server.wsUrl, { t, format: PROTOBUF_FORMAT });
  const stream = httpStreamEndpoint(server);
  const { client: viaStream } = await connectClient(stream.url, { t, format: PROTOBUF_FORMAT, ...stream.options });
  const { client: jsonClient } = await connectClient(server.wsUrl, { t, format: JSON_FORMAT });

  const pub = await subscribe(publisher, channel);
  const ws = await subscribe(viaWs, channel);
  const st = await subscribe(viaStream, channel);
  const js = await subscribe(jsonClient, channel);
  const jsonGone = waitEvent(jsonClient, 'disconnected', { message: 'the JSON client to be disconnected' });

  await pub.sub.publish(payload);

  for (const [who, received] of [
    ['publisher', pub.publications],
    ['WebSocket', ws.publications],
    ['HTTP streaming', st.publications],
  ]) {
    await waitForCount(received, 1, { message: `the binary publication at the ${who} client` });
    assert.deepEqual(new Uint8Array(received[0].data), payload, `${who}: the same bytes`);
  }

  // A JSON connection cannot carry those bytes: the documented disconnect, not retried.
  const gone = await jsonGone;
  assert.equal(gone.code, 3506, `disconnected context: ${JSON.stringify(gone)}`);
  assert.equal(gone.reason, 'inappropriate protocol');
  assert.equal(jsonClient.state, 'disconnected');
  assert.equal(js.publications.length, 0, 'the JSON client was sent nothing it could not read');

  // History hands the same bytes back, over both transports.
  for (const [who, client] of [
    ['WebSocket', viaWs],
    ['HTTP streaming', viaStream],
  ]) {
    const history = await client.history(channel, { limit: -1 });
    assert.equal(history.publications.length, 1, `${who} history`);
    assert.deepEqual(new Uint8Array(history.publications[0].data), payload, `${who} history: the same bytes`);
  }

  // The Protobuf clients are unaffected by the JSON client's disconnect.
  await pub.sub.publish(PROTOBUF_FORMAT.data({ after: 'binary' }));
  await waitFor(() => ws.publications.length === 2 && st.publications.length === 2, {
    message: 'the next publication at both Protobuf subscribers',
  });
  assert.deepEqual(PROTOBUF_FORMAT.read(st.publications[1].data), { after: 'binary' });
});

test('bytes published through the server API with b64data reach a Protobuf subscriber as they are, and come back from API history as b64data', { timeout: 15_000 }, async (t) => {
  const server = await startServer({ t });
  const channel = uniqueChannel('b64');
  const bytes = Uint8Array.from([0x00, 0xc3, 0x28, 0xff, 0x10, 0x80]);
  const { client } = await connectClient(server.wsUrl, { t, format: PROTOBUF_FORMAT });
  const { publications } = await subscribe(client, channel);

  const b64data = Buffer.from(bytes).toString('base64');
  await server.apiOk('publish', { channel, b64data });
  await waitForCount(publications, 1, { message: 'the b64data publication' });
  assert.deepEqual(new Uint8Array(publications[0].data), bytes);

  // The API's history answers in JSON, so it hands such bytes back as b64data.
  const history = await server.apiOk('history', { channel, limit: -1 });
  assert.deepEqual(history.publications, [{ b64data, offset: 1 }]);
});
