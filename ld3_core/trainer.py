"""Algorithm 1 of the paper, generalised: one frozen config in, one result out; torch only.

The trainer learns a ``Schedule`` (step sigmas and, per step, what the network is told) so the student
lands where the teacher does, and keeps the best one by validation (hard loss: the start noise as given,
which is what users sample). Two presets (``PRESETS``):

- ``ld3`` (the default): every per-step sigma free inside the model's sigma range (``full``), Adam
  (with weight decay pulling the network's time and scaling back towards the step sigma), minibatches
  of the samples that share a prompt, validation after each epoch with learning-rate decay from the
  best parameters and early stopping on a plateau. Validation, not a window, decides how far they move.
- ``paper``: the paper's App. B.1 recipe: soft teacher forcing, phase 1 (step sigmas) then phase 2 (+ the
  network's time, within half a log-gap), RMSprop / SGD / SGD, batch 1, 2 + 3 epochs.

The student solver, the loss and the candidate initial schedules come in as callables and tensors;
progress, cancellation and saving go through callbacks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

import torch

from .errors import LD3InputError
from .parameterisation import FREEDOMS, ScheduleParameters, ball_radius, project_to_ball
from .schedule import Schedule
from .verdict import Verdict, judge

# student(noise [B,...], prompt index, schedule) -> endpoint [B,...]
Student = Callable[[torch.Tensor, int, Schedule], torch.Tensor]


class Loss(Protocol):
    """``prepare(teacher endpoints)`` once, then ``loss(student endpoints, prepared[batch]) -> [B]``."""

    def prepare(self, targets: torch.Tensor) -> torch.Tensor: ...

    def __call__(self, out: torch.Tensor, prepared: torch.Tensor) -> torch.Tensor: ...


class LD3TrainingError(RuntimeError):
    """Training could not go on (non-finite loss or gradients); the best schedule so far was reported."""


@dataclass(frozen=True)
class TrainConfig:
    """How a schedule is learned. ``TrainConfig.preset(name, steps)`` gives a named recipe."""

    steps: int
    recipe: str = "ld3"  # the preset these settings came from (recorded with the schedule)
    freedom: str = "full"  # what the network is told per step: "full", "window" (paper) or "steps"
    optimizer: str = "adam"  # "adam" (all parameters) or "rmsprop" (paper: RMSprop steps, SGD offsets)
    soft_gamma: float = 0.0  # soft teacher forcing: r = gamma * d / NFE^2; 0 = hard
    epochs_phase1: int = 0  # step sigmas only
    epochs_phase2: int = 40  # + what the network is told
    batch_size: int = 5  # samples per iteration (samples of one prompt share a batch)
    # Samples per call when nothing is differentiated (scoring the built-in schedules, validation).
    eval_batch_size: int = 8
    lr_steps: float = 0.03  # step logits
    lr_offsets: float | None = None  # log-sigma offsets; None: 0.015 (adam) / 0.01 / NFE (rmsprop)
    lr_noise: float | None = None  # SGD on x'_T; None -> 12 / NFE
    first_offset: float = -0.02  # m_0 and u_0 start this far below sigma_max (log units; "full", not pinned)
    # Decoupled weight decay of the log(m/s), log(u/s) offsets (adam): a move away from what the step
    # sigma says must keep paying for itself. On the benchmark's mixtures it took the worst cell from
    # 0.51 to 0.37 of the best built-in (a schedule that flipped held-out samples no training sample
    # resembled) and the mean share of the achievable gain from 83 % to 86 %.
    offset_decay: float = 1.0
    # The first step's network time and scaling sigma ("full"): pinned to sigma_max (True), free (False),
    # or None: free on flow models only (api.learn_schedule decides; the trainer alone treats None as
    # free). At a flow model's top (sigma 1, pure noise) the network must be told a little less to see
    # anything, and the held-out gain needs it (Flux mixture, 18 cells x 3 seeds: mean share of the
    # achievable gain 73 % free, 60 % pinned). Elsewhere a free first step moved far (EPS: 14.6 -> 9-12)
    # to fit the 25 training samples and sent held-out noises to other modes: pinned took the EPS
    # mixture's mean share from 74 % to 82 % (>= 80 % in 13 of 18 cells instead of 7; 14 cells better).
    pin_first: bool | None = None
    rmsprop_momentum: float = 0.9
    grad_clip: float = 1.0
    decay_factor: float = 0.5
    decay_patience: int = 3  # epochs without a better validation before the learning rates decay ...
    restore_best: bool = True  # ... and training goes on from the best parameters so far
    stop_patience: int | None = 10  # epochs without a better validation before training stops (None: never)
    min_lr_steps: float = 5e-5
    min_lr_offsets: float = 1e-6
    seed: int = 0

    def __post_init__(self):
        for name in ("soft_gamma", "lr_steps", "lr_offsets", "lr_noise", "offset_decay", "first_offset"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise LD3InputError(
                    name, f"{name} is {value}, not a finite number", f"Set {name} to a number"
                )
        if self.freedom not in FREEDOMS:
            raise ValueError(f"freedom must be one of {FREEDOMS}, got {self.freedom!r}")
        if self.optimizer not in ("adam", "rmsprop"):
            raise ValueError(f"optimizer must be 'adam' or 'rmsprop', got {self.optimizer!r}")

    @classmethod
    def preset(cls, name: str, steps: int, **overrides) -> TrainConfig:
        """The named recipe (``PRESETS``) for ``steps`` steps, with any field overridden."""
        if name not in PRESETS:
            raise LD3InputError("recipe", f"unknown recipe '{name}'", f"Choose one of: {', '.join(PRESETS)}")
        return cls(steps=steps, recipe=name, **{**PRESETS[name], **overrides})

    @classmethod
    def for_recipe(cls, recipe: str, steps: int, decoupled: bool, seed: int, **tuning) -> TrainConfig:
        """A node's settings: the preset (``custom``: ld3 with ``tuning``), step sigmas only if not decoupled.

        ``tuning`` (soft_gamma, epochs, learning rate, batch size) applies to ``custom`` only, so a saved
        workflow that still carries the paper's values in those widgets gets the recipe it names.
        """
        if recipe == CUSTOM_RECIPE:
            config = replace(cls.preset("ld3", steps, seed=seed, **tuning), recipe=CUSTOM_RECIPE)
        else:
            config = cls.preset(recipe, steps, seed=seed)
        return config if decoupled else replace(config, freedom="steps")

    @property
    def epochs(self) -> int:
        return self.epochs_phase1 + self.epochs_phase2

    def offsets_lr(self) -> float:
        if self.lr_offsets is not None:
            return self.lr_offsets
        return 0.015 if self.optimizer == "adam" else 0.01 / self.steps


PRESETS: dict[str, dict] = {
    "ld3": {},  # the TrainConfig defaults
    "paper": {
        "freedom": "window",
        "optimizer": "rmsprop",
        "soft_gamma": 0.001,
        "epochs_phase1": 2,
        "epochs_phase2": 3,
        "batch_size": 1,
        "lr_steps": 1e-3,
        "first_offset": 0.0,
        "decay_factor": 0.8,
        "decay_patience": 5,
        "restore_best": False,
        "stop_patience": None,
        "offset_decay": 0.0,
    },
}


CUSTOM_RECIPE = "custom"
RECIPES = (*PRESETS, CUSTOM_RECIPE)


@dataclass
class TrainResult:
    schedule: Schedule  # float32, best by validation (the starting built-in if nothing beat it)
    initial_schedule: Schedule  # the best built-in schedule, where training started
    best_validation_loss: float
    initial_scheduler: str
    initial_validation_loss: float
    candidate_losses: dict[str, float]
    # Per validation sample: the best schedule's loss and the starting (best built-in) schedule's.
    validation_losses: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    initial_validation_losses: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    validation_curve: list[float] = field(default_factory=list)  # one value per epoch, after it
    train_curve: list[float] = field(default_factory=list)  # one value per iteration
    epochs_done: int = 0
    completed: bool = False
    stopped_early: bool = False
    verdict: Verdict | None = None  # learned vs the best built-in, once training has ended
    notes: list[str] = field(default_factory=list)  # warnings for the user (e.g. about the teacher)
    # The schedule already saved under the run's name (same sampler and steps), scored on the same
    # validation samples: only a better one replaces it.
    incumbent: Schedule | None = None
    incumbent_validation_loss: float = math.inf

    def _choice(self) -> tuple[Schedule, float]:
        """This run's pick and its validation loss: the best so far, or the built-in if the verdict says so."""
        if self.verdict is not None and not self.verdict.use_learned:
            return self.initial_schedule, self.initial_validation_loss
        return self.schedule, self.best_validation_loss

    @property
    def beats_incumbent(self) -> bool:
        """Whether this run's pick is better than the schedule already saved (True when none was)."""
        return self._choice()[1] < self.incumbent_validation_loss

    @property
    def output_schedule(self) -> Schedule:
        """What users get: the learned schedule if the verdict says it is better, else the built-in; the
        schedule already saved under the name instead if it is better than either."""
        if self.incumbent is not None and not self.beats_incumbent:
            return self.incumbent
        return self._choice()[0]

    def report(self, sampler: str, steps: int, saved_as: str | None = None) -> str:
        """What the user reads: the verdict, what the SIGMAS output alone gives, notes, where it was saved."""
        lines = []
        if self.verdict is not None:
            lines.append(self.verdict.summary(sampler, steps))
            only = self.verdict.steps_only_ratio
            if self.verdict.use_learned and only is not None and not self.schedule.is_plain:
                lines.append(
                    f"The SIGMAS output alone (step sigmas without the MODEL's per-step network times) gives "
                    f"{only:.2f}x: sample with the MODEL output (KSampler scheduler 'ld3', or SamplerCustom "
                    "with both) to get the whole gain."
                )
        lines += self.notes
        if saved_as and self.beats_incumbent:
            lines.append(f"Saved to {saved_as}.")
        elif saved_as:
            lines.append(
                f"Kept the schedule already in {saved_as}: on these validation samples its loss is "
                f"{self.incumbent_validation_loss:.4g}, this run's best {self._choice()[1]:.4g}. The outputs carry "
                "the saved schedule."
            )
        return "\n".join(lines)


@dataclass(frozen=True)
class Progress:
    iteration: int
    total_iterations: int
    epoch: int
    train_loss: float | None
    validation_loss: float | None


def _losses(student, loss, noise, targets, prompts, indices, schedule, batch_size) -> torch.Tensor:
    """Per-sample loss of ``schedule`` on ``indices`` (no gradients), in the order of ``indices``."""
    out = torch.empty(len(indices), dtype=torch.float64)
    position = {i: k for k, i in enumerate(indices)}
    with torch.no_grad():
        for batch, prompt in _batches(indices, prompts, batch_size, None):
            values = loss(student(noise[batch], prompt, schedule), targets[batch])
            out[[position[i] for i in batch]] = values.detach().double().cpu()
    return out


def _batches(indices, prompts, batch_size, generator):
    """Batches of samples sharing one prompt (ComfyUI conditions a whole batch alike)."""
    order = list(indices)
    if generator is not None:
        order = [order[i] for i in torch.randperm(len(order), generator=generator).tolist()]
    by_prompt: dict[int, list[int]] = {}
    for i in order:
        by_prompt.setdefault(int(prompts[i]), []).append(i)
    batches = []
    for prompt, items in by_prompt.items():
        batches += [(items[s : s + batch_size], prompt) for s in range(0, len(items), batch_size)]
    if generator is not None:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return batches


def _finite_or_raise(value: torch.Tensor, what: str, iteration: int, epoch: int):
    if not torch.isfinite(value).all():
        raise LD3TrainingError(
            f"{what} became NaN or Inf at iteration {iteration} (epoch {epoch + 1}); training stopped and the "
            "best schedule so far was kept. Try lower learning rates, float32 or bf16->fp16 model weights, "
            "or fewer steps."
        )


def make_optimizers(config: TrainConfig, params: ScheduleParameters):
    """(step optimiser, offset optimiser or None); the paper's are RMSprop and SGD."""
    offsets = params.offset_parameters()
    if config.optimizer == "adam":
        opt_steps = torch.optim.Adam([params.step_logits], lr=config.lr_steps)
        if not offsets:
            opt_offsets = None
        elif config.offset_decay > 0:  # pulls what the network is told back towards the step sigmas
            opt_offsets = torch.optim.AdamW(offsets, lr=config.offsets_lr(), weight_decay=config.offset_decay)
        else:
            opt_offsets = torch.optim.Adam(offsets, lr=config.offsets_lr())
    else:
        opt_steps = torch.optim.RMSprop(
            [params.step_logits], lr=config.lr_steps, momentum=config.rmsprop_momentum
        )
        opt_offsets = torch.optim.SGD(offsets, lr=config.offsets_lr()) if offsets else None
    return opt_steps, opt_offsets


def _lr(opt) -> float:
    return opt.param_groups[0]["lr"] if opt is not None else 0.0


def train_schedule(
    config: TrainConfig,
    student: Student,
    loss: Loss,
    noise: torch.Tensor,
    targets: torch.Tensor,
    prompts: torch.Tensor,
    validation: torch.Tensor,
    candidates: Mapping[str, torch.Tensor],
    sigma_range: tuple[float, float] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    on_best: Callable[[TrainResult], None] | None = None,
    incumbent: Schedule | None = None,
) -> TrainResult:
    """Learn a schedule so the student lands where the teacher does; ``sigma_range`` bounds m and u.

    ``incumbent`` (the schedule already saved under this run's name) is scored on the validation samples
    first; ``result.beats_incumbent`` says whether this run's pick is better, and only then should
    ``on_best`` write it over the saved one.
    """
    n = config.steps
    if not candidates:
        raise LD3InputError(
            "scheduler", "no initial schedule to start from", "Give at least one built-in schedule"
        )
    for name, sig in candidates.items():
        if sig.numel() != n + 1:
            raise LD3InputError(
                "steps",
                f"initial schedule '{name}' has {sig.numel() - 1} steps, not {n}",
                "Use one step count",
            )
    train_idx = [i for i in range(len(noise)) if not bool(validation[i])]
    val_idx = [i for i in range(len(noise)) if bool(validation[i])]
    if not train_idx or not val_idx:
        raise LD3InputError(
            "teacher", "needs both training and validation samples", "Generate at least 2 teacher samples"
        )

    targets = loss.prepare(targets)

    def validate(schedule: Schedule) -> torch.Tensor:
        return _losses(student, loss, noise, targets, prompts, val_idx, schedule, config.eval_batch_size)

    # Initialisation (paper Sec. 3.4): the best built-in schedule on the validation set.
    candidate_values = {
        name: validate(Schedule.plain(sig.float()))
        for name, sig in candidates.items()
        if bool((sig[:-1] > sig[1:]).all())
    }
    candidate_losses = {name: float(v.mean()) for name, v in candidate_values.items()}
    finite = {k: v for k, v in candidate_losses.items() if math.isfinite(v)}
    if not finite:
        raise LD3TrainingError("every initial schedule gave a NaN/Inf loss; check the model and teacher data")
    init_name = min(finite, key=finite.get)
    init_sigmas = candidates[init_name].float()

    params = ScheduleParameters(
        init_sigmas, config.freedom, sigma_range, config.first_offset, pin_first=bool(config.pin_first)
    )
    opt_steps, opt_offsets = make_optimizers(config, params)
    noise_prime = noise.clone().float().requires_grad_(True)
    radius = ball_radius(config.soft_gamma, noise[0].numel(), n)
    soft = radius > 0
    opt_noise = torch.optim.SGD([noise_prime], lr=config.lr_noise or 12.0 / n)
    best_state = params.state()

    result = TrainResult(
        schedule=Schedule.plain(init_sigmas.clone()),
        initial_schedule=Schedule.plain(init_sigmas.clone()),
        best_validation_loss=finite[init_name],
        initial_scheduler=init_name,
        initial_validation_loss=finite[init_name],
        candidate_losses=candidate_losses,
        validation_losses=candidate_values[init_name],
        initial_validation_losses=candidate_values[init_name],
    )
    if incumbent is not None:
        if len(incumbent.step_sigmas) != n + 1:
            raise ValueError(f"the incumbent schedule has {len(incumbent.step_sigmas) - 1} steps, not {n}")
        incumbent_loss = float(validate(incumbent).mean())
        result.incumbent = incumbent
        result.incumbent_validation_loss = incumbent_loss if math.isfinite(incumbent_loss) else math.inf
    if on_best is not None:
        on_best(result)

    generator = torch.Generator().manual_seed(config.seed)
    total = config.epochs * len(_batches(train_idx, prompts, config.batch_size, None))
    iteration, since_best, since_decay = 0, 0, 0
    for epoch in range(config.epochs):
        phase2 = epoch >= config.epochs_phase1
        for batch, prompt in _batches(train_idx, prompts, config.batch_size, generator):
            out = student(noise_prime[batch], prompt, params.schedule(phase2))
            batch_loss = loss(out, targets[batch]).mean()
            _finite_or_raise(batch_loss.detach(), "the loss", iteration, epoch)
            for opt in (opt_steps, opt_offsets, opt_noise):
                if opt is not None:
                    opt.zero_grad(set_to_none=True)
            batch_loss.backward()
            trained = [params.step_logits] + (params.offset_parameters() if phase2 else [])
            for p in trained:
                if p.grad is not None:
                    _finite_or_raise(p.grad, "a gradient", iteration, epoch)
                    torch.nn.utils.clip_grad_norm_([p], config.grad_clip)
            opt_steps.step()
            if phase2 and opt_offsets is not None:
                opt_offsets.step()
            params.project()
            if soft:
                opt_noise.step()
                with torch.no_grad():
                    noise_prime[batch] = project_to_ball(noise_prime[batch], noise[batch], radius)
            result.train_curve.append(batch_loss.item())
            iteration += 1
            if on_progress is not None:
                on_progress(Progress(iteration, total, epoch, result.train_curve[-1], None))

        # Validation after each epoch with the hard loss (x'_T = x_T): what users sample, and how the
        # starting schedule was scored, so the best-by-validation choice that includes the start is fair.
        schedule = params.schedule(phase2).detach()
        values = validate(schedule)
        val_loss = float(values.mean())
        _finite_or_raise(torch.tensor(val_loss), "the validation loss", iteration, epoch)
        result.validation_curve.append(val_loss)
        result.epochs_done = epoch + 1
        if val_loss < result.best_validation_loss:
            result.best_validation_loss = val_loss
            result.schedule = schedule
            result.validation_losses = values
            best_state = params.state()
            since_best = since_decay = 0
            if on_best is not None:
                on_best(result)
        else:
            since_best += 1
            since_decay += 1
        if since_decay >= config.decay_patience:
            # A plateau (or a step off a cliff: multimodal data has them): smaller steps, from the best
            # parameters so far with fresh optimiser state where the recipe says so.
            since_decay = 0
            rates = [_lr(opt) for opt in (opt_steps, opt_offsets)]
            if config.restore_best:
                params.load_state(best_state)
                opt_steps, opt_offsets = make_optimizers(config, params)
            floors = (config.min_lr_steps, config.min_lr_offsets)
            for opt, rate, floor in zip((opt_steps, opt_offsets), rates, floors):
                if opt is not None:
                    for group in opt.param_groups:
                        group["lr"] = max(rate * config.decay_factor, floor)
        if on_progress is not None:
            on_progress(Progress(iteration, total, epoch, None, val_loss))
        if config.stop_patience is not None and since_best >= config.stop_patience:
            result.stopped_early = epoch + 1 < config.epochs
            break
    # The verdict, and what the step sigmas alone (a SIGMAS output used without the MODEL) would give.
    if result.schedule.is_plain:
        steps_only = result.validation_losses
    else:
        steps_only = validate(Schedule.plain(result.schedule.step_sigmas))
    result.verdict = judge(
        result.validation_losses, result.initial_validation_losses, init_name, steps_only, seed=config.seed
    )
    result.completed = True
    return result
