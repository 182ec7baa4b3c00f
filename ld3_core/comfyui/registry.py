"""What this ComfyUI offers: its samplers and schedulers, the sigmas KSampler would use, the scheduler
nodes with fixed tables (AYS, GITS, OptimalSteps), and a model's sampling type."""

from __future__ import annotations

import importlib

import comfy.model_sampling
import comfy.sample
import comfy.samplers
import torch

from ..errors import LD3InputError
from .scheduler import SCHEDULER_NAME as LEARNED_SCHEDULER


def model_sampling(model_patcher):
    """The MODEL's sampling object as sampling sees it (object patches, e.g. an LD3 schedule, applied)."""
    return model_patcher.get_model_object("model_sampling")


def sigma_range(model_patcher) -> tuple[float, float]:
    """The MODEL's (sigma_min, sigma_max)."""
    sampling = model_sampling(model_patcher)
    return float(sampling.sigma_min), float(sampling.sigma_max)


def is_flow_model(model_patcher) -> bool:
    return is_flow(model_sampling(model_patcher))


def sampling_latent_shape(model_patcher, samples: torch.Tensor) -> tuple[int, ...]:
    """The per-sample latent shape KSampler samples for ``samples``: an empty 4-channel latent becomes the
    model's own channel count and rank (``comfy.sample.fix_empty_latent_channels``)."""
    return tuple(comfy.sample.fix_empty_latent_channels(model_patcher, samples).shape[1:])


def sampler_names() -> list[str]:
    """ComfyUI's sampler names (``comfy.samplers.SAMPLER_NAMES``), custom-node ones included."""
    return list(comfy.samplers.SAMPLER_NAMES)


def scheduler_names() -> list[str]:
    """ComfyUI's scheduler names (``comfy.samplers.SCHEDULER_NAMES``), ``ld3`` included once registered."""
    return list(comfy.samplers.SCHEDULER_NAMES)


def has_scheduler(name: str) -> bool:
    return name in comfy.samplers.SCHEDULER_HANDLERS


def schedule_sigmas(model_patcher, scheduler: str, steps: int, sampler: str) -> torch.Tensor:
    """The sigmas ComfyUI's KSampler would use (it drops the penultimate sigma for a few samplers)."""
    if not has_scheduler(scheduler):
        raise LD3InputError(
            "scheduler", f"unknown scheduler '{scheduler}'", f"Choose one of: {', '.join(scheduler_names())}"
        )
    ks = comfy.samplers.KSampler(
        model_patcher, steps, torch.device("cpu"), sampler=sampler, scheduler=scheduler
    )
    return ks.sigmas.float().cpu()


def is_flow(model_sampling) -> bool:
    """Whether the model samples a flow (ComfyUI's CONST: SD3, Flux, ...), where sigma_max = 1 is pure noise."""
    return isinstance(model_sampling, comfy.model_sampling.CONST)


def builtin_schedules(model_patcher, steps: int, sampler: str) -> dict[str, torch.Tensor]:
    """Every scheduler ComfyUI registers (as KSampler computes it), skipping ones that fail or repeat."""
    schedules = {}
    for name in scheduler_names():
        if name == LEARNED_SCHEDULER:
            continue
        try:
            sigmas = schedule_sigmas(model_patcher, name, steps, sampler)
        except Exception:  # a scheduler that cannot serve this model/steps is simply not a candidate
            continue
        if sigmas.numel() == steps + 1 and bool((sigmas[:-1] > sigmas[1:]).all()) and float(sigmas[-1]) == 0:
            schedules[name] = sigmas
    return schedules


# ComfyUI's scheduler nodes with fixed tables (comfy_extras): name -> (module, class, positional args).
EXTRA_SCHEDULERS = {
    "ays_sd1": ("comfy_extras.nodes_align_your_steps", "AlignYourStepsScheduler", ("SD1",)),
    "ays_sdxl": ("comfy_extras.nodes_align_your_steps", "AlignYourStepsScheduler", ("SDXL",)),
    "ays_svd": ("comfy_extras.nodes_align_your_steps", "AlignYourStepsScheduler", ("SVD",)),
    "gits": ("comfy_extras.nodes_gits", "GITSScheduler", (1.20,)),
    "optimal_steps_flux": ("comfy_extras.nodes_optimalsteps", "OptimalStepsScheduler", ("FLUX",)),
    "optimal_steps_wan": ("comfy_extras.nodes_optimalsteps", "OptimalStepsScheduler", ("Wan",)),
    "optimal_steps_chroma": ("comfy_extras.nodes_optimalsteps", "OptimalStepsScheduler", ("Chroma",)),
}


def extra_schedules(model_patcher, steps: int) -> dict[str, torch.Tensor]:
    """AYS, GITS and OptimalSteps (ComfyUI's own scheduler nodes), where they fit the model.

    Their tables are made for one model family each; a table fits when it starts within 1% of the
    model's own sigma_max (so SD1/SDXL tables serve SD-range models, the flow tables flow models).
    """
    sigma_max = sigma_range(model_patcher)[1]
    schedules = {}
    for name, (module, cls, args) in EXTRA_SCHEDULERS.items():
        try:
            node = getattr(importlib.import_module(module), cls)
            sigmas = node.execute(*args, steps, 1.0).result[0].float().cpu()
        except Exception:  # a ComfyUI without that node, or a table that cannot give this step count
            continue
        if (
            sigmas.numel() == steps + 1
            and bool((sigmas[:-1] > sigmas[1:]).all())
            and float(sigmas[-1]) == 0
            and abs(float(sigmas[0]) / sigma_max - 1) < 0.01
        ):
            schedules[name] = sigmas
    return schedules
