#!/usr/bin/env bash
# Lint and test: ruff check, ruff format --check, then pytest in .venv.
#   bash scripts/test.sh          the fast tier: unit, gradient and parity tests on tiny models (no server,
#                                 no browser, nothing marked slow; about a minute on 2 CPU cores)
#   bash scripts/test.sh --all    everything: the real ComfyUI server, the frontend, the benchmarks (what CI runs)
# Other arguments go to pytest. Needs the environment from scripts/setup.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="$ROOT/.venv/bin/python"

if [ ! -x "$PY" ] || [ ! -x "$ROOT/.venv/bin/ruff" ] || [ ! -f "$ROOT/.comfyui/ComfyUI/main.py" ]; then
  echo "test.sh: no development environment (.venv, .comfyui/ComfyUI): run 'bash scripts/setup.sh' first" >&2
  exit 2
fi

echo "==> ruff check"
"$ROOT/.venv/bin/ruff" check .
echo "==> ruff format --check"
"$ROOT/.venv/bin/ruff" format --check .
TIER=(-m "not slow and not server and not browser")
if [ "${1:-}" = "--all" ]; then
  shift
  TIER=()
fi
echo "==> pytest ${TIER[*]} $*"
exec "$PY" -m pytest "${TIER[@]}" "$@"
