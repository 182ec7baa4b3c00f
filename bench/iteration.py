"""One LD3 training iteration, instrumented: the trainer's own step with its time split and memory.

The iteration is ``TrainingLoop.step`` of ld3_core/trainer.py on the default recipe's pieces
(``ScheduleParameters`` with every per-step sigma free, the ``DifferentiableSampler`` student with
per-call checkpointing, the loss object), all samples in one batch. What the bench adds is timing: the
step's ``clock`` marks where each part ends, and an APPLY_MODEL wrapper placed *inside* LD3's checkpoint
wrapper times every denoiser call and knows whether it runs in the forward pass or as the recompute
inside backward. Shared by bench/cost.py (CPU) and bench/gpu.py (CUDA).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

TIMER_KEY = "ld3_bench_timer"  # sorts after LD3's key, so it runs inside the checkpointed call
FLOOR_CALLS_PER_NFE = 3.2  # forward + recompute + input-only backward, in plain denoiser calls


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class _Phase:
    name: str = "forward"
    forward_s: float = 0.0
    recompute_s: float = 0.0
    calls: dict = field(default_factory=lambda: {"forward": 0, "backward": 0})


def _timed_checkpoint_forward(phase: _Phase, device):
    # Times every denoiser call; inside a reentrant checkpoint the forward pass runs under no_grad and
    # the recompute in backward with grad, so the phase flag (not the grad mode) says which is which.
    def wrapper(executor, *args, **kwargs):
        _sync(device)
        started = time.perf_counter()
        out = executor(*args, **kwargs)
        _sync(device)
        elapsed = time.perf_counter() - started
        if phase.name == "forward":
            phase.forward_s += elapsed
        else:
            phase.recompute_s += elapsed
        phase.calls[phase.name] += 1
        return out

    return wrapper


class InstrumentedIteration:
    """Repeatable phase-2 LD3 iterations on one model, sampler and NFE, with a per-part time split: the
    trainer's own step (``TrainingLoop.step``), timed through its ``clock``."""

    def __init__(
        self,
        patcher,
        cond,
        sampler: str,
        init_sigmas: torch.Tensor,
        noise: torch.Tensor,
        targets: torch.Tensor,
        loss,
        checkpoint: bool = True,
        soft_gamma: float = 0.0,
        device="cpu",
    ):
        import comfy.patcher_extension as pe

        from ld3_core.comfyui.adapter import DifferentiableSampler
        from ld3_core.parameterisation import ScheduleParameters, ball_radius
        from ld3_core.trainer import TrainConfig, TrainingData, TrainingLoop

        self.device = device
        self.phase = _Phase()
        sampler_module = DifferentiableSampler(patcher, sampler, checkpoint=checkpoint)
        sampler_module.model.add_wrapper_with_key(
            pe.WrappersMP.APPLY_MODEL, TIMER_KEY, _timed_checkpoint_forward(self.phase, device)
        )
        self.student = lambda x, _prompt, schedule: sampler_module(x, cond, schedule)
        self.steps = init_sigmas.numel() - 1
        self.config = TrainConfig(steps=self.steps, soft_gamma=soft_gamma)
        self.loss = loss
        ms = patcher.get_model_object("model_sampling")
        with torch.inference_mode(False):
            noise = noise.clone().float()
            everything = list(range(len(noise)))  # one batch of every sample, one prompt
            self.data = TrainingData(
                noise, loss.prepare(targets.clone()), torch.zeros(len(noise)), everything, everything[:1]
            )
            params = ScheduleParameters(
                init_sigmas.float(),
                self.config.freedom,
                (float(ms.sigma_min), float(ms.sigma_max)),
                self.config.first_offset,
            )
            self.loop = TrainingLoop(params, self.config, noise, init_state=params.state())
        self.batch = everything
        self.radius = ball_radius(soft_gamma, noise[0].numel(), self.steps)

    def run(self) -> dict:
        """One iteration; returns seconds per part (and denoiser call counts)."""
        phase, device = self.phase, self.device
        phase.name, phase.forward_s, phase.recompute_s = "forward", 0.0, 0.0
        phase.calls = {"forward": 0, "backward": 0}
        marks: dict[str, float] = {}

        def clock(name: str) -> None:
            _sync(device)
            marks[name] = time.perf_counter()
            # Denoiser calls between the loss and the end of backward are the checkpoint's recompute.
            phase.name = {"loss": "backward", "backward": "forward"}.get(name, phase.name)

        with torch.inference_mode(False), torch.enable_grad():
            self.loop.step(self.student, self.loss, self.data, self.batch, 0, True, self.radius, clock=clock)
        t0, t1, t2 = marks["start"], marks["forward"], marks["loss"]
        t3, t4 = marks["backward"], marks["optimiser"]
        loss_bwd_end = marks.get("loss_backward", t2)
        solver_backward = t3 - loss_bwd_end
        return {
            "total": t4 - t0,
            "forward": t1 - t0,
            "forward_denoiser": phase.forward_s,
            "loss_forward": t2 - t1,
            "loss_backward": loss_bwd_end - t2,
            "recompute": phase.recompute_s,
            "backward": solver_backward - phase.recompute_s,
            "optimiser": t4 - t3,
            "calls_forward": phase.calls["forward"],
            "calls_recompute": phase.calls["backward"],
        }


def median_parts(runs: list[dict]) -> dict:
    """Per-part medians over several iterations."""
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def time_call(fn: Callable[[], object], repeats: int, device="cpu", warmup: int = 1) -> float:
    """Median wall seconds of fn() (synchronised on CUDA)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def iteration_ratios(
    parts: dict, nfe: int, loss_nograd_s: float = 0.0, trainer_s: float | None = None
) -> dict:
    """An iteration against its floor, in units of NFE x one plain denoiser call.

    The plain call is the checkpointed forward's own no-grad denoiser call, timed inside ComfyUI's
    APPLY_MODEL in the same iteration; floor = 3.2 such calls per NFE (forward + recompute + input-only
    backward) plus 3.2 x the no-grad VAE decode + LPIPS where the loss has one.
    """
    unit = parts["forward_denoiser"]
    floor = FLOOR_CALLS_PER_NFE * (unit + loss_nograd_s)
    keys = ("total", "forward", "recompute", "backward", "optimiser")
    out = {
        "denoiser_call_s": unit / nfe,
        "iteration_over_unit": parts["total"] / unit,
        "floor_over_unit": floor / unit,
        "iteration_over_floor": parts["total"] / floor,
        "parts_per_unit": {k: parts[k] / unit for k in keys},
    }
    out["parts_per_unit"]["vae_lpips"] = (parts["loss_forward"] + parts["loss_backward"]) / unit
    if trainer_s is not None:
        out["trainer_iteration_s"] = trainer_s
        out["trainer_over_floor"] = trainer_s / floor
    return out
