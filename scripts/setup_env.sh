#!/usr/bin/env bash
# Create .venv (if missing) and install sciffusion with the given extras, e.g. `scripts/setup_env.sh all,dev`.
# The CPU build of torch is installed first so that pip does not pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0" 2>&1 | grep -v '^WARNING: Location' || true
spec="."
[ -n "$extras" ] && spec=".[${extras}]"
python -m pip install -q -e "$spec" 2>&1 | grep -v '^WARNING: Location' || true
python -c "import sciffusion, torch; print(f'sciffusion ready (torch {torch.__version__})')"
