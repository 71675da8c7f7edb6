#!/usr/bin/env python3
"""Checks the layers of crates/tidings/src (docs/architecture.md, "Layers").

Reads every `crate::a::b` path in the library's sources (in `use` lines and inline),
maps it to the file that defines module `a::b`, and fails when

- a file uses a module its layer must never use (a core file naming a transport,
  a front door or the cluster's handlers, an engine naming the node, …), or
- files import each other in a loop that spans more than one folder.

Exit status 0 when the house is in order, 1 with one line per finding otherwise.
"""

import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "tidings", "src")

# Layer of each file, by path prefix (first match wins), and the modules (first
# segment after `crate::`, or `node::cluster` style pairs) it must never use.
FRONT_DOORS = ["session", "socketio"]
TRANSPORTS = ["transport"]
OUTER = ["api", "server", "admin"]
LAYERS = [
    ("config", ["config.rs", "config/", "tls.rs"],
     ["auth", "node", "hub", "connection", "outbox", "engine", "broker", "presence", "occupancy",
      "webhook"]
     + FRONT_DOORS + TRANSPORTS + OUTER),
    ("engines", ["broker.rs", "broker/", "presence.rs", "presence/", "occupancy.rs", "engine.rs",
                 "engine/"],
     ["node", "hub", "connection", "outbox", "auth", "limit", "metrics", "webhook"]
     + FRONT_DOORS + TRANSPORTS + OUTER),
    ("cluster", ["node/cluster.rs"], FRONT_DOORS + TRANSPORTS + OUTER),
    ("core", ["node/", "hub.rs", "connection.rs", "outbox.rs", "channel.rs", "limit.rs",
              "metrics.rs", "origin.rs", "request_body.rs", "proxy/", "webhook/"],
     FRONT_DOORS + TRANSPORTS + OUTER),
    # Socket.IO's own endpoints are a transport of its front door.
    ("transports", ["transport/", "socketio/transport.rs"],
     ["hub", "broker", "presence", "occupancy", "engine", "webhook"] + OUTER),
    ("front door: session", ["session.rs"],
     ["hub", "broker", "presence", "occupancy", "engine", "webhook", "socketio", "transport"]
     + OUTER),
    ("front door: socketio", ["socketio/"],
     ["hub", "broker", "presence", "occupancy", "engine", "webhook", "session"] + OUTER),
    ("auth", ["auth.rs", "auth/"],
     ["node", "hub", "connection", "engine", "broker", "presence"]
     + FRONT_DOORS + TRANSPORTS + OUTER),
]

PATH = re.compile(r"\bcrate::((?:[a-z_][a-z0-9_]*::)*[A-Za-z_][A-Za-z0-9_]*)")
USE_GROUP = re.compile(r"\buse\s+crate::(\{[^;]*\});", re.S)
COMMENT = re.compile(r"//.*?$", re.M)


def sources():
    for base, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".rs"):
                path = os.path.join(base, name)
                yield os.path.relpath(path, ROOT).replace(os.sep, "/")


def strip_tests(text):
    """The file without its `#[cfg(test)]` module (tests may reach anywhere)."""
    at = text.find("#[cfg(test)]\nmod tests")
    return text if at < 0 else text[:at]


def module_file(segments, files):
    """The file defining the longest prefix of `segments` that is a module."""
    for n in range(len(segments), 0, -1):
        stem = "/".join(segments[:n])
        for candidate in (stem + ".rs", stem + "/mod.rs"):
            if candidate in files:
                return candidate
    return None


def imports(rel, files):
    text = COMMENT.sub("", strip_tests(open(os.path.join(ROOT, rel)).read()))
    paths = [m.group(1) for m in PATH.finditer(text)]
    # `use crate::{a::X, b::{Y, Z}};` names modules inside braces.
    for group in USE_GROUP.finditer(text):
        for item in re.findall(r"([a-z_][a-z0-9_]*)::", group.group(1)):
            paths.append(item + "::_")
    found = set()
    for path in paths:
        segments = [s for s in path.split("::") if s and s[0].islower()]
        target = module_file(segments, files) if segments else None
        if target and target != rel:
            found.add((target, segments[0]))
    return found


def layer_of(rel):
    for name, prefixes, forbidden in LAYERS:
        if any(rel == p or (p.endswith("/") and rel.startswith(p)) for p in prefixes):
            return name, forbidden
    return None, []


def cycles(graph):
    """Strongly connected components with more than one file (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main():
    files = set(sources())
    problems = []
    graph = {}
    for rel in sorted(files):
        layer, forbidden = layer_of(rel)
        deps = imports(rel, files)
        graph[rel] = {target for target, _ in deps}
        for target, first in sorted(deps):
            # `node::cluster` is the cluster's; naming it from the core's other
            # files is allowed, from anywhere else it is not (it is private).
            if first in forbidden:
                problems.append(f"{rel} ({layer}) uses {target}: a {layer} file must not use `crate::{first}`")
    def folder(f):
        # `auth.rs` beside `auth/` is that folder's root.
        stem = f[:-3] if f.endswith(".rs") else f
        if "/" not in f and any(g.startswith(stem + "/") for g in files):
            return stem
        return os.path.dirname(f) or f

    for comp in cycles(graph):
        folders = {folder(f) for f in comp}
        if len(folders) > 1:
            problems.append("import loop across folders: " + " -> ".join(comp))
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} layer problem(s); see docs/architecture.md")
        return 1
    print(f"layers ok: {len(files)} files, no forbidden import, no loop across folders")
    return 0


if __name__ == "__main__":
    sys.exit(main())
