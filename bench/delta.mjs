#!/usr/bin/env node
// Delta compression and permessage-deflate: bytes per delivery and server CPU per
// delivery for a ~10 KB JSON object with one field changed per publication, delivered
// with and without fossil deltas and with and without permessage-deflate, to real
// centrifuge-js subscribers (JSON and Protobuf builds) over WebSocket (Node's `ws`,
// which offers permessage-deflate unless told not to).
//
//   node bench/delta.mjs [--bin target/release/tidings] [--subs 100] [--pubs 200]
//
// Run from the repository root after `npm ci` in clients/js. It spawns the binary on
// a free loopback port with its own config, and for each mode connects `--subs`
// subscribers whose WebSocket class counts every byte of every incoming message (as
// the application sees it, after inflating) and every byte the socket read (the wire:
// frame headers and compressed payloads), then
// publishes `--pubs` publications through the server API with `delta: true` (ignored
// by subscribers that did not ask for deltas). Every subscriber must reconstruct the
// exact object of every publication, or the run fails. Server CPU is user + system
// time of the spawned process over the publish window (/proc/<pid>/stat), divided by
// the deliveries. Everything is bounded by `--timeout` seconds per mode.

import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { isDeepStrictEqual } from 'node:util';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..');
const require = createRequire(path.join(root, 'clients/js/package.json'));
const { Centrifuge } = require('centrifuge');
const { Centrifuge: ProtobufCentrifuge } = require('centrifuge/build/protobuf');
const WebSocket = require('ws');

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : fallback;
}
const BIN = path.resolve(arg('bin', path.join(root, 'target/release/tidings')));
const SUBS = Number(arg('subs', 100));
const PUBS = Number(arg('pubs', 200));
const TIMEOUT_S = Number(arg('timeout', 120));
const API_KEY = 'delta-bench';

/** The published object: 400 fields of about 20 bytes, and `n`, which changes. */
function doc(n) {
  const o = {};
  for (let i = 0; i < 400; i++) o[`field${i}`] = `value-${i}-${(i * 7919) % 1000}`;
  o.n = n;
  return o;
}

function cpuTicks(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(fields[11]) + Number(fields[12]);
}
const TICK_US = 1e6 / 100; // USER_HZ is 100 on Linux

async function startServer() {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'tidings-delta-bench-'));
  const file = path.join(dir, 'config.json');
  writeFileSync(
    file,
    JSON.stringify({
      client: { allow_anonymous_connect_without_token: true, queue_max_size: 64 * 1024 * 1024 },
      http_api: { key: API_KEY },
      // Offered to every client; the modes without deflate refuse it client-side.
      websocket: { compression: true, compression_level: 1 },
      channel: {
        namespaces: [
          {
            name: 'doc',
            allow_subscribe_for_client: true,
            allow_subscribe_for_anonymous: true,
            history_size: 1,
            history_ttl: '300s',
            force_positioning: true,
            allowed_delta_types: ['fossil'],
          },
        ],
      },
    }),
  );
  const child = spawn(BIN, ['serve', '--config', file, '--port', '0'], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, RUST_LOG: 'warn' },
  });
  process.on('exit', () => child.kill('SIGKILL'));
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('server did not start')), 15_000);
    createInterface({ input: child.stdout }).on('line', (line) => {
      const m = /listening on https?:\/\/\S+:(\d+)/.exec(line);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
  });
  return { child, port };
}

async function api(port, method, params) {
  const res = await fetch(`http://127.0.0.1:${port}/api/${method}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-API-Key': API_KEY },
    body: JSON.stringify(params),
    signal: AbortSignal.timeout(5_000),
  });
  const body = await res.json();
  if (res.status !== 200 || body.error) throw new Error(`${method}: ${JSON.stringify(body)}`);
  return body.result;
}

/** The permessage-deflate segment counters of /metrics: compressed and shared. */
async function deflateSegments(port) {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const read = (source) => {
    const m = new RegExp(`tidings_websocket_deflate_segments_total\\{source="${source}"\\} (\\d+)`).exec(text);
    return m ? Number(m[1]) : 0;
  };
  return { compressed: read('compressed'), shared: read('shared') };
}

async function runMode(server, { name, protobuf, delta, deflate }) {
  const counters = { bytes: 0 };
  let counting = false;
  const sockets = [];
  class CountingSocket extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, { perMessageDeflate: deflate });
      sockets.push(this);
      this.on('message', (data) => {
        if (!counting) return;
        const parts = Array.isArray(data) ? data : [data];
        for (const part of parts) counters.bytes += part.byteLength;
      });
    }
  }
  const wireRead = () => sockets.reduce((sum, s) => sum + (s._socket ? s._socket.bytesRead : 0), 0);
  const Client = protobuf ? ProtobufCentrifuge : Centrifuge;
  const channel = `doc:${name}-${Date.now()}`;
  const clients = [];
  const received = [];
  let mismatches = 0;
  const expected = new Map();
  for (let n = 1; n <= PUBS; n++) expected.set(n, doc(n));
  const decoder = new TextDecoder();
  for (let i = 0; i < SUBS; i++) {
    const c = new Client(`ws://127.0.0.1:${server.port}/connection/websocket`, {
      websocket: CountingSocket,
      timeout: 10_000,
    });
    const sub = c.newSubscription(channel, delta ? { delta: 'fossil' } : {});
    received.push(0);
    sub.on('publication', (ctx) => {
      const value = protobuf ? JSON.parse(decoder.decode(ctx.data)) : ctx.data;
      if (!isDeepStrictEqual(value, expected.get(value.n))) mismatches++;
      received[i]++;
    });
    const subscribed = new Promise((resolve) => sub.once('subscribed', resolve));
    c.connect();
    sub.subscribe();
    await subscribed;
    clients.push(c);
  }
  const agreed = sockets.filter((s) => s.extensions.includes('permessage-deflate')).length;
  if (agreed !== (deflate ? sockets.length : 0)) {
    throw new Error(`${name}: permessage-deflate agreed on ${agreed} of ${sockets.length} sockets`);
  }
  const deadline = Date.now() + TIMEOUT_S * 1000;
  const wireBefore = wireRead();
  const segmentsBefore = await deflateSegments(server.port);
  counting = true;
  const cpuBefore = cpuTicks(server.child.pid);
  const genBefore = process.cpuUsage();
  const started = process.hrtime.bigint();
  for (let n = 1; n <= PUBS; n++) {
    await api(server.port, 'publish', { channel, data: doc(n), delta: true });
  }
  while (received.some((r) => r < PUBS)) {
    if (Date.now() > deadline) throw new Error(`${name}: timed out; received ${Math.min(...received)} of ${PUBS}`);
    await new Promise((r) => setTimeout(r, 10));
  }
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  const cpuUs = (cpuTicks(server.child.pid) - cpuBefore) * TICK_US;
  const gen = process.cpuUsage(genBefore);
  counting = false;
  const wire = wireRead() - wireBefore;
  const segmentsAfter = await deflateSegments(server.port);
  for (const c of clients) c.disconnect();
  if (mismatches > 0) throw new Error(`${name}: ${mismatches} publications did not reconstruct`);
  const deliveries = SUBS * PUBS;
  return {
    mode: name,
    deliveries,
    bytes_per_delivery: Math.round(counters.bytes / deliveries),
    wire_bytes_per_delivery: Math.round(wire / deliveries),
    // Items compressed, and items whose compressed form another connection had made.
    deflate_compressed: segmentsAfter.compressed - segmentsBefore.compressed,
    deflate_shared: segmentsAfter.shared - segmentsBefore.shared,
    server_cpu_us_per_delivery: +(cpuUs / deliveries).toFixed(2),
    client_cpu_us_per_delivery: +((gen.user + gen.system) / deliveries).toFixed(2),
    seconds: +seconds.toFixed(2),
  };
}

const server = await startServer();
const payload = JSON.stringify(doc(1)).length;
console.log(`payload ${payload} bytes, ${SUBS} subscribers x ${PUBS} publications per mode`);
const modes = [
  { name: 'json-full', protobuf: false, delta: false, deflate: false },
  { name: 'json-delta', protobuf: false, delta: true, deflate: false },
  { name: 'protobuf-full', protobuf: true, delta: false, deflate: false },
  { name: 'protobuf-delta', protobuf: true, delta: true, deflate: false },
  { name: 'json-full-deflate', protobuf: false, delta: false, deflate: true },
  { name: 'json-delta-deflate', protobuf: false, delta: true, deflate: true },
  { name: 'protobuf-full-deflate', protobuf: true, delta: false, deflate: true },
];
const results = [];
for (const mode of modes) {
  const r = await runMode(server, mode);
  results.push(r);
  console.log(JSON.stringify(r));
}
server.child.kill('SIGKILL');
const by = Object.fromEntries(results.map((r) => [r.mode, r]));
for (const [base, other] of [
  ['json-full', 'json-delta'],
  ['protobuf-full', 'protobuf-delta'],
  ['json-full', 'json-full-deflate'],
  ['json-full', 'json-delta-deflate'],
  ['protobuf-full', 'protobuf-full-deflate'],
]) {
  const ratio = by[base].wire_bytes_per_delivery / by[other].wire_bytes_per_delivery;
  console.log(`${other}: ${ratio.toFixed(1)}x fewer wire bytes per delivery than ${base}`);
}
process.exit(0);
