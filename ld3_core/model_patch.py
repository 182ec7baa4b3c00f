"""The LD3 patch of a ComfyUI model: continuous network time and decoupled model-input times.

One object patch of ``model_sampling`` carries everything a learned schedule changes at sampling time,
so training and stock sampling (SamplerCustom, KSampler with the ``ld3`` scheduler) see the same model:

- Discrete-time models (SD1.x, SDXL: ``ModelSamplingDiscrete``) turn sigma into the network's timestep
  with an argmin, which has no gradient and would round decoupled times. The patch interpolates the
  timestep in log-sigma instead (the inverse of ComfyUI's own ``sigma(t)`` interpolation), so grid
  sigmas give exactly the stock timestep. Continuous-time models (flow, EDM) keep their own mapping.
- Decoupled times (paper Sec. 3.3): the network sees ``eval_sigma`` while the solver steps with
  ``step_sigma``. ``eval_sigma(sigma)`` is piecewise linear in log-sigma through the knots
  ``(step_sigmas[i], eval_sigmas[i])`` and constant outside them, so every sampler's extra stage points
  (Heun, DPM-2, UniPC) get a consistent value, and the knots themselves map exactly.
"""

from __future__ import annotations

from functools import cache

import torch

LD3_KEY = "ld3"


def continuous_discrete_timestep(log_sigmas: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Inverse of ``ModelSamplingDiscrete.sigma``: fractional timestep by log-sigma interpolation."""
    log_sigma = sigma.log().to(log_sigmas.device, log_sigmas.dtype)
    n = log_sigmas.numel()
    idx = torch.searchsorted(log_sigmas.detach(), log_sigma.detach().reshape(-1)).reshape(log_sigma.shape)
    idx = idx.clamp(1, n - 1)
    low, high = log_sigmas[idx - 1], log_sigmas[idx]
    t = (idx - 1).to(log_sigma.dtype) + (log_sigma - low) / (high - low)
    return t.clamp(0, n - 1).to(sigma.device)


def eval_sigma_map(
    sigma: torch.Tensor, knot_sigmas: torch.Tensor, knot_eval_sigmas: torch.Tensor
) -> torch.Tensor:
    """Map solver sigmas to network sigmas, piecewise linear in log-sigma through the knots."""
    knot_log = knot_sigmas.to(sigma.device, sigma.dtype).log().flip(0)  # increasing
    knot_offset = (knot_eval_sigmas.to(sigma.device, sigma.dtype).log().flip(0)) - knot_log
    log_sigma = sigma.log()
    if knot_log.numel() == 1:
        return (log_sigma + knot_offset[0]).exp()
    idx = torch.searchsorted(knot_log.detach(), log_sigma.detach().reshape(-1)).reshape(log_sigma.shape)
    idx = idx.clamp(1, knot_log.numel() - 1)
    low, high = knot_log[idx - 1], knot_log[idx]
    w = ((log_sigma - low) / (high - low)).clamp(0, 1)
    offset = knot_offset[idx - 1] + w * (knot_offset[idx] - knot_offset[idx - 1])
    return (log_sigma + offset).exp()


class _LD3Sampling:
    """Mixin placed in front of the model's own model_sampling class (see ``ld3_model_sampling``)."""

    ld3_knots: tuple[torch.Tensor, torch.Tensor] | None = None
    ld3_schedule: dict | None = None  # step_sigmas, eval_sigmas, sampler, steps of a learned schedule

    def timestep(self, sigma):
        if self.ld3_knots is not None:
            sigma = eval_sigma_map(sigma, *self.ld3_knots)
        if self._ld3_discrete:
            return continuous_discrete_timestep(self.log_sigmas, sigma)
        return super().timestep(sigma)


@cache
def _patched_class(base_cls: type) -> type:
    return type(f"LD3{base_cls.__name__}", (_LD3Sampling, base_cls), {})


def _uses_argmin_timestep(model_sampling) -> bool:
    import comfy.model_sampling

    discrete = comfy.model_sampling.ModelSamplingDiscrete
    return isinstance(model_sampling, discrete) and type(model_sampling).timestep is discrete.timestep


def ld3_model_sampling(base, knots=None, schedule: dict | None = None):
    """A copy of ``base`` (sharing its tensors) whose timestep is continuous and decoupled."""
    if isinstance(base, _LD3Sampling):
        base = base.ld3_base
    cls = _patched_class(type(base))
    patched = cls.__new__(cls)
    patched.__dict__.update(base.__dict__)
    for name in ("_parameters", "_buffers", "_modules"):
        patched.__dict__[name] = dict(base.__dict__[name])
    object.__setattr__(patched, "ld3_base", base)
    object.__setattr__(patched, "_ld3_discrete", _uses_argmin_timestep(base))
    object.__setattr__(patched, "ld3_knots", knots)
    object.__setattr__(patched, "ld3_schedule", schedule)
    return patched


def patch_model(model_patcher, step_sigmas=None, eval_sigmas=None, sampler: str | None = None):
    """Clone a ModelPatcher with the LD3 model_sampling patch (and a learned schedule, if given)."""
    patched = model_patcher.clone()
    base = model_patcher.get_model_object("model_sampling")
    knots, schedule = None, None
    if step_sigmas is not None:
        step_sigmas = step_sigmas.detach().float().cpu()
        eval_sigmas = (step_sigmas[:-1] if eval_sigmas is None else eval_sigmas).detach().float().cpu()
        knots = (step_sigmas[: eval_sigmas.numel()], eval_sigmas)
        schedule = {
            "step_sigmas": step_sigmas,
            "eval_sigmas": eval_sigmas,
            "sampler": sampler,
            "steps": step_sigmas.numel() - 1,
        }
    patched.add_object_patch("model_sampling", ld3_model_sampling(base, knots, schedule))
    return patched


def learned_schedule(model_patcher) -> dict | None:
    """The learned schedule an LD3-patched MODEL carries, or None."""
    model_sampling = model_patcher.get_model_object("model_sampling")
    return getattr(model_sampling, "ld3_schedule", None)
