"""Teacher data (paper Sec. 3.1): pairs (x_T, Psi*(x_T)) from the stock sampler with many steps."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .comfy_adapter import Conditioning, out_of_memory_guard, sample_stock
from .errors import LD3InputError
from .identity import conditioning_sketch, model_identity


@dataclass(frozen=True)
class TeacherData:
    """Unit start noise and teacher endpoints (in the LATENT space users see), with their provenance."""

    noise: torch.Tensor  # [M, *latent]: what the sampler scales into x_T
    targets: torch.Tensor  # [M, *latent]: the teacher's output for that noise
    prompt_index: torch.Tensor  # [M] long: which conditioning each sample used
    is_validation: torch.Tensor  # [M] bool
    info: dict = field(
        default_factory=dict
    )  # model, latent shape, cfg, prompts, sampler, scheduler, steps, seed

    @property
    def train_indices(self) -> list[int]:
        return [i for i in range(len(self.noise)) if not bool(self.is_validation[i])]

    @property
    def validation_indices(self) -> list[int]:
        return [i for i in range(len(self.noise)) if bool(self.is_validation[i])]


def schedule_sigmas(model_patcher, scheduler: str, steps: int, sampler: str) -> torch.Tensor:
    """The sigmas ComfyUI's KSampler would use (it drops the penultimate sigma for a few samplers)."""
    import comfy.samplers

    if scheduler not in comfy.samplers.SCHEDULER_HANDLERS:
        raise LD3InputError(
            "scheduler",
            f"unknown scheduler '{scheduler}'",
            f"Choose one of: {', '.join(comfy.samplers.SCHEDULER_NAMES)}",
        )
    ks = comfy.samplers.KSampler(
        model_patcher, steps, torch.device("cpu"), sampler=sampler, scheduler=scheduler
    )
    return ks.sigmas.float().cpu()


def start_noise(shape: Sequence[int], seed: int, count: int) -> torch.Tensor:
    """Per-sample unit noise: sample i uses seed + i, so any subset regenerates the same noise."""
    return torch.stack(
        [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed + i)) for i in range(count)]
    )


def generate_teacher(
    model_patcher,
    conditionings: Sequence[Conditioning],
    latent_shape: Sequence[int],
    count: int,
    seed: int,
    sampler: str = "dpmpp_2m",
    scheduler: str = "karras",
    steps: int = 20,
    batch_size: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> TeacherData:
    """Run the stock sampler on ``count`` seeded noises, prompts taken round-robin."""
    if count < 2:
        raise LD3InputError(
            "sample_count", f"{count} samples leave nothing to validate on", "Use at least 2 (paper: 50)"
        )
    if not conditionings:
        raise LD3InputError("positive", "no conditioning given", "Connect at least one prompt")
    sigmas = schedule_sigmas(model_patcher, scheduler, steps, sampler)
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
                out = sample_stock(model_patcher, cond, sampler, sigmas, noise[batch], seed=seed)
            targets[batch] = out.float().cpu()
            done += len(batch)
            if progress is not None:
                progress(done, count)
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
        "scheduler": scheduler,
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
