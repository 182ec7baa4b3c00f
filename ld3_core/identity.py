"""Identity of a ComfyUI model, recorded with teacher data and schedules to catch mix-ups."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

# 2: weight patches, sampling shift / sigma table and the un-patched base weights are part of it.
FINGERPRINT_VERSION = 2
_COARSE_KEYS = (
    "model_class",
    "diffusion_model_class",
    "model_sampling_class",
    "sigma_min",
    "sigma_max",
    "latent_channels",
    "parameters",
)


def same_model(recorded: dict, given: dict) -> bool | None:
    """Whether a recorded identity is the given model's: True, False, or None when it cannot be told.

    A fingerprint from another fingerprint version cannot be compared: then the classes, sigma range,
    channels and size decide False, and None means they agree (probably the same model, unconfirmed).
    """
    if recorded.get("fingerprint_version", 1) == given.get("fingerprint_version"):
        return recorded.get("fingerprint") == given.get("fingerprint")
    if any(key in recorded and recorded[key] != given.get(key) for key in _COARSE_KEYS):
        return False
    return None


SKETCH_SIZE = 32


def conditioning_sketch(conditioning: list) -> list[float]:
    """A short fingerprint of a CONDITIONING: fixed random +-1 projections of its numbers, normalised.

    Counts each entry's tensor and the tensors and numbers among its options (pooled output, Flux
    guidance, ...), by option name; other options (control nets, hooks) are not data and are skipped.
    Equal prompts give (nearly) equal sketches on any device; different prompts do not.
    """
    parts = []
    for entry in conditioning:
        parts.append(entry[0].detach().float().flatten().cpu())
        options = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
        for key in sorted(options, key=str):
            value = options[key]
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                parts.append(value.detach().float().flatten().cpu())
            elif isinstance(value, int | float) and not isinstance(value, bool):
                parts.append(torch.tensor([float(value)]))
    flat = torch.cat(parts) if parts else torch.zeros(1)
    out = []
    for k in range(SKETCH_SIZE):
        gen = torch.Generator().manual_seed(0x1D3 + k)
        signs = torch.randint(0, 2, flat.shape, generator=gen, dtype=torch.int8).float() * 2 - 1
        out.append(float((flat * signs).sum()) / math.sqrt(flat.numel()))
    return out


def sketch_difference(a: Sequence[float], b: Sequence[float]) -> float:
    """Relative distance of two sketches (an estimate of ||x - y|| / ||x||)."""
    ta, tb = torch.tensor(list(a), dtype=torch.float64), torch.tensor(list(b), dtype=torch.float64)
    if ta.shape != tb.shape:
        return math.inf
    return float((ta - tb).norm() / ta.norm().clamp_min(1e-12))
