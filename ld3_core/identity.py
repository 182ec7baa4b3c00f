"""Identity of a ComfyUI model, recorded with teacher data and schedules to catch mix-ups."""

from __future__ import annotations

import hashlib


def model_identity(model_patcher) -> dict:
    """What identifies a model for a schedule: classes, sigma range, latent channels, a weight fingerprint."""
    model = model_patcher.model
    sampling = model_patcher.get_model_object("model_sampling")
    sampling = getattr(sampling, "ld3_base", sampling)
    digest = hashlib.sha256()
    state = model.diffusion_model.state_dict()
    keys = list(state)
    for key in keys[:4] + keys[-4:]:
        tensor = state[key]
        digest.update(key.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().flatten()[:64].float().cpu().numpy().tobytes())
    return {
        "model_class": type(model).__name__,
        "diffusion_model_class": type(model.diffusion_model).__name__,
        "model_sampling_class": type(sampling).__name__,
        "sigma_min": round(float(sampling.sigma_min), 6),
        "sigma_max": round(float(sampling.sigma_max), 6),
        "latent_channels": int(model.latent_format.latent_channels),
        "parameters": int(sum(t.numel() for t in state.values())),
        "fingerprint": digest.hexdigest()[:16],
    }
