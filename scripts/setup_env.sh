#!/usr/bin/env bash
# Create .venv (if missing) and install sciffusion with the given extras, e.g. `scripts/setup_env.sh all,dev`.
# The CPU build of torch is installed first so that pip does not pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python3 -m venv .venv
. .venv/bin/activate
# pip's exit status decides (pipefail); the grep hides pip's location warnings, PYTHONWARNINGS setuptools'
# notice about editable installs (printed on every install, not a problem).
quiet_pip() {
  PYTHONWARNINGS="ignore:Editable installation" python -m pip install -q "$@" 2>&1 | { grep -v '^WARNING: Location' || true; }
}
quiet_pip --upgrade pip
python -c "import torch" 2>/dev/null || quiet_pip "torch==2.13.0"
spec="."
[ -n "$extras" ] && spec=".[${extras}]"
quiet_pip -e "$spec"
python -c "import sciffusion, torch; print(f'sciffusion ready (torch {torch.__version__})')"
