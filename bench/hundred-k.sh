#!/usr/bin/env bash
# The 100,000-connection run on one machine (docs/benchmarks.md, "100,000
# connections through a cluster"): Tidings nodes joined by one Redis, then by one
# NATS, with the load generator in several processes on several 127.0.0.x source
# addresses. `tidings bench swarm` spawns the nodes and the generator processes and
# measures; this script builds the binary, raises the open-file limit, runs the
# brokers and cleans up.
#
#   bench/hundred-k.sh                     # 100,000 connections, Redis then NATS
#   ENGINES=nats bench/hundred-k.sh        # one engine
#   N=20000 NODES=3 WORKERS=2 bench/hundred-k.sh   # smaller
#   bench/hundred-k.sh --smoke             # 3 nodes, 1,500 connections, a few seconds,
#                                          # correctness checks only (scripts/test.sh)
#
# Environment: N (connections, default 100000), NODES (7: after a kill -9 the others
# must hold every client, at ~19,500 sockets per process), WORKERS (7), RATES (the
# sweep, per second), STEP_SECS, ENGINES ("redis nats"), TIDINGS_BIN (a built binary;
# default: cargo build --release), OUT (results folder), EXTRA (more arguments to
# `tidings bench swarm`).
#
# Bounded: every phase has a deadline, and the whole run per engine is stopped after
# MAX_SECS (default 900). Everything it starts is stopped by PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1

if [ "$SMOKE" = 1 ]; then
  N=${N:-1500}
  NODES=${NODES:-3}
  WORKERS=${WORKERS:-2}
  RATES=${RATES:-2,4}
  STEP_SECS=${STEP_SECS:-1}
  PRESENCE=${PRESENCE:-300}
  ENGINES=${ENGINES:-"redis nats"}
  MAX_SECS=${MAX_SECS:-60}
  EXTRA=${EXTRA:-"--presence-calls 3 --kill-rate 10 --recover-timeout 20 --connect-timeout 30 --check"}
else
  N=${N:-100000}
  NODES=${NODES:-7}
  WORKERS=${WORKERS:-7}
  RATES=${RATES:-0.25,0.5,0.75,1,1.5,2,3}
  STEP_SECS=${STEP_SECS:-8}
  PRESENCE=${PRESENCE:-10000}
  ENGINES=${ENGINES:-"redis nats"}
  MAX_SECS=${MAX_SECS:-900}
  EXTRA=${EXTRA:-}
fi

if [ -z "${TIDINGS_BIN:-}" ]; then
  cargo build --release -p tidings-server --quiet
  TIDINGS_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/tidings
fi
[ -x "$TIDINGS_BIN" ] || { echo "no binary at $TIDINGS_BIN" >&2; exit 1; }

# Sockets: raise the soft open-file limit up to the hard one (the nodes and the
# generator processes inherit it).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n "$(cat /proc/sys/fs/nr_open)" 2>/dev/null || true
if [ "$(ulimit -n)" -lt 20000 ] && [ "$SMOKE" = 0 ]; then
  echo "note: open files capped at $(ulimit -n) per process; each process must hold N/NODES sockets" >&2
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/hundred-k.XXXXXX")
if [ "$SMOKE" = 0 ]; then
  OUT=${OUT:-$ROOT/bench/results/hundred-k-$(date -u +%Y%m%dT%H%M%SZ)}
else
  OUT=${OUT:-$WORK}
fi
mkdir -p "$OUT"

PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do
    kill -TERM "$p" 2>/dev/null || true
  done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    # The coordinator runs in its own process group (setsid): its nodes and
    # workers go with it should it die before stopping them.
    kill -KILL -- "-$p" 2>/dev/null || true
  done
  PIDS=()
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

NATS_BIN=$(command -v nats-server || echo /usr/sbin/nats-server)

status=0
for engine in $ENGINES; do
  dir=$WORK/$engine
  mkdir -p "$dir"
  case $engine in
    redis)
      port=$(free_port)
      redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
        --maxclients 10000 --loglevel warning >"$dir/broker.log" 2>&1 &
      broker=$!
      url=redis://127.0.0.1:$port
      for _ in $(seq 100); do
        redis-cli -p "$port" ping >/dev/null 2>&1 && break
        sleep 0.05
      done
      ;;
    nats)
      "$NATS_BIN" -a 127.0.0.1 -p -1 -js -sd "$dir" --ports_file_dir "$dir" >"$dir/broker.log" 2>&1 &
      broker=$!
      for _ in $(seq 100); do
        [ -s "$dir/nats-server_$broker.ports" ] && break
        sleep 0.05
      done
      url=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["nats"][0])' \
        "$dir/nats-server_$broker.ports")
      ;;
    *) echo "unknown engine $engine" >&2; exit 2 ;;
  esac
  PIDS+=("$broker")
  echo "==> $engine ($url): $N connections, $NODES nodes, $WORKERS generator processes" >&2
  # shellcheck disable=SC2086
  setsid timeout --signal=TERM --kill-after=20 "$MAX_SECS" \
    "$TIDINGS_BIN" bench swarm --spawn "$TIDINGS_BIN" --engine "$engine" --engine-url "$url" \
    --engine-pid "$broker" -n "$N" --nodes "$NODES" --workers "$WORKERS" \
    --presence-members "$PRESENCE" --rates "$RATES" --step-secs "$STEP_SECS" --json $EXTRA \
    >"$OUT/$engine.txt" &
  coord=$!
  PIDS+=("$coord")
  rc=0
  wait "$coord" || rc=$?
  # Print the summary (the JSON report follows it in the file).
  awk '/^\{/{exit} {print}' "$OUT/$engine.txt"
  if [ "$rc" != 0 ]; then
    echo "swarm on $engine failed (exit $rc)" >&2
    status=1
  fi
  kill -TERM "$broker" 2>/dev/null || true
  wait "$broker" 2>/dev/null || true
  PIDS=()
done
[ "$SMOKE" = 1 ] || echo "results: $OUT" >&2
exit "$status"
