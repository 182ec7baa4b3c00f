"""Is the learned schedule better than the best built-in one? A paired comparison on teacher samples.

Both schedules are scored on the same teacher samples, so the comparison is paired: the ratio of
mean losses, the share of samples the learned schedule does better on, and a one-sided sign-flip
permutation test (no distributional assumption; the p-value is exact up to the Monte-Carlo error of
``PERMUTATIONS`` random sign flips, with a fixed seed so it is reproducible) of the per-sample log ratio
log(built-in loss / learned loss). The learned schedule is used only when its mean loss is lower and the
gain is significant: it was chosen as the best of many validations, so a small, noisy gain is not evidence
enough to replace a built-in schedule.

Why the log ratio and not the difference of losses: few-step errors are heavy-tailed (a sample that
lands in another mode has 10-100x the typical error), so a test of the mean difference is decided by
one or two samples. On the benchmark's exact mixtures it handed back the built-in in 3 of 108 runs whose
learned schedule was 0.31-0.69x the built-in's error on 512 held-out noises (better on 20-22 of 25
validation samples, p = 0.05-0.15). The log ratio weighs every sample alike; the mean ratio must still be
below 1, so a schedule that is better on most samples but worse on average is not used.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

ALPHA = 0.05
PERMUTATIONS = 20_000
# What the samples are: fresh noises the teacher solved once training had ended (nothing trained or chose
# on them), or the validation samples (which chose the schedule: an optimistic figure).
FRESH, VALIDATION = "fresh", "validation"


@dataclass(frozen=True)
class Verdict:
    """The learned schedule against the best built-in on the teacher samples ``on`` names."""

    builtin: str  # the best built-in schedule's name
    samples: int
    ratio: float  # mean learned loss / mean built-in loss (< 1: learned is better)
    win_rate: float  # share of samples where the learned schedule's loss is lower
    p_value: float  # one-sided: probability of a gain this large if neither were better (log ratios)
    use_learned: bool  # better and significantly so: the outputs carry the learned schedule
    # The learned step sigmas alone (the SIGMAS output without the MODEL's per-step sigmas).
    steps_only_ratio: float | None = None
    on: str = VALIDATION  # FRESH or VALIDATION samples
    learned_loss: float | None = None  # the weighted mean losses behind ``ratio``
    builtin_loss: float | None = None

    @property
    def significant(self) -> bool:
        return self.p_value < ALPHA

    def as_dict(self) -> dict:
        """JSON-safe: a non-finite number (a schedule that fails on a sample) becomes None."""
        return {
            k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in asdict(self).items()
        }

    def summary(self, sampler: str, steps: int) -> str:
        """One line a user reads on the canvas."""
        wins = round(self.win_rate * self.samples)
        if self.on == FRESH:
            where = f"on {self.samples} fresh noises the teacher solved after training (none trained or chosen on)"
        else:
            where = (
                "on the teacher's validation samples (training chose it on them: expect less on new noises)"
            )
        evidence = f"better on {wins}/{self.samples}, {_p_text(self.p_value)}"
        if self.use_learned:
            return (
                f"LD3 {sampler} {steps} steps: the learned schedule has {self.ratio:.2f}x the error of the best "
                f"built-in ({self.builtin}) {where}; {evidence}."
            )
        if not math.isfinite(self.ratio):
            why = "the learned schedule gives NaN/Inf on some of them"
        elif self.ratio < 1:
            why = f"{self.ratio:.2f}x, {evidence}: not a significant gain"
        elif wins > self.samples / 2:
            why = f"{self.ratio:.2f}x: better on {wins}/{self.samples} samples but worse on average (a few samples much worse)"
        else:
            why = f"{self.ratio:.2f}x, {evidence}"
        return (
            f"LD3 {sampler} {steps} steps: no gain over the best built-in ({self.builtin}) {where}: {why}. The "
            f"outputs carry {self.builtin}. More teacher samples or another step count may help."
        )


def _p_text(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def judge(
    learned: torch.Tensor,
    builtin: torch.Tensor,
    builtin_name: str,
    steps_only: torch.Tensor | None = None,
    seed: int = 0,
    weights: torch.Tensor | None = None,
    on: str = VALIDATION,
) -> Verdict:
    """Compare per-sample losses (paired, same samples in the same order) on the samples ``on`` names.

    ``weights`` (summing to 1; default equal): each sample's share in the means and in the test, e.g.
    pairs picked where the schedules part most stand for the share of the pool they were drawn from.
    """
    learned, builtin = learned.double().flatten(), builtin.double().flatten()
    if learned.shape != builtin.shape or learned.numel() == 0:
        raise ValueError(f"paired losses needed, got {tuple(learned.shape)} and {tuple(builtin.shape)}")
    if not bool(torch.isfinite(learned).all()):  # fails on a sample: never used, whatever the others say
        learned = torch.where(torch.isfinite(learned), learned, torch.full_like(learned, math.inf))
    if weights is None or weights.numel() != learned.numel():
        weights = torch.full_like(learned, 1.0 / learned.numel())
    weights = weights.double().flatten() / weights.double().sum()
    base = float((weights * builtin).sum())
    learned_mean = float((weights * learned).sum())
    ratio = learned_mean / base if base > 0 else (1.0 if learned_mean == 0 else float("inf"))
    diff = builtin - learned  # > 0 where the learned schedule is better
    tiny = torch.finfo(torch.float64).tiny
    log_ratio = builtin.clamp_min(tiny).log() - learned.clamp_min(tiny).log()
    p_value = _sign_flip_p_value(log_ratio * weights * learned.numel(), seed)
    steps_only_ratio = None
    if steps_only is not None and base > 0:
        steps_only_ratio = float((weights * steps_only.double().flatten()).sum()) / base
    return Verdict(
        builtin=builtin_name,
        samples=learned.numel(),
        ratio=ratio,
        win_rate=float((diff > 0).double().mean()),
        p_value=p_value,
        use_learned=ratio < 1 and p_value < ALPHA,
        steps_only_ratio=steps_only_ratio,
        on=on,
        learned_loss=learned_mean,
        builtin_loss=base,
    )


def _sign_flip_p_value(diff: torch.Tensor, seed: int) -> float:
    """P(mean of randomly sign-flipped differences >= the observed mean), one-sided."""
    observed = float(diff.mean())
    if not diff.abs().gt(0).any():
        return 1.0
    gen = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (PERMUTATIONS, diff.numel()), generator=gen, dtype=torch.int8)
    flipped = ((signs.double() * 2 - 1) * diff).mean(1)
    # The tolerance keeps ties (e.g. every flip of an all-equal difference) on the conservative side.
    extreme = int((flipped >= observed - 1e-12 * abs(observed)).sum())
    return (1 + extreme) / (1 + PERMUTATIONS)
