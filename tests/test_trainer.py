"""The trainer loop (Algorithm 1) on a problem with an exact answer: Gaussian data, Euler steps.

For data x0 ~ N(0, s^2 I) the denoiser is D(x, sigma) = s^2 / (s^2 + sigma^2) x and the probability-flow
ODE ends at x0 = x_T * s / sqrt(s^2 + sigma_T^2), so the teacher is exact and the student is a few lines.
"""

import math

import pytest
import torch

from ld3_core.errors import LD3InputError
from ld3_core.parameterisation import sigmas_from_logits
from ld3_core.trainer import LD3TrainingError, TrainConfig, train_schedule

S = 0.5  # data standard deviation
SIGMA_MAX = 14.6
DIMS = (4, 8, 8)


class L2:
    def prepare(self, targets):
        return targets

    def __call__(self, out, prepared):
        return (out - prepared).pow(2).flatten(1).mean(1)


def euler_student(noise, prompt, step_sigmas, eval_sigmas):
    """Euler on the Gaussian PF-ODE; the denoiser is evaluated at the (decoupled) eval sigmas."""
    x = noise * step_sigmas[0]
    evals = step_sigmas[:-1] if eval_sigmas is None else eval_sigmas
    for i in range(step_sigmas.numel() - 1):
        sigma, sigma_next, sigma_eval = step_sigmas[i], step_sigmas[i + 1], evals[i]
        denoised = S**2 / (S**2 + sigma_eval**2) * x
        x = x + (sigma_next - sigma) * (x - denoised) / sigma
    return x


def problem(count=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((count, *DIMS), generator=gen)
    targets = noise * SIGMA_MAX * S / math.sqrt(S**2 + SIGMA_MAX**2)
    prompts = torch.zeros(count, dtype=torch.long)
    validation = torch.arange(count) % 2 == 1
    return noise, targets, prompts, validation


def uniform_candidate(steps):
    return {"uniform_rho": sigmas_from_logits(torch.zeros(steps), SIGMA_MAX)}


def run(config, student=euler_student, candidates=None, **kwargs):
    noise, targets, prompts, validation = problem()
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


def test_training_beats_its_starting_schedule():
    config = TrainConfig(steps=3, lr_steps=0.05, epochs_phase1=4, epochs_phase2=4, soft_gamma=0.0)
    result = run(config)
    assert result.completed and result.epochs_done == 8
    assert len(result.validation_curve) == 8
    assert result.best_validation_loss < 0.5 * result.initial_validation_loss
    sigmas = result.step_sigmas
    assert float(sigmas[0]) == pytest.approx(SIGMA_MAX) and float(sigmas[-1]) == 0.0
    assert bool((sigmas[:-1] > sigmas[1:]).all())


def test_best_by_validation_includes_the_starting_schedule():
    # The teacher is a near neighbour of the start, and a learning rate this large throws the schedule
    # far away from it: the starting schedule must be what comes back.
    start = sigmas_from_logits(torch.tensor([0.3, -0.2, 0.1]), SIGMA_MAX)
    config = TrainConfig(
        steps=3, lr_steps=0.3, soft_gamma=0.0, epochs_phase1=2, epochs_phase2=0, grad_clip=1e9
    )
    noise, targets, prompts, validation = problem()
    with torch.no_grad():
        targets = euler_student(
            noise, 0, sigmas_from_logits(torch.tensor([0.31, -0.2, 0.1]), SIGMA_MAX), None
        )
    result = train_schedule(
        config, euler_student, L2(), noise, targets, prompts, validation, {"start": start}
    )
    assert result.initial_scheduler == "start"
    assert min(result.validation_curve) > result.initial_validation_loss, "training made it worse"
    assert torch.equal(result.step_sigmas, start.float())
    assert result.best_validation_loss == result.initial_validation_loss


def test_picks_the_best_candidate_to_start_from():
    good = sigmas_from_logits(torch.zeros(3), SIGMA_MAX)
    bad = torch.tensor([SIGMA_MAX, 14.0, 13.0, 0.0])
    config = TrainConfig(steps=3, epochs_phase1=0, epochs_phase2=0)
    result = run(config, candidates={"bad": bad, "good": good})
    assert result.initial_scheduler == "good"
    assert result.candidate_losses["bad"] > result.candidate_losses["good"]


def test_same_seed_same_schedule_bitwise():
    config = TrainConfig(steps=3, lr_steps=0.05, epochs_phase1=1, epochs_phase2=1, batch_size=2, seed=7)
    first, second = run(config), run(config)
    assert torch.equal(first.step_sigmas, second.step_sigmas)
    assert torch.equal(first.eval_sigmas, second.eval_sigmas)
    assert first.train_curve == second.train_curve


def test_non_finite_loss_stops_and_keeps_the_best_so_far():
    calls = {"n": 0}
    reported = []

    def student(noise, prompt, step_sigmas, eval_sigmas):
        calls["n"] += 1
        out = euler_student(noise, prompt, step_sigmas, eval_sigmas)
        return out * float("nan") if calls["n"] > 8 else out

    config = TrainConfig(steps=3, epochs_phase1=2, epochs_phase2=0)
    with pytest.raises(LD3TrainingError, match=r"NaN or Inf at iteration \d+ .*best schedule so far"):
        run(config, student=student, on_best=lambda r: reported.append(r.step_sigmas.clone()))
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
        run(TrainConfig(steps=3), on_progress=on_progress, on_best=lambda r: reported.append(r))
    assert len(reported) >= 1


def test_hard_teacher_forcing_leaves_the_noise_alone_and_soft_stays_in_the_ball():
    seen = []

    def student(noise, prompt, step_sigmas, eval_sigmas):
        seen.extend(noise.detach().clone().split(1))
        return euler_student(noise, prompt, step_sigmas, eval_sigmas)

    noise, _, _, _ = problem()
    run(TrainConfig(steps=3, soft_gamma=0.0, epochs_phase1=2, epochs_phase2=0), student=student)
    originals = {tuple(n.flatten()[:4].tolist()) for n in noise.split(1)}
    assert all(tuple(s.flatten()[:4].tolist()) in originals for s in seen)

    seen.clear()
    gamma = 0.001
    run(
        TrainConfig(steps=3, soft_gamma=gamma, lr_noise=100.0, epochs_phase1=3, epochs_phase2=0),
        student=student,
    )
    radius = gamma * math.prod(DIMS) / 3**2
    moved = [min(float((s - n).norm()) for n in noise.split(1)) for s in seen]
    assert max(moved) > 0.5 * radius, "the soft loss moves x'_T"
    assert max(moved) <= radius * (1 + 1e-5), "and keeps it inside the ball of radius gamma d / NFE^2"


def test_refuses_inconsistent_inputs():
    noise, targets, prompts, validation = problem()
    with pytest.raises(LD3InputError, match="steps"):
        train_schedule(
            TrainConfig(steps=4),
            euler_student,
            L2(),
            noise,
            targets,
            prompts,
            validation,
            uniform_candidate(3),
        )
    with pytest.raises(LD3InputError, match="validation"):
        train_schedule(
            TrainConfig(steps=3),
            euler_student,
            L2(),
            noise,
            targets,
            prompts,
            torch.zeros(8, dtype=torch.bool),
            uniform_candidate(3),
        )
