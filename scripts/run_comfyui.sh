#!/usr/bin/env bash
# Start the development ComfyUI (built by scripts/setup.sh, this pack linked into custom_nodes).
# Arguments go to ComfyUI's main.py, e.g.: bash scripts/run_comfyui.sh --cpu --port 8188
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ ! -x "$ROOT/.venv/bin/python" ] || [ ! -f "$ROOT/.comfyui/ComfyUI/main.py" ]; then
  echo "run_comfyui.sh: no development environment: run 'bash scripts/setup.sh' first" >&2
  exit 2
fi
cd "$ROOT/.comfyui/ComfyUI"
exec ../../.venv/bin/python main.py "$@"
