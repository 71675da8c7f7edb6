// Shared helpers for the end-to-end suite: start the real `tidings` binary, drive it with
// the real centrifuge-js client (over the `ws` package, since Node 20 has no global
// WebSocket), and wait for things with deadlines instead of sleeping.

import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

import { Centrifuge } from 'centrifuge';
import { Centrifuge as ProtobufCentrifuge } from 'centrifuge/build/protobuf';
import WebSocket from 'ws';

export { Centrifuge, WebSocket };

/**
 * The two encodings of the client protocol, each as the matching build of centrifuge-js
 * speaks it. Scenarios loop over `FORMATS` so each is written once and run in both.
 *
 * - `Centrifuge`: the SDK class of that build.
 * - `data(value)`: what the scenario hands the SDK as `data` for a JSON value. The JSON
 *   build takes the value; the Protobuf build takes bytes, here the value's JSON text.
 * - `read(data)`: the JSON value back out of a received `data` (a publication, an RPC
 *   result), so one assertion serves both.
 * - `transports`: the bidirectional transports that carry it. The Protobuf protocol
 *   runs over WebSocket and HTTP streaming; SSE and long polling are JSON only.
 */
export const FORMATS = [
  {
    name: 'json',
    Centrifuge,
    data: (value) => value,
    read: (data) => data,
    transports: ['websocket', 'sse', 'http_stream', 'long_poll'],
  },
  {
    name: 'protobuf',
    Centrifuge: ProtobufCentrifuge,
    data: (value) => new TextEncoder().encode(JSON.stringify(value)),
    read: (data) => JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(data)),
    transports: ['websocket', 'http_stream'],
  },
];

/** The JSON format, the default of every helper below. */
export const JSON_FORMAT = FORMATS[0];
/** The Protobuf format (`centrifuge/build/protobuf`). */
export const PROTOBUF_FORMAT = FORMATS[1];

/**
 * The error code of an RPC the binary has neither a handler nor a proxy for: 108 "not
 * available" (docs/codes.md). The JSON and Protobuf runs assert this one value, so when
 * the code changes it changes here only (and in crates/tidings-testkit/tests/connect.rs,
 * rpc_without_handler_or_proxy_returns_108).
 */
export const RPC_NO_HANDLER_CODE = 108;

const here = path.dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = path.resolve(here, '..', '..', '..');
export const BIN = process.env.TIDINGS_BIN || path.join(REPO_ROOT, 'target', 'debug', 'tidings');
export const API_KEY = 'e2e-api-key';

const STARTUP_TIMEOUT_MS = 15_000;
const EXIT_TIMEOUT_MS = 5_000;

// Every child we spawn, so a crashed or timed-out test cannot leave one running.
const liveChildren = new Set();
process.on('exit', () => {
  for (const child of liveChildren) {
    try {
      process.kill(child.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
});

/** Milliseconds left until `deadline`, never below zero. */
function remaining(deadline) {
  return Math.max(0, deadline - Date.now());
}

/**
 * Resolves with the first value `check()` returns that is not undefined/false, polling
 * every `interval` ms; rejects with `message` once `timeout` ms have passed.
 */
export async function waitFor(check, { timeout = 5_000, interval = 20, message = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  let lastError;
  for (;;) {
    try {
      const value = await check();
      if (value !== undefined && value !== false && value !== null) {
        return value;
      }
    } catch (e) {
      lastError = e;
    }
    if (Date.now() >= deadline) {
      const suffix = lastError ? ` (last error: ${lastError.message || lastError})` : '';
      throw new Error(`timed out after ${timeout} ms waiting for ${message}${suffix}`);
    }
    await new Promise((r) => setTimeout(r, Math.min(interval, remaining(deadline))));
  }
}

/**
 * Resolves with the arguments of the next `event` on `emitter` that satisfies `filter`
 * (first argument only when there is one). Rejects after `timeout` ms.
 */
export function waitEvent(emitter, event, { timeout = 5_000, filter = () => true, message } = {}) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.off(event, listener);
      reject(new Error(`timed out after ${timeout} ms waiting for '${event}'${message ? `: ${message}` : ''}`));
    }, timeout);
    function listener(...args) {
      let ok;
      try {
        ok = filter(...args);
      } catch (e) {
        ok = false;
      }
      if (!ok) return;
      clearTimeout(timer);
      emitter.off(event, listener);
      resolve(args.length <= 1 ? args[0] : args);
    }
    emitter.on(event, listener);
  });
}

/** Races `promise` against a deadline. */
export function withTimeout(promise, timeout, message) {
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeout} ms: ${message}`)), timeout);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

/** A channel name nobody else in this run uses. */
let channelCounter = 0;
export function uniqueChannel(prefix = 'e2e') {
  channelCounter += 1;
  return `${prefix}-${process.pid}-${Date.now().toString(36)}-${channelCounter}`;
}

/**
 * Starts `tidings serve --port 0` and resolves once it prints its listening line.
 * `env` adds/overrides TIDINGS_* variables; `t` (a node:test context) registers teardown.
 */
export async function startServer({ env = {}, args = [], t } = {}) {
  if (!existsSync(BIN)) {
    throw new Error(`tidings binary not found at ${BIN}; build it with 'cargo build -p tidings-server' or set TIDINGS_BIN`);
  }
  const childEnv = { ...process.env, TIDINGS_HTTP_API_KEY: API_KEY, ...env };
  if (!('RUST_LOG' in env) && !process.env.RUST_LOG) {
    childEnv.RUST_LOG = 'warn';
  }
  const child = spawn(BIN, ['serve', '--port', '0', ...args], {
    env: childEnv,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  liveChildren.add(child);

  const server = new TidingsServer(child, childEnv.TIDINGS_HTTP_API_KEY);
  if (t) {
    t.after(() => server.stop());
  }
  try {
    await server.ready;
  } catch (e) {
    await server.stop();
    throw e;
  }
  return server;
}

export class TidingsServer {
  constructor(child, apiKey) {
    this.child = child;
    this.pid = child.pid;
    this.apiKey = apiKey;
    this.stdoutLines = [];
    this.stderr = '';
    this.exitCode = undefined;
    this.exitSignal = undefined;
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        this.exitCode = code;
        this.exitSignal = signal;
        liveChildren.delete(child);
        resolve({ code, signal });
      });
    });
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk) => {
      // Keep the tail only: enough to explain a failure.
      this.stderr = (this.stderr + chunk).slice(-20_000);
    });

    this.ready = new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new Error(`tidings did not print its listening line within ${STARTUP_TIMEOUT_MS} ms\nstderr:\n${this.stderr}`));
      }, STARTUP_TIMEOUT_MS);
      const lines = createInterface({ input: child.stdout });
      lines.on('line', (line) => {
        this.stdoutLines.push(line);
        const m = /^tidings listening on (https?):\/\/(\S+):(\d+)\s*$/.exec(line);
        if (m) {
          clearTimeout(timer);
          let host = m[2];
          // A wildcard bind address is not something to connect to.
          if (host === '0.0.0.0' || host === '[::]' || host === '::') host = '127.0.0.1';
          this.port = Number(m[3]);
          this.tls = m[1] === 'https';
          this.httpUrl = `${m[1]}://${host}:${this.port}`;
          this.wsUrl = `${this.tls ? 'wss' : 'ws'}://${host}:${this.port}/connection/websocket`;
          resolve(this);
        }
      });
      this.exited.then(({ code, signal }) => {
        clearTimeout(timer);
        reject(new Error(`tidings exited before listening (code ${code}, signal ${signal})\nstderr:\n${this.stderr}`));
      });
    });
    // The rejection above is handled by whoever awaits `ready`.
    this.ready.catch(() => {});
  }

  get running() {
    return this.exitCode === undefined && this.exitSignal === undefined;
  }

  /** Sends `signal` to the server process by PID. */
  signal(signal) {
    if (this.running) {
      process.kill(this.pid, signal);
    }
  }

  /** Resolves with {code, signal} once the process exits; rejects after `timeout` ms. */
  waitExit(timeout = EXIT_TIMEOUT_MS) {
    return withTimeout(this.exited, timeout, `tidings (pid ${this.pid}) to exit`);
  }

  /** Kills the process by PID (SIGKILL) unless it already exited, and waits for it. */
  async stop() {
    if (this.running) {
      try {
        process.kill(this.pid, 'SIGKILL');
      } catch {
        // raced with its exit
      }
    }
    await this.waitExit(EXIT_TIMEOUT_MS);
  }

  /** POST /api/<method>; resolves with {status, body} (body parsed as JSON when possible). */
  async api(method, params = {}, { key = this.apiKey, headers = {}, rawBody } = {}) {
    const h = { 'Content-Type': 'application/json', ...headers };
    if (key !== null && key !== undefined) h['X-API-Key'] = key;
    const res = await fetch(`${this.httpUrl}/api/${method}`, {
      method: 'POST',
      headers: h,
      body: rawBody !== undefined ? rawBody : JSON.stringify(params),
      signal: AbortSignal.timeout(5_000),
    });
    const text = await res.text();
    let body;
    try {
      body = JSON.parse(text);
    } catch {
      body = text;
    }
    return { status: res.status, body };
  }

  /** Like api() but fails unless the reply is HTTP 200 with a `result`. */
  async apiOk(method, params = {}) {
    const { status, body } = await this.api(method, params);
    if (status !== 200 || typeof body !== 'object' || body === null || 'error' in body) {
      throw new Error(`API ${method} failed: HTTP ${status} ${JSON.stringify(body)}`);
    }
    return body.result;
  }

  async metricsText() {
    const res = await fetch(`${this.httpUrl}/metrics`, { signal: AbortSignal.timeout(5_000) });
    if (res.status !== 200) throw new Error(`/metrics answered HTTP ${res.status}`);
    return res.text();
  }

  /** Value of one Prometheus sample, or 0 when absent. */
  async metric(name, labels = {}) {
    return metricValue(await this.metricsText(), name, labels);
  }
}

/** Finds a sample `name{labels...}` in Prometheus text; labels must all match; absent → 0. */
export function metricValue(text, name, labels = {}) {
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || !line.startsWith(name)) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)/.exec(line);
    if (!m || m[1] !== name) continue;
    const found = {};
    if (m[3]) {
      for (const part of m[3].matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
        found[part[1]] = part[2];
      }
    }
    if (Object.entries(labels).every(([k, v]) => found[k] === String(v))) {
      return Number(m[4]);
    }
  }
  return 0;
}

/**
 * A centrifuge-js client pointed at `url` using `ws`, of the build `format` names (JSON by
 * default). Disconnected in teardown when `t` is given. Reconnect delays are short so
 * reconnect tests stay fast.
 */
export function newClient(url, { t, format = JSON_FORMAT, ...options } = {}) {
  const client = new format.Centrifuge(url, {
    websocket: WebSocket,
    minReconnectDelay: 50,
    maxReconnectDelay: 400,
    timeout: 5_000,
    ...options,
  });
  if (t) {
    t.after(() => client.disconnect());
  }
  return client;
}

/** Creates a client, connects it, and resolves once it is connected. */
export async function connectClient(url, opts = {}) {
  const client = newClient(url, opts);
  const connected = waitEvent(client, 'connected', { timeout: 5_000, message: `connect to ${url}` });
  client.connect();
  const ctx = await connected;
  return { client, ctx };
}

/** Subscribes `client` to `channel` and resolves once subscribed; records publications. */
export async function subscribe(client, channel, options = {}) {
  const sub = client.newSubscription(channel, options);
  const publications = [];
  sub.on('publication', (ctx) => publications.push(ctx));
  const subscribed = waitEvent(sub, 'subscribed', { timeout: 5_000, message: `subscribe to ${channel}` });
  const failed = new Promise((_, reject) => {
    sub.once('unsubscribed', (ctx) => reject(new Error(`subscription to ${channel} ended: ${ctx.code} ${ctx.reason}`)));
  });
  failed.catch(() => {});
  sub.subscribe();
  const ctx = await Promise.race([subscribed, failed]);
  return { sub, ctx, publications };
}

/** Waits until `list` holds at least `count` entries. */
export function waitForCount(list, count, { timeout = 5_000, message = 'items' } = {}) {
  return waitFor(() => list.length >= count, { timeout, message: `${count} ${message} (have ${list.length})` });
}

/**
 * A raw protocol client: one `ws` connection speaking Centrifugo JSON (newline-delimited
 * replies). `call(cmd)` resolves with the reply of the same id; pushes and id-less frames
 * are recorded in `pushes`. Closed in teardown when `t` is given.
 */
export class RawClient {
  static async open(url, { t, timeout = 5_000 } = {}) {
    const raw = new RawClient(url);
    if (t) t.after(() => raw.close());
    await withTimeout(raw.opened, timeout, `raw websocket open ${url}`);
    return raw;
  }

  constructor(url) {
    this.ws = new WebSocket(url);
    this.nextId = 1;
    this.pending = new Map();
    this.pushes = [];
    this.frames = [];
    this.closeInfo = null;
    this.opened = new Promise((resolve, reject) => {
      this.ws.once('open', resolve);
      this.ws.once('error', reject);
    });
    this.opened.catch(() => {});
    this.closed = new Promise((resolve) => {
      this.ws.once('close', (code, reason) => {
        this.closeInfo = { code, reason: reason.toString() };
        for (const { reject } of this.pending.values()) {
          reject(new Error(`connection closed (${code} ${reason})`));
        }
        this.pending.clear();
        resolve(this.closeInfo);
      });
    });
    this.ws.on('error', () => {});
    this.ws.on('message', (data) => {
      const text = data.toString();
      this.frames.push(text);
      for (const line of text.split('\n')) {
        if (line.trim() === '') continue;
        const reply = JSON.parse(line);
        if (reply.id && this.pending.has(reply.id)) {
          this.pending.get(reply.id).resolve(reply);
          this.pending.delete(reply.id);
        } else {
          this.pushes.push(reply);
        }
      }
    });
  }

  /** Sends `{id, ...cmd}` and resolves with the reply carrying that id. */
  call(cmd, { timeout = 5_000 } = {}) {
    const id = this.nextId++;
    const p = new Promise((resolve, reject) => this.pending.set(id, { resolve, reject }));
    this.ws.send(JSON.stringify({ id, ...cmd }));
    return withTimeout(p, timeout, `reply to ${JSON.stringify(cmd)}`);
  }

  close() {
    if (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING) {
      this.ws.terminate();
    }
  }
}

/**
 * A TCP proxy between clients and the server that can cut every connection on demand and
 * refuse new ones until restored: a network outage without touching the server.
 */
export class TcpProxy {
  static async start(targetPort, { t, targetHost = '127.0.0.1' } = {}) {
    const proxy = new TcpProxy(targetHost, targetPort);
    if (t) t.after(() => proxy.close());
    await new Promise((resolve, reject) => {
      proxy.server.once('error', reject);
      proxy.server.listen(0, '127.0.0.1', resolve);
    });
    proxy.port = proxy.server.address().port;
    return proxy;
  }

  constructor(targetHost, targetPort) {
    this.blocked = false;
    this.sockets = new Set();
    this.accepted = 0;
    this.server = net.createServer((inbound) => {
      if (this.blocked) {
        inbound.destroy();
        return;
      }
      this.accepted += 1;
      const outbound = net.connect(targetPort, targetHost);
      this.sockets.add(inbound);
      this.sockets.add(outbound);
      const drop = () => {
        inbound.destroy();
        outbound.destroy();
        this.sockets.delete(inbound);
        this.sockets.delete(outbound);
      };
      inbound.on('error', drop);
      outbound.on('error', drop);
      inbound.on('close', drop);
      outbound.on('close', drop);
      inbound.pipe(outbound);
      outbound.pipe(inbound);
    });
  }

  /** Destroys every proxied connection and refuses new ones. */
  cut() {
    this.blocked = true;
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
  }

  restore() {
    this.blocked = false;
  }

  /** Number of proxied connection pairs currently open. */
  get connections() {
    return this.sockets.size / 2;
  }

  close() {
    this.cut();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}
