// Starts the real `tidings` binary for the integration tests (no mock server): the
// development profile on a free port, or the port given; stops it by PID.

import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { existsSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const REPO_ROOT = path.resolve(here, '..', '..', '..', '..', '..');
export const BIN = process.env.TIDINGS_BIN || path.join(REPO_ROOT, 'target', 'debug', 'tidings');
export const API_KEY = 'react-test-api-key';
export const SECRET = 'react-test-secret-that-is-long-enough-for-hs256';

export interface Server {
  url: string;
  port: number;
  pid: number;
  stop(): Promise<void>;
  /** Publishes through the server HTTP API. */
  publish(channel: string, data: unknown): Promise<{ offset?: number; epoch?: string }>;
  output(): string;
}

const children = new Set<number>();
process.on('exit', () => {
  for (const pid of children) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
});

export function startServer({ port = 0, env = {} }: { port?: number; env?: Record<string, string> } = {}): Promise<Server> {
  if (!existsSync(BIN)) throw new Error(`tidings binary not found at ${BIN} (cargo build -p tidings-server, or set TIDINGS_BIN)`);
  const child = spawn(BIN, ['serve', '--address', '127.0.0.1', '--port', String(port)], {
    env: {
      ...process.env,
      RUST_LOG: process.env.RUST_LOG || 'warn',
      TIDINGS_HTTP_API_KEY: API_KEY,
      TIDINGS_CLIENT_TOKEN_HMAC_SECRET_KEY: SECRET,
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const pid = child.pid;
  if (pid === undefined) throw new Error('could not spawn tidings');
  children.add(pid);
  const log: string[] = [];
  const remember = (line: string) => {
    log.push(line);
    if (log.length > 200) log.shift();
  };
  createInterface({ input: child.stderr! }).on('line', remember);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    process.kill(pid, 'SIGTERM');
    const timer = setTimeout(() => {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }, 5_000);
    await exited;
    clearTimeout(timer);
    children.delete(pid);
  };
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      void stop();
      reject(new Error(`tidings did not start:\n${log.join('\n')}`));
    }, 15_000);
    createInterface({ input: child.stdout! }).on('line', (line) => {
      remember(line);
      const m = /^tidings listening on (http:\/\/\S+?)\/?$/.exec(line.trim());
      if (!m) return;
      clearTimeout(timer);
      const url = m[1]!;
      resolve({
        url,
        port: Number(new URL(url).port),
        pid,
        stop,
        output: () => log.join('\n'),
        async publish(channel, data) {
          const { status, body } = await post(`${url}/api/publish`, { channel, data });
          const reply = body as { result?: { offset?: number; epoch?: string }; error?: unknown };
          if (status !== 200 || reply.error) throw new Error(`publish failed: ${status} ${JSON.stringify(body)}`);
          return reply.result ?? {};
        },
      });
    });
    void exited.then(() => {
      clearTimeout(timer);
      reject(new Error(`tidings exited early:\n${log.join('\n')}`));
    });
  });
}

/**
 * POSTs JSON with node:http: the DOM environment of the hook tests replaces `fetch` with
 * one that applies a browser's CORS rules, which a server-side API call has no part in.
 */
function post(url: string, payload: unknown): Promise<{ status: number; body: unknown }> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      url,
      { method: 'POST', headers: { 'Content-Type': 'application/json', 'X-API-Key': API_KEY }, timeout: 5_000 },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (text += chunk));
        res.on('end', () => {
          try {
            resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) });
          } catch {
            resolve({ status: res.statusCode ?? 0, body: text });
          }
        });
      },
    );
    req.on('error', reject);
    req.on('timeout', () => req.destroy(new Error('API request timed out')));
    req.end(JSON.stringify(payload));
  });
}

/** An HS256 connection token for `sub`, expiring in `ttlSeconds`. */
export function connectionToken(sub: string, ttlSeconds: number, info?: unknown): string {
  const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const now = Math.floor(Date.now() / 1000);
  const claims: Record<string, unknown> = { sub, iat: now, exp: now + ttlSeconds };
  if (info !== undefined) claims.info = info;
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  return `${head}.${createHmac('sha256', SECRET).update(head).digest('base64url')}`;
}

/** Polls `check` until it returns something truthy, failing after `timeout` ms. */
export async function waitFor<T>(check: () => T | Promise<T>, message: string, timeout = 10_000): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeout;
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v) return v as NonNullable<T>;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${message}${last ? ` (last error: ${String(last)})` : ''}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
