#!/usr/bin/env bash
# Set up .venv and run the end-to-end demo on the embedded drivers (no server needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python examples/demo.py "$@"
