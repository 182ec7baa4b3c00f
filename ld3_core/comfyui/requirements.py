"""The ComfyUI internals the pack relies on (the package docstring lists them all), checked once when it loads.

Each entry is a dotted path (module, then attributes) with what uses it. All are present in ComfyUI 0.3.75
(run here) and in the 0.38.1 sources (read). Newer-only features (Dynamic VRAM's
``get_non_dynamic_delegate``, ``comfy.model_management.in_training``) are feature-detected where they
are used and are not listed. If one is missing, the pack logs one line naming it and the ComfyUI version,
and the nodes that sample, train or patch a MODEL refuse with that line (nodes/_common.refuse_if_incompatible).
"""

from __future__ import annotations

import importlib
import logging

REQUIRED: dict[str, str] = {
    "comfy.samplers.SCHEDULER_HANDLERS": "the ld3 KSampler scheduler",
    "comfy.samplers.SchedulerHandler": "the ld3 KSampler scheduler",
    "comfy.samplers.SCHEDULER_NAMES": "the ld3 KSampler scheduler",
    "comfy.samplers.KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS": "the ld3 KSampler scheduler",
    "comfy.samplers.SAMPLER_NAMES": "sampler choices",
    "comfy.samplers.KSAMPLER": "training (ComfyUI's samplers, differentiable)",
    "comfy.samplers.sampler_object": "teacher, training, sampling checks",
    "comfy.samplers.CFGGuider": "teacher and training",
    "comfy.samplers.KSampler": "built-in schedules (the teacher's, the candidates)",
    "comfy.patcher_extension.WrappersMP.APPLY_MODEL": "training (recompute in backward)",
    "comfy.patcher_extension.WrappersMP.PREPARE_SAMPLING": "training (weights as constants)",
    "comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE": "the sampler check of a learned MODEL",
    "comfy.model_patcher.ModelPatcher.add_object_patch": "the learned schedule on a MODEL",
    "comfy.model_patcher.ModelPatcher.add_wrapper_with_key": "training, sampler check",
    "comfy.model_patcher.ModelPatcher.get_model_object": "every node that takes a MODEL",
    "comfy.model_sampling.ModelSamplingDiscrete": "continuous network time on SD1.x / SDXL",
    "comfy.model_sampling.CONST": "flow models (teacher scheduler, first step)",
    "comfy.model_patcher.ModelPatcher.clone": "the learned schedule on a MODEL",
    "comfy.model_management.OOM_EXCEPTION": "out-of-memory advice",
    "comfy.model_management.load_models_gpu": "the LPIPS loss (VAE decode)",
    "comfy.sample.fix_empty_latent_channels": "LD3 Generate Teacher (the latent shape)",
    "comfy_execution.utils.get_executing_context": "text shown on nodes",
}


def _resolve(path: str) -> bool:
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def missing() -> list[str]:
    """The required internals this ComfyUI lacks (empty when all are there)."""
    return [path for path in REQUIRED if not _resolve(path)]


def comfyui_version() -> str:
    try:
        return importlib.import_module("comfyui_version").__version__
    except (ImportError, AttributeError):
        return "unknown"


def check_at_load() -> str | None:
    """Log one line if an internal is missing; returns that line (None when all are there)."""
    lacking = missing()
    if not lacking:
        return None
    uses = sorted({REQUIRED[path] for path in lacking})
    line = (
        f"LD3: this ComfyUI ({comfyui_version()}) lacks {', '.join(lacking)}; affected: {'; '.join(uses)}. "
        "Those LD3 nodes will fail: update ComfyUI-LD3 (or report this with the ComfyUI version)."
    )
    logging.error(line)
    return line
