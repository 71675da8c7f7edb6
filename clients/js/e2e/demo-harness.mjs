// Helpers for the browser test of the demo chat page (demo.test.mjs): start the `tidings`
// binary on a free port and stop it by PID, launch headless Chromium, and wait on a page
// with a deadline.

import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = path.resolve(here, '..', '..', '..');
export const TIDINGS_BIN = process.env.TIDINGS_BIN || path.join(REPO_ROOT, 'target', 'debug', 'tidings');
export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
export const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

const READY_LINE = /^tidings listening on (http:\/\/\S+?)\/?$/;

/**
 * Spawns `tidings serve --port 0` (development profile unless args say otherwise) and resolves
 * once it prints its "tidings listening on http://ADDR:PORT" line.
 * Returns { baseUrl, pid, output(), stop() }.
 */
export function startTidings({ args = [], env = {}, timeout = 15_000 } = {}) {
  if (!existsSync(TIDINGS_BIN)) {
    return Promise.reject(new Error(`tidings binary not found at ${TIDINGS_BIN} (build it: cargo build -p tidings-server)`));
  }
  const child = spawn(TIDINGS_BIN, ['serve', '--address', '127.0.0.1', '--port', '0', ...args], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const log = [];
  const remember = (line) => { log.push(line.replace(/\x1b\[[0-9;]*m/g, '')); if (log.length > 200) log.shift(); };
  createInterface({ input: child.stderr }).on('line', remember);
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));

  const stop = async (graceMs = 5_000) => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    try { process.kill(child.pid, 'SIGTERM'); } catch { return; }
    const timer = setTimeout(() => { try { process.kill(child.pid, 'SIGKILL'); } catch { /* gone */ } }, graceMs);
    await exited;
    clearTimeout(timer);
  };
  // Never leave the server behind, even if the test process dies early.
  const killOnExit = () => { try { process.kill(child.pid, 'SIGKILL'); } catch { /* gone */ } };
  process.once('exit', killOnExit);

  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      stop(0);
      reject(new Error(`tidings did not print its ready line within ${timeout} ms; stderr:\n${log.join('\n')}`));
    }, timeout);
    createInterface({ input: child.stdout }).on('line', (line) => {
      remember(line);
      const m = READY_LINE.exec(line.trim());
      if (!m) return;
      clearTimeout(timer);
      resolve({ baseUrl: m[1], pid: child.pid, output: () => log.join('\n'), stop });
    });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`tidings exited early (code ${code}, signal ${signal}); output:\n${log.join('\n')}`));
    });
    child.once('error', (err) => { clearTimeout(timer); reject(err); });
  });
}

/**
 * Records every Content-Security-Policy violation in the pages of `context` into `sink`, as
 * `who: …` lines: the `securitypolicyviolation` events a page dispatches, and the console errors
 * Chromium logs for a blocked load or connection. Call it before the context opens a page.
 */
export async function recordCspViolations(context, sink, who) {
  await context.exposeFunction('__tidingsCspViolation', (text) => sink.push(`${who}: ${text}`));
  await context.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) => {
      const where = e.sourceFile ? ` at ${e.sourceFile}:${e.lineNumber}` : '';
      window.__tidingsCspViolation(`${e.effectiveDirective} blocked ${e.blockedURI || '(inline)'}${where}`);
    }, true);
  });
  context.on('console', (msg) => {
    if (msg.type() === 'error' && /Content Security Policy/i.test(msg.text())) sink.push(`${who}: console: ${msg.text()}`);
  });
}

/** Waits until `fn(arg)` is truthy inside the page, or throws `message` after `timeout` ms. */
export async function waitInPage(page, fn, arg, { timeout = 10_000, message = 'condition' } = {}) {
  try {
    await page.waitForFunction(fn, arg, { timeout, polling: 50 });
  } catch (err) {
    throw new Error(`timed out after ${timeout} ms waiting for ${message}: ${err.message.split('\n')[0]}`);
  }
}

/** Text of every element matching `selector` in `page`. */
export function texts(page, selector) {
  return page.$$eval(selector, (nodes) => nodes.map((n) => n.textContent.trim()));
}

/** The value of the unlabelled Prometheus counter `name` on the server at `baseUrl` (0 when absent). */
export async function metric(baseUrl, name) {
  const res = await fetch(`${baseUrl}/metrics`, { signal: AbortSignal.timeout(5_000) });
  if (res.status !== 200) throw new Error(`/metrics answered HTTP ${res.status}`);
  const line = (await res.text()).split('\n').find((l) => l.startsWith(`${name} `));
  return line ? Number(line.slice(name.length + 1)) : 0;
}

/** Waits until `metric(baseUrl, name)` reaches `atLeast`, or throws after `timeout` ms. */
export async function waitMetric(baseUrl, name, atLeast, { timeout = 10_000 } = {}) {
  const deadline = Date.now() + timeout;
  let value = 0;
  for (;;) {
    value = await metric(baseUrl, name);
    if (value >= atLeast) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${name} >= ${atLeast} (is ${value})`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
