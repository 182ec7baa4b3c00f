"""Model files that ComfyUI's own loaders detect, written at test time with random weights (never committed).

- An SD1.x checkpoint for CheckpointLoaderSimple: the smallest UNet that model detection maps to SD15
  (320 channels, context 768, one level), ComfyUI's CLIP-L text encoder at full size (its config is
  fixed: 12 layers x 768) and a TAESD-format VAE (ComfyUI detects TAESD from its key names; 2.4 M
  parameters instead of the 83 M of the KL VAE). The state dict comes from ComfyUI's own classes and
  ``BaseModel.state_dict_for_saving``, so the key names are the ones a real checkpoint has.
- A 16-channel TAESD-format VAE for VAELoader (a stand-in for the Flux VAE).

Import after tests/conftest.py has put ComfyUI on sys.path.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from pathlib import Path

import comfy.sd1_clip
import comfy.supported_models
import comfy.taesd.taesd
import torch
from safetensors.torch import save_file

# The smallest SD1.x UNet CheckpointLoaderSimple accepts: SD15's detection keys (320 channels,
# context 768, no linear transformer in/out, no adm) at one level with one block each.
SD15_UNET_ONE_LEVEL = {
    "use_checkpoint": False,
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [1],
    "channel_mult": [1],
    "transformer_depth": [1],
    "transformer_depth_middle": 1,
    "transformer_depth_output": [1, 1],
    "use_spatial_transformer": True,
    "use_linear_in_transformer": False,
    "legacy": False,
    "adm_in_channels": None,
    "context_dim": 768,
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}


def _init(module: torch.nn.Module, seed: int, gain: float = 1.0) -> None:
    """Fan-in scaled normal weights (x gain), unit norm scales, zero biases; float32 draws (fast on CPU)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.rsplit(".", 1)[-1] == "bias":
                param.zero_()
            elif param.ndim <= 1:
                param.fill_(1.0)
            else:
                std = gain / math.sqrt(param[0].numel())
                param.copy_(torch.randn(param.shape, generator=gen) * std)


def _taesd(latent_channels: int, seed: int) -> comfy.taesd.taesd.TAESD:
    vae = comfy.taesd.taesd.TAESD(latent_channels=latent_channels)
    _init(vae, seed, gain=math.sqrt(2.0))  # ReLU network: He scaling keeps the decoded image non-flat
    with torch.no_grad():
        vae.vae_scale.fill_(1.0)
        vae.vae_shift.fill_(0.0)
    return vae


def _save(state_dict: dict, path: Path, dtype: torch.dtype) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in state_dict.items()}
    save_file(tensors, str(path))
    return path


def write_sd15_checkpoint(path: Path, seed: int = 0) -> Path:
    """An SD1.x checkpoint (UNet + CLIP-L + TAESD VAE, fp16, ~300 MB) that CheckpointLoaderSimple loads."""
    config = comfy.supported_models.SD15(dict(SD15_UNET_ONE_LEVEL))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({}, device="cpu")
    _init(model.diffusion_model, seed)
    clip = comfy.sd1_clip.SDClipModel(device="cpu", dtype=torch.float32)
    _init(clip, seed + 1)
    vae = _taesd(4, seed + 2)
    clip_sd = {f"clip_l.{k}": v for k, v in clip.state_dict().items()}
    state_dict = model.state_dict_for_saving(clip_sd, vae.state_dict())
    return _save(state_dict, path, torch.float16)


def write_taesd_vae(path: Path, latent_channels: int = 16, seed: int = 0) -> Path:
    """A TAESD-format VAE file (VAELoader detects it from its keys) for `latent_channels` latents."""
    return _save(_taesd(latent_channels, seed).state_dict(), path, torch.float32)


def cached(name: str, write: Callable[[Path], object], cache_dir: Path, comfyui_dir: Path) -> Path:
    """`write(path)` once per version of this file and of ComfyUI, into cache_dir; the cached file's path.

    The random models are the same every time: cached (git-ignored) under a name that changes whenever
    the code that writes them or ComfyUI changes, instead of spending ~10 s writing 300 MB each time.
    """
    source = Path(__file__).read_bytes() + (comfyui_dir / "comfyui_version.py").read_bytes()
    stem, suffix = name.rsplit(".", 1)
    path = cache_dir / f"{stem}-{hashlib.sha256(source).hexdigest()[:12]}.{suffix}"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            write(tmp)
            os.replace(tmp, path)  # atomic: parallel test sessions may race here
        finally:
            tmp.unlink(missing_ok=True)
    return path
