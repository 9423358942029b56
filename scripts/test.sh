#!/usr/bin/env bash
# Set up .venv with every extra and run the default test suite (slow tests excluded; add `-m slow` for them).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh all,dev
. .venv/bin/activate
python -m pytest "$@"
