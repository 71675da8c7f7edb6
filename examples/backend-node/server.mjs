// A chat backend for Tidings' proxies on plain node:http and better-sqlite3.
//
// Tidings calls it instead of asking clients for tokens:
// - POST /tidings/connect: the user is whoever the `session` cookie names (a real
//   app looks the cookie up in its session store); no cookie, no connection.
// - POST /tidings/refresh: extends a session by ten minutes.
// - POST /tidings/subscribe: anyone signed in may join `chat:*` rooms except
//   `chat:admin`, which only `admin` may join.
// - POST /tidings/publish: stores each chat message in SQLite, trims it, and
//   publishes the stored copy (with its row id and author) instead.
// - POST /tidings/rpc: `history` returns the last messages of a room.
// - POST /tidings/webhooks: Tidings' webhooks (Pusher's envelope), checked with
//   Pusher's own Node library; each event is stored once by its `id` (a retried
//   batch may come again) and the `online` table keeps who is in which room.
//
// The bodies are Centrifugo's proxy protocol (see docs/proxy.md).
//
//   npm ci && node server.mjs --port 3001 --db chat.sqlite3 [--session-seconds 600]

import http from 'node:http';
import { parseArgs } from 'node:util';
import Database from 'better-sqlite3';
import Pusher from 'pusher';

const MAX_TEXT = 1000;
const MAX_BODY = 64 * 1024;

export function userFromCookie(header) {
  if (!header) return null;
  for (const part of header.split(';')) {
    const [name, ...rest] = part.trim().split('=');
    const value = rest.join('=');
    // A real app verifies a signed session id here.
    if (name === 'session' && /^[A-Za-z0-9]+$/.test(value)) return value;
  }
  return null;
}

const now = () => Math.floor(Date.now() / 1000);

// The `key` and `secret` of the webhook in tidings.toml.
const WEBHOOK_KEY = process.env.WEBHOOK_KEY ?? 'example-webhook-key';
const WEBHOOK_SECRET = process.env.WEBHOOK_SECRET ?? 'example-webhook-secret-change-me';

/**
 * The backend's HTTP server (not listening yet). `sessionSeconds`: how long a
 * sign-in or a refresh lasts.
 */
export function createApp(dbPath, { sessionSeconds = 600 } = {}) {
  const db = new Database(dbPath);
  db.exec(`CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT, room TEXT NOT NULL,
    author TEXT NOT NULL, text TEXT NOT NULL, at INTEGER NOT NULL)`);
  const insert = db.prepare('INSERT INTO messages (room, author, text, at) VALUES (?, ?, ?, ?)');
  const recent = db.prepare(
    'SELECT id, author, text FROM messages WHERE room = ? ORDER BY id DESC LIMIT 50',
  );
  db.exec(`CREATE TABLE IF NOT EXISTS webhook_events (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, channel TEXT, user_id TEXT,
    event TEXT, data TEXT, at INTEGER NOT NULL)`);
  db.exec(`CREATE TABLE IF NOT EXISTS online (
    channel TEXT NOT NULL, user_id TEXT NOT NULL, PRIMARY KEY (channel, user_id))`);
  const storeEvent = db.prepare(
    `INSERT OR IGNORE INTO webhook_events (id, name, channel, user_id, event, data, at)
     VALUES (@id, @name, @channel, @user_id, @event, @data, @at)`,
  );
  const cameOnline = db.prepare('INSERT OR IGNORE INTO online (channel, user_id) VALUES (?, ?)');
  const wentOffline = db.prepare('DELETE FROM online WHERE channel = ? AND user_id = ?');
  // Only the key and secret matter for checking webhooks; appId and cluster are unused.
  const pusher = new Pusher({
    appId: 'tidings',
    key: WEBHOOK_KEY,
    secret: WEBHOOK_SECRET,
    cluster: 'local',
  });
  const applyEvents = db.transaction((events) => {
    for (const e of events) {
      const fresh = storeEvent.run({
        id: String(e.id),
        name: String(e.name),
        channel: e.channel ?? null,
        user_id: e.user_id ?? null,
        event: e.event ?? null,
        data: e.data ?? e.b64data ?? null,
        at: now(),
      }).changes;
      if (!fresh) continue; // a retried batch: already applied
      if (e.name === 'member_added') cameOnline.run(e.channel, e.user_id);
      if (e.name === 'member_removed') wentOffline.run(e.channel, e.user_id);
    }
  });

  const handlers = {
    '/tidings/connect': (body, req) => {
      const user = userFromCookie(req.headers.cookie);
      if (!user) return { disconnect: { code: 4501, reason: 'unauthorized' } };
      const name = user[0].toUpperCase() + user.slice(1);
      return {
        result: {
          user,
          expire_at: now() + sessionSeconds,
          info: { name },
          data: { welcome: user },
        },
      };
    },
    '/tidings/refresh': () => ({ result: { expire_at: now() + sessionSeconds } }),
    '/tidings/subscribe': (body) => {
      if (body.channel === 'chat:admin' && body.user !== 'admin') {
        return { error: { code: 403, message: 'permission denied' } };
      }
      return { result: {} };
    },
    '/tidings/publish': (body) => {
      // Socket.IO clients (tidings:publish) send {event, args}; Centrifugo clients the message.
      const sio = body.data && typeof body.data.event === 'string' && Array.isArray(body.data.args);
      const message = sio ? body.data.args[0] : body.data;
      const text = typeof message?.text === 'string' ? message.text.trim() : '';
      if (!text) return { error: { code: 400, message: 'text is required' } };
      const trimmed = text.slice(0, MAX_TEXT);
      const { lastInsertRowid } = insert.run(body.channel, body.user, trimmed, now());
      const stored = { id: Number(lastInsertRowid), author: body.user, text: trimmed };
      // Subscribers receive the stored copy instead, in the shape the client sent.
      return { result: { data: sio ? { event: body.data.event, args: [stored] } : stored } };
    },
    '/tidings/rpc': (body) => {
      if (body.method !== 'history') return { error: { code: 404, message: 'unknown method' } };
      const rows = recent.all(String(body.data?.room ?? ''));
      return { result: { data: { messages: rows.reverse() } } };
    },
  };

  // Webhooks are checked on the raw body: the signature covers its exact bytes.
  const webhooks = (raw, req) => {
    const hook = pusher.webhook({ headers: req.headers, rawBody: raw });
    if (!hook.isValid()) return { status: 401, body: 'bad signature' };
    applyEvents(hook.getEvents());
    return { status: 200, body: '' };
  };

  const server = http.createServer((req, res) => {
    const handler = handlers[req.url];
    const isWebhook = req.url === '/tidings/webhooks';
    if (req.method !== 'POST' || (!handler && !isWebhook)) {
      res.writeHead(404).end();
      return;
    }
    // A batch of webhooks (up to 100 client events) may be larger than a proxy call.
    const maxBody = isWebhook ? 16 * MAX_BODY : MAX_BODY;
    let size = 0;
    const chunks = [];
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > maxBody) req.destroy();
      else chunks.push(chunk);
    });
    req.on('end', () => {
      if (isWebhook) {
        const { status, body } = webhooks(Buffer.concat(chunks).toString('utf8'), req);
        res.writeHead(status).end(body);
        return;
      }
      let answer;
      try {
        answer = handler(JSON.parse(Buffer.concat(chunks).toString('utf8')), req);
      } catch (err) {
        res.writeHead(400).end(String(err));
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(answer));
    });
  });
  server.on('close', () => db.close());
  /** What the webhooks told so far: every event once, and who is online where. */
  server.webhookState = () => ({
    events: db.prepare('SELECT * FROM webhook_events ORDER BY at, id').all(),
    online: db.prepare('SELECT channel, user_id FROM online ORDER BY channel, user_id').all(),
  });
  return server;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values } = parseArgs({
    options: {
      host: { type: 'string', default: '127.0.0.1' },
      port: { type: 'string', default: '3001' },
      db: { type: 'string', default: 'chat.sqlite3' },
      'session-seconds': { type: 'string', default: '600' },
    },
  });
  const sessionSeconds = Number(values['session-seconds']);
  createApp(values.db, { sessionSeconds }).listen(Number(values.port), values.host, () => {
    console.log(`backend listening on http://${values.host}:${values.port}`);
  });
}
