#!/usr/bin/env bash
# WebSocket conformance: runs the Autobahn|Testsuite fuzzing client (cases 1 to 10,
# and 12 and 13: permessage-deflate with every offer the suite makes) against
# /autobahn/echo, a raw echo route on the WebSocket layer and settings Tidings uses.
# The route exists only in a binary built with the `autobahn-echo` feature. It is
# built in the shared target directory (a target directory of its own doubled the
# disk a clean run needs), copied aside, and the normal target/debug/tidings is
# rebuilt right after so the suites that follow test the binary users run.
#
# Passes when index.json holds exactly the expected number of cases, every behavior
# is OK, NON-STRICT or INFORMATIONAL, every behaviorClose is OK or INFORMATIONAL, and
# the results equal tests/autobahn/expected.json.
#
#   scripts/autobahn.sh            run and compare
#   AUTOBAHN_UPDATE=1 scripts/autobahn.sh
#                                  run, check the rules, and rewrite expected.json
#
# The suite (PyPI autobahntestsuite 0.8.2) is Python 2.7 only. It is installed into a
# virtualenv made with CPython 2.7.18 from pyenv (`pyenv prefix 2.7.18`), or with the
# python2.7 given in $PYTHON27.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
WORK="$ROOT/target/autobahn"
EXPECTED="$ROOT/tests/autobahn/expected.json"
mkdir -p "$WORK"

fail() {
  printf '\nautobahn: FAILED: %s\n' "$*" >&2
  exit 1
}

# --- Python 2.7 and the suite ------------------------------------------------------
P27="${PYTHON27:-}"
if [ -z "$P27" ] && command -v pyenv >/dev/null 2>&1; then
  prefix=$(pyenv prefix 2.7.18 2>/dev/null || true)
  [ -n "$prefix" ] && P27="$prefix/bin/python2.7"
fi
if [ -z "$P27" ]; then
  P27=$(command -v python2.7 || true)
fi
if [ -z "$P27" ] || ! "$P27" -c 'import sys; assert sys.version_info[:2] == (2, 7)' >/dev/null 2>&1; then
  fail "no Python 2.7 found. The Autobahn|Testsuite (PyPI autobahntestsuite) runs only on
Python 2.7. Install CPython 2.7.18 with pyenv (\`pyenv install 2.7.18\`), or point
PYTHON27 at a python2.7 that has pip, then run this script again."
fi
if ! "$P27" -m pip --version >/dev/null 2>&1; then
  fail "$P27 has no pip; the suite is installed with pip (pyenv's 2.7.18 has it)."
fi

VENV="$WORK/venv27"
export PIP_NO_PYTHON_VERSION_WARNING=1
if [ ! -x "$VENV/bin/wstest" ]; then
  echo "autobahn: installing autobahntestsuite 0.8.2 into $VENV (Python 2.7)"
  rm -rf "$VENV" "$WORK/py27-bootstrap"
  "$P27" -m pip install --quiet --disable-pip-version-check \
    --target "$WORK/py27-bootstrap" 'virtualenv<20.22' \
    || fail "could not install virtualenv<20.22 for Python 2.7"
  PYTHONPATH="$WORK/py27-bootstrap" "$P27" -m virtualenv --quiet -p "$P27" "$VENV" \
    || fail "could not create the Python 2.7 virtualenv"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check 'autobahntestsuite==0.8.2' \
    || fail "could not install autobahntestsuite==0.8.2"
fi

# --- the server with the echo route ---------------------------------------------------
echo "autobahn: building tidings with the autobahn-echo feature"
cargo build --quiet -p tidings-server --features autobahn-echo
BIN="$WORK/tidings-autobahn-echo"
cp "$ROOT/target/debug/tidings" "$BIN"
cargo build --quiet -p tidings-server

LOG="$WORK/server.log"
"$BIN" serve --address 127.0.0.1 --port 0 >"$LOG" 2>&1 &
SERVER_PID=$!
WSTEST_PIDS=()
cleanup() {
  # The wstest runs (through `timeout`, which passes the signal on) and the server.
  for pid in "${WSTEST_PIDS[@]}" "$SERVER_PID"; do
    kill "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT

ADDR=""
for _ in $(seq 1 100); do
  ADDR=$(sed -n 's|^tidings listening on http://||p' "$LOG" | head -n1)
  [ -n "$ADDR" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || fail "the server exited at start: $(cat "$LOG")"
  sleep 0.1
done
[ -n "$ADDR" ] || fail "the server did not start within 10 s: $(cat "$LOG")"

# --- the run ------------------------------------------------------------------------
REPORTS="$WORK/reports"
rm -rf "$REPORTS" "$WORK"/reports-*
# Two fuzzing clients at once, against the same server: the suite's Python client,
# not the server, is what takes the time (it compresses and frames in Python), and
# the compression cases are most of it. Each writes its own index.json; the verdict
# below reads both.
spec() {
  cat >"$WORK/spec-$1.json" <<EOF
{
  "outdir": "$REPORTS-$1",
  "servers": [{"agent": "tidings", "url": "ws://$ADDR/autobahn/echo"}],
  "cases": $2,
  "exclude-cases": [],
  "exclude-agent-cases": {}
}
EOF
}
spec a '["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*", "12.*"]'
spec b '["13.*"]'
echo "autobahn: running two wstest fuzzingclients (1-10 and 12; 13) against ws://$ADDR/autobahn/echo"
started=$(date +%s)
for part in a b; do
  (cd "$WORK" && exec timeout 1200 "$VENV/bin/wstest" -m fuzzingclient -s "$WORK/spec-$part.json" \
    >"$WORK/wstest-$part.log" 2>&1) &
  WSTEST_PIDS+=("$!")
done
for i in 0 1; do
  wait "${WSTEST_PIDS[$i]}" || fail "wstest failed or timed out; see $WORK/wstest-a.log and $WORK/wstest-b.log"
done
echo "autobahn: wstest took $(($(date +%s) - started)) s"
kill -0 "$SERVER_PID" 2>/dev/null || fail "the server died during the run: $(tail -n 20 "$LOG")"
if grep -q panicked "$LOG"; then
  fail "the server panicked during the run: $(grep panicked "$LOG" | head -n 5)"
fi

# --- the verdict ----------------------------------------------------------------------
# wstest exits 0 even when it reached no server, so the case count is checked too.
python3 - "$EXPECTED" "${AUTOBAHN_UPDATE:-}" "$REPORTS-a/index.json" "$REPORTS-b/index.json" <<'EOF'
import json, sys

expected_path, update = sys.argv[1], sys.argv[2] == "1"
results = {}
for index_path in sys.argv[3:]:
    try:
        with open(index_path) as f:
            index = json.load(f)
    except (OSError, ValueError) as e:
        sys.exit(f"autobahn: FAILED: no readable {index_path}: {e}")
    results.update(index.get("tidings", {}))

def key(case):
    return tuple(int(p) for p in case.split("."))

# case -> [behavior, behaviorClose], in case order
got = {case: [r["behavior"], r["behaviorClose"]]
       for case, r in sorted(results.items(), key=lambda kv: key(kv[0]))}

problems = []
for case, (behavior, close) in got.items():
    if behavior not in ("OK", "NON-STRICT", "INFORMATIONAL"):
        problems.append(f"{case}: behavior {behavior}")
    if close not in ("OK", "INFORMATIONAL"):
        problems.append(f"{case}: behaviorClose {close}")

counts = {}
for behavior, _ in got.values():
    counts[behavior] = counts.get(behavior, 0) + 1
summary = ", ".join(f"{n} {b}" for b, n in sorted(counts.items()))
print(f"autobahn: {len(got)} cases: {summary}")

if update:
    if not got:
        sys.exit("autobahn: FAILED: no cases ran, nothing to record")
    if problems:
        sys.exit("autobahn: FAILED, not recorded:\n  " + "\n  ".join(problems))
    lines = [f'  {json.dumps(case)}: {json.dumps(r)}' for case, r in got.items()]
    with open(expected_path, "w") as f:
        f.write('{\n "about": "scripts/autobahn.sh: case -> [behavior, behaviorClose]",\n')
        f.write(f' "cases": {len(got)},\n "results": {{\n')
        f.write(",\n".join(lines))
        f.write("\n }\n}\n")
    print(f"autobahn: wrote {expected_path}")
    sys.exit(0)

with open(expected_path) as f:
    expected = json.load(f)
if len(got) != expected["cases"]:
    problems.append(f"{len(got)} cases ran, {expected['cases']} expected "
                    "(wstest exits 0 even when it reaches no server; see wstest-a.log and wstest-b.log)")
for case, want in expected["results"].items():
    have = got.get(case)
    if have is None:
        problems.append(f"{case}: did not run")
    elif have != want:
        problems.append(f"{case}: {have}, expected {want} ([behavior, behaviorClose])")
for case in got:
    if case not in expected["results"]:
        problems.append(f"{case}: ran but is not in expected.json")
if problems:
    print("autobahn: FAILED:\n  " + "\n  ".join(problems[:50]), file=sys.stderr)
    print("  (after checking a legitimate change, AUTOBAHN_UPDATE=1 scripts/autobahn.sh "
          "records the new results)", file=sys.stderr)
    sys.exit(1)
print("autobahn: all cases as expected")
EOF
