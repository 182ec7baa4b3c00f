"""One LD3 training iteration, instrumented: the trainer's step with its time split and memory.

The iteration is the default recipe's step (ld3_core/trainer.py), built from the same pieces:
``ScheduleParameters`` (every per-step sigma free), the ``DifferentiableSampler`` student (per-call
checkpointing), the loss object, the recipe's optimisers (``make_optimizers``), gradient clipping, the
projection onto the model's sigma range and, with ``soft_gamma``, the r-ball projection.
What it adds is timing: an APPLY_MODEL wrapper placed *inside* LD3's checkpoint wrapper times every
denoiser call and knows whether it runs in the forward pass or as the recompute inside backward, and
a gradient hook on the student's output marks where the loss's backward ends and the solver's begins.
Shared by bench/cost.py (CPU) and bench/gpu.py (CUDA).
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
    """Repeatable phase-2 LD3 iterations on one model, sampler and NFE, with a per-part time split."""

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

        from ld3_core.comfy_adapter import DifferentiableSampler
        from ld3_core.parameterisation import ScheduleParameters, ball_radius
        from ld3_core.trainer import TrainConfig, make_optimizers

        self.device = device
        self.phase = _Phase()
        self.student = DifferentiableSampler(patcher, sampler, checkpoint=checkpoint)
        self.student.model.add_wrapper_with_key(
            pe.WrappersMP.APPLY_MODEL, TIMER_KEY, _timed_checkpoint_forward(self.phase, device)
        )
        self.cond = cond
        self.steps = init_sigmas.numel() - 1
        config = TrainConfig(steps=self.steps, soft_gamma=soft_gamma)
        self.config = config
        self.loss = loss
        ms = patcher.get_model_object("model_sampling")
        with torch.inference_mode(False):
            self.noise = noise.clone().float()
            self.prepared = loss.prepare(targets.clone())
            self.params = ScheduleParameters(
                init_sigmas.float(),
                config.freedom,
                (float(ms.sigma_min), float(ms.sigma_max)),
                config.first_offset,
            )
            self.noise_prime = self.noise.clone().requires_grad_(True)
        self.radius = ball_radius(soft_gamma, noise[0].numel(), self.steps)
        self.opt_steps, self.opt_offsets = make_optimizers(config, self.params)
        self.opt_noise = torch.optim.SGD([self.noise_prime], lr=12.0 / self.steps)

    def run(self) -> dict:
        """One iteration; returns seconds per part (and denoiser call counts)."""
        from ld3_core.parameterisation import project_to_ball

        phase, device = self.phase, self.device
        phase.name, phase.forward_s, phase.recompute_s = "forward", 0.0, 0.0
        phase.calls = {"forward": 0, "backward": 0}
        marks = {}
        with torch.inference_mode(False), torch.enable_grad():
            _sync(device)
            t0 = time.perf_counter()
            out = self.student(self.noise_prime, self.cond, self.params.schedule())
            _sync(device)
            t1 = time.perf_counter()
            value = self.loss(out, self.prepared).mean()
            _sync(device)
            t2 = time.perf_counter()

            def mark(grad):
                _sync(device)
                marks["loss_backward_done"] = time.perf_counter()
                return grad

            out.register_hook(mark)
            for opt in (self.opt_steps, self.opt_offsets, self.opt_noise):
                opt.zero_grad(set_to_none=True)
            phase.name = "backward"
            value.backward()
            _sync(device)
            t3 = time.perf_counter()
            phase.name = "forward"
            for p in (self.params.step_logits, *self.params.offset_parameters()):
                torch.nn.utils.clip_grad_norm_([p], self.config.grad_clip)
            self.opt_steps.step()
            self.opt_offsets.step()
            self.params.project()
            if self.radius > 0:
                self.opt_noise.step()
                with torch.no_grad():
                    self.noise_prime.copy_(project_to_ball(self.noise_prime, self.noise, self.radius))
            _sync(device)
            t4 = time.perf_counter()
        loss_bwd_end = marks.get("loss_backward_done", t2)
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
