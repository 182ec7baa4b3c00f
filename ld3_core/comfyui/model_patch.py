"""The LD3 patch of a ComfyUI model: continuous network time and the learned per-step sigmas.

One object patch of ``model_sampling`` carries everything a learned schedule changes at sampling time,
so training and stock sampling (SamplerCustom, KSampler with the ``ld3`` scheduler) see the same model:

- Discrete-time models (SD1.x, SDXL: ``ModelSamplingDiscrete``) turn sigma into the network's timestep
  with an argmin, which has no gradient and would round learned times. The patch interpolates the
  timestep in log-sigma instead (the inverse of ComfyUI's own ``sigma(t)`` interpolation), so grid
  sigmas give exactly the stock timestep. Continuous-time models (flow, EDM) keep their own mapping.
- A learned ``Schedule`` (``schedule.py``): at a solver sigma s the network is told ``timestep(m(s))``
  and ComfyUI's input scaling and output conversion (``calculate_input`` / ``calculate_denoised``) use
  u(s) instead of s. Both maps pass exactly through the schedule's steps and interpolate between them,
  so every sampler's extra stage points (Heun, DPM-2, UniPC) get a consistent value. Overriding the
  model type's own two functions keeps this right for every ComfyUI model type (EPS, V, EDM, flow).

Dynamic VRAM (newer ComfyUI, ``ModelPatcherDynamic``) backs up the model's buffers by attribute path
when it loads a model and writes them back by path at the next load, onto whatever object is at that
path then (ComfyUI issue #16490): another sampling object's ``sigmas`` / ``log_sigmas`` can land on
ours. What the network is told must not depend on that, so the patch keeps its own copy of the sigma
table, as a plain attribute (not a buffer: the loader neither backs it up nor overwrites it), taken from
the model's sampling object when the patch is made, and cached per device. The schedule and its knots
are plain attributes too.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache, partial

import torch

from ..comfy_ui import notify_user
from ..schedule import Schedule, map_sigma

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


class _LD3Sampling:
    """Mixin placed in front of the model's own model_sampling class (see ``ld3_model_sampling``)."""

    ld3_knots: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # (s, m, u) of the steps
    ld3_schedule: dict | None = None  # schedule (a Schedule), sampler, steps of a learned schedule

    def _ld3_sigma(self, sigma, which: int):
        if self.ld3_knots is None:
            return sigma
        return map_sigma(sigma, self.ld3_knots[0], self.ld3_knots[which])

    def _ld3_log_sigmas(self, device) -> torch.Tensor:
        """The sigma table as it was when the patch was made, on ``device`` (cached)."""
        tables = self._ld3_tables
        if device not in tables:
            tables[device] = next(iter(tables.values())).to(device)
        return tables[device]

    def timestep(self, sigma):
        sigma = self._ld3_sigma(sigma, 1)
        if self._ld3_discrete:
            return continuous_discrete_timestep(self._ld3_log_sigmas(sigma.device), sigma)
        return super().timestep(sigma)

    def calculate_input(self, sigma, noise):
        return super().calculate_input(self._ld3_sigma(sigma, 2), noise)

    def calculate_denoised(self, sigma, model_output, model_input):
        return super().calculate_denoised(self._ld3_sigma(sigma, 2), model_output, model_input)


@cache
def _patched_class(base_cls: type) -> type:
    return type(f"LD3{base_cls.__name__}", (_LD3Sampling, base_cls), {})


def _uses_argmin_timestep(model_sampling) -> bool:
    import comfy.model_sampling

    discrete = comfy.model_sampling.ModelSamplingDiscrete
    return isinstance(model_sampling, discrete) and type(model_sampling).timestep is discrete.timestep


def ld3_model_sampling(base, knots=None, schedule: dict | None = None):
    """A copy of ``base`` (sharing its tensors) with continuous time and the schedule's per-step sigmas."""
    if isinstance(base, _LD3Sampling):
        base = base.ld3_base
    cls = _patched_class(type(base))
    patched = cls.__new__(cls)
    patched.__dict__.update(base.__dict__)
    for name in ("_parameters", "_buffers", "_modules"):
        patched.__dict__[name] = dict(base.__dict__[name])
    object.__setattr__(patched, "ld3_base", base)
    discrete = _uses_argmin_timestep(base)
    object.__setattr__(patched, "_ld3_discrete", discrete)
    table = base.log_sigmas.detach().clone() if discrete else None
    object.__setattr__(patched, "_ld3_tables", {table.device: table} if table is not None else {})
    object.__setattr__(patched, "ld3_knots", knots)
    object.__setattr__(patched, "ld3_schedule", schedule)
    return patched


def patch_model(
    model_patcher,
    schedule: Schedule | None = None,
    sampler: str | None = None,
    trained_on: Sequence[str] = (),
):
    """Clone a ModelPatcher with the LD3 model_sampling patch (and a learned schedule, if given).

    ``trained_on``: the ``noise_keys`` of the teacher samples the schedule was trained and chosen on,
    carried with it so LD3 Compare Sigmas can tell when it is scored on them.

    A MODEL that carries a schedule chosen for a sampler (learned, or the built-in the verdict handed
    back) also checks, each time it is sampled, that the sampler is that one (``check_sampler_wrapper``);
    the wrappers of an earlier LD3 patch of ``model_patcher`` are dropped.
    """
    import comfy.patcher_extension as pe

    patched = model_patcher.clone()
    # A MODEL patched before (an LD3 MODEL patched again) carries our wrappers: drop them, so only this
    # schedule's check (and, for training, one recompute wrapper) applies.
    for kind in (pe.WrappersMP.SAMPLER_SAMPLE, pe.WrappersMP.APPLY_MODEL, pe.WrappersMP.PREPARE_SAMPLING):
        patched.remove_wrappers_with_key(kind, LD3_KEY)
    base = model_patcher.get_model_object("model_sampling")
    knots, carried = None, None
    if schedule is not None:
        schedule = schedule.detach()
        knots = schedule.knots()
        carried = {
            "schedule": schedule,
            "sampler": sampler,
            "steps": schedule.steps,
            "trained_on": frozenset(trained_on),
        }
    patched.add_object_patch("model_sampling", ld3_model_sampling(base, knots, carried))
    if schedule is not None and sampler:
        check = partial(check_sampler_wrapper, sampler, schedule.steps)
        patched.add_wrapper_with_key(pe.WrappersMP.SAMPLER_SAMPLE, LD3_KEY, check)
    return patched


@cache
def _sampler_function(name: str):
    """The function ComfyUI's sampler ``name`` runs, or None if ComfyUI cannot build it here."""
    import comfy.samplers

    try:
        return comfy.samplers.sampler_object(name).sampler_function
    except Exception:  # noqa: BLE001 - a sampler ComfyUI cannot build matches nothing
        return None


@cache
def _sampler_names() -> dict:
    """ComfyUI's sampler functions by identity -> sampler name (the first name that gives each)."""
    import comfy.samplers

    names = {}
    for name in comfy.samplers.SAMPLER_NAMES:
        function = _sampler_function(name)
        if function is not None:
            names.setdefault(function, name)
    return names


def check_sampler_wrapper(trained: str, steps: int, executor, *args, **kwargs):
    """SAMPLER_SAMPLE wrapper: warn on the sampling node when the sampler is not the one trained for.

    ComfyUI calls it with the sampler object (``executor.class_obj``); a sampler it cannot name (a custom
    SAMPLER without a known sampler function) passes without a word.
    """
    function = getattr(executor.class_obj, "sampler_function", None)
    used = _sampler_names().get(function)
    if used is not None and function is not _sampler_function(trained):
        notify_user(
            f"LD3: this MODEL carries a schedule chosen for the {trained} sampler ({steps} steps), but it is "
            f"sampled with {used}. A learned schedule fits the sampler it was trained with (with another one "
            f"it can be worse than a built-in scheduler): set sampler_name to {trained}, or train a schedule "
            f"for {used}."
        )
    return executor(*args, **kwargs)


def learned_schedule(model_patcher) -> dict | None:
    """The learned schedule an LD3-patched MODEL carries ({"schedule", "sampler", "steps", "trained_on"}),
    or None."""
    model_sampling = model_patcher.get_model_object("model_sampling")
    return getattr(model_sampling, "ld3_schedule", None)
