#!/usr/bin/env bash
# Set everything up and start the server on http://localhost:5001 (arguments go to app.py).
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh requirements.txt
exec .venv/bin/python app.py "$@"
