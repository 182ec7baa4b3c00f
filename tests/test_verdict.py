"""The verdict's decision on per-sample validation losses with known answers."""

import json

import pytest
import torch

from ld3_core.trainer import draw_check
from ld3_core.verdict import judge, ratio_range


def _heavy_tailed(seed: int, n: int = 25):
    """Built-in losses around 1 with a few samples 30x larger (samples that land in another mode)."""
    gen = torch.Generator().manual_seed(seed)
    builtin = torch.rand(n, generator=gen, dtype=torch.float64) * 0.4 + 0.8
    builtin[:2] *= 30
    return builtin, gen


def test_a_gain_on_most_samples_is_significant_despite_a_heavy_tail():
    # Learned: half the error on 22 of 25 samples, more on 3 (one of them a tail sample). The mean
    # difference is decided by the two tail samples (a sign-flip test of it gives p ~ 0.25); per sample
    # the gain is clear.
    builtin, _ = _heavy_tailed(0)
    learned = builtin * 0.5
    learned[[1, 10, 20]] = builtin[[1, 10, 20]] * torch.tensor([1.3, 2.0, 2.0], dtype=torch.float64)
    verdict = judge(learned, builtin, "karras")
    assert 0.7 < verdict.ratio < 0.95 and verdict.win_rate == 22 / 25
    assert verdict.p_value < 0.001 and verdict.use_learned


def test_better_on_most_samples_but_worse_on_average_is_not_used():
    builtin, _ = _heavy_tailed(1)
    learned = builtin * 0.8
    learned[0] = builtin[0] * 3  # one sample in another mode makes the mean worse
    verdict = judge(learned, builtin, "karras")
    assert verdict.win_rate == 24 / 25 and verdict.ratio > 1
    assert not verdict.use_learned
    summary = verdict.summary("euler", 4)
    assert "no gain over the best built-in (karras)" in summary
    assert "better on 24/25 samples but worse on average" in summary


def test_noise_alone_is_not_a_gain():
    # Learned and built-in losses are exchangeable: over 40 such draws, a gain is claimed about 5 % of the
    # time at most (the test's level), never systematically.
    used = 0
    for seed in range(40):
        gen = torch.Generator().manual_seed(100 + seed)
        base = torch.rand(25, generator=gen, dtype=torch.float64) + 0.5
        a = base * torch.exp(0.3 * torch.randn(25, generator=gen, dtype=torch.float64))
        b = base * torch.exp(0.3 * torch.randn(25, generator=gen, dtype=torch.float64))
        used += judge(a, b, "karras", seed=seed).use_learned
    assert used <= 5


def test_identical_losses_give_no_gain():
    losses = torch.full((25,), 0.3, dtype=torch.float64)
    verdict = judge(losses, losses.clone(), "beta")
    assert verdict.p_value == 1.0 and verdict.ratio == 1.0 and not verdict.use_learned


def test_weights_give_mined_samples_their_share_of_the_means_and_of_the_test():
    # 24 ordinary samples where the learned schedule halves the error, and 4 mined ones where it lands
    # in another mode (50x). Counted alike they decide the mean; weighted as 1 % of the noises each they
    # do not, and the gain stands.
    builtin = torch.ones(28, dtype=torch.float64)
    learned = torch.full((28,), 0.5, dtype=torch.float64)
    learned[24:] = 50.0
    assert not judge(learned, builtin, "karras").use_learned
    weights = torch.cat([torch.full((24,), 0.96 / 24), torch.full((4,), 0.01)]).double()
    verdict = judge(learned, builtin, "karras", weights=weights)
    assert verdict.ratio == pytest.approx(0.96 * 0.5 + 0.04 * 50)
    assert not verdict.use_learned  # 2.48x: still worse on average
    weights = torch.cat([torch.full((24,), 0.996 / 24), torch.full((4,), 0.001)]).double()
    verdict = judge(learned, builtin, "karras", weights=weights)
    assert verdict.ratio == pytest.approx(0.996 * 0.5 + 0.004 * 50) and verdict.ratio < 1
    assert verdict.use_learned and verdict.p_value < 0.001


def test_a_schedule_that_fails_on_a_sample_is_not_used_and_the_verdict_still_saves():
    # Fresh samples can hold a noise the learned schedule fails on (NaN): better on every other sample,
    # it is still not used, the user reads why, and the verdict is JSON for the schedule file.
    builtin = torch.ones(12, dtype=torch.float64)
    learned = torch.full((12,), 0.3, dtype=torch.float64)
    learned[3] = float("nan")
    verdict = judge(learned, builtin, "beta", steps_only=learned, on="fresh")
    assert not verdict.use_learned
    assert "gives NaN/Inf on some of them" in verdict.summary("euler", 4)
    assert "12 fresh noises the teacher solved after training" in verdict.summary("euler", 4)
    saved = json.loads(json.dumps(verdict.as_dict(), allow_nan=False))
    assert saved["ratio"] is None and saved["use_learned"] is False and saved["on"] == "fresh"


def _check(population_size: int, seed: int):
    """A heavy-tailed population of (learned, built-in, parting) per noise: the learned schedule has about
    half the error, except on 0.3 % of the noises where it lands in another mode (30x the built-in's):
    rare enough that a pool of 300 often misses them, and their share of the mean (about a quarter)."""
    gen = torch.Generator().manual_seed(seed)
    builtin = torch.exp(0.5 * torch.randn(population_size, generator=gen, dtype=torch.float64))
    learned = builtin * torch.exp(
        -0.7 + 0.6 * torch.randn(population_size, generator=gen, dtype=torch.float64)
    )
    tail = torch.rand(population_size, generator=gen, dtype=torch.float64) < 0.003
    learned[tail] = 30 * builtin[tail]
    apart = (learned - builtin).abs() * torch.exp(
        0.3 * torch.randn(population_size, generator=gen, dtype=torch.float64)
    )
    return learned, builtin, apart, gen


def _draw_check(learned, builtin, apart, gen, pool=300, pairs=40):
    """The trainer's check from a fresh pool of the population: its losses and weights, and its census."""
    drawn = torch.randperm(len(apart), generator=gen)[:pool]
    picked, weights, census = draw_check(apart[drawn], pairs, 0.3, gen)
    return learned[drawn[picked]], builtin[drawn[picked]], weights, census


def test_the_range_on_new_noises_holds_the_population_ratio_about_as_often_as_it_says():
    # The check's ratio estimates the ratio over all noises from 40 of a pool of 300 (itself a sample):
    # its 95 % range must count both draws, and reach further above than below (a pool that missed the
    # rare noises that carry the mean gives a ratio too low and a spread too small). Counting only the
    # draw from the pool the range holds the population ratio in 70 % of checks here; with the pool's
    # variance but symmetric in log, 89 % (10 % wholly below the truth); as it is, 97.5 %.
    learned, builtin, apart, gen = _check(50_000, 0)
    truth = float(learned.mean() / builtin.mean())
    held = above = 0
    widths = []
    for _ in range(400):
        a, b, weights, census = _draw_check(learned, builtin, apart, gen)
        assert census == 12  # the 30 % of 40 where the schedules part most
        low, high = ratio_range(a, b, weights, pool=300, census=census)
        assert low < float((weights * a).sum() / (weights * b).sum()) < high
        held += low <= truth <= high
        above += truth > high
        widths.append(high / low)
    assert 0.9 <= held / 400 <= 0.99 and above / 400 <= 0.05
    assert sorted(widths)[200] < 3  # and it is still narrow enough to tell 0.5x from 1x


def test_the_range_closes_on_the_ratio_when_every_sample_has_it_and_is_absent_on_validation():
    builtin, _ = _heavy_tailed(1, n=40)
    learned = 0.4 * builtin
    weights = torch.cat([torch.full((12,), 1 / 300), torch.full((28,), 288 / 300 / 28)]).double()
    verdict = judge(learned, builtin, "karras", weights=weights, on="fresh", pool=300, census=12)
    assert verdict.ratio_low == pytest.approx(0.4) and verdict.ratio_high == pytest.approx(0.4)
    assert "0.40x (95 % range on new noises 0.40-0.40x)" in verdict.summary("euler", 4)
    on_validation = judge(learned, builtin, "karras")
    assert on_validation.ratio_low is None and "95 % range" not in on_validation.summary("euler", 4)
    saved = json.loads(json.dumps(verdict.as_dict(), allow_nan=False))
    assert saved["ratio_low"] == pytest.approx(0.4)
