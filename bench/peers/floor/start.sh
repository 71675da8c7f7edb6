#!/usr/bin/env bash
# Builds (release, locked dependencies from crates.io, its own target dir) and
# starts a floor server on port $1 (default 3000). Further arguments go to the
# server, e.g. `start.sh 3000 --backend fastwebsockets`. The server prints
# `listening on ADDR`; this script execs it, so $! of the caller is its PID.
set -euo pipefail
cd "$(dirname "$0")"
# Its own target dir, whatever the caller's CARGO_TARGET_DIR says.
unset CARGO_TARGET_DIR
cargo build --release --locked --quiet
port=${1:-3000}
shift || true
exec ./target/release/floor "$@" "$port"
