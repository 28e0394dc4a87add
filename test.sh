#!/usr/bin/env bash
# Set everything up and run the whole test suite (arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh requirements-dev.txt
# The page's tests (tests/browser) drive Debian's chromium: install it when it is missing and we can.
chromium="${CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$chromium" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "Installing chromium for the browser tests (apt-get)..." >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } ||
        echo "Could not install chromium: tests/browser will skip (and fail under CI=true)." >&2
elif [ ! -x "$chromium" ]; then
    echo "No chromium at $chromium: tests/browser will skip (as root: apt-get install chromium)." >&2
fi
# The deployment test runs nginx in front of gunicorn: install it the same way.
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "Installing nginx for the deployment tests (apt-get)..." >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null; } ||
        echo "Could not install nginx: its deployment test will skip (and fail under CI=true)." >&2
fi
# The cluster tests (tests/cluster) run a real redis-server: install it the same way.
if ! command -v redis-server >/dev/null && [ ! -x /usr/bin/redis-server ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "Installing redis-server for the cluster tests (apt-get)..." >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; } ||
        echo "Could not install redis-server: tests/cluster will skip (and fail under CI=true)." >&2
elif ! command -v redis-server >/dev/null && [ ! -x /usr/bin/redis-server ]; then
    echo "No redis-server: tests/cluster will skip (as root: apt-get install redis-server)." >&2
fi
.venv/bin/python -m ruff check .
.venv/bin/python -m ruff format --check .
.venv/bin/python -m mypy  # strict, on the files pyproject.toml names
exec .venv/bin/python -m pytest "$@"
