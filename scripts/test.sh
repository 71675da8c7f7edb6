#!/usr/bin/env bash
# Runs every Tidings test on a fresh Debian or Ubuntu machine (or this one):
# installs what is missing, builds, lints, then runs the Rust, Node (centrifuge-js and
# headless Chromium) and Python (cent, centrifuge-python) suites against the binary.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

say() { printf '\n==> %s\n' "$*"; }

# --- system packages --------------------------------------------------------------
need=()
command -v cargo >/dev/null || { echo "cargo (Rust toolchain) is required: https://rustup.rs" >&2; exit 1; }
command -v node >/dev/null || need+=(nodejs npm)
command -v npm >/dev/null || need+=(npm)
command -v python3 >/dev/null || need+=(python3)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
command -v go >/dev/null || need+=(golang-go)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v redis-server >/dev/null || need+=(redis-server)
{ command -v nats-server || [ -x /usr/sbin/nats-server ]; } >/dev/null || need+=(nats-server)
command -v cc >/dev/null || need+=(build-essential)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  say "installing system packages: ${need[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# --- build and lint -----------------------------------------------------------------
# No incremental compilation: CI builds once from a clean checkout, and the incremental
# caches would roughly double the size of target/.
export CARGO_INCREMENTAL=0
say "building"
cargo build --workspace --all-targets
say "checking format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The library builds without its optional parts (Redis, NATS, Socket.IO) too.
cargo clippy -p tidings --no-default-features --all-targets -- -D warnings
say "checking the layers (docs/architecture.md)"
python3 scripts/check-layers.py

export TIDINGS_BIN="$ROOT/target/debug/tidings"

# --- Rust tests ---------------------------------------------------------------------
say "Rust tests"
cargo test --workspace

# --- Several nodes, several generator processes, kill -9 ------------------------------
# A short run of the 100,000-connection scenario (bench/hundred-k.sh): 3 nodes on Redis,
# then on NATS, 1,500 clients from 2 generator processes. It checks correctness only
# (all connected, a broadcast with nothing lost, presence counts, every client of a
# killed node back and recovered with no silent loss), never a performance figure.
say "cluster smoke: bench/hundred-k.sh --smoke (3 nodes, 1,500 clients, kill -9 of one; Redis and NATS)"
bench/hundred-k.sh --smoke

# --- WebSocket conformance -------------------------------------------------------------
say "WebSocket conformance (Autobahn|Testsuite, cases 1-10, 12 and 13: permessage-deflate)"
scripts/autobahn.sh

# --- Node: @tidings/react, centrifuge-js, the Next.js example and the browser --------
# clients/js is an npm workspace (@tidings/long-poll, @tidings/react); the Next.js example
# has its own lockfile and takes @tidings/react from the workspace. `npm test` builds the
# packages, checks that web/tidings-core.js matches its sources, runs the Vitest suites
# (the hooks against the real binary), then the node --test suites, which include
# `next build` and the browser test of the example.
say "Node tests (@tidings/react with Vitest, centrifuge-js, Next.js example, headless Chromium)"
export NEXT_TELEMETRY_DISABLED=1
(cd clients/js && npm ci --no-audit --no-fund --loglevel=error)
(cd examples/nextjs-chat && npm ci --no-audit --no-fund --loglevel=error)
# The proxy backend example (better-sqlite3 builds with node-gyp when no prebuilt
# binary can be fetched; build-essential and python3 are installed above).
(cd examples/backend-node && npm ci --no-audit --no-fund --loglevel=error)
(cd clients/js && npm test)

# --- Python: cent and centrifuge-python ----------------------------------------------
say "Python tests (cent, centrifuge-python, python-socketio, the Go and proxy backend examples)"
scripts/python-tests.sh

say "all test suites passed"
