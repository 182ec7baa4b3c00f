"""Benchmark bootstrap: a real ComfyUI imported as a library, as tests/conftest.py does it.

ComfyUI's folder goes first on sys.path and the pack root last (ComfyUI has a top-level ``nodes``
module); ``comfy.cli_args.args.cpu`` is set before anything imports ``comfy.model_management``.
Import this module before any ``comfy`` or ``ld3_core`` import.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = PACK_ROOT / "bench"
RESULTS_DIR = BENCH_DIR / "results"
COMFYUI_DIR = Path(os.environ.get("LD3_COMFYUI_DIR", PACK_ROOT / ".comfyui" / "ComfyUI")).resolve()
LPIPS_WEIGHTS = COMFYUI_DIR / "models" / "lpips" / "alexnet.safetensors"


def bootstrap(cpu: bool = True, threads: int | None = None) -> None:
    """Put ComfyUI (first), testing/ (the tiny test models) and the pack root (last) on sys.path; pick CPU or
    GPU."""
    if not (COMFYUI_DIR / "comfy").is_dir():
        raise RuntimeError(f"No ComfyUI at {COMFYUI_DIR}: run scripts/setup.sh (or set LD3_COMFYUI_DIR).")
    if str(COMFYUI_DIR) not in sys.path:
        sys.path.insert(0, str(COMFYUI_DIR))
    for extra in (PACK_ROOT / "testing", PACK_ROOT):
        if str(extra) not in sys.path:
            sys.path.append(str(extra))
    import comfy.cli_args

    comfy.cli_args.args.cpu = cpu
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
