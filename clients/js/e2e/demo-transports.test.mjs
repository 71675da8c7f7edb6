// Browser test of the demo chat page over the HTTP transports. For each of sse, http_stream and
// long_poll, a page forced to that transport (?transport=...) and a page on WebSocket join one
// room: each sees the other online, they chat both ways, the HTTP page recovers what it missed
// after a dropped connection, and its leave reaches the other page when it navigates away.
// A second server with one-second pings checks that pongs travel over /emulation and that a
// shutdown reaches the page as a disconnect.
//
// Env: TIDINGS_BIN (binary), CHROMIUM_PATH (default /usr/bin/chromium),
//      TIDINGS_DEMO_SCREENSHOT_DIR (where screenshots go; default a fresh temp dir).

import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { chromium } from 'playwright-core';

import {
  CHROMIUM, CHROMIUM_ARGS, metric, recordCspViolations, startTidings, texts, waitInPage, waitMetric,
} from './demo-harness.mjs';

const WAIT = 10_000;
const RUN = Date.now().toString(36);
const LABELS = { websocket: 'WebSocket', sse: 'SSE', http_stream: 'HTTP streaming', long_poll: 'long polling' };
// The requests a page on each HTTP transport must make (path prefixes).
const ENDPOINTS = {
  sse: ['/connection/sse', '/emulation'],
  http_stream: ['/connection/http_stream', '/emulation'],
  long_poll: ['/connection/long_poll', '/emulation'],
};

let server;
let browser;
let shotDir;

before(async () => {
  // Fail, not skip: a missing browser must not pass as green.
  assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM}: apt-get install chromium`);
  server = await startTidings();
  browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true, timeout: 30_000 });
});

after(async () => {
  if (browser) await browser.close().catch(() => {});
  if (server) await server.stop();
});

function screenshotDir() {
  if (!shotDir) {
    shotDir = process.env.TIDINGS_DEMO_SCREENSHOT_DIR || mkdtempSync(path.join(os.tmpdir(), 'tidings-demo-transports-'));
    mkdirSync(shotDir, { recursive: true });
  }
  return shotDir;
}

/**
 * A fresh browser profile with the page open on `baseUrl` in `room`, named `nick`, using
 * `transport` (the page's default, WebSocket, when null). Records the page's errors, its
 * WebSocket connections and the paths it requested.
 */
async function openPerson(baseUrl, nick, room, transport) {
  const context = await browser.newContext({ viewport: { width: 1180, height: 760 }, colorScheme: 'light' });
  // Skip the nickname dialog (the init script also runs on about:blank, which has no storage).
  await context.addInitScript((name) => { if (location.protocol.startsWith('http')) localStorage.setItem('tidings.name', name); }, nick);
  const csp = [];
  await recordCspViolations(context, csp, nick);
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  // `csp`: Content-Security-Policy violations; SSE, streaming and polling must pass it too.
  const person = { nick, context, page, errors: [], csp, sockets: 0, paths: new Set() };
  page.on('pageerror', (err) => person.errors.push(err.message));
  page.on('websocket', () => { person.sockets += 1; });
  page.on('request', (req) => person.paths.add(new URL(req.url()).pathname));
  const query = transport ? `?transport=${transport}` : '';
  await page.goto(`${baseUrl}/${query}#${room}`, { timeout: WAIT });
  await waitForState(person, 'connected');
  return person;
}

function waitForState(person, state) {
  return waitInPage(person.page, (s) => document.querySelector('[data-testid="conn-state"]')?.dataset.state === s, state,
    { timeout: WAIT, message: `${person.nick} to be ${state}` });
}

function isOnline(person, name, online = true) {
  return waitInPage(person.page,
    ([n, want]) => [...document.querySelectorAll('[data-testid="online-user"]')].some((li) => li.dataset.name === n) === want,
    [name, online], { timeout: WAIT, message: `${person.nick} to see ${name} ${online ? 'online' : 'gone'}` });
}

function waitMessage(person, text) {
  return waitInPage(person.page,
    (t) => [...document.querySelectorAll('[data-testid="message-text"]')].some((n) => n.textContent === t), text,
    { timeout: WAIT, message: `${person.nick} to see message "${text}"` });
}

async function say(person, text) {
  const box = person.page.getByTestId('message-input');
  await box.fill(text);
  await box.press('Enter');
  await waitInPage(person.page, () => document.querySelector('[data-testid="message-input"]').value === '', null,
    { timeout: WAIT, message: `${person.nick}'s message "${text}" to be sent` });
}

/** Runs `body`; on failure leaves screenshots of `people` and the server log in the test output. */
async function withDiagnostics(t, people, srv, body) {
  try {
    await body();
  } catch (err) {
    const dir = screenshotDir();
    for (const p of people) {
      if (!p.page.isClosed()) await p.page.screenshot({ path: path.join(dir, `failure-${p.nick}.png`) }).catch(() => {});
    }
    t.diagnostic(`failure screenshots in ${dir}`);
    for (const line of srv.output().split('\n').slice(-40)) t.diagnostic(`server: ${line}`);
    throw err;
  }
}

for (const transport of ['sse', 'http_stream', 'long_poll']) {
  test(`the demo page over ${transport} chats with a page on WebSocket`, { timeout: 90_000 }, async (t) => {
    const room = `tr-${transport.replace('_', '-')}-${RUN}`;
    const people = [];
    await withDiagnostics(t, people, server, async () => {
      const http = await openPerson(server.baseUrl, `Hana-${transport}`, room, transport);
      people.push(http);
      const ws = await openPerson(server.baseUrl, `Wes-${transport}`, room, null);
      people.push(ws);

      // The badge names the transport, and the page really uses it: no WebSocket at all,
      // the transport's endpoint and /emulation for the commands.
      assert.equal(await http.page.getByTestId('conn-state').getAttribute('data-transport'), transport);
      assert.equal(await http.page.getByTestId('conn-transport').textContent(), LABELS[transport]);
      assert.equal(await ws.page.getByTestId('conn-transport').textContent(), 'WebSocket');
      assert.equal(await http.page.evaluate(() => window.tidings.transport), transport);

      // Each sees the other (and themselves) online.
      await isOnline(http, ws.nick);
      await isOnline(ws, http.nick);
      await isOnline(http, http.nick);

      // Messages both ways.
      await say(http, `Hello from ${transport}`);
      await waitMessage(ws, `Hello from ${transport}`);
      await waitMessage(http, `Hello from ${transport}`);
      await say(ws, `Hello back over WebSocket, ${transport}`);
      await waitMessage(http, `Hello back over WebSocket, ${transport}`);

      for (const prefix of ENDPOINTS[transport]) {
        assert.ok([...http.paths].some((p) => p.startsWith(prefix)), `${transport} page requested ${prefix}: ${[...http.paths]}`);
      }
      assert.equal(http.sockets, 0, `the ${transport} page opened no WebSocket`);
      assert.ok(ws.sockets >= 1, 'the WebSocket page used a WebSocket');

      // The HTTP page's connection drops; the other writes meanwhile; it comes back and
      // recovers exactly that message.
      await http.page.evaluate(() => window.tidings.drop(1500));
      await waitForState(http, 'reconnecting');
      await say(ws, `Missed you over ${transport}?`);
      await waitForState(http, 'connected');
      await waitMessage(http, `Missed you over ${transport}?`);
      await waitInPage(http.page, () => !document.querySelector('[data-testid="recovery-note"]').hidden, null,
        { timeout: WAIT, message: `${http.nick}'s recovery note` });
      assert.match(await http.page.getByTestId('recovery-note').textContent(), /^Recovered 1 message$/,
        'recovered exactly the one missed message (not "History reloaded")');
      const seen = await texts(http.page, '[data-testid="message-text"]');
      assert.equal(seen.filter((x) => x === `Missed you over ${transport}?`).length, 1, 'recovered message shown once');
      await isOnline(ws, http.nick);
      await isOnline(http, ws.nick);
      await say(http, `Back on ${transport}`);
      await waitMessage(ws, `Back on ${transport}`);

      if (transport === 'long_poll') {
        const shot = path.join(screenshotDir(), 'demo-long-poll.png');
        await http.page.screenshot({ path: shot });
        t.diagnostic(`screenshot: ${shot}`);
      }

      // Leaving the page ends the session at once (for long polling: the DELETE sent on
      // pagehide; the server's session timeout is 30 s, far beyond this wait).
      await http.page.goto('about:blank', { timeout: WAIT });
      await isOnline(ws, http.nick, false);

      assert.deepEqual(http.errors, [], 'no uncaught errors in the HTTP-transport page');
      assert.deepEqual(ws.errors, [], 'no uncaught errors in the WebSocket page');
      assert.deepEqual([...http.csp, ...ws.csp], [], 'no Content-Security-Policy violations');
    });
    for (const p of people) await p.context.close().catch(() => {});
  });
}

test('pongs travel over /emulation and a shutdown reaches every HTTP transport', { timeout: 60_000 }, async (t) => {
  // A ping every second with half a second for the pong: a pong that does not arrive
  // shows up as a reconnect (connects > 1). Short long-poll hold and session timeout: a
  // page that let its session lapse between polls would reconnect too.
  const fast = await startTidings({
    env: {
      TIDINGS_CLIENT_PING_INTERVAL: '1s', TIDINGS_CLIENT_PONG_TIMEOUT: '500ms', TIDINGS_SHUTDOWN_TIMEOUT: '3s',
      TIDINGS_LONG_POLL_HOLD: '1s', TIDINGS_LONG_POLL_SESSION_TIMEOUT: '3s',
    },
  });
  const people = [];
  try {
    await withDiagnostics(t, people, fast, async () => {
      for (const transport of ['sse', 'http_stream', 'long_poll']) {
        people.push(await openPerson(fast.baseUrl, `Pinger-${transport}`, `pings-${RUN}`, transport));
      }
      // Every pong is a message the server receives: with nothing else going on, twelve
      // more of them is about four answered pings per page.
      const before = await metric(fast.baseUrl, 'tidings_messages_received_total');
      await waitMetric(fast.baseUrl, 'tidings_messages_received_total', before + 4 * people.length, { timeout: WAIT });
      for (const p of people) {
        const stats = await p.page.evaluate(() => window.tidings.stats);
        assert.equal(stats.connects, 1, `${p.nick}: pongs accepted, no reconnect (${JSON.stringify(stats)})`);
      }

      // SIGTERM: disconnect 3001 "shutdown" (a disconnect push on the streams, the poll's
      // "close" on long polling). It allows a reconnect, so each page keeps retrying.
      await fast.stop();
      for (const p of people) {
        await waitForState(p, 'reconnecting');
        await waitInPage(p.page, () => /retry/i.test(document.querySelector('[data-testid="conn-state"]').textContent), null,
          { timeout: WAIT, message: `${p.nick} to show that it retries` });
        assert.match(await p.page.getByTestId('conn-state').getAttribute('title'), /shutdown/,
          `${p.nick} shows the server's reason`);
        assert.deepEqual(p.errors, [], `no uncaught errors in ${p.nick}`);
        assert.deepEqual(p.csp, [], `no Content-Security-Policy violations in ${p.nick}`);
      }
    });
  } finally {
    for (const p of people) await p.context.close().catch(() => {});
    await fast.stop();
  }
});
