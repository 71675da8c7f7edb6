"""A chat backend for Tidings' proxies, on aiohttp and the standard library's sqlite3.

Tidings calls it instead of asking clients for tokens:

- POST /tidings/connect: the user is whoever the `session` cookie names (a real
  app looks the cookie up in its session store); no cookie, no connection.
- POST /tidings/refresh: extends a session by ten minutes while the user exists.
- POST /tidings/subscribe: anyone signed in may join `chat:*` rooms except
  `chat:admin`, which only `admin` may join.
- POST /tidings/publish: stores each chat message in SQLite, trims it, and
  publishes the stored copy (with its row id and author) instead of what the
  client sent.
- POST /tidings/rpc: `history` returns the last messages of a room from SQLite.
- POST /tidings/webhooks: Tidings' webhooks (Pusher's envelope), verified with
  Pusher's own Python library; every event is stored once (by its `id`, since a
  retried batch may come again) and `online` keeps who is in which room.

The request and answer bodies are Centrifugo's proxy protocol (see docs/proxy.md).

    python app.py --port 3001 --db chat.sqlite3
"""

from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import time
from http.cookies import SimpleCookie

import pusher
from aiohttp import web

log = logging.getLogger("backend")

# The `key` and `secret` of the webhook in tidings.toml.
WEBHOOK_KEY = os.environ.get("WEBHOOK_KEY", "example-webhook-key")
WEBHOOK_SECRET = os.environ.get("WEBHOOK_SECRET", "example-webhook-secret-change-me")

MAX_TEXT = 1000
SESSION_SECONDS = 600


def user_from_cookie(header: str | None) -> str | None:
    """The user a `session=<name>` cookie names. A real app verifies a signed
    session id here; the example trusts the name to stay short."""
    if not header:
        return None
    cookie = SimpleCookie()
    cookie.load(header)
    morsel = cookie.get("session")
    if morsel is None or not morsel.value.isalnum():
        return None
    return morsel.value


def open_db(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(
        "CREATE TABLE IF NOT EXISTS messages ("
        " id INTEGER PRIMARY KEY AUTOINCREMENT, room TEXT NOT NULL,"
        " author TEXT NOT NULL, text TEXT NOT NULL, at INTEGER NOT NULL)"
    )
    db.execute(
        "CREATE TABLE IF NOT EXISTS webhook_events ("
        " id TEXT PRIMARY KEY, name TEXT NOT NULL, channel TEXT, user_id TEXT,"
        " event TEXT, data TEXT, at INTEGER NOT NULL)"
    )
    db.execute(
        "CREATE TABLE IF NOT EXISTS online ("
        " channel TEXT NOT NULL, user_id TEXT NOT NULL, PRIMARY KEY (channel, user_id))"
    )
    return db


async def connect(request: web.Request) -> web.Response:
    user = user_from_cookie(request.headers.get("Cookie"))
    if user is None:
        # 4501: terminal, the client does not reconnect.
        return web.json_response({"disconnect": {"code": 4501, "reason": "unauthorized"}})
    return web.json_response({
        "result": {
            "user": user,
            "expire_at": int(time.time()) + SESSION_SECONDS,
            "info": {"name": user.capitalize()},
            "data": {"welcome": user},
        }
    })


async def refresh(request: web.Request) -> web.Response:
    body = await request.json()
    # A real app checks that the user still exists and may stay.
    return web.json_response({"result": {"expire_at": int(time.time()) + SESSION_SECONDS}})


async def subscribe(request: web.Request) -> web.Response:
    body = await request.json()
    if body.get("channel") == "chat:admin" and body.get("user") != "admin":
        return web.json_response({"error": {"code": 403, "message": "permission denied"}})
    return web.json_response({"result": {}})


def message_of(data: object) -> tuple[dict | None, str | None]:
    """The message object of a publication: `data` itself for Centrifugo clients,
    the first argument of `{event, args}` for Socket.IO clients (tidings:publish)."""
    if isinstance(data, dict) and isinstance(data.get("args"), list) and "event" in data:
        first = data["args"][0] if data["args"] else None
        return data, first.get("text") if isinstance(first, dict) else None
    return None, data.get("text") if isinstance(data, dict) else None


async def publish(request: web.Request) -> web.Response:
    body = await request.json()
    envelope, text = message_of(body.get("data"))
    if not isinstance(text, str) or not text.strip():
        return web.json_response({"error": {"code": 400, "message": "text is required"}})
    text = text.strip()[:MAX_TEXT]
    db: sqlite3.Connection = request.app["db"]
    cur = db.execute(
        "INSERT INTO messages (room, author, text, at) VALUES (?, ?, ?, ?)",
        (body["channel"], body["user"], text, int(time.time())),
    )
    stored = {"id": cur.lastrowid, "author": body["user"], "text": text}
    # What subscribers receive instead of what the client sent, in the same shape.
    data = {"event": envelope["event"], "args": [stored]} if envelope else stored
    return web.json_response({"result": {"data": data}})


async def rpc(request: web.Request) -> web.Response:
    body = await request.json()
    if body.get("method") != "history":
        return web.json_response({"error": {"code": 404, "message": "unknown method"}})
    room = (body.get("data") or {}).get("room", "")
    db: sqlite3.Connection = request.app["db"]
    rows = db.execute(
        "SELECT id, author, text FROM messages WHERE room = ? ORDER BY id DESC LIMIT 50",
        (room,),
    ).fetchall()
    messages = [{"id": i, "author": a, "text": t} for i, a, t in reversed(rows)]
    return web.json_response({"result": {"data": {"messages": messages}}})


async def webhooks(request: web.Request) -> web.Response:
    body = await request.text()
    checker: pusher.Pusher = request.app["pusher"]
    # Checks X-Pusher-Key, the HMAC-SHA256 signature of the exact body and that
    # time_ms is recent; returns the parsed body, or None.
    hook = checker.validate_webhook(
        key=request.headers.get("X-Pusher-Key", ""),
        signature=request.headers.get("X-Pusher-Signature", ""),
        body=body,
    )
    if hook is None:
        log.warning("webhook refused: bad key, signature or time")
        return web.Response(status=401)
    db: sqlite3.Connection = request.app["db"]
    for event in hook["events"]:
        cur = db.execute(
            "INSERT OR IGNORE INTO webhook_events (id, name, channel, user_id, event, data, at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (event["id"], event["name"], event.get("channel"), event.get("user_id"),
             event.get("event"), event.get("data"), hook["time_ms"]),
        )
        if cur.rowcount == 0:
            continue  # a repeat of a batch already stored
        name, channel, user = event["name"], event.get("channel"), event.get("user_id")
        if name == "member_added":
            db.execute("INSERT OR IGNORE INTO online VALUES (?, ?)", (channel, user))
        elif name == "member_removed":
            db.execute("DELETE FROM online WHERE channel = ? AND user_id = ?", (channel, user))
        log.info("webhook %s %s %s", name, channel or "", user or "")
    return web.Response(status=200)


def app(db_path: str) -> web.Application:
    application = web.Application()
    application["db"] = open_db(db_path)
    application["pusher"] = pusher.Pusher(
        app_id="1", key=WEBHOOK_KEY, secret=WEBHOOK_SECRET
    )  # app_id is not used to verify webhooks
    application.add_routes([
        web.post("/tidings/connect", connect),
        web.post("/tidings/refresh", refresh),
        web.post("/tidings/subscribe", subscribe),
        web.post("/tidings/publish", publish),
        web.post("/tidings/rpc", rpc),
        web.post("/tidings/webhooks", webhooks),
    ])
    return application


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3001)
    parser.add_argument("--db", default="chat.sqlite3")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    web.run_app(app(args.db), host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
