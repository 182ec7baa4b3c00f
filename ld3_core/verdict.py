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

On fresh noises the ratio comes with a 95 % range for new noises (``ratio_range``): the check's design is
two-phase (a pool of fresh noises; of it, a census of the noises where the schedules part most and a
random draw from the rest), so the range counts both the draw from the pool and the pool itself.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

ALPHA = 0.05
PERMUTATIONS = 20_000
Z_95 = 1.959964  # the normal distribution's two-sided 95 % quantile
# The check's ratio errs low more often than high: where a few noises carry the mean, a pool that missed
# them gives a low ratio and a low spread. Its range reaches twice as far above (in log) as below; with
# this stretch it held the ratio on 1200 noises in 86-99 % of simulated checks on 21 runs of the two
# benchmark mixtures (mean 95 %; symmetric: 62-97 %, mean 85 %, nearly every miss below the truth), see
# ``bench/verdict_range.py``.
UPPER_STRETCH = 2.0
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
    # A 95 % range of the ratio on new noises (``ratio_range``); None on validation samples, which chose
    # the schedule (no range would be honest there), or where the learned schedule fails on a sample.
    ratio_low: float | None = None
    ratio_high: float | None = None

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
        ratio = f"{self.ratio:.2f}x{range_text(self.ratio_low, self.ratio_high)}"
        if self.use_learned:
            return (
                f"LD3 {sampler} {steps} steps: the learned schedule has {ratio} the error of the best "
                f"built-in ({self.builtin}) {where}; {evidence}."
            )
        if not math.isfinite(self.ratio):
            why = "the learned schedule gives NaN/Inf on some of them"
        elif self.ratio < 1:
            why = f"{ratio}, {evidence}: not a significant gain"
        elif wins > self.samples / 2:
            why = f"{ratio}: better on {wins}/{self.samples} samples but worse on average (a few samples much worse)"
        else:
            why = f"{ratio}, {evidence}"
        return (
            f"LD3 {sampler} {steps} steps: no gain over the best built-in ({self.builtin}) {where}: {why}. The "
            f"outputs carry {self.builtin}. More teacher samples or another step count may help."
        )


def range_text(low: float | None, high: float | None) -> str:
    """The ratio's range as the verdict line and LD3 Load Sigmas print it ('' where there is none)."""
    return "" if low is None or high is None else f" (95 % range on new noises {low:.2f}-{high:.2f}x)"


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
    pool: int | None = None,
    census: int = 0,
) -> Verdict:
    """Compare per-sample losses (paired, same samples in the same order) on the samples ``on`` names.

    ``weights`` (summing to 1; default equal): each sample's share in the means and in the test, e.g.
    pairs picked where the schedules part most stand for the share of the pool they were drawn from.
    ``pool`` and ``census`` (fresh samples only): the samples were drawn from ``pool`` fresh noises, the
    first ``census`` of them being every pool noise of their kind, the others a random draw from the rest;
    with them the verdict carries a 95 % range of the ratio on new noises (``ratio_range``).
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
    low = high = None
    if pool is not None and base > 0 and math.isfinite(learned_mean):
        low, high = ratio_range(learned, builtin, weights, pool, census)
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
        ratio_low=low,
        ratio_high=high,
    )


def ratio_range(
    learned: torch.Tensor, builtin: torch.Tensor, weights: torch.Tensor, pool: int, census: int
) -> tuple[float, float]:
    """A 95 % range of mean(learned) / mean(builtin) over all noises, from a two-phase sample.

    Phase 1 drew ``pool`` noises at random; phase 2 took the first ``census`` samples (every pool noise of
    their stratum, e.g. where two schedules part most) and a random draw of the others from the rest of
    the pool; ``weights`` are each sample's share of the pool (census: 1 / pool). The ratio is linearised
    (z = (learned - ratio * builtin) / mean builtin) and its variance is the textbook two-phase one for a
    stratified second phase: the population variance of z over the pool size, plus the draw's own
    variance within the rest of the pool. The range is taken on the log ratio (it stays positive, as a
    ratio of heavy-tailed means is skewed) and reaches ``UPPER_STRETCH`` times as far above as below.
    """
    n = learned.numel()
    rest = n - census
    builtin_mean = float((weights * builtin).sum())
    ratio = float((weights * learned).sum()) / builtin_mean
    if ratio <= 0 or n < 2:
        return ratio, ratio
    z = (learned - ratio * builtin) / builtin_mean
    centre = float((weights * z).sum())
    spread = float((weights * (z - centre).square()).sum()) * n / (n - 1)  # the population's, per noise
    variance = spread / pool
    if rest > 1:
        share = (pool - census) / pool
        variance += share**2 * (1 - rest / (pool - census)) * float(z[census:].var()) / rest
    factor = math.exp(Z_95 * math.sqrt(variance) / ratio)
    return ratio / factor, ratio * factor**UPPER_STRETCH


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
