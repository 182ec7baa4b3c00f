"""Identity of a ComfyUI model, recorded with teacher data and schedules to catch mix-ups."""

from __future__ import annotations

import hashlib
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


def model_identity(model_patcher) -> dict:
    """What identifies a model for a schedule: classes, sigma range, latent channels and a fingerprint.

    The fingerprint covers a sample of the base weights (read from ComfyUI's backup where a loaded
    model holds patched weights, so it does not depend on whether the model is loaded), every weight
    patch (LoRAs, merges: keys, strengths and a sample of their tensors) and the sampling parameters
    (sigma table, shift), so a different LoRA, strength or shift is a different model.
    """
    model = model_patcher.model
    sampling = model_patcher.get_model_object("model_sampling")
    sampling = getattr(sampling, "ld3_base", sampling)
    digest = hashlib.sha256()
    state = model.diffusion_model.state_dict()
    backup = getattr(model_patcher, "backup", {}) or {}
    keys = list(state)
    for key in keys[:4] + keys[-4:]:
        tensor = state[key]
        saved = backup.get(f"diffusion_model.{key}")
        if saved is not None:  # the loaded weight has patches applied in place; hash the original
            tensor = getattr(saved, "weight", saved)
        digest.update(key.encode())
        _update(digest, tensor)
    patches = getattr(model_patcher, "patches", {}) or {}
    for key in sorted(patches):
        digest.update(f"patch {key}".encode())
        for entry in patches[key]:
            strength_patch, data, strength_model, offset = (tuple(entry) + (None,) * 4)[:4]
            digest.update(repr((strength_patch, strength_model, offset)).encode())
            for tensor in _tensors(data):
                _update(digest, tensor)
    for name in ("shift", "multiplier"):
        if isinstance(getattr(sampling, name, None), int | float):
            digest.update(f"{name}={float(getattr(sampling, name))!r}".encode())
    if isinstance(getattr(sampling, "sigmas", None), torch.Tensor):
        _update(digest, sampling.sigmas, values=None)
    return {
        "fingerprint_version": FINGERPRINT_VERSION,
        "model_class": type(model).__name__,
        "diffusion_model_class": type(model.diffusion_model).__name__,
        "model_sampling_class": type(sampling).__name__,
        "sigma_min": round(float(sampling.sigma_min), 6),
        "sigma_max": round(float(sampling.sigma_max), 6),
        "latent_channels": int(model.latent_format.latent_channels),
        "parameters": int(sum(t.numel() for t in state.values())),
        "fingerprint": digest.hexdigest()[:16],
    }


def _update(digest, tensor: torch.Tensor, values: int | None = 64) -> None:
    flat = tensor.detach().flatten()
    digest.update(str(tuple(tensor.shape)).encode())
    digest.update((flat if values is None else flat[:values]).float().cpu().numpy().tobytes())


def _tensors(data, depth: int = 0):
    """Tensors inside a patch's data (tuples, lists, dicts, adapter objects such as ComfyUI's LoRAAdapter)."""
    if isinstance(data, torch.Tensor):
        yield data
    elif depth < 4:
        if isinstance(data, list | tuple):
            items = data
        elif isinstance(data, dict):
            items = [data[k] for k in sorted(data, key=str)]
        elif hasattr(data, "__dict__"):
            items = [v for _, v in sorted(vars(data).items())]
        else:
            items = ()
        for item in items:
            yield from _tensors(item, depth + 1)


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
