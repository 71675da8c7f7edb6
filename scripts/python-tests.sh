#!/usr/bin/env bash
# Run the Python compatibility suite (tests/python) against the tidings binary.
#
#   scripts/python-tests.sh [pytest args...]
#
# Creates the virtualenv at <repo>/.venv when it is missing, installs the pinned
# requirements quietly, builds the server if needed and runs pytest; the exit
# code is pytest's. Needs python3 with the venv module (Debian/Ubuntu:
# apt-get install python3-venv) and, for the Go example test, golang-go.
#
# Environment:
#   TIDINGS_BIN         server binary to test (default <repo>/target/debug/tidings;
#                       when unset the script runs `cargo build -p tidings-server` first)
#   TIDINGS_SKIP_BUILD  set to 1 to never run cargo
#   PYTHON              interpreter used to create the venv (default python3)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.venv"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
    echo "python-tests: creating virtualenv in $venv" >&2
    rm -rf "$venv"
    if ! "$python" -m venv "$venv"; then
        echo "python-tests: '$python -m venv' failed; install python3-venv (apt-get install python3-venv)" >&2
        exit 1
    fi
fi

"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$repo/tests/python/requirements.txt"

if [ -z "${TIDINGS_BIN:-}" ] && [ "${TIDINGS_SKIP_BUILD:-0}" != "1" ] && command -v cargo >/dev/null 2>&1; then
    (cd "$repo" && cargo build --quiet -p tidings-server)
fi

# Run the whole suite unless the arguments already name test files or directories.
cd "$repo"
has_path=0
for arg in "$@"; do
    case "$arg" in
        -*) ;;
        *) if [ -e "${arg%%::*}" ]; then has_path=1; fi ;;
    esac
done
if [ "$has_path" = 0 ]; then
    set -- "$repo/tests/python" "$@"
fi
set +e
"$venv/bin/python" -m pytest "$@"
status=$?
set -e
exit "$status"
