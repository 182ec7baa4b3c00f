"""Tiny, randomly initialised models built with ComfyUI's own classes, for tests on the CPU.

ComfyUI's model detection needs real sizes (a tiny Flux cannot be detected at all), so the models
are built the way comfy.sd.load_diffusion_model_state_dict builds them, minus the state dict:
supported-model config -> set_inference_dtype -> get_model -> ModelPatcher. ComfyUI's layers skip
weight initialisation (comfy.ops.disable_weight_init), so every parameter is initialised here.

Import this module after tests/conftest.py has put ComfyUI on sys.path (pytest does that first).
"""

import math

import comfy.model_base
import comfy.model_patcher
import comfy.sd
import comfy.supported_models
import torch

CPU = torch.device("cpu")

# The real SD1.5 UNet config (comfy/model_detection.py) at toy width: 2 levels, 32 channels.
TINY_SD15_UNET = {
    "use_checkpoint": False,
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 32,
    "num_res_blocks": [1, 1],
    "channel_mult": [1, 2],
    "transformer_depth": [1, 1],
    "transformer_depth_middle": 1,
    "transformer_depth_output": [1, 1, 1, 1],
    "use_spatial_transformer": True,
    "use_linear_in_transformer": False,
    "legacy": False,
    "adm_in_channels": None,
    "context_dim": 32,
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}
TINY_SD15_HEADS = 2  # SD15.unet_extra_config forces 8 heads; set after construction

# The Flux-dev layout (comfy/model_detection.py) at toy width: hidden 64 = 2 heads x 32 = sum(axes_dim).
TINY_FLUX_DIT = {
    "image_model": "flux",
    "in_channels": 16,
    "out_channels": 16,
    "patch_size": 2,
    "vec_in_dim": 32,
    "context_in_dim": 32,
    "hidden_size": 64,
    "mlp_ratio": 4.0,
    "num_heads": 2,
    "depth": 1,
    "depth_single_blocks": 1,
    "axes_dim": [8, 12, 12],
    "theta": 10000,
    "qkv_bias": True,
    "guidance_embed": True,
}

SD15_CONTEXT = (77, TINY_SD15_UNET["context_dim"])  # (tokens, width) of the cross-attention input
FLUX_CONTEXT = (16, TINY_FLUX_DIT["context_in_dim"])
FLUX_POOLED = TINY_FLUX_DIT["vec_in_dim"]
FLUX_GUIDANCE = 3.5


def init_weights(module: torch.nn.Module, seed: int) -> None:
    """Initialise every parameter: fan-in scaled normal for weights, 1 for norm scales, 0 for biases."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "bias":
                param.zero_()
            elif param.ndim <= 1:  # GroupNorm / LayerNorm weights, RMSNorm "scale"
                param.fill_(1.0)
            else:
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=gen, dtype=param.dtype) / math.sqrt(fan_in))


def _patcher(model: comfy.model_base.BaseModel, seed: int) -> comfy.model_patcher.ModelPatcher:
    init_weights(model.diffusion_model, seed)
    return comfy.model_patcher.ModelPatcher(model, load_device=CPU, offload_device=CPU)


def build_tiny_sd15(
    model_type: comfy.model_base.ModelType = comfy.model_base.ModelType.EPS, seed: int = 0
) -> comfy.model_patcher.ModelPatcher:
    """A tiny SD1.5-architecture UNet (ModelSamplingDiscrete, EPS or V_PREDICTION) in fp32 on the CPU."""
    config = comfy.supported_models.SD15(TINY_SD15_UNET)
    config.unet_config["num_heads"] = TINY_SD15_HEADS
    config.set_inference_dtype(torch.float32, None)
    # SD15.get_model always asks for EPS; ComfyUI picks V_PREDICTION from the checkpoint in the same spot.
    model = comfy.model_base.BaseModel(config, model_type=model_type, device=CPU)
    return _patcher(model, seed)


def build_tiny_flux(seed: int = 0) -> comfy.model_patcher.ModelPatcher:
    """A tiny Flux-dev-architecture DiT (ModelSamplingFlux, guidance embedding) in fp32 on the CPU."""
    config = comfy.supported_models.Flux(TINY_FLUX_DIT)
    config.set_inference_dtype(torch.float32, None)
    return _patcher(config.get_model({}, device=CPU), seed)


def conditioning(
    context: tuple[int, int], pooled: int | None = None, guidance: float | None = None, seed: int = 0
) -> list:
    """Conditioning in ComfyUI's format: [[cross_attn (1, tokens, width), {"pooled_output": ..., ...}]]."""
    gen = torch.Generator().manual_seed(seed)
    cross_attn = torch.randn((1, *context), generator=gen)
    extra = {}
    if pooled is not None:
        extra["pooled_output"] = torch.randn((1, pooled), generator=gen)
    if guidance is not None:
        extra["guidance"] = guidance
    return [[cross_attn, extra]]


def sd15_conditioning(seed: int = 0) -> tuple[list, list]:
    """(positive, negative) conditioning for the tiny SD1.5 models."""
    return conditioning(SD15_CONTEXT, seed=seed), conditioning(SD15_CONTEXT, seed=seed + 1)


def flux_conditioning(seed: int = 0) -> tuple[list, list]:
    """(positive, negative) conditioning for the tiny Flux model, with pooled output and guidance 3.5."""
    return (
        conditioning(FLUX_CONTEXT, FLUX_POOLED, FLUX_GUIDANCE, seed=seed),
        conditioning(FLUX_CONTEXT, FLUX_POOLED, FLUX_GUIDANCE, seed=seed + 1),
    )


def latent_shape(
    patcher: comfy.model_patcher.ModelPatcher, batch: int = 1, height: int = 16, width: int = 16
) -> tuple:
    """Shape (batch, channels, height, width) of a latent for the model (4 channels SD1.x, 16 Flux)."""
    channels = patcher.model.latent_format.latent_channels
    return (batch, channels, height, width)


# SD1.x's AutoencoderKL layout at toy width (32 channels: GroupNorm needs 32 groups), 8x downscale.
TINY_VAE_DDCONFIG = {
    "double_z": True,
    "z_channels": 4,
    "resolution": 64,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 32,
    "ch_mult": [1, 1, 1, 1],
    "num_res_blocks": 1,
    "attn_resolutions": [],
    "dropout": 0.0,
}


def build_tiny_vae(seed: int = 0, dtype: torch.dtype = torch.float32) -> comfy.sd.VAE:
    """A ComfyUI VAE (SD AutoencoderKL at toy width, 0.37 M parameters) from a random state dict."""
    from comfy.ldm.models.autoencoder import AutoencoderKL

    params = {"ddconfig": TINY_VAE_DDCONFIG, "embed_dim": 4}
    module = AutoencoderKL(**params)
    init_weights(module, seed)
    return comfy.sd.VAE(sd=module.state_dict(), config={"params": params}, device=CPU, dtype=dtype)
