// Helpers for the Next.js chat browser test: build the example, start a private
// `redis-server`, start `tidings` with the example's config on a chosen port (so it can be
// restarted on the same one), start `next start`, all stopped by PID.

import { spawn } from 'node:child_process';
import { existsSync, statSync, readdirSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { createInterface } from 'node:readline';

import { REPO_ROOT, TIDINGS_BIN } from './demo-harness.mjs';

export const EXAMPLE_DIR = path.join(REPO_ROOT, 'examples', 'nextjs-chat');
const NEXT_BIN = path.join(EXAMPLE_DIR, 'node_modules', 'next', 'dist', 'bin', 'next');

const live = new Set();
process.once('exit', () => {
  for (const pid of live) {
    try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
  }
});

/** A TCP port that was free a moment ago on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Spawns `cmd args`, keeps the last lines of its output, and gives a `stop()` by PID. */
function child(cmd, args, { cwd, env }) {
  const proc = spawn(cmd, args, { cwd, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(proc.pid);
  const log = [];
  const remember = (line) => { log.push(line); if (log.length > 300) log.shift(); };
  const lines = { out: createInterface({ input: proc.stdout }), err: createInterface({ input: proc.stderr }) };
  lines.err.on('line', remember);
  const exited = new Promise((resolve) => proc.once('exit', (code, signal) => { live.delete(proc.pid); resolve({ code, signal }); }));
  const stop = async (signal = 'SIGTERM', graceMs = 5_000) => {
    if (proc.exitCode !== null || proc.signalCode !== null) return;
    try { process.kill(proc.pid, signal); } catch { return; }
    const timer = setTimeout(() => { try { process.kill(proc.pid, 'SIGKILL'); } catch { /* gone */ } }, graceMs);
    await exited;
    clearTimeout(timer);
  };
  return { proc, log, lines, exited, stop, output: () => log.join('\n') };
}

/**
 * Runs `next build` in the example unless its build is newer than every source file.
 * Returns the build's output (for diagnostics).
 */
export async function buildExample() {
  if (!existsSync(NEXT_BIN)) {
    throw new Error(`Next.js is not installed in ${EXAMPLE_DIR}: run npm ci there (scripts/test.sh does)`);
  }
  const c = child(process.execPath, [NEXT_BIN, 'build'], { cwd: EXAMPLE_DIR, env: { NEXT_TELEMETRY_DISABLED: '1' } });
  c.lines.out.on('line', (l) => c.log.push(l));
  const { code, signal } = await c.exited;
  if (code !== 0) throw new Error(`next build failed (code ${code}, signal ${signal}):\n${c.output()}`);
  return c.output();
}

/** Newest modification time under `dir` (skipping node_modules and .next). */
export function newestSource(dir) {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (entry.name === 'node_modules' || entry.name === '.next') continue;
    const full = path.join(dir, entry.name);
    newest = Math.max(newest, entry.isDirectory() ? newestSource(full) : statSync(full).mtimeMs);
  }
  return newest;
}

export const REDIS_SERVER = process.env.REDIS_SERVER_PATH || '/usr/bin/redis-server';

/**
 * A private `redis-server` on `port` (loopback only, no persistence, working files in
 * `dir`); resolves once it says it accepts connections. For the Redis engine, whose
 * history outlives a restart of `tidings`.
 */
export function startRedis(port, dir) {
  if (!existsSync(REDIS_SERVER)) throw new Error(`no redis-server at ${REDIS_SERVER}: apt-get install redis-server (scripts/test.sh does)`);
  const c = child(REDIS_SERVER, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], { cwd: dir, env: {} });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { c.stop('SIGKILL'); reject(new Error(`redis-server did not start:\n${c.output()}`)); }, 15_000);
    c.lines.out.on('line', (line) => {
      c.log.push(line);
      if (!/Ready to accept connections/.test(line)) return;
      clearTimeout(timer);
      resolve({ url: `redis://127.0.0.1:${port}`, pid: c.proc.pid, stop: c.stop, output: c.output });
    });
    c.exited.then(({ code }) => { clearTimeout(timer); reject(new Error(`redis-server exited (code ${code}):\n${c.output()}`)); });
  });
}

/** `tidings serve --config examples/nextjs-chat/tidings.toml --port PORT`; resolves when it listens. */
export function startChatTidings(port, env = {}) {
  if (!existsSync(TIDINGS_BIN)) throw new Error(`tidings binary not found at ${TIDINGS_BIN}`);
  const c = child(TIDINGS_BIN, ['serve', '--config', path.join(EXAMPLE_DIR, 'tidings.toml'), '--port', String(port)], {
    cwd: REPO_ROOT,
    env: { RUST_LOG: 'warn', ...env },
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { c.stop('SIGKILL'); reject(new Error(`tidings did not start:\n${c.output()}`)); }, 15_000);
    c.lines.out.on('line', (line) => {
      c.log.push(line);
      const m = /^tidings listening on (http:\/\/\S+?)\/?$/.exec(line.trim());
      if (!m) return;
      clearTimeout(timer);
      resolve({ url: m[1], pid: c.proc.pid, stop: c.stop, output: c.output });
    });
    c.exited.then(({ code }) => { clearTimeout(timer); reject(new Error(`tidings exited (code ${code}):\n${c.output()}`)); });
  });
}

/** `next start` on `port`; resolves once it answers HTTP. */
export async function startNext(port, env) {
  const c = child(process.execPath, [NEXT_BIN, 'start', '-p', String(port), '-H', '127.0.0.1'], {
    cwd: EXAMPLE_DIR,
    env: { NEXT_TELEMETRY_DISABLED: '1', ...env },
  });
  c.lines.out.on('line', (l) => c.log.push(l));
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (c.proc.exitCode !== null) throw new Error(`next start exited:\n${c.output()}`);
    try {
      const res = await fetch(`${url}/`, { signal: AbortSignal.timeout(2_000) });
      if (res.status === 200) break;
    } catch { /* not yet */ }
    if (Date.now() > deadline) { await c.stop('SIGKILL'); throw new Error(`next start did not answer:\n${c.output()}`); }
    await new Promise((r) => setTimeout(r, 100));
  }
  return { url, pid: c.proc.pid, stop: c.stop, output: c.output };
}
