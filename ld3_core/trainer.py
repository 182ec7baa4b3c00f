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
from .resample import resample_log_linear
from .schedule import Schedule
from .verdict import FRESH, VALIDATION, Verdict, judge

# student(noise [B,...], prompt index, schedule) -> endpoint [B,...]
Student = Callable[[torch.Tensor, int, Schedule], torch.Tensor]
# reference(noise [B,...], prompt index) -> the teacher's endpoint [B,...] for new noises
Reference = Callable[[torch.Tensor, int], torch.Tensor]


class Loss(Protocol):
    """``prepare(teacher endpoints)`` once, then ``loss(student endpoints, prepared[batch]) -> [B]``."""

    def prepare(self, targets: torch.Tensor) -> torch.Tensor: ...

    def __call__(self, out: torch.Tensor, prepared: torch.Tensor) -> torch.Tensor: ...


class LD3TrainingError(RuntimeError):
    """Training could not go on (non-finite loss or gradients); the best schedule so far was reported."""


NON_FINITE_RETRIES = 3  # non-finite steps in a row that restart from the best parameters before giving up


@dataclass(frozen=True)
class TrainConfig:
    """How a schedule is learned. ``TrainConfig.preset(name, steps)`` gives a named recipe."""

    steps: int
    recipe: str = "ld3"  # the preset these settings came from (recorded with the schedule)
    freedom: str = "full"  # what the network is told per step: "full", "window" (paper) or "steps"
    optimizer: str = "adam"  # "adam" (all parameters) or "rmsprop" (paper: RMSprop steps, SGD offsets)
    soft_gamma: float = 0.0  # soft teacher forcing: r = gamma * d / NFE^2; 0 = hard
    # Step sigmas only, to their own plateau; phase 2 then starts from their best as a fresh run would.
    # Ten epochs first (the oracle's order), 16 weakest mixture cells x 3 seeds (side_by_side.md): EPS
    # uni_pc 6 0.69x -> 0.46x the best built-in, Flux ipndm 8 0.41x -> 0.53x; mean share 86 % -> 84 %.
    epochs_phase1: int = 0
    epochs_phase2: int = 40  # + what the network is told
    batch_size: int = 5  # samples per iteration (samples of one prompt share a batch)
    # Samples per call when nothing is differentiated (scoring the built-in schedules, validation).
    eval_batch_size: int = 8
    lr_steps: float = 0.03  # step logits
    lr_offsets: float | None = None  # log-sigma offsets; None: 0.015 (adam) / 0.01 / NFE (rmsprop)
    lr_noise: float | None = None  # SGD on x'_T; None -> 12 / NFE
    # m_0 and u_0 start this far below sigma_max (log units; "full" with the first step free: flow models).
    # -0.1 (0.905 on a flow model) starts them inside the range the Flux mixture's optima tell the first
    # step (0.61-1.0 of its step sigma, below 0.97 in 14 of 18 cells), not at its edge, where the gradient
    # vanishes: a start, not a target (the dpmpp_2m NFE 8 optimum reached from the schedules learned with
    # it tells it 0.97 / 0.99, in a better basin). 18 Flux mixture cells x 3 seeds against -0.02
    # (bench/results/side_by_side.md): dpmpp_2m NFE 8 0.55x -> 0.38x the best built-in, the others within
    # the seeds' spread; mean share of the achievable gain 87 % -> 88 %, >= 80 % in 15 cells (was 14).
    first_offset: float = -0.1
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
    # Hard-example mining: once training settles, the learned schedule and the best built-in solve
    # ``mining_pool`` x (teacher samples) fresh noises; the teacher (when the caller gives a
    # ``reference``) solves the ``mining_pairs`` x (teacher samples) where the two part most; those pairs
    # join training and validation (weighted as the share of the pool they stand for) and training goes
    # on for up to ``mining_epochs`` (None: half of ``epochs_phase2``, at least 1). Why: on multimodal
    # data 1-2 % of noises land in another mode under a learned schedule, none of 25 validation samples
    # shows it, and they decide the mean error (Flux mixture, ipndm NFE 8: median 0.3x the best
    # built-in, mean 1.0x). 200 random teacher pairs instead of 50 took the Flux mixture's 15 weakest
    # cells from a mean share of the achievable gain of 70 % to 87 %. Mining (2 x 10 teacher solves where
    # they matter), 36 mixture cells x 3 seeds side by side: mean share 77 % -> 84 %, >= 80 % in 27 cells
    # (was 23), worst cell 0.96x -> 0.62x the best built-in; Flux 15 of 18 cells (was 10), EPS 12 of 18
    # (was 13: at NFE 8 uni_pc 0.35x -> 0.61x, where the built-in's error is of the order of the teacher's
    # own on the hard noises). Mining only noises that part by more than any validation sample's error
    # did worse (81 %, 26 cells, worst 0.88x). Three rounds of 60 % (pairs from a pool of 6 x the teacher
    # samples: 90 more teacher solves for 50 samples) instead of two of 20 % (pool 4 x): on the 16 weakest
    # mixture cells x 3 seeds, side by side, mean share 78 % -> 86 %, >= 80 % in 11 cells (was 7), worst
    # 0.62x -> 0.59x; on 12 euler / deis cells unchanged (90 %, all >= 80 %); training ~2.5x longer.
    # Picking fewer, more extreme noises (10 of a pool of 16 x) did worse (74 %), and fewer epochs after
    # each round (8) kept little of the gain (81 %, 7 cells): the learned schedule needs the extra data,
    # and time to fit it.
    mining_rounds: int = 3
    mining_pool: float = 6.0
    mining_pairs: float = 0.6
    mining_epochs: int | None = None
    # What mining measures the learned schedule against on the pool: the start schedule ("builtin") or
    # the start schedule resampled to twice the steps ("finer", twice the calls on the pool; closer to
    # the exact endpoint for dpmpp_2m and ipndm, not for uni_pc and heun). Measured on the 16 weakest
    # mixture cells x 3 seeds (bench/results/side_by_side.md): "finer" lifts the EPS cells but heun (the
    # 8 EPS cells' mean share 80 % -> 84 %; uni_pc 6 39 % -> 63 %) and costs the Flux ones (92 % -> 83 %):
    # not the default. Picking by the teacher's own error on the pool did no better (same file).
    mining_against: str = "builtin"
    # The verdict's samples. Validation chose the learned schedule among many (each epoch of each start)
    # and holds the mined pairs it trained on, so judged there a schedule looks better than it is: on six
    # Flux mixture cells x 3 seeds (heun 6 / 8, ipndm 8, euler 8, deis 4, uni_pc 6) the validation ratio
    # was 0.82x the ratio on the 512 held-out noises (geometric mean; 0.48-1.54x), on these fresh pairs
    # 0.97x (0.47-2.05x: unbiased, and as noisy: a few noises decide these cells' means). Where the
    # teacher can solve new noises (a ``reference``), once training has ended it solves ``check_pairs``
    # x (teacher samples) fresh ones and the verdict judges on them alone: the ``check_extreme`` share of
    # them where the learned schedule and the start part most among ``mining_pool`` x (teacher samples)
    # fresh noises (the rare noises that decide the mean), the others drawn at random from the rest of
    # that pool, each weighted as the share of the pool it stands for. 0: judged on validation.
    check_pairs: float = 0.8
    check_extreme: float = 0.3
    # Starts: training runs from each of the ``starts`` best built-in schedules (by validation; near-equal
    # ones count once) in turn, each with its own early stopping, and the best schedule by validation over
    # all of them goes on to mining (the verdict still compares with the best built-in). Why: the learned
    # schedules of the weak mixture cells were worse than the achievable one on their own teacher pairs,
    # not only on held-out noises (Flux euler NFE 4: 0.43x the best built-in's training error, the
    # optimum 0.29x): a local search, and the start decides its basin. 11 weakest mixture cells x 3
    # seeds, side by side (bench/results/side_by_side.md): 3 starts took the mean ratio from 0.433 to
    # 0.404 (better in 7 cells, worse in 4; EPS dpmpp_2m NFE 8 0.35x -> 0.24x, Flux ipndm NFE 8
    # 0.46x -> 0.51x), 1.3x the training time; with 5 mining rounds as well 0.390, 2.1x the time.
    starts: int = 3
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
        if self.starts < 1:
            raise ValueError(f"starts must be at least 1, got {self.starts}")
        if not (self.check_pairs >= 0 and 0 < self.check_extreme < 1):
            raise ValueError(
                f"check_pairs must be >= 0 and check_extreme in (0, 1), got {self.check_pairs}, {self.check_extreme}"
            )
        if self.mining_against not in ("builtin", "finer"):
            raise ValueError(f"mining_against must be 'builtin' or 'finer', got {self.mining_against!r}")
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

    @property
    def epochs_per_mining_round(self) -> int:
        return self.mining_epochs if self.mining_epochs is not None else max(1, self.epochs_phase2 // 2)

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
        "mining_rounds": 0,
        "starts": 1,
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
    # Each validation sample's weight in the validation loss (sums to 1; mined pairs weigh their share).
    validation_weights: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    mined_pairs: int = 0  # teacher pairs added by hard-example mining (training and validation)
    mining_pool: int = 0  # fresh noises they were picked from
    # The fresh teacher pairs the verdict judged on (``TrainConfig.check_pairs``), the fresh noises they
    # were picked from, and how many of them where the learned schedule and the start part most.
    check_pairs: int = 0
    check_pool: int = 0
    check_extreme: int = 0
    validation_curve: list[float] = field(default_factory=list)  # one value per epoch, after it
    train_curve: list[float] = field(default_factory=list)  # one value per iteration
    epochs_done: int = 0
    completed: bool = False
    stopped_early: bool = False
    verdict: Verdict | None = None  # learned vs the best built-in, once training has ended
    # For the user: warnings (shown right under the verdict: they qualify it) and notes (after it).
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # The schedule already saved under the run's name (same sampler and steps), scored on the same
    # validation samples: only a better one replaces it.
    incumbent: Schedule | None = None
    incumbent_validation_loss: float = math.inf
    # The built-ins training started from (``TrainConfig.starts``, best first) and the one whose run the
    # learned schedule comes from.
    starts: list[str] = field(default_factory=list)
    winning_start: str = ""

    @property
    def at_start(self) -> bool:
        """Whether nothing beat the start yet: the schedule is still the best built-in it started from."""
        return self.schedule.is_plain and torch.equal(
            self.schedule.step_sigmas, self.initial_schedule.step_sigmas
        )

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
        """What the user reads: the verdict, warnings, what the SIGMAS output alone gives, notes, where it was saved."""
        lines = []
        if self.verdict is not None:
            lines.append(self.verdict.summary(sampler, steps))
        lines += [f"WARNING: {text}" for text in self.warnings]
        if self.verdict is not None:
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


@dataclass
class Attempt:
    """One start of a training run: its parameters, optimisers and its own best validation loss."""

    name: str  # the built-in it started from
    params: ScheduleParameters
    state: TrainingLoop
    best_loss: float


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
    reference: Reference | None = None,
) -> TrainResult:
    """Learn a schedule so the student lands where the teacher does; ``sigma_range`` bounds m and u.

    ``incumbent`` (the schedule already saved under this run's name) is scored on the validation samples
    first; ``result.beats_incumbent`` says whether this run's pick is better, and only then should
    ``on_best`` write it over the saved one. ``reference`` (the teacher, for new noises) enables the
    hard-example mining of ``TrainConfig.mining_rounds``.
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

    data = TrainingData(noise, loss.prepare(targets), prompts.clone(), train_idx, val_idx)

    def validate(schedule: Schedule) -> torch.Tensor:
        return _losses(
            student,
            loss,
            data.noise,
            data.targets,
            data.prompts,
            data.val_idx,
            schedule,
            config.eval_batch_size,
        )

    # Initialisation (paper Sec. 3.4): the best built-in schedule on the validation set.
    candidate_values = {
        name: validate(Schedule.plain(sig.float()))
        for name, sig in candidates.items()
        if bool((sig[:-1] > sig[1:]).all())
    }
    candidate_losses = {name: data.mean(v) for name, v in candidate_values.items()}
    finite = {k: v for k, v in candidate_losses.items() if math.isfinite(v)}
    if not finite:
        raise LD3TrainingError("every initial schedule gave a NaN/Inf loss; check the model and teacher data")
    ranked = sorted(finite, key=finite.get)
    init_name = ranked[0]
    init_sigmas = candidates[init_name].float()
    radius = ball_radius(config.soft_gamma, noise[0].numel(), n)

    def attempt(name: str) -> Attempt:
        params = ScheduleParameters(
            candidates[name].float(),
            config.freedom,
            sigma_range,
            config.first_offset,
            pin_first=bool(config.pin_first),
        )
        loop = TrainingLoop(params, config, data.noise, init_state=params.state())
        return Attempt(name, params, loop, finite[name])

    distinct = []  # built-ins that differ (several schedulers give about the same sigmas)
    for name in ranked:
        if not any(
            torch.allclose(candidates[name].float(), candidates[o].float(), rtol=1e-2) for o in distinct
        ):
            distinct.append(name)
    names = distinct[: config.starts]
    # Built when its turn comes (each holds its own copy of the start noises): the first, then the others;
    # one that loses is dropped.
    first = attempt(names[0])
    winner = first  # the run whose best is the result's (the best built-in's until one beats it)

    result = TrainResult(
        schedule=Schedule.plain(init_sigmas.clone()),
        initial_schedule=Schedule.plain(init_sigmas.clone()),
        best_validation_loss=finite[init_name],
        initial_scheduler=init_name,
        initial_validation_loss=finite[init_name],
        candidate_losses=candidate_losses,
        validation_losses=candidate_values[init_name],
        initial_validation_losses=candidate_values[init_name],
        validation_weights=data.weights(),
        starts=list(names),
    )
    if incumbent is not None:
        if len(incumbent.step_sigmas) != n + 1:
            raise ValueError(f"the incumbent schedule has {len(incumbent.step_sigmas) - 1} steps, not {n}")
        result.incumbent = incumbent
        result.incumbent_validation_loss = _finite_or_inf(data.mean(validate(incumbent)))
    if on_best is not None:
        on_best(result)

    generator = torch.Generator().manual_seed(config.seed)
    per_epoch = len(_batches(train_idx, prompts, config.batch_size, None))
    mining = reference is not None and config.mining_rounds > 0 and config.freedom != "steps"
    rounds = config.mining_rounds if mining else 0
    grown = math.ceil(len(train_idx) + rounds * config.mining_pairs * len(noise))
    total = len(names) * config.epochs * per_epoch + rounds * config.epochs_per_mining_round * math.ceil(
        grown / config.batch_size
    )

    def run_epochs(run: Attempt, first_epoch: int, epochs: int, before: int = 0) -> None:
        """Train ``run`` for up to ``epochs`` epochs, keeping the best schedule by validation (early
        stopping on its own best; the result keeps the best of every run). ``before``: epochs the
        earlier starts trained."""
        nonlocal winner
        params, state = run.params, run.state
        since_best = since_decay = 0
        for epoch in range(first_epoch, first_epoch + epochs):
            phase2 = epoch >= config.epochs_phase1
            for batch, prompt in _batches(data.train_idx, data.prompts, config.batch_size, generator):
                at = (len(result.train_curve), epoch)
                try:
                    batch_loss = state.step(student, loss, data, batch, prompt, phase2, radius, at)
                except LD3TrainingError:
                    # A step off a cliff (e.g. two step sigmas so close that a multistep solver's
                    # coefficients blow up): back to the best parameters with smaller steps; only a
                    # failure that persists ends the run.
                    state.failures += 1
                    if state.failures > NON_FINITE_RETRIES:
                        raise
                    state.decay()
                    continue
                state.failures = 0
                result.train_curve.append(batch_loss)
                if on_progress is not None:
                    on_progress(Progress(len(result.train_curve), total, epoch, batch_loss, None))

            # Validation after each epoch with the hard loss (x'_T = x_T): what users sample, and how the
            # starting schedule was scored, so the best-by-validation choice that includes the start is fair.
            schedule = params.schedule(phase2).detach()
            values = validate(schedule)
            val_loss = data.mean(values)
            if not math.isfinite(val_loss):  # this schedule fails on a validation sample: not a candidate
                state.failures += 1
                if state.failures > NON_FINITE_RETRIES:
                    _finite_or_raise(
                        torch.tensor(val_loss), "the validation loss", len(result.train_curve), epoch
                    )
                val_loss = math.inf
            else:  # the curve (plotted, saved with the schedule) holds finite values only
                result.validation_curve.append(val_loss)
            result.epochs_done = before + epoch + 1
            if val_loss < run.best_loss:
                run.best_loss = val_loss
                state.best = params.state()
                since_best = since_decay = 0
                if val_loss < result.best_validation_loss:
                    result.best_validation_loss = val_loss
                    result.schedule = schedule
                    result.validation_losses = values
                    winner = run
                    if on_best is not None:
                        on_best(result)
            else:
                since_best += 1
                since_decay += 1 if math.isfinite(val_loss) else config.decay_patience
            if since_decay >= config.decay_patience:
                # A plateau (or a step off a cliff: multimodal data has them): smaller steps, from the best
                # parameters so far with fresh optimiser state where the recipe says so.
                since_decay = 0
                state.decay()
            if on_progress is not None:
                on_progress(Progress(len(result.train_curve), total, epoch, None, val_loss))
            if config.stop_patience is not None and since_best >= config.stop_patience:
                result.stopped_early = epoch + 1 < first_epoch + epochs
                break

    for index, name in enumerate(names):
        run = first if index == 0 else attempt(name)
        before = result.epochs_done
        if config.epochs_phase1 and config.restore_best:
            # The step sigmas alone first, to their own plateau; then every sigma from the best of them, as
            # a fresh run would start (phase 1's plateau must not stop phase 2, nor its decays slow it). The
            # paper's recipe, which never goes back to the best parameters, runs straight on (unchanged).
            run_epochs(run, 0, config.epochs_phase1, before)
            run.state.begin_phase2()
            result.stopped_early = False  # a plateau of the step sigmas alone ends phase 1, not the run
            run_epochs(run, config.epochs_phase1, config.epochs_phase2, before)
        else:
            run_epochs(run, 0, config.epochs, before)
    params, state = winner.params, winner.state
    for round_index in range(rounds):
        added = _mine(config, student, loss, data, result, params, reference, round_index)
        result.mined_pairs += added
        result.mining_pool += math.ceil(config.mining_pool * len(noise))
        if not added:
            break
        # Every schedule is judged on the grown validation set: the best so far, the start, the incumbent.
        result.validation_weights = data.weights()
        result.initial_validation_losses = validate(result.initial_schedule)
        result.initial_validation_loss = data.mean(result.initial_validation_losses)
        if result.incumbent is not None:
            result.incumbent_validation_loss = _finite_or_inf(data.mean(validate(result.incumbent)))
        if result.at_start:
            result.validation_losses = result.initial_validation_losses
            state.best = state.init_state
        else:
            result.validation_losses = validate(result.schedule)
        result.best_validation_loss = data.mean(result.validation_losses)
        if result.initial_validation_loss <= result.best_validation_loss:
            winner = first  # the run that started from the best built-in goes on from it
            params, state = winner.params, winner.state
            result.schedule, state.best = result.initial_schedule, state.init_state
            result.best_validation_loss, result.validation_losses = (
                result.initial_validation_loss,
                result.initial_validation_losses,
            )
        winner.best_loss = result.best_validation_loss
        state.restart()
        run_epochs(winner, result.epochs_done, config.epochs_per_mining_round)
    result.winning_start = winner.name

    # The verdict, and what the step sigmas alone (a SIGMAS output used without the MODEL) would give: on
    # fresh teacher pairs where the teacher can solve them, else on validation.
    check = None
    if reference is not None and config.check_pairs > 0 and not result.at_start:
        check = _fresh_check(config, student, loss, data, result, reference)
    if check is None:
        on, weights, learned, builtin = (
            VALIDATION,
            result.validation_weights,
            result.validation_losses,
            result.initial_validation_losses,
        )
        score = validate
    else:
        on, weights = FRESH, check.weights
        result.check_pairs, result.check_pool, result.check_extreme = (
            len(check.noise),
            check.pool,
            check.extreme,
        )

        def score(schedule: Schedule) -> torch.Tensor:
            indices = list(range(len(check.noise)))
            return _losses(
                student,
                loss,
                check.noise,
                check.targets,
                check.prompts,
                indices,
                schedule,
                config.eval_batch_size,
            )

        learned, builtin = score(result.schedule), score(result.initial_schedule)
    steps_only = learned if result.schedule.is_plain else score(Schedule.plain(result.schedule.step_sigmas))
    result.verdict = judge(
        learned,
        builtin,
        init_name,
        steps_only,
        seed=config.seed,
        weights=weights,
        on=on,
        pool=None if check is None else check.pool,
        census=0 if check is None else check.extreme,
    )
    result.completed = True
    return result


def _finite_or_inf(value: float) -> float:
    return value if math.isfinite(value) else math.inf


class TrainingData:
    """The samples as training goes on: unit noise, prepared targets, prompts, which train / validate,
    and each validation sample's weight (mined pairs stand for the share of a pool they were drawn from)."""

    def __init__(self, noise, targets, prompts, train_idx: list[int], val_idx: list[int]):
        self.noise, self.targets, self.prompts = noise, targets, prompts
        self.train_idx, self.val_idx = list(train_idx), list(val_idx)
        self.base_validation = len(val_idx)
        self.strata: list[tuple[int, float]] = []  # (samples, share of the noise distribution) per round

    @property
    def base_samples(self) -> int:
        """The teacher's own samples (before any mined ones)."""
        return len(self.noise) - sum(count for count, _ in self.strata)

    def add(self, noise, targets, prompts, share: float) -> None:
        """Pairs drawn as the ``share`` of noises where the schedule looked worst: train and validate."""
        start = len(self.noise)
        self.noise = torch.cat([self.noise, noise.to(self.noise)])
        self.targets = torch.cat([self.targets, targets.to(self.targets)])
        self.prompts = torch.cat([self.prompts, prompts.to(self.prompts)])
        new = list(range(start, start + len(noise)))
        self.train_idx += new
        self.val_idx += new
        self.strata.append((len(noise), share))

    def weights(self) -> torch.Tensor:
        """Per validation sample, its weight in an estimate of the mean over all noises (sums to 1)."""
        rest = 1.0 - sum(share for _, share in self.strata)
        parts = [torch.full((self.base_validation,), rest / self.base_validation, dtype=torch.float64)]
        parts += [torch.full((count,), share / count, dtype=torch.float64) for count, share in self.strata]
        return torch.cat(parts)

    def mean(self, values: torch.Tensor) -> float:
        return float((values.double() * self.weights()).sum())


class TrainingLoop:
    """The optimisers, the soft-teacher-forcing noise x'_T and the best parameters of one run."""

    def __init__(self, params: ScheduleParameters, config: TrainConfig, noise, init_state):
        self.params, self.config = params, config
        self.init_state = init_state
        self.best = init_state
        self.failures = 0  # non-finite steps in a row
        self.opt_steps, self.opt_offsets = make_optimizers(config, params)
        self._noise_prime(noise)

    def _noise_prime(self, noise) -> None:
        self.noise_prime = noise.clone().float().requires_grad_(True)
        self.opt_noise = torch.optim.SGD(
            [self.noise_prime], lr=self.config.lr_noise or 12.0 / self.config.steps
        )

    def step(
        self,
        student,
        loss,
        data: TrainingData,
        batch,
        prompt,
        phase2: bool,
        radius: float,
        at: tuple = (0, 0),
        clock: Callable[[str], None] | None = None,
    ) -> float:
        """One iteration of Algorithm 1 on ``batch``: the loss before the update.

        ``clock(name)``, if given, is called as each part ends: "forward" (the student's solve), "loss",
        "loss_backward" (from a gradient hook on the student's output), "backward", "optimiser"; and
        "start" first. bench/iteration.py times the trainer's own step with it.
        """
        tick = clock or (lambda _name: None)
        tick("start")
        if len(self.noise_prime) < len(data.noise):  # pairs were added: their x'_T starts at x_T
            grown = torch.cat([self.noise_prime.detach(), data.noise[len(self.noise_prime) :].float()])
            self._noise_prime(grown)
        params = self.params
        out = student(self.noise_prime[batch], prompt, params.schedule(phase2))
        tick("forward")
        batch_loss = loss(out, data.targets[batch]).mean()
        _finite_or_raise(batch_loss.detach(), "the loss", *at)
        tick("loss")
        if clock is not None and out.requires_grad:
            out.register_hook(lambda grad: (clock("loss_backward"), grad)[1])
        for opt in (self.opt_steps, self.opt_offsets, self.opt_noise):
            if opt is not None:
                opt.zero_grad(set_to_none=True)
        batch_loss.backward()
        tick("backward")
        trained = [params.step_logits] + (params.offset_parameters() if phase2 else [])
        for p in trained:
            if p.grad is not None:
                _finite_or_raise(p.grad, "a gradient", *at)
                torch.nn.utils.clip_grad_norm_([p], self.config.grad_clip)
        self.opt_steps.step()
        if phase2 and self.opt_offsets is not None:
            self.opt_offsets.step()
        params.project()
        if radius > 0:
            self.opt_noise.step()
            with torch.no_grad():
                self.noise_prime[batch] = project_to_ball(self.noise_prime[batch], data.noise[batch], radius)
        tick("optimiser")
        return batch_loss.item()

    def decay(self) -> None:
        """Smaller learning rates, from the best parameters with fresh optimisers if the recipe says so."""
        config = self.config
        rates = [_lr(opt) for opt in (self.opt_steps, self.opt_offsets)]
        if config.restore_best:
            self.params.load_state(self.best)
            self.opt_steps, self.opt_offsets = make_optimizers(config, self.params)
        floors = (config.min_lr_steps, config.min_lr_offsets)
        for opt, rate, floor in zip((self.opt_steps, self.opt_offsets), rates, floors):
            if opt is not None:
                for group in opt.param_groups:
                    group["lr"] = max(rate * config.decay_factor, floor)

    def restart(self) -> None:
        """From the best parameters with fresh optimisers at the recipe's learning rates."""
        self.params.load_state(self.best)
        self.opt_steps, self.opt_offsets = make_optimizers(self.config, self.params)

    def begin_phase2(self) -> None:
        """From phase 1's best step sigmas with the network told those sigmas (phase 1 never trained what
        it is told, only projected it into range as the step sigmas moved) and fresh optimisers at the
        recipe's learning rates (phase 1's decays must not slow the offsets, which it never trained)."""
        self.params.load_state(self.best)
        self.params.tell_the_step_sigmas()
        self.best = self.params.state()
        self.opt_steps, self.opt_offsets = make_optimizers(self.config, self.params)


def _mine(
    config, student, loss, data: TrainingData, result: TrainResult, params, reference, round_index: int
) -> int:
    """One round of hard-example mining (``TrainConfig.mining_rounds``): pairs added to ``data``."""
    base = data.base_samples
    pool_size = math.ceil(config.mining_pool * base)
    picks = min(pool_size, max(1, round(config.mining_pairs * base)))
    learned = result.schedule
    if result.at_start:
        learned = params.schedule(True).detach()  # nothing beat the start yet: where training went
    pool, pool_prompts = _fresh_noises(data, pool_size, _stream(config, round_index))
    against = result.initial_schedule
    if config.mining_against == "finer":
        against = Schedule.plain(resample_log_linear(against.step_sigmas, 2 * against.steps))
    apart = _parting(config, student, loss, pool, pool_prompts, learned, against)
    chosen = apart.argsort(descending=True)[:picks]
    targets = _solve(config, reference, pool[chosen], pool_prompts[chosen])
    if not torch.isfinite(targets).all():
        return 0
    data.add(pool[chosen], loss.prepare(targets), pool_prompts[chosen], picks / pool_size)
    return len(chosen)


CHECK_STREAM = 500_009  # the verdict's fresh noises: a stream apart from the mining rounds' (0, 1, ...)


@dataclass(frozen=True)
class FreshCheck:
    """Teacher pairs on fresh noises for the verdict (``TrainConfig.check_pairs``), and their weights."""

    noise: torch.Tensor
    targets: torch.Tensor  # prepared by the loss
    prompts: torch.Tensor
    weights: torch.Tensor  # each pair's share of the pool it stands for (sums to 1)
    pool: int  # the fresh noises they were picked from
    extreme: int  # the first ones: where the learned schedule and the start part most


def _fresh_check(
    config, student, loss, data: TrainingData, result: TrainResult, reference
) -> FreshCheck | None:
    """The verdict's own pairs: the noises of a fresh pool where the learned schedule and the start part
    most, and a random draw from the others, solved by the teacher; None if the teacher fails on one."""
    base = data.base_samples
    pairs = max(2, round(config.check_pairs * base))
    pool_size = max(pairs, math.ceil(config.mining_pool * base))
    generator = _stream(config, CHECK_STREAM)
    pool, pool_prompts = _fresh_noises(data, pool_size, generator)
    apart = _parting(config, student, loss, pool, pool_prompts, result.schedule, result.initial_schedule)
    chosen, weights, extreme = draw_check(apart, pairs, config.check_extreme, generator)
    targets = _solve(config, reference, pool[chosen], pool_prompts[chosen])
    if not torch.isfinite(targets).all():
        return None
    return FreshCheck(pool[chosen], loss.prepare(targets), pool_prompts[chosen], weights, pool_size, extreme)


def draw_check(
    apart: torch.Tensor, pairs: int, extreme_share: float, generator
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The verdict's ``pairs`` from a pool whose noises part by ``apart``: the ``extreme_share`` of them where
    the schedules part most (every such pool noise), the others drawn at random from the rest of the pool.
    Returns their pool indices, their weights (each one's share of the pool) and how many are extreme."""
    pool = len(apart)
    extreme = min(pairs - 1, max(1, round(extreme_share * pairs)))
    order = apart.argsort(descending=True)
    rest = order[extreme:]
    chosen = torch.cat(
        [order[:extreme], rest[torch.randperm(len(rest), generator=generator)[: pairs - extreme]]]
    )
    weights = torch.cat(
        [
            torch.full((extreme,), 1.0 / pool, dtype=torch.float64),
            torch.full((pairs - extreme,), (pool - extreme) / pool / (pairs - extreme), dtype=torch.float64),
        ]
    )
    return chosen, weights, extreme


def _stream(config, index: int) -> torch.Generator:
    """Fresh noises' random stream: one per run (seed) and use (mining round, the verdict's check)."""
    return torch.Generator().manual_seed(1_000_003 * (config.seed + 1) + index)


def _fresh_noises(data: TrainingData, count: int, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` unit noises shaped like the teacher's, prompts round-robin like the teacher's."""
    noise = torch.randn((count, *data.noise.shape[1:]), generator=generator).to(data.noise)
    prompt_values = sorted({int(p) for p in data.prompts[: data.base_samples].tolist()})
    return noise, torch.tensor([prompt_values[i % len(prompt_values)] for i in range(count)])


def _parting(config, student, loss, noise, prompts, schedule: Schedule, against: Schedule) -> torch.Tensor:
    """Per noise, how far ``schedule``'s endpoint lands from ``against``'s (by the loss)."""
    apart = torch.empty(len(noise), dtype=torch.float64)
    with torch.no_grad():
        for batch, prompt in _batches(range(len(noise)), prompts, config.eval_batch_size, None):
            start = student(noise[batch], prompt, against)
            apart[batch] = loss(student(noise[batch], prompt, schedule), loss.prepare(start)).double().cpu()
    return apart


def _solve(config, reference, noise: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """The teacher's endpoints for ``noise`` (float32, CPU)."""
    targets = torch.empty((len(noise), *noise.shape[1:]), dtype=torch.float32)
    for batch, prompt in _batches(range(len(noise)), prompts, config.eval_batch_size, None):
        with torch.no_grad():
            targets[batch] = reference(noise[batch], prompt).float().cpu()
    return targets
