// Browser test of examples/nextjs-chat, the Next.js App Router chat on @tidings/react:
// `next build`, then `next start` against the real `tidings` binary running the example's
// config on the Redis engine (a private redis-server child), so that history and stream
// positions outlive a restart of Tidings. Four people in separate browser contexts join
// one room: two on the default transports (WebSocket), one forced to SSE, one forced to
// long polling. They see each other online and typing and chat both ways; one loses its
// network and recovers what it missed; then the Tidings server is restarted on the same
// port mid-conversation while one page is offline: every page shows reconnecting, then
// connected with a successful recovery (none says the stream was reset), the offline
// page recovers exactly the messages sent after the restart, and no message is lost on
// any page.
//
// Env: TIDINGS_BIN, CHROMIUM_PATH, REDIS_SERVER_PATH (default /usr/bin/redis-server),
// TIDINGS_NEXT_SKIP_BUILD=1 (reuse the last build while iterating), TIDINGS_E2E_ARTIFACTS
// (screenshot folder; default clients/js/e2e/artifacts).

import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';

import { chromium } from 'playwright-core';

import { CHROMIUM, CHROMIUM_ARGS, texts, waitInPage } from './demo-harness.mjs';
import { buildExample, EXAMPLE_DIR, freePort, startChatTidings, startNext, startRedis } from './nextjs-harness.mjs';

const WAIT = 15_000;
const ROOM = `e2e-${Date.now().toString(36)}`;
const ARTIFACTS = process.env.TIDINGS_E2E_ARTIFACTS
  || path.join(path.dirname(fileURLToPath(import.meta.url)), 'artifacts');

let redis;
let redisDir;
let tidings;
let tidingsPort;
let tidingsEnv;
let next;
let browser;
const people = [];
const pageErrors = [];

before(async () => {
  assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM}: apt-get install chromium (scripts/test.sh does)`);
  if (process.env.TIDINGS_NEXT_SKIP_BUILD !== '1' || !existsSync(path.join(EXAMPLE_DIR, '.next', 'BUILD_ID'))) {
    await buildExample();
  }
  redisDir = mkdtempSync(path.join(os.tmpdir(), 'tidings-nextjs-redis-'));
  redis = await startRedis(await freePort(), redisDir);
  tidingsPort = await freePort();
  const nextPort = await freePort();
  // The same engine settings for the first start and the restart: the restarted server
  // finds the room's history and stream (epoch and offsets) in Redis.
  tidingsEnv = {
    TIDINGS_CLIENT_ALLOWED_ORIGINS: `http://127.0.0.1:${nextPort}`,
    TIDINGS_ENGINE_TYPE: 'redis',
    TIDINGS_ENGINE_REDIS_ADDRESS: redis.url,
    TIDINGS_ENGINE_REDIS_PREFIX: `nextjs-e2e-${process.pid}-${Date.now().toString(36)}`,
  };
  tidings = await startChatTidings(tidingsPort, tidingsEnv);
  next = await startNext(nextPort, { TIDINGS_URL: tidings.url });
  browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true, timeout: 30_000 });
  mkdirSync(ARTIFACTS, { recursive: true });
}, { timeout: 240_000 });

after(async () => {
  if (browser) await browser.close().catch(() => {});
  if (next) await next.stop();
  if (tidings) await tidings.stop();
  if (redis) await redis.stop();
  if (redisDir) rmSync(redisDir, { recursive: true, force: true });
});

/** A fresh browser profile in the room, named `nick`, optionally forced to one transport. */
async function join(nick, transport) {
  const context = await browser.newContext({ viewport: { width: 1000, height: 640 } });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  const requests = [];
  page.on('request', (r) => requests.push(new URL(r.url()).pathname));
  page.on('pageerror', (err) => pageErrors.push(`${nick}: ${err.message}`));
  // Server and browser render the same markup (nothing browser-only during render):
  // React reports a hydration mismatch as a console error.
  page.on('console', (msg) => {
    if (msg.type() === 'error' && /hydrat|did not match|Minified React error/i.test(msg.text())) {
      pageErrors.push(`${nick}: ${msg.text()}`);
    }
  });
  const person = { nick, transport, context, page, requests };
  people.push(person);
  await page.goto(`${next.url}/rooms/${ROOM}${transport ? `?transport=${transport}` : ''}`);
  await page.getByTestId('name-input').fill(nick);
  await page.getByTestId('name-save').click();
  await waitBadge(person, 'connected');
  return person;
}

const badgeState = (person) => person.page.getByTestId('badge').getAttribute('data-state');

function waitBadge(person, state, extra = '') {
  return waitInPage(person.page, ([s, extraAttr]) => {
    const b = document.querySelector('[data-testid="badge"]');
    if (!b || b.dataset.state !== s) return false;
    if (!extraAttr) return true;
    const [k, v] = extraAttr.split('=');
    return b.dataset[k] === v;
  }, [state, extra], { timeout: WAIT, message: `${person.nick}'s badge to be ${state} ${extra}` });
}

function waitOnline(person, names) {
  return waitInPage(person.page, (want) => {
    const have = [...document.querySelectorAll('[data-testid="online-user"]')].map((li) => li.dataset.name);
    return want.every((n) => have.includes(n)) && have.length === want.length;
  }, names, { timeout: WAIT, message: `${person.nick} to see exactly ${names.join(', ')} online` });
}

/** Waits until `person` lists `name` under "Recently here" as `status`, its label matching `label`. */
function waitRecent(person, name, status, label) {
  return waitInPage(person.page, ([n, st, re]) => {
    const li = [...document.querySelectorAll('[data-testid="recent-user"]')].find((e) => e.dataset.name === n);
    return !!li && li.dataset.status === st && new RegExp(re).test(li.textContent);
  }, [name, status, label.source], { timeout: WAIT, message: `${person.nick} to see ${name} ${status} under "Recently here"` });
}

/** Waits until `person`'s typing line names `name` ("Bob is typing…", "Alice and Bob are typing…"). */
function waitTyping(person, name) {
  return waitInPage(person.page, (n) => {
    const line = document.querySelector('[data-testid="typing"]')?.textContent || '';
    return / typing…$/.test(line) && line.replace(/ (is|are) typing…$/, '').split(/, | and /).includes(n);
  }, name, { timeout: WAIT, message: `${person.nick} to see ${name} typing` });
}

/** Waits until `person` shows exactly `expected` as the message texts, in order. */
function waitMessages(person, expected) {
  return waitInPage(person.page, (want) => {
    const have = [...document.querySelectorAll('[data-testid="message-text"]')].map((n) => n.textContent);
    return JSON.stringify(have) === JSON.stringify(want);
  }, expected, { timeout: WAIT, message: `${person.nick} to show exactly ${JSON.stringify(expected)}` })
    .catch(async (err) => {
      throw new Error(`${err.message}; shows ${JSON.stringify(await texts(person.page, '[data-testid="message-text"]'))}`);
    });
}

async function say(person, text) {
  const box = person.page.getByTestId('message-input');
  await box.fill(text);
  await box.press('Enter');
  await waitInPage(person.page, () => document.querySelector('[data-testid="message-input"]').value === '', null,
    { timeout: WAIT, message: `${person.nick}'s message "${text}" to be sent` });
}

async function screenshots(prefix) {
  for (const p of people) {
    if (!p.page.isClosed()) await p.page.screenshot({ path: path.join(ARTIFACTS, `${prefix}-${p.nick}.png`) }).catch(() => {});
  }
}

test('four people chat in the Next.js example across transports, a dropped network and a server restart on the Redis engine', { timeout: 240_000 }, async (t) => {
  try {
    await scenario(t);
  } catch (err) {
    await screenshots('nextjs-failure');
    t.diagnostic(`failure screenshots in ${ARTIFACTS}`);
    if (tidings) for (const line of tidings.output().split('\n').slice(-30)) t.diagnostic(`tidings: ${line}`);
    if (redis) for (const line of redis.output().split('\n').slice(-10)) t.diagnostic(`redis: ${line}`);
    if (next) for (const line of next.output().split('\n').slice(-30)) t.diagnostic(`next: ${line}`);
    throw err;
  }
});

async function scenario(t) {
  const alice = await join('Alice');
  const bob = await join('Bob');
  const carol = await join('Carol', 'sse');
  const dave = await join('Dave', 'long_poll');
  const everyone = [alice, bob, carol, dave];
  const all = ['Alice', 'Bob', 'Carol', 'Dave'];

  // Each page really uses its transport.
  assert.equal(await alice.page.getByTestId('badge').getAttribute('data-transport'), 'websocket');
  assert.equal(await carol.page.getByTestId('badge').getAttribute('data-transport'), 'sse');
  assert.equal(await dave.page.getByTestId('badge').getAttribute('data-transport'), 'long_poll');
  assert.ok(carol.requests.some((p) => p === '/connection/sse'), 'Carol opened an event stream');
  assert.ok(dave.requests.some((p) => p === '/connection/long_poll'), 'Dave polled');
  assert.ok(!dave.requests.some((p) => p === '/connection/sse'), 'Dave did not fall back to SSE');

  // Presence: everyone sees everyone, by the name in their token.
  for (const p of everyone) await waitOnline(p, all);

  // Typing, both ways, never shown to the typist.
  await alice.page.getByTestId('message-input').fill('Hel');
  await waitTyping(bob, 'Alice');
  await waitTyping(dave, 'Alice');
  assert.equal(await alice.page.getByTestId('typing').textContent(), '', 'Alice must not see herself typing');
  await bob.page.getByTestId('message-input').fill('Hi');
  await waitTyping(alice, 'Bob');
  await waitTyping(carol, 'Bob');
  await bob.page.getByTestId('message-input').fill('');

  // Chat in every direction, through the server action.
  const sent = [];
  const chat = async (person, text) => { await say(person, text); sent.push(text); };
  await chat(alice, 'Hello everyone, Alice here.');
  await chat(bob, 'Hi Alice! Bob on WebSocket.');
  await chat(carol, 'Carol on SSE says hi.');
  await chat(dave, 'Dave on long polling, all good.');
  for (const p of everyone) await waitMessages(p, sent);
  const authors = await texts(alice.page, '[data-testid="message-author"]');
  assert.deepEqual(authors, ['You', 'Bob', 'Carol', 'Dave']);
  // Sending ends the sender's typing indicator elsewhere.
  await waitInPage(bob.page, () => !document.querySelector('[data-testid="typing"]').textContent.includes('Alice'), null,
    { timeout: WAIT, message: "Alice's typing indicator to clear on Bob's page" });
  await screenshots('nextjs-chat');

  // Bob's network goes away; two messages are sent meanwhile; he recovers exactly those.
  await bob.context.setOffline(true);
  await waitBadge(bob, 'reconnecting');
  await chat(alice, 'Bob, did you get this?');
  await chat(carol, 'And this one?');
  await bob.context.setOffline(false);
  await waitBadge(bob, 'connected', 'recovered=2');
  assert.match(await bob.page.getByTestId('badge').textContent(), /recovered 2 messages/);
  for (const p of everyone) await waitMessages(p, sent);

  // The Tidings server restarts mid-conversation, on the same port, while Bob's network is
  // down. On the Redis engine the room's history and stream position (epoch, offsets) live
  // in Redis, so the new process continues the same stream: every page reconnects and
  // recovers from where it was, and none is told that the stream was reset. A message sent
  // while the server is down fails visibly and is sent again after: no message lost.
  await bob.context.setOffline(true);
  await waitBadge(bob, 'reconnecting');
  const online = [alice, carol, dave];
  await tidings.stop();
  for (const p of everyone) await waitBadge(p, 'reconnecting');
  await screenshots('nextjs-reconnecting');
  await alice.page.getByTestId('message-input').fill('Sent while the server was down');
  await alice.page.getByTestId('message-input').press('Enter');
  await alice.page.getByTestId('send-error').waitFor({ state: 'visible', timeout: WAIT });
  assert.equal(await alice.page.getByTestId('message-input').inputValue(), 'Sent while the server was down',
    'a message that could not be sent stays in the box');

  tidings = await startChatTidings(tidingsPort, tidingsEnv);
  // Nothing was published while the server was down: the pages that are online recover
  // their subscription with nothing missed (before the restart they had never recovered,
  // so recovered=0 can only come from this reconnect).
  for (const p of online) await waitBadge(p, 'connected', 'recovered=0');
  for (const p of online) {
    assert.equal(await p.page.getByTestId('badge').getAttribute('data-lost'), 'false', `${p.nick}'s stream was not reset`);
    assert.match(await p.page.getByTestId('badge').textContent(), /recovered 0 messages/);
  }
  await alice.page.getByTestId('send').click();
  await waitInPage(alice.page, () => document.querySelector('[data-testid="message-input"]').value === '', null,
    { timeout: WAIT, message: 'the retried message to go out' });
  sent.push('Sent while the server was down');
  await chat(dave, 'Dave after the restart.');
  await chat(carol, 'Carol after the restart too.');
  for (const p of online) await waitMessages(p, sent);

  // Bob comes back to the restarted server and recovers exactly the three messages sent
  // after the restart (his last recovery brought 2, so recovered=3 is this one).
  assert.equal(await badgeState(bob), 'reconnecting');
  await bob.context.setOffline(false);
  await waitBadge(bob, 'connected', 'recovered=3');
  assert.equal(await bob.page.getByTestId('badge').getAttribute('data-lost'), 'false', "Bob's stream was not reset");
  assert.match(await bob.page.getByTestId('badge').textContent(), /recovered 3 messages/);
  for (const p of everyone) {
    assert.equal(await p.page.getByTestId('badge').getAttribute('data-lost'), 'false', `${p.nick}'s stream was not reset`);
    assert.doesNotMatch(await p.page.getByTestId('badge').textContent(), /reloaded from history/);
  }
  for (const p of everyone) await waitMessages(p, sent);
  for (const p of everyone) await waitOnline(p, all);
  await chat(bob, 'Bob after the restart, all here.');
  for (const p of everyone) await waitMessages(p, sent);

  await carol.page.getByTestId('message-input').fill('Carol typing after the restart');
  await waitTyping(dave, 'Carol');
  await screenshots('nextjs-after-restart');
  t.diagnostic(`screenshots in ${ARTIFACTS}`);

  for (const p of everyone) assert.equal(await badgeState(p), 'connected');
  for (const p of everyone) assert.equal(await p.page.getByTestId('badge').getAttribute('data-lost'), 'false');

  // Online status (useOnlineStatus): Bob leaves the app (a closed WebSocket is noticed at
  // once; a long-polling page is only noticed at its session timeout), Carol goes to
  // another room. Alice sees both under "Recently here": Bob offline with a last-seen
  // time, Carol online elsewhere.
  await bob.context.close();
  const otherRoom = await carol.page.locator('aside .rooms li:not(.current) a').first();
  await otherRoom.click();
  await waitBadge(carol, 'connected');
  await waitRecent(alice, 'Bob', 'offline', /last seen just now/);
  await waitRecent(alice, 'Carol', 'online', /online/);
  await screenshots('nextjs-online-status');

  assert.deepEqual(pageErrors, [], 'no uncaught errors or hydration mismatches in the pages');
  for (const p of [alice, carol, dave]) await p.context.close();
}
