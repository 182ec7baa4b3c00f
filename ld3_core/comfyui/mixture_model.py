"""An exact Gaussian mixture (``mixture.py``) as a real ComfyUI MODEL, for the demo, tests and benchmarks.

The denoiser E[x0 | x] of a Gaussian mixture is closed form, so the probability-flow ODE that ComfyUI's
samplers solve has a known right-hand side: schedules can be judged against a true answer.
"""

import weakref
from typing import Literal

import comfy.latent_formats
import comfy.model_base
import comfy.model_patcher
import comfy.patcher_extension
import comfy.supported_models_base
import torch

from ..mixture import GaussianMixture, make_clustered_mixture

# SD1.x's discrete schedule (comfy/supported_models.py SD15 leaves these at ModelSamplingDiscrete's defaults).
SD1_SAMPLING = {"beta_schedule": "linear", "linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000}
FLOW_SAMPLING = {"shift": 1.0, "multiplier": 1000}
FLUX_SAMPLING = {"shift": 1.15}  # Flux's own default (ModelSamplingFlux; its timestep is sigma itself)
KINDS = ("eps", "flow", "flux")
CONTEXT_SHAPE = (1, 8)  # tokens, width of the (ignored) cross-attention conditioning


class MixtureDenoiserNet(torch.nn.Module):
    """The "diffusion_model" of a mixture model: the exact eps (discrete) or v (flow) prediction."""

    def __init__(self, mixture: GaussianMixture, kind: Literal["eps", "flow", "flux"]):
        super().__init__()
        self.mixture = mixture
        self.kind = kind
        # What BaseModel.get_dtype() reports (inputs arrive in it); the maths runs in the mixture's dtype.
        self.dtype = torch.float32
        self._owner = None

    def attach(self, base_model: comfy.model_base.BaseModel) -> None:
        """Remember the BaseModel whose (possibly patched) model_sampling maps timesteps back to sigmas."""
        self._owner = weakref.ref(base_model)  # weak: the BaseModel owns this module, not the reverse

    def forward(
        self, x, timesteps=None, context=None, y=None, control=None, transformer_options=None, **kwargs
    ):
        transformer_options = {} if transformer_options is None else transformer_options
        # Same signature and DIFFUSION_MODEL wrapper hook as ComfyUI's UNetModel.forward, so wrappers that
        # patch the network's inputs (e.g. decoupled model times) act on this model as on a real one.
        return comfy.patcher_extension.WrapperExecutor.new_class_executor(
            self._forward,
            self,
            comfy.patcher_extension.get_all_wrappers(
                comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, transformer_options
            ),
        ).execute(x, timesteps, context, y, control, transformer_options, **kwargs)

    def _forward(
        self, x, timesteps=None, context=None, y=None, control=None, transformer_options=None, **kwargs
    ):
        owner = self._owner() if self._owner is not None else None
        if owner is None:
            raise RuntimeError("MixtureDenoiserNet is not attached to a BaseModel")
        model_sampling = owner.model_sampling
        work = torch.promote_types(x.dtype, self.mixture.means.dtype)
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        if self.kind == "eps":
            # EPS input is x / sqrt(1 + sigma^2) at the sigma the timestep stands for (ComfyUI rounds
            # the timestep to its grid, so off-grid sigmas are seen as the nearest grid sigma).
            sigma = _discrete_sigma(model_sampling, timesteps).to(x.device, work).reshape(-1)
            sigma = sigma.expand(x.shape[0]) if sigma.numel() == 1 else sigma
            s = sigma.reshape(shape)
            noisy = x.to(work) * (1 + s**2).sqrt()
            out = (noisy - self.mixture.denoise(noisy, sigma)) / s
        else:
            # Flow: the network's timestep is sigma * multiplier. model_sampling.sigma(t) would apply the
            # shift a second time (it maps unshifted time to shifted sigma), so divide instead.
            sigma = (timesteps / getattr(model_sampling, "multiplier", 1.0)).to(x.device, work).reshape(-1)
            sigma = sigma.expand(x.shape[0]) if sigma.numel() == 1 else sigma
            s = sigma.reshape(shape)
            x0 = self.mixture.posterior_mean(x.to(work), 1 - sigma, sigma)
            # v = (x - x0) / s; at s = 0, x = x0 exactly, so any finite denominator gives 0.
            out = (x.to(work) - x0) / s.clamp_min(torch.finfo(work).tiny)
        return out.to(x.dtype)


def _discrete_sigma(model_sampling, timesteps: torch.Tensor) -> torch.Tensor:
    """``model_sampling.sigma(t)``; for a float64 timestep the same interpolation without its float32 cast."""
    if timesteps.dtype != torch.float64:
        return model_sampling.sigma(timesteps)
    log_sigmas = model_sampling.log_sigmas.to(torch.float64)
    t = timesteps.to(log_sigmas.device).clamp(0, log_sigmas.numel() - 1)
    low, high = t.detach().floor().long(), t.detach().ceil().long()
    w = t - low  # t.frac(), differentiable in t
    return ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp().to(timesteps.device)


class _Float64BaseModel(comfy.model_base.BaseModel):
    """BaseModel that stays in float64: ComfyUI's ``_apply_model`` casts the network's timestep and output
    to float32. Same steps otherwise, including ``model_sampling.timestep`` (so an LD3 patch's continuous,
    decoupled timestep is what the network sees)."""

    def _apply_model(
        self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None, **kwargs
    ):
        transformer_options = {} if transformer_options is None else transformer_options
        dtype = self.get_dtype()
        xc = self.model_sampling.calculate_input(t, x).to(dtype)
        timestep = self.model_sampling.timestep(t).to(dtype)
        context = None if c_crossattn is None else c_crossattn.to(dtype)
        out = self.diffusion_model(
            xc, timestep, context=context, control=control, transformer_options=transformer_options
        )
        return self.model_sampling.calculate_denoised(t, out.to(dtype), x)


class _MixtureConfig(comfy.supported_models_base.BASE):
    unet_config = {"disable_unet_model_creation": True}
    latent_format = comfy.latent_formats.LatentFormat  # scale_factor 1: latents are the mixture's samples
    memory_usage_factor = 0.01


def mixture_model_patcher(
    mixture: GaussianMixture,
    kind: Literal["eps", "flow", "flux"],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> comfy.model_patcher.ModelPatcher:
    """A ComfyUI MODEL whose network is the mixture's exact denoiser (SD1.x EPS, rectified flow, Flux).

    ``dtype=torch.float32`` behaves like any ComfyUI model (network time and output in float32);
    ``torch.float64`` keeps float64 inputs in float64 end to end (model_sampling tables included), for
    gradient checks against finite differences.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    config = _MixtureConfig(dict(_MixtureConfig.unet_config))
    config.sampling_settings = dict({"eps": SD1_SAMPLING, "flow": FLOW_SAMPLING, "flux": FLUX_SAMPLING}[kind])
    # Latent metadata some ComfyUI code reads (e.g. empty-latent channel fixing, previews).
    config.latent_format.latent_channels = mixture.shape[0]
    config.latent_format.latent_dimensions = len(mixture.shape) - 1
    model_type = {"eps": "EPS", "flow": "FLOW", "flux": "FLUX"}[kind]
    model_type = getattr(comfy.model_base.ModelType, model_type)
    device = torch.device(device)
    model_class = _Float64BaseModel if dtype == torch.float64 else comfy.model_base.BaseModel
    base = model_class(config, model_type=model_type, device=device)
    base.diffusion_model = MixtureDenoiserNet(mixture, kind).to(device)
    if dtype == torch.float64:
        base.diffusion_model.dtype = torch.float64  # what get_dtype() reports
        base.model_sampling.to(torch.float64)  # its float32 sigma tables, exactly, as float64
    base.diffusion_model.attach(base)
    return comfy.model_patcher.ModelPatcher(base, load_device=device, offload_device=device)


def mixture_conditioning(batch: int = 1) -> tuple[list, list]:
    """(positive, negative) conditioning in ComfyUI's format; the mixture model ignores its content."""
    positive = [[torch.zeros((batch, *CONTEXT_SHAPE)), {}]]
    negative = [[torch.zeros((batch, *CONTEXT_SHAPE)), {}]]
    return positive, negative


def demo_model(kind: Literal["eps", "flow", "flux"], shape: tuple[int, ...], seed: int):
    """LD3 Demo Model: (MODEL, positive, negative, LATENT) of a clustered mixture (``make_clustered_mixture``)
    of the given latent shape; the LATENT is one empty latent of that shape."""
    positive, negative = mixture_conditioning()
    model = mixture_model_patcher(make_clustered_mixture(shape, seed=seed), kind)
    return model, positive, negative, {"samples": torch.zeros((1, *shape))}
