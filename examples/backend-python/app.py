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

The request and answer bodies are Centrifugo's proxy protocol (see docs/proxy.md).

    python app.py --port 3001 --db chat.sqlite3
"""

from __future__ import annotations

import argparse
import sqlite3
import time
from http.cookies import SimpleCookie

from aiohttp import web

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


def app(db_path: str) -> web.Application:
    application = web.Application()
    application["db"] = open_db(db_path)
    application.add_routes([
        web.post("/tidings/connect", connect),
        web.post("/tidings/refresh", refresh),
        web.post("/tidings/subscribe", subscribe),
        web.post("/tidings/publish", publish),
        web.post("/tidings/rpc", rpc),
    ])
    return application


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3001)
    parser.add_argument("--db", default="chat.sqlite3")
    args = parser.parse_args()
    web.run_app(app(args.db), host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
