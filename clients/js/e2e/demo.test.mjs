// Browser test of the demo chat page served at GET / by `tidings serve` (development profile).
// Two people in separate browser contexts join one room, see each other online, see each other
// typing, and chat both ways; a late joiner gets the conversation from history; a dropped
// connection comes back and recovers what it missed.
//
// Env: TIDINGS_BIN (binary), CHROMIUM_PATH (default /usr/bin/chromium),
//      TIDINGS_DEMO_URL (use an already running server instead of spawning one),
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
const ROOM = `e2e-${Date.now().toString(36)}`;

let server;
let browser;
let baseUrl;
const pageErrors = [];
// Content-Security-Policy violations of every page (see recordCspViolations).
const cspViolations = [];

before(async () => {
  if (process.env.TIDINGS_DEMO_URL) {
    baseUrl = process.env.TIDINGS_DEMO_URL.replace(/\/$/, '');
  } else {
    server = await startTidings();
    baseUrl = server.baseUrl;
  }
  browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true, timeout: 30_000 });
});

after(async () => {
  if (browser) await browser.close().catch(() => {});
  if (server) await server.stop();
});

/** A fresh browser profile (own localStorage) with the page open in `room`, named `nick`. */
const openPages = [];

async function openPerson(nick, room = ROOM) {
  const context = await browser.newContext({ viewport: { width: 1180, height: 760 }, colorScheme: 'light' });
  await recordCspViolations(context, cspViolations, nick);
  const page = await context.newPage();
  openPages.push({ nick, page });
  page.setDefaultTimeout(WAIT);
  page.on('pageerror', (err) => pageErrors.push(`${nick}: ${err.message}`));
  await page.goto(`${baseUrl}/#${room}`, { timeout: WAIT });

  // First visit: the page asks for a nickname.
  const dialog = page.getByTestId('name-dialog');
  await dialog.waitFor({ state: 'visible', timeout: WAIT });
  await page.getByTestId('nickname-input').fill(nick);
  await page.getByTestId('nickname-save').click();
  await dialog.waitFor({ state: 'hidden', timeout: WAIT });

  await waitForState(page, 'connected', nick);
  return { nick, context, page };
}

function waitForState(page, state, who) {
  return waitInPage(page, (s) => document.querySelector('[data-testid="conn-state"]')?.dataset.state === s, state,
    { timeout: WAIT, message: `${who} to be ${state}` });
}

function waitOnline(person, name) {
  return waitInPage(person.page,
    (n) => [...document.querySelectorAll('[data-testid="online-user"]')].some((li) => li.dataset.name === n), name,
    { timeout: WAIT, message: `${person.nick} to see ${name} online` });
}

function waitMessage(person, text) {
  return waitInPage(person.page,
    (t) => [...document.querySelectorAll('[data-testid="message-text"]')].some((n) => n.textContent === t), text,
    { timeout: WAIT, message: `${person.nick} to see message "${text}"` });
}

function waitTyping(person, name) {
  return waitInPage(person.page,
    (n) => (document.querySelector('[data-testid="typing"]')?.textContent || '').includes(`${n} is typing`), name,
    { timeout: WAIT, message: `${person.nick} to see "${name} is typing"` });
}

async function say(person, text) {
  const box = person.page.getByTestId('message-input');
  await box.fill(text);
  await box.press('Enter');
  await waitInPage(person.page, () => document.querySelector('[data-testid="message-input"]').value === '', null,
    { timeout: WAIT, message: `${person.nick}'s message to be sent` });
}

function screenshotDir() {
  const dir = process.env.TIDINGS_DEMO_SCREENSHOT_DIR || mkdtempSync(path.join(os.tmpdir(), 'tidings-demo-'));
  mkdirSync(dir, { recursive: true });
  return dir;
}

test('two people chat in the demo page', { timeout: 120_000 }, async (t) => {
  assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM}: apt-get install chromium (scripts/test.sh does)`);
  try {
    await chatScenario(t);
  } catch (err) {
    // Leave pictures of every open page behind to show what went wrong.
    const dir = screenshotDir();
    for (const { nick, page } of openPages) {
      if (!page.isClosed()) await page.screenshot({ path: path.join(dir, `failure-${nick}.png`) }).catch(() => {});
    }
    t.diagnostic(`failure screenshots in ${dir}`);
    if (server) for (const line of server.output().split('\n')) t.diagnostic(`server: ${line}`);
    throw err;
  }
});

async function chatScenario(t) {
  const alice = await openPerson('Alice');
  const bob = await openPerson('Bob');

  // Presence: each sees the other, by nickname, and themselves.
  await waitOnline(alice, 'Bob');
  await waitOnline(bob, 'Alice');
  await waitOnline(alice, 'Alice');

  // Typing indicator, both ways, never for yourself.
  await alice.page.getByTestId('message-input').fill('hel');
  await waitTyping(bob, 'Alice');
  assert.equal(await alice.page.getByTestId('typing').textContent(), '', 'Alice must not see herself typing');
  await say(alice, 'Hello Bob, this is Alice.');
  await waitMessage(bob, 'Hello Bob, this is Alice.');
  await waitMessage(alice, 'Hello Bob, this is Alice.');

  await bob.page.getByTestId('message-input').fill('Hi');
  await waitTyping(alice, 'Bob');
  await say(bob, 'Hi Alice! Bob here.');
  await waitMessage(alice, 'Hi Alice! Bob here.');
  // Sending a message clears the sender's typing indicator on the other side.
  await waitInPage(alice.page, () => !document.querySelector('[data-testid="typing"]').textContent.includes('Bob'), null,
    { timeout: WAIT, message: 'Bob\'s typing indicator to clear' });

  // Authors are shown; own messages are labelled "You".
  const aliceAuthors = await texts(alice.page, '[data-testid="message-author"]');
  assert.ok(aliceAuthors.includes('You') && aliceAuthors.includes('Bob'), `authors seen by Alice: ${aliceAuthors}`);

  for (const p of [alice, bob]) {
    assert.equal(await p.page.getByTestId('conn-state').getAttribute('data-state'), 'connected');
    assert.match(await p.page.getByTestId('conn-state').textContent(), /connected/i);
  }

  // A late joiner gets the conversation from history.
  const carol = await openPerson('Carol');
  await waitMessage(carol, 'Hello Bob, this is Alice.');
  await waitMessage(carol, 'Hi Alice! Bob here.');
  await waitOnline(alice, 'Carol');
  await waitOnline(carol, 'Bob');
  await carol.context.close();
  await waitInPage(alice.page,
    () => ![...document.querySelectorAll('[data-testid="online-user"]')].some((li) => li.dataset.name === 'Carol'), null,
    { timeout: WAIT, message: 'Carol to leave Alice\'s online list' });

  // Bob's connection drops; Alice writes meanwhile; Bob comes back and recovers it.
  await bob.page.evaluate(() => window.tidings.drop(1500));
  await waitForState(bob.page, 'reconnecting', 'Bob');
  await say(alice, 'Did you miss this one, Bob?');
  await waitForState(bob.page, 'connected', 'Bob');
  await waitMessage(bob, 'Did you miss this one, Bob?');
  const note = bob.page.getByTestId('recovery-note');
  await waitInPage(bob.page, () => !document.querySelector('[data-testid="recovery-note"]').hidden, null,
    { timeout: WAIT, message: 'Bob\'s recovery note' });
  // "History reloaded" here would mean the server answered the resubscribe with recovered:false.
  assert.match(await note.textContent(), /^Recovered 1 message$/, 'Bob recovered exactly the one missed message');
  const bobTexts = await texts(bob.page, '[data-testid="message-text"]');
  assert.equal(bobTexts.filter((x) => x === 'Did you miss this one, Bob?').length, 1, 'recovered message shown once');
  await waitOnline(alice, 'Bob');
  await waitOnline(bob, 'Alice');

  await say(bob, 'Back online, got it.');
  await waitMessage(alice, 'Back online, got it.');

  const dir = screenshotDir();
  const shotA = path.join(dir, 'demo-alice.png');
  const shotB = path.join(dir, 'demo-bob.png');
  await alice.page.getByTestId('message-input').fill('Typing something…');
  await waitTyping(bob, 'Alice');
  await alice.page.screenshot({ path: shotA });
  await bob.page.screenshot({ path: shotB });
  t.diagnostic(`screenshots: ${shotA} ${shotB}`);

  assert.deepEqual(pageErrors, [], 'no uncaught errors in the page');
  assert.deepEqual(cspViolations, [], 'no Content-Security-Policy violations');
  await alice.context.close();
  await bob.context.close();
}

test('the demo page runs under its Content-Security-Policy without a violation', { timeout: 60_000 }, async () => {
  assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM}: apt-get install chromium (scripts/test.sh does)`);
  const context = await browser.newContext();
  const violations = [];
  try {
    await recordCspViolations(context, violations, 'Dana');
    await context.addInitScript(() => { if (location.protocol.startsWith('http')) localStorage.setItem('tidings.name', 'Dana'); });
    const page = await context.newPage();
    page.on('pageerror', (err) => pageErrors.push(`Dana: ${err.message}`));
    const response = await page.goto(`${baseUrl}/#csp-${ROOM}`, { timeout: WAIT });
    const headers = response.headers();
    const csp = headers['content-security-policy'] || '';
    for (const directive of ["default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'",
      "frame-ancestors 'none'"]) {
      assert.ok(csp.split(';').map((d) => d.trim()).includes(directive), `"${directive}" in the policy: ${csp}`);
    }
    assert.equal(headers['x-content-type-options'], 'nosniff');
    assert.equal(headers['x-frame-options'], 'DENY');
    assert.equal(headers['referrer-policy'], 'no-referrer');

    // The page styles itself, connects over WebSocket, chats, and survives a dropped
    // network (its reconnects go to a path of the same origin), all under the policy.
    await waitForState(page, 'connected', 'Dana');
    assert.equal(await page.evaluate(() => getComputedStyle(document.querySelector('.app')).display), 'grid',
      'the page is laid out by /demo.css');
    await say({ nick: 'Dana', page }, 'Anything blocked?');
    await waitMessage({ nick: 'Dana', page }, 'Anything blocked?');
    await page.evaluate(() => window.tidings.drop(800));
    await waitForState(page, 'reconnecting', 'Dana');
    await waitForState(page, 'connected', 'Dana');
    assert.deepEqual(violations, [], 'no Content-Security-Policy violations');
    assert.deepEqual(pageErrors, [], 'no uncaught errors in the page');

    // The recorder does see a violation: an inline script, which the policy forbids, is
    // reported and does not run.
    await page.evaluate(() => {
      const script = document.createElement('script');
      script.textContent = 'window.inlineRan = true;';
      document.body.append(script);
    });
    await waitUntil(() => violations.length > 0, 'the inline script to be reported');
    assert.equal(await page.evaluate(() => window.inlineRan), undefined, 'the inline script did not run');
    assert.match(violations.join('\n'), /script-src/);
  } finally {
    await context.close();
  }
});

/** Waits until `check()` is true, or throws naming `what` after WAIT ms. */
async function waitUntil(check, what) {
  const deadline = Date.now() + WAIT;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${WAIT} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

// This test starts (and stops) a server of its own with fast pings, even when
// TIDINGS_DEMO_URL points the other tests at a running server: it never skips.
test('the page answers server pings (centrifuge-js) and keeps retrying after a server shutdown',
  { timeout: 60_000 },
  async (t) => {
  assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM}: apt-get install chromium (scripts/test.sh does)`);
  // Pings every second and little patience for a missing pong: an unanswered ping would
  // show up as a reconnect within a second or two.
  const fast = await startTidings({ env: { TIDINGS_CLIENT_PING_INTERVAL: '1s', TIDINGS_CLIENT_PONG_TIMEOUT: '500ms' } });
  const context = await browser.newContext();
  try {
    await context.addInitScript(() => localStorage.setItem('tidings.name', 'Pinger'));
    const page = await context.newPage();
    page.on('pageerror', (err) => pageErrors.push(`Pinger: ${err.message}`));
    await page.goto(`${fast.baseUrl}/#pings`, { timeout: WAIT });
    await waitForState(page, 'connected', 'Pinger');
    // Every pong is a message the server receives: four more of them is four answered pings.
    const before = await metric(fast.baseUrl, 'tidings_messages_received_total');
    await waitMetric(fast.baseUrl, 'tidings_messages_received_total', before + 4, { timeout: WAIT });
    const stats = await page.evaluate(() => window.tidings.stats);
    assert.equal(stats.connects, 1, `pongs accepted, no reconnect (${JSON.stringify(stats)})`);

    // SIGTERM: the server closes with 3001 "shutdown", which is not terminal, so the page
    // shows "reconnecting" and keeps retrying.
    await fast.stop();
    await waitForState(page, 'reconnecting', 'Pinger');
    await waitInPage(page, () => /retry/i.test(document.querySelector('[data-testid="conn-state"]').textContent), null,
      { timeout: WAIT, message: 'a note that it retries' });
    const title = await page.getByTestId('conn-state').getAttribute('title');
    assert.match(title, /shutdown/, 'the close reason is shown');
    assert.deepEqual(pageErrors, [], 'no uncaught errors in the page');
  } finally {
    await context.close();
    await fast.stop();
  }
});
