"""An exact Gaussian-mixture data distribution (``comfyui/mixture_model.py`` wraps it as a ComfyUI model).

The denoiser E[x0 | x] of a Gaussian mixture is closed form, so the probability-flow ODE that ComfyUI's
samplers solve has a known right-hand side: schedules can be judged against a true answer.
"""

import math

import torch
import torch.nn.functional as F


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


def mixture_separation(mixture: GaussianMixture) -> float:
    """Smallest distance between two component means (a scale for "in distribution" checks)."""
    flat = mixture.means.reshape(mixture.means.shape[0], -1)
    dist = torch.cdist(flat, flat).fill_diagonal_(math.inf)
    return float(dist.min())
