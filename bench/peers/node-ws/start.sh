#!/usr/bin/env bash
# Installs the locked dependencies from the npm registry (once) and starts the
# server on port $1.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -d node_modules ]; then
  npm ci --no-audit --no-fund --silent
fi
exec node server.js "$@"
