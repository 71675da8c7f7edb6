// Browser test of the admin web UI (docs/admin.md): two nodes on a private
// redis-server, the UI served on node B's internal port, a centrifuge-js user
// connected to node A. The operator logs in, sees both nodes, finds the user's
// channel, reads its presence, publishes from the form and sees the message in the
// live tail and at the client, and disconnects the user. A wrong password, a forged
// or expired token and a cross-origin request are refused.
//
// Env: TIDINGS_BIN (binary), CHROMIUM_PATH (default /usr/bin/chromium),
//      TIDINGS_ADMIN_SCREENSHOT_DIR (where screenshots go; default a fresh temp dir).

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { chromium } from 'playwright-core';

import { CHROMIUM, CHROMIUM_ARGS, recordCspViolations, waitInPage } from './demo-harness.mjs';
import { newClient, startServer, subscribe, uniqueChannel, waitEvent, waitFor, waitForCount } from './harness.mjs';

const WAIT = 10_000;
const REDIS = ['/usr/bin/redis-server', '/usr/local/bin/redis-server'].find((p) => existsSync(p));
const PASSWORD = 'correct horse battery staple';
const ADMIN_SECRET = 'e2e-admin-secret-of-at-least-32-bytes!';
const HMAC_SECRET = 'e2e-client-hmac-secret-of-32-bytes!!';
const API_KEY = 'e2e-admin-api-key';

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
  await waitFor(() => new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  }), { timeout: WAIT, message: `redis-server on ${port}` });
}

/** An HS256 JWT of `claims` signed with `secret`. */
function jwt(secret, claims) {
  const enc = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const head = enc({ alg: 'HS256', typ: 'JWT' });
  const body = enc(claims);
  const sig = createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

const now = () => Math.floor(Date.now() / 1000);

let redis;
let nodeA;
let nodeB;
let adminB;
let browser;
let shots;
const pageErrors = [];
const cspViolations = [];

/** The internal listener's base URL, from the line the binary prints before it listens. */
function internalUrl(server) {
  const line = server.stdoutLines.find((l) => l.startsWith('tidings internal endpoints on '));
  assert.ok(line, `no internal listener line in ${server.stdoutLines.join(' | ')}`);
  return line.slice('tidings internal endpoints on '.length).trim();
}

before(async () => {
  assert.ok(REDIS, 'redis-server is not installed (scripts/test.sh installs it)');
  const port = await freePort();
  redis = spawn(REDIS, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  await waitListening(port);
  const dir = mkdtempSync(path.join(os.tmpdir(), 'tidings-admin-'));
  const config = path.join(dir, 'config.json');
  writeFileSync(config, JSON.stringify({
    http_server: { address: '127.0.0.1', internal_port: '0' },
    http_api: { key: API_KEY },
    client: { token: { hmac_secret_key: HMAC_SECRET } },
    channel: {
      without_namespace: {
        presence: true, join_leave: true, history_size: 50, history_ttl: '300s',
        allow_subscribe_for_client: true, allow_publish_for_subscriber: true,
      },
    },
    engine: { type: 'redis', redis: { address: `redis://127.0.0.1:${port}`, prefix: `admin${process.pid}` } },
    node: { info_publish_interval: '300ms' },
    admin: { enabled: true, password: PASSWORD, secret: ADMIN_SECRET, handler_prefix: '/admin' },
  }));
  nodeA = await startServer({ args: ['--config', config], env: { TIDINGS_HTTP_API_KEY: API_KEY, TIDINGS_NODE_NAME: 'node-a' } });
  nodeB = await startServer({ args: ['--config', config], env: { TIDINGS_HTTP_API_KEY: API_KEY, TIDINGS_NODE_NAME: 'node-b' } });
  adminB = `${internalUrl(nodeB)}/admin/`;
  browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true, timeout: 30_000 });
  shots = process.env.TIDINGS_ADMIN_SCREENSHOT_DIR || mkdtempSync(path.join(os.tmpdir(), 'tidings-admin-shots-'));
  mkdirSync(shots, { recursive: true });
});

after(async () => {
  if (browser) await browser.close().catch(() => {});
  await nodeA?.stop();
  await nodeB?.stop();
  redis?.kill('SIGKILL');
  if (shots) console.log(`admin screenshots in ${shots}`);
});

async function openAdmin() {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, colorScheme: 'light' });
  await recordCspViolations(context, cspViolations, 'admin');
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  page.on('pageerror', (err) => pageErrors.push(err.message));
  await page.goto(adminB, { timeout: WAIT });
  return { context, page };
}

async function login(page, password) {
  await page.fill('#password', password);
  await page.click('#login-form button[type=submit]');
}

test('the admin UI: login, nodes, channel, presence, publish, tail, disconnect', async (t) => {
  // A user on node A, in a channel.
  const channel = uniqueChannel('admin');
  const alice = newClient(nodeA.wsUrl, { t, token: jwt(HMAC_SECRET, { sub: 'alice', exp: now() + 600 }) });
  const connected = waitEvent(alice, 'connected', { message: 'alice connects' });
  alice.connect();
  await connected;
  const { publications } = await subscribe(alice, channel);

  const { context, page } = await openAdmin();
  t.after(() => context.close());

  // The login form; a wrong password is refused and said so.
  await page.waitForSelector('#login-form', { state: 'visible' });
  await login(page, 'not the password');
  await page.waitForSelector('#login-error', { state: 'visible' });
  assert.match(await page.textContent('#login-error'), /wrong password/);
  await page.screenshot({ path: path.join(shots, '1-login-refused.png') });
  await login(page, PASSWORD);

  // Nodes: both nodes of the cluster, each with its figures.
  await waitInPage(page, () => document.querySelectorAll('#nodes-table tbody tr').length === 2, null, { message: 'two nodes' });
  const names = await page.$$eval('#nodes-table tbody tr td:first-child', (cells) => cells.map((c) => c.firstChild.textContent));
  assert.deepEqual(names.sort(), ['node-a', 'node-b']);
  await waitInPage(page, () => {
    const row = [...document.querySelectorAll('#nodes-table tbody tr')].find((r) => r.cells[0].firstChild.textContent === 'node-a');
    return row && row.cells[2].textContent === '1';
  }, null, { message: 'node-a shows its one connection' });
  await page.screenshot({ path: path.join(shots, '2-nodes.png') });

  // Channels: alice's channel with its one subscriber.
  await page.click('#tabs button[data-tab=channels]');
  const row = `#channels-table tbody tr[data-channel="${channel}"]`;
  await page.waitForSelector(row);
  assert.equal(await page.textContent(`${row} td.num`), '1');
  await page.click(row);

  // Presence: alice.
  await page.waitForSelector('#presence-table tbody tr[data-user="alice"]');
  assert.equal(await page.$$eval('#presence-table tbody tr', (rows) => rows.length), 1);
  await waitInPage(page, () => document.getElementById('tail-state').textContent === 'live', null, { message: 'the tail is live' });

  // Publish from the form: the tail (node B) and alice (node A) both get it.
  await page.fill('#detail-data', '{"text": "hello from the admin form"}');
  await page.click('#detail-publish button[type=submit]');
  await waitInPage(page, () => [...document.querySelectorAll('#tail-log li')].some((li) => li.textContent.includes('hello from the admin form')), null, { message: 'the publication in the tail' });
  await waitForCount(publications, 1, { message: 'publications at alice' });
  assert.deepEqual(publications[0].data, { text: 'hello from the admin form' });
  // A publication from elsewhere (node A's API) reaches the tail too.
  await fetch(`${internalUrl(nodeA)}/api/publish`, {
    method: 'POST',
    headers: { 'X-API-Key': API_KEY, 'Content-Type': 'application/json' },
    body: JSON.stringify({ channel, data: { text: 'from node A' } }),
  });
  await waitInPage(page, () => [...document.querySelectorAll('#tail-log li')].some((li) => li.textContent.includes('from node A')), null, { message: 'node A\'s publication in the tail' });
  await page.click('#history-reload');
  await waitInPage(page, () => document.querySelectorAll('#history-log li').length === 2, null, { message: 'two publications in history' });
  await page.screenshot({ path: path.join(shots, '3-channel.png') });
  await page.emulateMedia({ colorScheme: 'dark' });
  await page.screenshot({ path: path.join(shots, '3-channel-dark.png') });
  await page.emulateMedia({ colorScheme: 'light' });

  // Disconnect alice from her presence row; her client hears it.
  const disconnected = waitEvent(alice, 'disconnected', { message: 'alice is disconnected' });
  await page.click('#presence-table tbody tr[data-user="alice"] button.danger');
  const ctx = await disconnected;
  assert.ok(ctx.code >= 3000, `disconnect code ${ctx.code}`);
  await waitInPage(page, () => document.querySelectorAll('#presence-table tbody tr').length === 0, null, { timeout: WAIT, message: 'alice leaves presence' });

  // The configuration in effect, secrets masked.
  await page.click('#tabs button[data-tab=config]');
  await waitInPage(page, () => document.getElementById('config-json').textContent.includes('"admin"'), null, { message: 'the configuration' });
  const shown = await page.textContent('#config-json');
  for (const secret of [PASSWORD, ADMIN_SECRET, HMAC_SECRET, API_KEY]) {
    assert.ok(!shown.includes(secret), `the configuration shows a secret: ${secret}`);
  }
  assert.match(shown, /"secret": "••••••"/);
  await page.screenshot({ path: path.join(shots, '4-config.png') });

  // The Actions tab: publish to bob's channel, then unsubscribe him from it.
  const bobChannel = uniqueChannel('admin-bob');
  const bob = newClient(nodeA.wsUrl, { t, token: jwt(HMAC_SECRET, { sub: 'bob', exp: now() + 600 }) });
  const bobConnected = waitEvent(bob, 'connected', { message: 'bob connects' });
  bob.connect();
  await bobConnected;
  const { sub: bobSub, publications: bobGot } = await subscribe(bob, bobChannel);
  await page.click('#tabs button[data-tab=actions]');
  await page.fill('#publish-channel', bobChannel);
  await page.fill('#publish-data', '{"text": "from the actions tab"}');
  await page.click('#publish-form button[type=submit]');
  await waitForCount(bobGot, 1, { message: 'the publication at bob' });
  assert.deepEqual(bobGot[0].data, { text: 'from the actions tab' });
  const unsubscribed = waitEvent(bobSub, 'unsubscribed', { message: 'bob is unsubscribed' });
  await page.fill('#unsubscribe-user', 'bob');
  await page.fill('#unsubscribe-channel', bobChannel);
  await page.click('#unsubscribe-form button[type=submit]');
  await unsubscribed;
  await page.screenshot({ path: path.join(shots, '5-actions.png') });
  // A bad payload is refused in the page with a clear message.
  await page.fill('#publish-data', '{not json');
  await page.click('#publish-form button[type=submit]');
  await waitInPage(page, () => /Data must be JSON/.test(document.getElementById('toast').textContent), null, { message: 'the JSON error' });

  // A forged token in the page's storage sends it back to the login form.
  await page.evaluate(() => sessionStorage.setItem('tidings-admin-token', 'eyJhbGciOiJIUzI1NiJ9.e30.forged'));
  await page.reload();
  await page.waitForSelector('#login-form', { state: 'visible' });

  assert.deepEqual(pageErrors, []);
  assert.deepEqual(cspViolations, []);
});

test('admin requests without a valid session are refused', async () => {
  const base = `${internalUrl(nodeB)}/admin/admin`;
  const post = (what, body, headers = {}) => fetch(`${base}/${what}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...headers },
    body: JSON.stringify(body),
  });
  const info = { method: 'info', params: {} };

  assert.equal((await post('auth', { password: 'wrong' })).status, 401);
  const good = await post('auth', { password: PASSWORD });
  assert.equal(good.status, 200);
  const { token } = await good.json();
  assert.equal((await post('api', info, { Authorization: `token ${token}` })).status, 200);

  assert.equal((await post('api', info)).status, 401, 'no token');
  const forged = jwt('not the admin secret', { sub: 'admin', aud: 'tidings-admin', exp: now() + 600 });
  assert.equal((await post('api', info, { Authorization: `token ${forged}` })).status, 401, 'forged token');
  const expired = jwt(ADMIN_SECRET, { sub: 'admin', aud: 'tidings-admin', iat: now() - 7200, exp: now() - 3600 });
  const answer = await post('api', info, { Authorization: `token ${expired}` });
  assert.equal(answer.status, 401, 'expired token');
  assert.match(await answer.text(), /expired/);
  const client = jwt(ADMIN_SECRET, { sub: 'admin', exp: now() + 600 });
  assert.equal((await post('api', info, { Authorization: `token ${client}` })).status, 401, 'a token without the admin audience');
  const tail = await fetch(`${base}/tail?channel=x`, { headers: { Authorization: `token ${forged}` } });
  assert.equal(tail.status, 401, 'the tail with a forged token');
  const config = await fetch(`${base}/config`);
  assert.equal(config.status, 401, 'the configuration without a token');

  // From another site: refused even with a valid token.
  assert.equal((await post('api', info, { Authorization: `token ${token}`, Origin: 'http://evil.example' })).status, 403);
  // A plain form post (no JSON content type) is refused.
  const form = await fetch(`${base}/api`, {
    method: 'POST',
    headers: { Authorization: `token ${token}`, 'Content-Type': 'application/x-www-form-urlencoded' },
    body: 'method=info',
  });
  assert.equal(form.status, 415);
  // Bad input: a clear status and message.
  const bad = await post('api', { method: 'nope' }, { Authorization: `token ${token}` });
  assert.equal(bad.status, 400);
  assert.match(await bad.text(), /unknown API method/);
});
