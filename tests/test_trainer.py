"""The trainer loop (Algorithm 1, both presets) on a problem with an exact answer: Gaussian data, Euler.

For data x0 ~ N(0, s^2 I) the denoiser is D(x, sigma) = s^2 / (s^2 + sigma^2) x and the probability-flow
ODE ends at x0 = x_T * s / sqrt(s^2 + sigma_T^2), so the teacher is exact and the student is a few lines.
The student's network is an exact EPS network told the model sigma m and scaled with u, as ComfyUI's
patched model does: denoised = x - u * eps(x / sqrt(u^2 + 1), m).
"""

import math

import pytest
import torch

from ld3_core.errors import LD3InputError
from ld3_core.parameterisation import sigmas_from_logits
from ld3_core.schedule import Schedule
from ld3_core.trainer import LD3TrainingError, TrainConfig, train_schedule

S = 0.5  # data standard deviation
SIGMA_MAX = 14.6
DIMS = (4, 8, 8)


class L2:
    def prepare(self, targets):
        return targets

    def __call__(self, out, prepared):
        return (out - prepared).pow(2).flatten(1).mean(1)


def eps_network(x_in, m):
    """The exact eps prediction for an input x_in = x_m / sqrt(m^2 + 1) at sigma m."""
    x_m = x_in * (m**2 + 1).sqrt()
    return (x_m - S**2 / (S**2 + m**2) * x_m) / m


def euler_student(noise, prompt, schedule):
    """Euler on the Gaussian PF-ODE with the schedule's step, model and scale sigmas."""
    step_sigmas, model_sigmas, scale_sigmas = schedule.tensors()
    x = noise * step_sigmas[0]
    for i in range(step_sigmas.numel() - 1):
        sigma, sigma_next, m, u = step_sigmas[i], step_sigmas[i + 1], model_sigmas[i], scale_sigmas[i]
        denoised = x - u * eps_network(x / (u**2 + 1).sqrt(), m)
        x = x + (sigma_next - sigma) * (x - denoised) / sigma
    return x


def problem(count=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((count, *DIMS), generator=gen)
    targets = noise * SIGMA_MAX * S / math.sqrt(S**2 + SIGMA_MAX**2)
    prompts = torch.zeros(count, dtype=torch.long)
    validation = torch.arange(count) % 2 == 1
    return noise, targets, prompts, validation


def uniform_candidate(steps):
    return {"uniform_rho": sigmas_from_logits(torch.zeros(steps), SIGMA_MAX)}


SIGMA_RANGE = (0.03, SIGMA_MAX)


def run(config, student=euler_student, candidates=None, **kwargs):
    noise, targets, prompts, validation = problem()
    kwargs.setdefault("sigma_range", SIGMA_RANGE)
    return train_schedule(
        config,
        student,
        L2(),
        noise,
        targets,
        prompts,
        validation,
        candidates or uniform_candidate(config.steps),
        **kwargs,
    )


def check_schedule(schedule: Schedule, steps: int):
    sigmas = schedule.step_sigmas
    assert sigmas.shape == (steps + 1,) and schedule.model_sigmas.shape == (steps,)
    assert float(sigmas[0]) == pytest.approx(SIGMA_MAX) and float(sigmas[-1]) == 0.0
    assert bool((sigmas[:-1] > sigmas[1:]).all())
    for per_step in (schedule.model_sigmas, schedule.scale_sigmas):
        assert bool((per_step >= SIGMA_RANGE[0] * (1 - 1e-6)).all())
        assert bool((per_step <= SIGMA_RANGE[1] * (1 + 1e-6)).all())


def test_default_recipe_learns_every_per_step_sigma_and_nearly_solves_the_gaussian():
    result = run(TrainConfig.preset("ld3", 3))
    assert result.completed and result.verdict.use_learned
    check_schedule(result.schedule, 3)
    learned = result.schedule
    assert not torch.equal(learned.model_sigmas, learned.step_sigmas[:-1])
    assert not torch.equal(learned.scale_sigmas, learned.model_sigmas)
    # Per-step freedom can make three Euler steps land almost exactly on the Gaussian's endpoint.
    assert result.best_validation_loss < 0.05 * result.initial_validation_loss
    # The step sigmas alone are much worse: the gain is in what the network is told.
    assert result.verdict.steps_only_ratio > 5 * result.verdict.ratio
    assert result.output_schedule is result.schedule


def test_paper_recipe_moves_the_network_time_within_half_a_step_only():
    result = run(TrainConfig.preset("paper", 3, lr_steps=0.05))
    learned = result.schedule
    check_schedule(learned, 3)
    assert torch.equal(learned.scale_sigmas, learned.step_sigmas[:-1])  # u = s
    assert float(learned.model_sigmas[0]) == pytest.approx(SIGMA_MAX)  # the first time is pinned
    assert result.best_validation_loss < result.initial_validation_loss
    assert result.epochs_done == 5 and len(result.train_curve) == 5 * 8  # 2 + 3 epochs of 8 samples


def test_steps_only_freedom_keeps_the_schedule_plain():
    result = run(TrainConfig.preset("ld3", 3, freedom="steps", epochs_phase2=6))
    assert result.schedule.is_plain
    assert result.best_validation_loss < result.initial_validation_loss


def test_best_by_validation_includes_the_starting_schedule():
    # The teacher is a near neighbour of the start, and a learning rate this large throws the schedule
    # far away from it: the starting schedule must be what comes back, and the verdict says no gain.
    start = sigmas_from_logits(torch.tensor([0.3, -0.2, 0.1]), SIGMA_MAX)
    config = TrainConfig.preset(
        "ld3", 3, freedom="steps", lr_steps=3.0, epochs_phase2=3, grad_clip=1e9, stop_patience=None
    )
    noise, targets, prompts, validation = problem()
    with torch.no_grad():
        near = sigmas_from_logits(torch.tensor([0.31, -0.2, 0.1]), SIGMA_MAX)
        targets = euler_student(noise, 0, Schedule.plain(near))
    result = train_schedule(
        config, euler_student, L2(), noise, targets, prompts, validation, {"start": start}
    )
    assert result.initial_scheduler == "start"
    assert min(result.validation_curve) > result.initial_validation_loss, "training made it worse"
    assert torch.equal(result.schedule.step_sigmas, start.float())
    assert result.best_validation_loss == result.initial_validation_loss
    assert not result.verdict.use_learned and result.verdict.ratio == 1.0
    assert torch.equal(result.output_schedule.step_sigmas, start.float())


def test_a_gain_that_is_not_significant_hands_back_the_built_in():
    # Two validation samples cannot show a significant gain (the best p-value is 1/4).
    noise, targets, prompts, _ = problem(count=4)
    validation = torch.tensor([False, False, True, True])
    result = train_schedule(
        TrainConfig.preset("ld3", 3),
        euler_student,
        L2(),
        noise,
        targets,
        prompts,
        validation,
        uniform_candidate(3),
        sigma_range=SIGMA_RANGE,
    )
    assert result.verdict.ratio < 0.5 and result.verdict.win_rate == 1.0
    assert result.verdict.p_value > 0.2 and not result.verdict.use_learned
    assert result.output_schedule.is_plain
    assert torch.equal(result.output_schedule.step_sigmas, uniform_candidate(3)["uniform_rho"].float())
    assert "not a significant gain" in result.report("euler", 3)


def test_training_stops_when_validation_stops_improving():
    result = run(TrainConfig.preset("ld3", 3, epochs_phase2=500, stop_patience=3))
    assert result.stopped_early and result.epochs_done < 500
    curve = result.validation_curve
    assert min(curve[-3:]) >= min(curve)  # the last three did not beat the best


def test_a_plateau_of_the_step_sigmas_alone_ends_phase_1_and_phase_2_trains_from_its_best():
    # Phase 1 is long enough to plateau (and decay) many times over; the run must still go on to phase 2
    # from where phase 1 ended, at the recipe's learning rates, and go far below it on the Gaussian.
    config = TrainConfig.preset("ld3", 3, epochs_phase1=300, stop_patience=4)
    result = run(config)
    learned = result.schedule
    check_schedule(learned, 3)
    assert not learned.is_plain
    assert result.epochs_done > config.epochs_phase1  # the epochs after phase 1 count from its end
    phase2_epochs = result.epochs_done - config.epochs_phase1
    phase1_best = min(result.validation_curve[:-phase2_epochs])
    # Phase 2 starts where phase 1 ended (the network told the step sigmas), and goes far below it.
    assert result.validation_curve[-phase2_epochs] < 1.05 * phase1_best
    assert result.best_validation_loss < 1e-3 * phase1_best


def test_picks_the_best_candidate_to_start_from():
    good = sigmas_from_logits(torch.zeros(3), SIGMA_MAX)
    bad = torch.tensor([SIGMA_MAX, 14.0, 13.0, 0.0])
    config = TrainConfig.preset("ld3", 3, epochs_phase2=0)
    result = run(config, candidates={"bad": bad, "good": good})
    assert result.initial_scheduler == "good"
    assert result.candidate_losses["bad"] > result.candidate_losses["good"]


def first_sigma_student(noise, prompt, schedule):
    """A student whose endpoint is exact only from sigma_max (a start that begins lower cannot get there)
    with s_1 halfway: its miss is |1 - s_0 / sigma_max| + (s_1 / s_0 - 1/2)^2."""
    s = schedule.step_sigmas
    end = SIGMA_MAX * S / math.sqrt(S**2 + SIGMA_MAX**2)
    return noise * (end + (SIGMA_MAX - s[0]).abs() / SIGMA_MAX + (s[1] / s[0] - 0.5) ** 2)


def test_later_starts_train_too_and_the_best_run_by_validation_wins():
    # "low" validates best as it is but begins below sigma_max (as ddim_uniform does): its run cannot
    # reach the endpoint; the second-best built-in's run can.
    candidates = {
        "low": torch.tensor([0.95 * SIGMA_MAX, 0.475 * SIGMA_MAX, 0.0]),
        "top": torch.tensor([SIGMA_MAX, 0.96 * SIGMA_MAX, 0.0]),
        "top again": torch.tensor([SIGMA_MAX, 0.9601 * SIGMA_MAX, 0.0]),  # about "top": not a third start
    }
    results = {
        starts: run(
            TrainConfig.preset("ld3", 2, freedom="steps", starts=starts),
            student=first_sigma_student,
            candidates=candidates,
        )
        for starts in (1, 2, 3)
    }
    one, two, three = results[1], results[2], results[3]
    assert one.initial_scheduler == two.initial_scheduler == "low"  # the verdict's built-in either way
    assert not one.verdict.use_learned and float(one.output_schedule.step_sigmas[0]) < SIGMA_MAX
    assert two.best_validation_loss < 1e-3 * one.best_validation_loss and two.verdict.use_learned
    assert float(two.output_schedule.step_sigmas[0]) == pytest.approx(SIGMA_MAX)
    assert two.epochs_done > one.epochs_done
    assert (one.starts, one.winning_start) == (["low"], "low")
    assert (two.starts, two.winning_start) == (["low", "top"], "top")
    assert three.train_curve == two.train_curve  # near-identical built-ins are one start


def test_the_first_start_trains_as_a_single_start_run_does():
    single = run(TrainConfig.preset("ld3", 3, mining_rounds=0, epochs_phase2=6))
    candidates = {**uniform_candidate(3), "worse": torch.tensor([SIGMA_MAX, 14.0, 13.0, 0.0])}
    both = run(
        TrainConfig.preset("ld3", 3, mining_rounds=0, epochs_phase2=6, starts=2), candidates=candidates
    )
    assert both.train_curve[: len(single.train_curve)] == single.train_curve
    assert len(both.train_curve) > len(single.train_curve)
    assert both.best_validation_loss <= single.best_validation_loss


@pytest.mark.parametrize("recipe", ["ld3", "paper"])
def test_same_seed_same_schedule_bitwise(recipe):
    config = TrainConfig.preset(recipe, 3, epochs_phase1=1, epochs_phase2=2, batch_size=2, seed=7)
    first, second = run(config), run(config)
    for a, b in zip(first.schedule.tensors(), second.schedule.tensors()):
        assert torch.equal(a, b)
    assert first.train_curve == second.train_curve


def test_non_finite_loss_stops_and_keeps_the_best_so_far():
    calls = {"n": 0}
    reported = []

    def student(noise, prompt, schedule):
        calls["n"] += 1
        out = euler_student(noise, prompt, schedule)
        return out * float("nan") if calls["n"] > 8 else out

    config = TrainConfig.preset("ld3", 3, epochs_phase2=4)
    with pytest.raises(LD3TrainingError, match=r"NaN or Inf at iteration \d+ .*best schedule so far"):
        run(config, student=student, on_best=lambda r: reported.append(r.schedule.step_sigmas.clone()))
    assert reported, "the starting schedule is reported before training"
    assert torch.isfinite(reported[-1]).all()


def test_cancel_from_the_progress_callback_propagates_after_the_start_was_reported():
    class Cancelled(Exception):
        pass

    reported = []

    def on_progress(progress):
        if progress.iteration == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        run(TrainConfig(steps=3, batch_size=1), on_progress=on_progress, on_best=lambda r: reported.append(r))
    assert len(reported) >= 1


def test_hard_teacher_forcing_leaves_the_noise_alone_and_soft_stays_in_the_ball():
    seen = []

    def student(noise, prompt, schedule):
        seen.extend(noise.detach().clone().split(1))
        return euler_student(noise, prompt, schedule)

    noise, _, _, _ = problem()
    run(TrainConfig(steps=3, soft_gamma=0.0, epochs_phase2=2), student=student)
    originals = {tuple(n.flatten()[:4].tolist()) for n in noise.split(1)}
    assert all(tuple(s.flatten()[:4].tolist()) in originals for s in seen)

    seen.clear()
    gamma = 0.001
    run(
        TrainConfig.preset("paper", 3, soft_gamma=gamma, lr_noise=100.0, epochs_phase1=3, epochs_phase2=0),
        student=student,
    )
    radius = gamma * math.prod(DIMS) / 3**2
    moved = [min(float((s - n).norm()) for n in noise.split(1)) for s in seen]
    assert max(moved) > 0.5 * radius, "the soft loss moves x'_T"
    assert max(moved) <= radius * (1 + 1e-5), "and keeps it inside the ball of radius gamma d / NFE^2"


def test_refuses_inconsistent_inputs():
    noise, targets, prompts, validation = problem()
    given = (euler_student, L2(), noise, targets, prompts)
    with pytest.raises(LD3InputError, match="steps"):  # a 3-step candidate for a 4-step schedule
        train_schedule(TrainConfig(steps=4), *given, validation, uniform_candidate(3))
    with pytest.raises(LD3InputError, match="validation"):
        train_schedule(TrainConfig(steps=3), *given, torch.zeros(16, dtype=torch.bool), uniform_candidate(3))
    with pytest.raises(LD3InputError, match="recipe"):
        TrainConfig.preset("fastest", 3)


def test_custom_recipe_takes_the_tuning_widgets_and_named_recipes_ignore_them():
    custom = TrainConfig.for_recipe("custom", 4, True, 1, lr_steps=0.5, batch_size=7, soft_gamma=0.01)
    assert (custom.recipe, custom.lr_steps, custom.batch_size, custom.soft_gamma) == ("custom", 0.5, 7, 0.01)
    assert custom.freedom == "full"
    paper = TrainConfig.for_recipe("paper", 4, True, 1, lr_steps=0.5, batch_size=7)
    assert paper == TrainConfig.preset("paper", 4, seed=1)
    assert TrainConfig.for_recipe("ld3", 4, False, 0).freedom == "steps"
    assert TrainConfig.for_recipe("paper", 4, False, 0).freedom == "steps"


def test_a_saved_schedule_is_kept_unless_the_run_beats_it():
    """The schedule already saved under a name is scored first: a better one is kept, a worse one replaced."""
    config = TrainConfig.preset("ld3", 3, epochs_phase2=3)
    trained = run(config)
    assert trained.beats_incumbent and trained.incumbent is None  # nothing saved before: write it

    writes = []
    again = run(config, incumbent=trained.output_schedule, on_best=lambda r: writes.append(r.beats_incumbent))
    assert again.incumbent_validation_loss == pytest.approx(trained.best_validation_loss, rel=1e-5)
    assert writes[0] is False  # the untrained start never replaces the saved schedule
    # The same run again reaches the same loss, not a lower one: the saved schedule stays.
    assert not again.beats_incumbent and not any(writes)
    assert again.output_schedule is again.incumbent
    report = again.report("euler", 3, "models/ld3/x.safetensors")
    assert "Kept the schedule already in models/ld3/x.safetensors" in report

    worse = Schedule.plain(torch.tensor([SIGMA_MAX, 14.0, 13.0, 0.0]))
    replaced = run(config, incumbent=worse)
    assert replaced.beats_incumbent and replaced.output_schedule is not worse
    assert "Saved to models/ld3/x.safetensors." in replaced.report("euler", 3, "models/ld3/x.safetensors")


@pytest.mark.parametrize("field", ["soft_gamma", "lr_steps"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_settings_are_refused_by_name(field, value):
    with pytest.raises(LD3InputError) as caught:
        TrainConfig.preset("ld3", 4, **{field: value})
    assert caught.value.input_name == field


def test_the_exact_ratio_note_brackets_the_verdict_by_the_teachers_error():
    from ld3_core.api import exact_ratio_note
    from ld3_core.losses import L2Loss

    result = run(TrainConfig.preset("ld3", 3, epochs_phase2=3))
    assert result.verdict.use_learned
    exact = exact_ratio_note({"self_error": {"rmse": 0.0}}, result, L2Loss())
    ratio = f"{result.verdict.ratio:.2f}x"
    assert f"error is {ratio} to {ratio} the best built-in's" in exact  # an exact teacher: the verdict itself
    b, learned, e = (
        result.initial_validation_loss,
        result.best_validation_loss,
        0.1 * result.initial_validation_loss,
    )
    note = exact_ratio_note({"self_error": {"rmse": e}}, result, L2Loss())
    assert f"{max(learned - e, 0) / (b + e):.2f}x to {(learned + e) / (b - e):.2f}x" in note
    assert "10% of the best built-in's error" in note
    assert exact_ratio_note({}, result, L2Loss()) is None  # a teacher without a self-check
    # A teacher as far off as the best built-in: no upper bound, and the note says what that means.
    far = exact_ratio_note({"self_error": {"rmse": b}}, result, L2Loss())
    assert f"at least {max(learned - b, 0) / (2 * b):.2f}x the best built-in's, with no upper bound" in far
    assert "cannot tell whether the learned schedule is better" in far


def exact_reference(calls):
    """The Gaussian's exact endpoint for new noises, recording what it was asked."""

    def solve(noise, prompt):
        calls.append(noise.clone())
        return noise * SIGMA_MAX * S / math.sqrt(S**2 + SIGMA_MAX**2)

    return solve


def test_mining_asks_the_teacher_for_fresh_noises_and_weighs_them_as_their_share_of_the_pool():
    calls = []
    config = TrainConfig.preset(
        "ld3", 3, mining_rounds=2, mining_pool=4.0, mining_pairs=0.25, mining_epochs=4, check_pairs=0.0
    )
    result = run(config, reference=exact_reference(calls))
    noise = problem()[0]
    asked = torch.cat(calls)
    # 2 rounds x 4 of 64 fresh noises (16 teacher samples): new noises, none of the teacher's.
    assert result.mined_pairs == len(asked) == 8 and result.mining_pool == 128
    assert torch.cdist(asked.flatten(1), noise.flatten(1)).min() > 1.0
    weights = result.validation_weights
    assert len(weights) == 8 + 8 == len(result.validation_losses) == len(result.initial_validation_losses)
    assert float(weights.sum()) == pytest.approx(1.0)
    # The 8 validation samples stand for all but 2 x 4/64 of the noises, each mined pair for 1/64.
    assert torch.allclose(weights[:8], torch.full((8,), (1 - 8 / 64) / 8, dtype=torch.float64))
    assert torch.allclose(weights[8:], torch.full((8,), 1 / 64, dtype=torch.float64))
    assert result.best_validation_loss == pytest.approx(float((weights * result.validation_losses).sum()))
    assert result.verdict.samples == 16 and result.verdict.use_learned
    assert result.best_validation_loss < 0.05 * result.initial_validation_loss


def test_mining_picks_the_noises_where_the_learned_schedule_and_the_start_part_most():
    # The Gaussian's students are linear: how far two schedules' endpoints part grows with the noise's
    # norm, so the mined noises are the pool's largest.
    calls = []
    config = TrainConfig.preset(
        "ld3", 3, mining_rounds=1, mining_pool=8.0, mining_pairs=0.25, check_pairs=0.0
    )
    run(config, reference=exact_reference(calls))
    pool = torch.randn((128, *DIMS), generator=torch.Generator().manual_seed(1_000_003 * (config.seed + 1)))
    norms = pool.flatten(1).norm(dim=1).sort(descending=True).values
    asked = torch.cat(calls).flatten(1).norm(dim=1).sort(descending=True).values
    assert torch.allclose(asked, norms[:4])


@pytest.mark.parametrize("against, steps", [("builtin", 3), ("finer", 6)])
def test_mining_measures_the_learned_schedule_against_the_start_or_the_start_at_twice_the_steps(
    against, steps
):
    seen = []

    def student(noise, prompt, schedule):
        if len(noise) == 32:  # only the pool is solved 32 at a time (eval_batch_size)
            seen.append(schedule.steps)
        return euler_student(noise, prompt, schedule)

    config = TrainConfig.preset(
        "ld3",
        3,
        mining_rounds=1,
        mining_pool=8.0,
        mining_pairs=0.25,
        eval_batch_size=32,
        mining_against=against,
    )
    assert run(config, student=student, reference=exact_reference([])).mined_pairs == 4
    assert sorted(set(seen)) == sorted({3, steps})  # the learned schedule, and what it is measured against
    with pytest.raises(ValueError, match="mining_against"):
        TrainConfig.preset("ld3", 3, mining_against="exact")


def test_no_mining_without_a_teacher_to_ask_or_in_the_paper_recipe():
    assert run(TrainConfig.preset("ld3", 3)).mined_pairs == 0
    calls = []
    paper = run(TrainConfig.preset("paper", 3), reference=exact_reference(calls))
    # The teacher solved the verdict's fresh noises only.
    assert paper.mined_pairs == 0 and len(torch.cat(calls)) == paper.check_pairs == paper.verdict.samples


def test_the_verdict_judges_on_fresh_noises_where_the_schedules_part_most_and_a_random_draw():
    calls = []
    config = TrainConfig.preset("ld3", 3, mining_rounds=0, mining_pool=4.0, check_pairs=0.5)
    result = run(config, reference=exact_reference(calls))
    verdict = result.verdict
    # Half of the 16 teacher samples' count, from 4 x 16 fresh noises: the 2 (30 %) where the learned
    # schedule and the start part most, 6 drawn from the other 62.
    assert verdict.on == "fresh" and verdict.samples == result.check_pairs == 8 and result.check_pool == 64
    asked = torch.cat(calls)
    assert len(asked) == 8 and torch.cdist(asked.flatten(1), problem()[0].flatten(1)).min() > 1.0
    pool = torch.randn((64, *DIMS), generator=torch.Generator().manual_seed(1_000_003 + 500_009))
    norms = pool.flatten(1).norm(dim=1).sort(descending=True).values
    # The students are linear: the schedules part most on the largest noises.
    assert torch.allclose(asked[:2].flatten(1).norm(dim=1).sort(descending=True).values, norms[:2])
    assert not any(torch.isclose(asked[2:].flatten(1).norm(dim=1), n).any() for n in norms[:2])
    # Weighted as the share of the pool each stands for, the 8 estimate the mean over all 64.
    truth = exact_reference([])(pool, 0)
    pool_mean = float(L2()(euler_student(pool, 0, result.schedule), truth).mean())
    assert verdict.learned_loss == pytest.approx(pool_mean, rel=0.05)  # equal weights: 6 % off
    assert verdict.use_learned and verdict.ratio < 0.05
    # The ratio on the pool lies in the verdict's range on new noises, which the user reads.
    pool_ratio = pool_mean / float(L2()(euler_student(pool, 0, result.initial_schedule), truth).mean())
    assert verdict.ratio_low <= pool_ratio <= verdict.ratio_high and verdict.ratio_high < 0.1
    assert f"(95 % range on new noises {verdict.ratio_low:.2f}-{verdict.ratio_high:.2f}x)" in verdict.summary(
        "euler", 3
    )


def test_without_a_teacher_to_ask_the_verdict_judges_on_validation_and_says_so():
    result = run(TrainConfig.preset("ld3", 3))
    assert result.verdict.on == "validation" and result.check_pairs == 0
    assert result.verdict.samples == 8 and "expect less on new noises" in result.verdict.summary("euler", 3)
    assert result.verdict.ratio_low is None  # no range from the samples that chose the schedule


def test_a_single_non_finite_step_restarts_from_the_best_parameters_and_training_goes_on():
    calls = {"n": 0}

    def student(noise, prompt, schedule):
        calls["n"] += 1
        out = euler_student(noise, prompt, schedule)
        return out * float("nan") if calls["n"] == 12 else out  # one training batch off a cliff

    result = run(TrainConfig.preset("ld3", 3, epochs_phase2=6, stop_patience=None), student=student)
    assert result.completed and result.epochs_done == 6
    assert len(result.train_curve) == 6 * 2 - 1  # the failed batch is skipped, not recorded
    assert result.best_validation_loss < result.initial_validation_loss
