#!/usr/bin/env bash
# Create .venv (Python 3.11+) and install the requirements; fast when nothing changed.
# Usage: scripts/setup.sh [requirements file]   (default: requirements.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
requirements="${1:-requirements.txt}"
python="${PYTHON:-python3}"

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "Python 3.11 or newer is needed (found: $("$python" --version 2>&1)). Set PYTHON=..." >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
stamp=".venv/.setup-stamp-$(basename "$requirements")"
digest="$(cat requirements*.txt pyproject.toml setup.py client/pyproject.toml scripts/setup.sh |
    sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -r "$requirements"
    # The project itself, editable: scripts and examples can import audioserver.
    .venv/bin/python -m pip install --quiet --no-deps -e .
    # The command-line client (its own distribution, client/), editable, with its few libraries.
    .venv/bin/python -m pip install --quiet -e ./client
    echo "$digest" > "$stamp"
fi

# The page's Socket.IO client and peaks.js come from the npm registry (package-lock.json
# pins them) and are served by the server itself: no CDN, nothing copied into the
# repository by hand. Each line: the package's file, and its name under static/vendor/.
vendor=static/vendor
files="socket.io-client/dist/socket.io.min.js:socket.io.min.js peaks.js/dist/peaks.min.js:peaks.min.js"
stale=""
for file in $files; do
    target="$vendor/${file#*:}"
    if [ ! -f "$target" ] || [ package-lock.json -nt "$target" ]; then
        stale=yes
    fi
done
if [ -n "$stale" ]; then
    if command -v npm >/dev/null; then
        npm ci --no-audit --no-fund --loglevel=error
        mkdir -p "$vendor"
        for file in $files; do
            cp "node_modules/${file%%:*}" "$vendor/${file#*:}"
        done
    else
        echo "npm not found: python app.py will serve the page without its Socket.IO client (it then polls over HTTP) and without peaks.js; install Node.js and run this again" >&2
    fi
fi
