#!/usr/bin/env bash
# Builds (release) and starts the axum broadcast peer on port $1 (default 3000).
set -euo pipefail
cd "$(dirname "$0")"
# Its own target dir, whatever the caller's CARGO_TARGET_DIR says.
unset CARGO_TARGET_DIR
cargo build --release --locked --quiet
exec ./target/release/axum-broadcast "${1:-3000}"
