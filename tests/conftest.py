"""Test bootstrap: a real ComfyUI (built by scripts/setup.sh) on the CPU, imported as a library.

ComfyUI's folder goes first on sys.path and the pack root last, so ``import nodes`` is ComfyUI's own
module while ``import ld3_core`` is ours (the pack imports its own ``nodes/`` relatively).
"""

import os
import sys
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parents[1]
COMFYUI_DIR = Path(os.environ.get("LD3_COMFYUI_DIR", PACK_ROOT / ".comfyui" / "ComfyUI")).resolve()

if not (COMFYUI_DIR / "main.py").is_file():
    raise RuntimeError(f"No ComfyUI at {COMFYUI_DIR}: run scripts/setup.sh (or set LD3_COMFYUI_DIR).")
if str(COMFYUI_DIR) not in sys.path:
    sys.path.insert(0, str(COMFYUI_DIR))
if str(PACK_ROOT) not in sys.path:
    sys.path.append(str(PACK_ROOT))

import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True  # before comfy.model_management is imported anywhere
