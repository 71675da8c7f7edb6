// TLS (`http_server.tls`): centrifuge-js connects over wss:// and receives what a backend
// publishes over https://, both trusting only a self-signed certificate made by
// `tidings dev-cert` for this test.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';

import {
  API_KEY,
  BIN,
  WebSocket,
  connectClient,
  startServer,
  subscribe,
  uniqueChannel,
  waitForCount,
  withTimeout,
} from './harness.mjs';

/** Writes cert.pem and key.pem into a fresh temp dir; removed in teardown. */
function devCert(t) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'tidings-tls-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  execFileSync(BIN, ['dev-cert', '--out', dir], { stdio: 'ignore', timeout: 10_000 });
  return {
    cert: path.join(dir, 'cert.pem'),
    key: path.join(dir, 'key.pem'),
    ca: readFileSync(path.join(dir, 'cert.pem')),
  };
}

/** A `ws` WebSocket that trusts `ca`, in the shape centrifuge-js constructs. */
function trustingWebSocket(ca) {
  return class extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, { ca });
    }
  };
}

/** POSTs JSON to `url` over https trusting `ca`; resolves with {status, body}. */
function httpsPost(url, body, ca) {
  const payload = JSON.stringify(body);
  const request = new Promise((resolve, reject) => {
    const req = https.request(
      url,
      {
        method: 'POST',
        ca,
        headers: {
          'Content-Type': 'application/json',
          'Content-Length': Buffer.byteLength(payload),
          'X-API-Key': API_KEY,
        },
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (chunk) => (text += chunk));
        res.on('end', () => resolve({ status: res.statusCode, body: text }));
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
  return withTimeout(request, 5_000, `POST ${url}`);
}

function tlsEnv(cert) {
  return {
    TIDINGS_HTTP_SERVER_TLS_ENABLED: 'true',
    TIDINGS_HTTP_SERVER_TLS_CERT_PEM: cert.cert,
    TIDINGS_HTTP_SERVER_TLS_KEY_PEM: cert.key,
  };
}

test('tls: centrifuge-js over wss:// receives a publication made over https://', { timeout: 20_000 }, async (t) => {
  const cert = devCert(t);
  const server = await startServer({ t, env: tlsEnv(cert) });
  assert.ok(server.wsUrl.startsWith('wss://'), server.wsUrl);

  const channel = uniqueChannel('tls');
  const { client, ctx } = await connectClient(server.wsUrl, { t, websocket: trustingWebSocket(cert.ca) });
  assert.equal(ctx.transport, 'websocket');
  const { publications } = await subscribe(client, channel);

  const { status, body } = await httpsPost(`${server.httpUrl}/api/publish`, { channel, data: { text: 'secure' } }, cert.ca);
  assert.equal(status, 200, body);
  await waitForCount(publications, 1, { message: 'publications over wss' });
  assert.deepEqual(publications[0].data, { text: 'secure' });
});

test('tls: a client that does not trust the certificate cannot connect', { timeout: 20_000 }, async (t) => {
  const cert = devCert(t);
  const server = await startServer({ t, env: tlsEnv(cert) });
  const ws = new WebSocket(server.wsUrl);
  const outcome = await withTimeout(
    new Promise((resolve) => {
      ws.once('open', () => resolve('open'));
      ws.once('error', (e) => resolve(e.code || e.message));
    }),
    5_000,
    'untrusted wss handshake to fail',
  );
  ws.terminate();
  assert.equal(outcome, 'DEPTH_ZERO_SELF_SIGNED_CERT');
});
