"""Teacher data (paper Sec. 3.1): pairs (x_T, Psi*(x_T)) from the stock sampler with many steps."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .comfyui.adapter import Conditioning, out_of_memory_guard, sample_stock
from .comfyui.identity import model_identity
from .comfyui.registry import (
    LEARNED_SCHEDULER,
    has_scheduler,
    is_flow,
    model_sampling,
    sampler_names,
    schedule_sigmas,
    scheduler_names,
)
from .comfyui.solvers import is_stochastic
from .errors import LD3InputError
from .identity import conditioning_sketch

AUTO = "auto"
# What ``auto`` picks (``reference_scheduler``), measured with bench/teacher_schedulers.py (tables in
# bench/results/teacher_schedulers.md): dpmpp_2m at 20 steps, mean per-sample RMSE to a 500-step solve,
# and in brackets the best built-in's error at 4 steps, the scale LD3 works at.
#   flow mixture 16x16x16      beta 0.010, ddim_uniform 0.050, simple 0.18, karras 0.27          [0.16]
#   flow mixture, shift 3      beta 0.011, kl_optimal 0.034, simple 0.042, karras 0.44           [0.16]
#   tiny Flux (random)         sgm_uniform 0.231, beta 0.237, simple 0.258, karras 0.260         [0.66]
#   EPS mixture 4x16x16        exponential 0.0011, karras 0.0027, ddim_uniform 0.014, simple 0.063 [0.052]
#   tiny SD1.5 EPS (random)    karras 3.5, beta 3.6, simple 4.4, exponential 5.2                 [14]
#   tiny SD1.5 V (random)      sgm_uniform 0.32, exponential 0.34, karras 0.36, simple 0.39      [2.1]
#   tiny SD1.5 EDM (random)    kl_optimal 0.40, simple 0.58, karras 0.64, beta 1.0               [3.4]
#   flow mixtures with Flux's sampling (shift 1.15), mean of 48 noises:
#     separated components     beta 0.035, simple 0.047, karras 0.32
#     clustered (the bench's)  simple 0.015, beta 0.041, karras 0.29
# Flow (CONST): beta; simple is better on some models, but it sends a few noises in twenty to another
# mode on others (mean 0.095 at a median of 0.004), and its advantage cannot be seen on the few noises a
# check can afford. Everything else: karras, whose error is at most 24 % of the 4-step error on every
# model (exponential, best on the EPS mixture, reaches 36 %).
# The sampler matters more than the scheduler: at 20 steps, mean of 32 noises, against a 500-step solve:
#                           dpmpp_2m  uni_pc  ipndm   deis      (flow: beta; EPS: karras)
#   flow, Flux, clustered    0.045    0.0057  0.0015  0.0026
#   flow, SD3, separated     0.011    0.0022  0.0023  0.0041
#   flow, SD3, clustered     0.019    0.0023  0.0049  0.0092
#   EPS, clustered           0.0094   0.0013  0.0033  0.0047
# So the teacher's default sampler is uni_pc: 2-20x closer than dpmpp_2m at the same cost.
TEACHER_SAMPLER = "uni_pc"
FLOW_REFERENCE_SCHEDULER = "beta"
DIFFUSION_REFERENCE_SCHEDULER = "karras"


@dataclass(frozen=True)
class TeacherData:
    """Unit start noise and teacher endpoints (in the LATENT space users see), with their provenance."""

    noise: torch.Tensor  # [M, *latent]: what the sampler scales into x_T
    targets: torch.Tensor  # [M, *latent]: the teacher's output for that noise
    prompt_index: torch.Tensor  # [M] long: which conditioning each sample used
    is_validation: torch.Tensor  # [M] bool
    # model, latent shape, cfg, prompts, sampler, scheduler (as used; scheduler_requested: as chosen,
    # e.g. auto), steps, seed; self_error once the teacher has checked itself (teacher_check.py)
    info: dict = field(default_factory=dict)

    @property
    def train_indices(self) -> list[int]:
        return [i for i in range(len(self.noise)) if not bool(self.is_validation[i])]

    @property
    def validation_indices(self) -> list[int]:
        return [i for i in range(len(self.noise)) if bool(self.is_validation[i])]


def noise_keys(noise: torch.Tensor) -> list[str]:
    """A short key per start noise (a hash of its float32 values): which noises two teachers share.

    LD3 Generate Teacher's sample i uses the noise of seed + i, so a teacher made with a nearby seed
    repeats most of another's noises; a schedule scored on noises it was trained or chosen on looks
    better than it will on new ones (LD3 Compare Sigmas says so).
    """
    flat = noise.detach().to("cpu", torch.float32).contiguous().flatten(1)
    return [hashlib.sha1(row.numpy().tobytes()).hexdigest()[:16] for row in flat]


def start_noise(shape: Sequence[int], seed: int, count: int) -> torch.Tensor:
    """Per-sample unit noise: sample i uses seed + i, so any subset regenerates the same noise."""
    return torch.stack(
        [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed + i)) for i in range(count)]
    )


def check_teacher_sampler(sampler: str) -> LD3InputError | None:
    """None for a sampler that solves the ODE deterministically, else the error that says what to do.

    Any deterministic ComfyUI sampler may be the teacher, also those LD3 cannot train (dpm_fast,
    dpm_adaptive, lms): only the teacher's endpoints are used. Samplers that inject fresh noise do not
    land on the ODE's solution, so no few-step schedule could learn to reach theirs.
    """
    if sampler not in sampler_names():
        return LD3InputError(
            "sampler_name",
            f"unknown sampler '{sampler}'",
            f"Choose one of: {', '.join(deterministic_samplers())}",
        )
    if is_stochastic(sampler):
        return LD3InputError(
            "sampler_name",
            f"'{sampler}' is stochastic (it injects fresh noise at every step), so its samples are not the "
            "solution of the ODE that a few-step schedule learns to reach",
            "Use a deterministic sampler for the teacher, e.g. dpmpp_2m, uni_pc, deis or heun",
        )
    return None


def deterministic_samplers() -> list[str]:
    """ComfyUI's samplers that may be the teacher (every one that injects no fresh noise)."""
    return [name for name in sampler_names() if not is_stochastic(name)]


def check_teacher_scheduler(scheduler: str) -> LD3InputError | None:
    """None for ``auto`` or a built-in ComfyUI scheduler, else the error that says what to do."""
    if scheduler == LEARNED_SCHEDULER:
        return LD3InputError(
            "scheduler",
            f"'{LEARNED_SCHEDULER}' is a learned few-step schedule; the teacher must be an accurate "
            "many-step solve, not what is being learned",
            f"Use '{AUTO}' (the reference scheduler for the model's type) or another built-in scheduler",
        )
    if scheduler != AUTO and not has_scheduler(scheduler):
        return LD3InputError(
            "scheduler",
            f"unknown scheduler '{scheduler}'",
            f"Choose '{AUTO}' or one of: {', '.join(teacher_schedulers()[1:])}",
        )
    return None


def teacher_schedulers() -> list[str]:
    """The teacher's scheduler choices: ``auto`` first, then ComfyUI's schedulers (``ld3`` is refused)."""
    return [AUTO] + [name for name in scheduler_names() if name != LEARNED_SCHEDULER]


def reference_scheduler(model_sampling) -> str:
    """The scheduler ``auto`` picks for a model: the most accurate 20-step teacher for its sampling type."""
    return FLOW_REFERENCE_SCHEDULER if is_flow(model_sampling) else DIFFUSION_REFERENCE_SCHEDULER


def resolve_scheduler(model_patcher, scheduler: str) -> str:
    """``scheduler`` itself, or for ``auto`` the reference scheduler of the model's sampling type."""
    if error := check_teacher_scheduler(scheduler):
        raise error
    if scheduler != AUTO:
        return scheduler
    return reference_scheduler(model_sampling(model_patcher))


def check_teacher_inputs(sampler: str, scheduler: str, count: int, conditionings: Sequence) -> None:
    """Refuse what cannot make a teacher, before any sampling."""
    if error := check_teacher_sampler(sampler):
        raise error
    if error := check_teacher_scheduler(scheduler):
        raise error
    if count < 2:
        raise LD3InputError(
            "sample_count", f"{count} samples leave nothing to validate on", "Use at least 2 (paper: 50)"
        )
    if not conditionings:
        raise LD3InputError("positive", "no conditioning given", "Connect at least one prompt")


def step_callback(progress, done: int, batch: int, total: int):
    """A stock sampler's per-step callback that reports ``done + (step + 1) x batch`` of ``total``
    sample-steps to ``progress`` (None without one)."""
    if progress is None:
        return None

    def callback(step, *_):
        progress(done + (int(step) + 1) * batch, total)

    return callback


def generate_teacher(
    model_patcher,
    conditionings: Sequence[Conditioning],
    latent_shape: Sequence[int],
    count: int,
    seed: int,
    sampler: str = TEACHER_SAMPLER,
    scheduler: str = AUTO,
    steps: int = 20,
    batch_size: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> TeacherData:
    """Run the stock sampler on ``count`` seeded noises, prompts taken round-robin.

    ``progress(done, total)`` counts sample-steps (total = count x steps) and is called after every
    sampler step, so a progress callback that raises (Cancel) stops within one step at any batch size.
    """
    check_teacher_inputs(sampler, scheduler, count, conditionings)
    resolved = resolve_scheduler(model_patcher, scheduler)
    sigmas = schedule_sigmas(model_patcher, resolved, steps, sampler)
    noise = start_noise(latent_shape, seed, count)
    prompt_index = torch.arange(count) % len(conditionings)
    # Alternate rounds of prompts between train and validation, so both halves cover every prompt.
    is_validation = (torch.arange(count) // len(conditionings)) % 2 == 1
    if not is_validation.any():
        is_validation[-1] = True
    targets = torch.empty_like(noise)
    done = 0
    for p, cond in enumerate(conditionings):
        idx = [i for i in range(count) if int(prompt_index[i]) == p]
        for start in range(0, len(idx), batch_size):
            batch = idx[start : start + batch_size]
            with out_of_memory_guard("generating teacher samples"):
                out = sample_stock(
                    model_patcher,
                    cond,
                    sampler,
                    sigmas,
                    noise[batch],
                    seed=seed,
                    callback=step_callback(progress, done * steps, len(batch), count * steps),
                )
            targets[batch] = out.float().cpu()
            done += len(batch)
            if progress is not None:
                progress(done * steps, count * steps)
    if not torch.isfinite(targets).all():
        raise LD3InputError(
            "model",
            "the teacher produced NaN or Inf",
            "Check the model and its dtype (try fp32) or lower the CFG",
        )
    info = {
        "model": model_identity(model_patcher),
        "latent_shape": list(latent_shape),
        "sampler": sampler,
        "scheduler": resolved,
        "scheduler_requested": scheduler,
        "steps": steps,
        "seed": seed,
        "prompts": len(conditionings),
        "cfg": [c.cfg for c in conditionings],
        # Fingerprints of the prompts, so a reloaded teacher can be checked against the prompts given.
        "conditioning": {
            "positive": [conditioning_sketch(c.positive) for c in conditionings],
            "negative": [conditioning_sketch(c.negative) for c in conditionings],
        },
    }
    return TeacherData(noise, targets, prompt_index, is_validation, info)
