"""An exact Gaussian-mixture data distribution, wrapped as a real ComfyUI model for tests and benchmarks.

The denoiser E[x0 | x] of a Gaussian mixture is closed form, so the probability-flow ODE that ComfyUI's
samplers solve has a known right-hand side: schedules can be judged against a true answer.
"""

import math
import weakref
from typing import Literal

import comfy.latent_formats
import comfy.model_base
import comfy.model_patcher
import comfy.patcher_extension
import comfy.supported_models_base
import torch
import torch.nn.functional as F

# SD1.x's discrete schedule (comfy/supported_models.py SD15 leaves these at ModelSamplingDiscrete's defaults).
SD1_SAMPLING = {"beta_schedule": "linear", "linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000}
FLOW_SAMPLING = {"shift": 1.0, "multiplier": 1000}
FLUX_SAMPLING = {"shift": 1.15}  # Flux's own default (ModelSamplingFlux; its timestep is sigma itself)
KINDS = ("eps", "flow", "flux")
CONTEXT_SHAPE = (1, 8)  # tokens, width of the (ignored) cross-attention conditioning


class GaussianMixture(torch.nn.Module):
    """p(x0) = sum_k w_k N(mu_k, s_k^2 I) with an exact, differentiable posterior mean."""

    def __init__(self, means: torch.Tensor, stds: torch.Tensor, weights: torch.Tensor):
        super().__init__()
        k = means.shape[0]
        if means.ndim < 2 or stds.shape != (k,) or weights.shape != (k,):
            raise ValueError(
                f"means [K, *shape], stds [K], weights [K]; got {means.shape}, {stds.shape}, {weights.shape}"
            )
        if not bool((stds > 0).all()) or not bool((weights > 0).all()):
            raise ValueError("mixture stds and weights must be positive")
        dtype = means.dtype if means.dtype == torch.float64 else torch.float32
        self.register_buffer("means", means.detach().to(dtype).clone())
        self.register_buffer("stds", stds.detach().to(dtype).clone())
        self.register_buffer("log_weights", (weights / weights.sum()).log().detach().to(dtype))

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one sample (no batch dimension)."""
        return tuple(self.means.shape[1:])

    def posterior_mean(self, x: torch.Tensor, alpha, sigma) -> torch.Tensor:
        """E[x0 | x] for x = alpha * x0 + sigma * eps; alpha, sigma scalars or per-sample [B]."""
        batch = x.shape[0]
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"mixture samples have shape {self.shape}, got x of shape {tuple(x.shape)}")
        dtype = torch.promote_types(x.dtype, self.means.dtype)
        flat = x.reshape(batch, -1).to(dtype)
        alpha = _per_sample(alpha, batch, flat)  # [B, 1]
        sigma = _per_sample(sigma, batch, flat)
        means = self.means.reshape(self.means.shape[0], -1).to(dtype)  # [K, D]
        prior_var = self.stds.to(dtype) ** 2  # [K]
        var = alpha**2 * prior_var + sigma**2  # [B, K]: x | k ~ N(alpha mu_k, var I)
        # |x - alpha mu_k|^2 = |x|^2 - 2 alpha x.mu_k + alpha^2 |mu_k|^2 as one matmul, in float64: the
        # expansion cancels when x is close to alpha mu_k (small sigma), and float64 keeps that error
        # ~1e-13 of |x|^2, far below any likelihood difference that matters, at a fraction of the cost
        # of a [B, K, D] difference.
        x64, means64, alpha64 = flat.double(), means.double(), alpha.double()
        dist_sq = (
            x64.square().sum(1, keepdim=True)
            - 2 * alpha64 * (x64 @ means64.T)
            + alpha64.square() * means64.square().sum(1)
        ).clamp_min(0)
        log_lik = -0.5 * flat.shape[1] * var.log() - 0.5 * dist_sq.to(dtype) / var
        # Responsibilities through a log-softmax: the likelihoods differ by hundreds of nats at small sigma.
        resp = torch.softmax(self.log_weights.to(dtype) + log_lik, dim=1)
        # Per component the Gaussian posterior mean mu_k + g (x - alpha mu_k) with g = alpha s_k^2 / var,
        # i.e. g x + (sigma^2 / var) mu_k; summed over the responsibilities: one matmul for the means.
        gain = alpha * prior_var / var  # [B, K]
        mean = (resp * gain).sum(1, keepdim=True) * flat + (resp * sigma**2 / var) @ means
        return mean.reshape(x.shape).to(x.dtype)

    def denoise(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """E[x0 | x0 + sigma * eps = x] (variance-exploding form, the k-diffusion denoiser)."""
        return self.posterior_mean(x, 1.0, sigma)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw n samples x0 from the mixture."""
        k = torch.multinomial(self.log_weights.exp().float().cpu(), n, replacement=True, generator=generator)
        noise = torch.randn((n, *self.shape), generator=generator, dtype=self.means.dtype)
        k = k.to(self.means.device)
        std = self.stds[k].reshape((n,) + (1,) * len(self.shape))
        return self.means[k] + std * noise.to(self.means.device)


def _per_sample(value, batch: int, like: torch.Tensor) -> torch.Tensor:
    value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if value.numel() == 1:
        return value.reshape(1, 1).expand(batch, 1)
    return value.reshape(batch, 1)


def _smooth_noise(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """A low-frequency random pattern: coarse noise (2 + size/8 cells per axis) linearly upsampled."""
    channels, spatial = shape[0], shape[1:]
    coarse_shape = (channels, *(min(size, 2 + size // 8) for size in spatial))
    coarse = torch.randn(coarse_shape, generator=generator, dtype=torch.float64)
    out = coarse
    for axis, size in enumerate(spatial, start=1):
        # One axis at a time with 1-D linear interpolation, so any number of spatial dims works.
        moved = out.movedim(axis, -1)
        lead = moved.shape[:-1]
        resized = F.interpolate(
            moved.reshape(1, -1, moved.shape[-1]), size=size, mode="linear", align_corners=True
        )
        out = resized.reshape(*lead, size).movedim(-1, axis)
    return out


def make_mixture(
    shape: tuple[int, ...], components: int = 8, seed: int = 0, dtype: torch.dtype = torch.float64
) -> GaussianMixture:
    """A mixture of smooth, structured means (RMS about 1) with small stds in [0.1, 0.3]."""
    if len(shape) < 1 or any(int(s) < 1 for s in shape):
        raise ValueError(f"shape must be (channels, *spatial) with positive sizes, got {shape}")
    gen = torch.Generator().manual_seed(seed)
    means = []
    for _ in range(components):
        pattern = _smooth_noise(tuple(int(s) for s in shape), gen)
        offset = 0.5 * torch.randn((shape[0],) + (1,) * (len(shape) - 1), generator=gen, dtype=torch.float64)
        pattern = pattern + offset
        means.append(pattern / pattern.pow(2).mean().sqrt())
    stds = 0.1 + 0.2 * torch.rand(components, generator=gen, dtype=torch.float64)
    weights = 0.5 + torch.rand(components, generator=gen, dtype=torch.float64)
    return GaussianMixture(torch.stack(means).to(dtype), stds.to(dtype), weights.to(dtype))


def make_clustered_mixture(
    shape: tuple[int, ...],
    clusters: int = 4,
    per_cluster: int = 4,
    spread: float = 0.05,
    stds: tuple[float, float] = (0.3, 0.6),
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> GaussianMixture:
    """Separated clusters of overlapping components: the demo model's and the benchmark's data.

    Cluster centres are smooth patterns of RMS 1, ~1.4 RMS apart (in 1024 dimensions ~45 of the component
    stds: separated). Within a cluster the component means differ by ``spread`` times another smooth
    pattern (0.05 RMS: a distance of ~1.6 in 1024 dimensions, a few stds, so they overlap) and the
    components differ in spread (``stds``, a range). With the components of a cluster as far apart as
    the clusters, nearly every sample would sit near a boundary between modes that no schedule resolves
    alike for two noises (the optimum on 512 noises did not carry over to another 512: 0.42 -> 0.63 of
    the best built-in), and a benchmark on it would measure mode flips rather than schedules.
    """
    gen = torch.Generator().manual_seed(seed)
    shape = tuple(int(s) for s in shape)
    means = []
    for _ in range(clusters):
        centre = _smooth_noise(shape, gen)
        centre = centre / centre.pow(2).mean().sqrt()
        for _ in range(per_cluster):
            detail = _smooth_noise(shape, gen)
            means.append(centre + spread * detail / detail.pow(2).mean().sqrt())
    k = clusters * per_cluster
    low, high = stds
    component_stds = low + (high - low) * torch.rand(k, generator=gen, dtype=torch.float64)
    weights = 0.5 + torch.rand(k, generator=gen, dtype=torch.float64)
    return GaussianMixture(torch.stack(means).to(dtype), component_stds.to(dtype), weights.to(dtype))


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


def mixture_separation(mixture: GaussianMixture) -> float:
    """Smallest distance between two component means (a scale for "in distribution" checks)."""
    flat = mixture.means.reshape(mixture.means.shape[0], -1)
    dist = torch.cdist(flat, flat).fill_diagonal_(math.inf)
    return float(dist.min())
