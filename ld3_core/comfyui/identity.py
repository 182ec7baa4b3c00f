"""The identity of a ComfyUI model (``ModelPatcher`` internals read here), recorded with teacher data and
schedules to catch mix-ups; ``identity.same_model`` compares two."""

from __future__ import annotations

import hashlib

import torch

from ..identity import FINGERPRINT_VERSION
from .registry import model_sampling


def model_identity(model_patcher) -> dict:
    """What identifies a model for a schedule: classes, sigma range, latent channels and a fingerprint.

    The fingerprint covers a sample of the base weights (read from ComfyUI's backup where a loaded
    model holds patched weights, so it does not depend on whether the model is loaded), every weight
    patch (LoRAs, merges: keys, strengths and a sample of their tensors) and the sampling parameters
    (sigma table, shift), so a different LoRA, strength or shift is a different model.
    """
    model = model_patcher.model
    sampling = model_sampling(model_patcher)
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
