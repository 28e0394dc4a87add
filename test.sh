#!/usr/bin/env bash
# Set everything up and run the whole test suite (arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh requirements-dev.txt
.venv/bin/python -m ruff check .
.venv/bin/python -m ruff format --check .
exec .venv/bin/python -m pytest "$@"
