#!/usr/bin/env bash
# Reproduces the table of docs/benchmarks.md: every scenario against Tidings and
# the peers, RUNS times each (default 3), medians printed by bench/summarize.py.
#
# Servers run on CPU 0, the load generator on CPU 1 (taskset), each server fresh
# for each run. Everything stays on loopback. Results (one JSON per run) go to
# bench/results/<time>/.
#
#   bench/run.sh                 # everything
#   ONLY="fanout latency" bench/run.sh   # some scenarios
#   RUNS=5 bench/run.sh
#   SERVERS="tidings floor-fastws" ONLY=fanout RUNS=1 bench/run.sh   # some servers
#   ONLY=proxy bench/run.sh      # connect and client fan-out through the backend proxies
#
# SERVERS lists the servers of the cases that compare servers (fanout, latency,
# latency10k, idlepeers, connect); the floor servers (bench/peers/floor) are
# floor-axum, floor-tokiows and floor-fastws. CARGO_TARGET_DIR is honoured for
# Tidings' own build; the peers always build in their own folders.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUNS=${RUNS:-3}
ONLY=${ONLY:-"fanout latency latency10k slow idle idlepeers connect sse"}  # also: proxy
SERVERS=${SERVERS:-"tidings axum node-ws socketio floor-axum floor-tokiows floor-fastws"}
# This sandbox caps open files at 20,000 per process (no CAP_SYS_RESOURCE), so one
# server process holds at most ~19,500 connections here; raise IDLE_N where the
# hard limit allows.
IDLE_N=${IDLE_N:-19000}
OUT=${OUT:-$ROOT/bench/results/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
SERVER_CPU=${SERVER_CPU:-0}
GEN_CPU=${GEN_CPU:-1}

cargo build --release -p tidings-server --quiet
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
for p in axum-broadcast floor; do
  (cd bench/peers/$p && env -u CARGO_TARGET_DIR cargo build --release --locked --quiet)
done
for p in node-ws node-socketio; do
  (cd bench/peers/$p && [ -d node_modules ] || npm ci --no-audit --no-fund --silent)
done
# A copy, so that rebuilding during a run does not change the binary under test.
cp "$TARGET/release/tidings" "$OUT/tidings"
TIDINGS=$OUT/tidings

# Room for many connections in this shell and everything it starts.
ulimit -n "$(cat /proc/sys/fs/nr_open)" 2>/dev/null || ulimit -n "$(ulimit -Hn)"

SERVER_PID=
SERVER_PORT=
start() { # start NAME: starts a fresh server on CPU $SERVER_CPU, sets SERVER_PID/PORT
  local log=$OUT/server-$1.log
  # Emptied here, not by the redirection below: that one happens in the background
  # child, and the wait loop could read the previous run's line (and port) first.
  : >"$log"
  case $1 in
    tidings) taskset -c "$SERVER_CPU" "$TIDINGS" serve --config bench/tidings.json --address 127.0.0.1 --port 0 >"$log" 2>&1 & ;;
    # Tidings with the connect and publish proxies on bench/proxy-backend.mjs.
    tidings-proxy) taskset -c "$SERVER_CPU" "$TIDINGS" serve --config bench/tidings-proxy.json --address 127.0.0.1 --port 0 >"$log" 2>&1 & ;;
    axum) taskset -c "$SERVER_CPU" bench/peers/axum-broadcast/target/release/axum-broadcast 0 >"$log" 2>&1 & ;;
    node-ws) taskset -c "$SERVER_CPU" node bench/peers/node-ws/server.js 0 >"$log" 2>&1 & ;;
    socketio) taskset -c "$SERVER_CPU" node bench/peers/node-socketio/server.js 0 >"$log" 2>&1 & ;;
    floor-axum|floor-tokiows|floor-fastws)
      local backend
      case $1 in
        floor-axum) backend=axum ;;
        floor-tokiows) backend=tokio-websockets ;;
        floor-fastws) backend=fastwebsockets ;;
      esac
      taskset -c "$SERVER_CPU" bench/peers/floor/target/release/floor --backend "$backend" 0 >"$log" 2>&1 & ;;
    *) echo "unknown server $1"; exit 1 ;;
  esac
  SERVER_PID=$!
  # Up to 60 s: a loaded machine starts Node slowly.
  for _ in $(seq 1200); do
    if grep -q "listening on [a-z:/]*[0-9.]*:[0-9]" "$log"; then break; fi
    sleep 0.05
  done
  SERVER_PORT=$(grep -o "listening on [a-z:/]*[0-9.]*:[0-9]*" "$log" | head -1 | grep -o "[0-9]*$" || true)
  [ -n "$SERVER_PORT" ] || { echo "$1 did not start:"; cat "$log"; exit 1; }
}
stop() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
}
trap stop EXIT

protocol() {
  case $1 in
    tidings|tidings-proxy) echo "--protocol centrifugo --api-key bench-key" ;;
    axum|node-ws|floor-*) echo "--protocol raw" ;;
    socketio) echo "--protocol engineio" ;;
  esac
}

# one NAME SERVER SCENARIO ARGS...: a fresh server, one bench run, its JSON kept.
one() {
  local name=$1 server=$2 scenario=$3; shift 3
  start "$server"
  local file=$OUT/$name.$server.$run.json
  # shellcheck disable=SC2046
  if ! taskset -c "$GEN_CPU" "$TIDINGS" bench "$scenario" --url "http://127.0.0.1:$SERVER_PORT" \
      --server-pid "$SERVER_PID" --label "$server" $(protocol "$server") --json --quiet "$@" >"$file"; then
    echo "{\"failed\": true, \"scenario\": \"$scenario\", \"server\": \"$server\"}" >"$file"
  fi
  stop
  echo "$name.$server.$run $(cat /proc/loadavg)" >>"$OUT/loadavg.txt"
  python3 bench/summarize.py --line "$file"
}

want() { [[ " $ONLY " == *" $1 "* ]]; }
want_server() { [[ " $SERVERS " == *" $1 "* ]]; }

for run in $(seq "$RUNS"); do
  echo "== run $run of $RUNS"
  if want fanout; then
    for s in $SERVERS; do
      one fanout "$s" fanout -n 1000 -m 3000 --payload-size 100
    done
    if want_server tidings; then
      one fanout-client tidings fanout -n 1000 -m 3000 --payload-size 100 --publish-via client
    fi
  fi
  if want latency; then
    for s in $SERVERS; do
      one latency "$s" latency -n 1000 --rate 50 --duration 10
    done
  fi
  if want latency10k; then
    for s in $SERVERS; do
      one latency10k "$s" latency -n 10000 --rate 5 --duration 10
    done
  fi
  if want slow && want_server tidings; then
    one slow tidings latency -n 1000 --rate 50 --duration 10 --slow-readers 1 --payload-size 1000
    one slow-base tidings latency -n 1000 --rate 50 --duration 10 --payload-size 1000
  fi
  if want idle && want_server tidings; then
    one idle tidings idle -n "$IDLE_N" --hold 10
  fi
  if want idlepeers; then
    for s in $SERVERS; do
      one idle10k "$s" idle -n 10000 --hold 5
    done
  fi
  if want connect; then
    # Every server: for the peers and the floors (raw WebSocket) a connect is the
    # TCP and WebSocket handshakes; for Tidings it is those plus the connect and
    # subscribe commands and their replies.
    for s in $SERVERS; do
      one connect "$s" connect -n 15000 --concurrency 256
    done
  fi
  if want sse && want_server tidings; then
    one sse tidings sse-fanout -n 1000 -m 3000
  fi
  if want proxy; then
    # The backend shares the server's CPU (see docs/benchmarks.md); port 39081 is
    # the one bench/tidings-proxy.json names.
    taskset -c "$SERVER_CPU" node bench/proxy-backend.mjs 39081 >"$OUT/proxy-backend.log" 2>&1 &
    BACKEND_PID=$!
    for s in tidings tidings-proxy; do
      one connect-proxy "$s" connect -n 5000 --concurrency 256
      one fanout-proxy "$s" fanout -n 1000 -m 3000 --payload-size 100 --publish-via client
    done
    kill "$BACKEND_PID" 2>/dev/null || true
    wait "$BACKEND_PID" 2>/dev/null || true
  fi
done

python3 bench/summarize.py "$OUT"
