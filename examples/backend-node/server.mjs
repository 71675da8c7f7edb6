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
//
// The bodies are Centrifugo's proxy protocol (see docs/proxy.md).
//
//   npm ci && node server.mjs --port 3001 --db chat.sqlite3 [--session-seconds 600]

import http from 'node:http';
import { parseArgs } from 'node:util';
import Database from 'better-sqlite3';

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

  const server = http.createServer((req, res) => {
    const handler = handlers[req.url];
    if (req.method !== 'POST' || !handler) {
      res.writeHead(404).end();
      return;
    }
    let size = 0;
    const chunks = [];
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY) req.destroy();
      else chunks.push(chunk);
    });
    req.on('end', () => {
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
