"""The schedule parameterisation (paper Sec. 3.1-3.3): exact answers and property tests."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ld3_core.parameterisation import (
    RHO,
    ScheduleParameters,
    ball_radius,
    eval_sigmas_from_offsets,
    logits_from_sigmas,
    offset_window,
    project_to_ball,
    sigmas_from_logits,
)

SIGMA_MAX = 14.614642  # SD1.x's sigma_max


def karras_to_zero(sigma_max: float, steps: int, rho: float = RHO) -> torch.Tensor:
    """Karras et al.'s schedule with sigma_min = 0: uniform steps in sigma^(1/rho)."""
    u = torch.linspace(sigma_max ** (1 / rho), 0.0, steps + 1, dtype=torch.float64)
    return u**rho


@pytest.mark.parametrize("steps", [1, 2, 4, 7, 10])
def test_uniform_logits_are_uniform_in_rho_space(steps):
    out = sigmas_from_logits(torch.zeros(steps, dtype=torch.float64), SIGMA_MAX)
    torch.testing.assert_close(out, karras_to_zero(SIGMA_MAX, steps), rtol=1e-13, atol=1e-15)
    # A constant shift of every logit changes nothing (softmax).
    shifted = sigmas_from_logits(torch.full((steps,), 3.7, dtype=torch.float64), SIGMA_MAX)
    torch.testing.assert_close(shifted, out, rtol=1e-13, atol=1e-15)


def test_known_fractions():
    # softmax = (1/2, 1/4, 1/4): u goes 1 -> 1/2 -> 1/4 -> 0 of u_max.
    logits = torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64).log()
    out = sigmas_from_logits(logits, 128.0, rho=1.0)
    assert out.tolist() == [128.0, 64.0, 32.0, 0.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_round_trip_from_sigmas(dtype):
    sigmas = torch.tensor([SIGMA_MAX, 6.08, 2.23, 0.69, 0.17, 0.029, 0.0], dtype=dtype)
    logits = logits_from_sigmas(sigmas)
    assert logits.dtype == dtype and logits.shape == (6,)
    back = sigmas_from_logits(logits, SIGMA_MAX)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(back, sigmas, rtol=tol, atol=tol * 1e-3)
    assert back[0].item() == sigmas[0].item() and back[-1].item() == 0.0


def test_round_trip_from_logits_up_to_a_constant():
    logits = torch.tensor([0.3, -1.2, 2.0, 0.0, -0.4], dtype=torch.float64)
    again = logits_from_sigmas(sigmas_from_logits(logits, 80.0))
    torch.testing.assert_close(again - again.mean(), logits - logits.mean(), rtol=0, atol=1e-12)


def test_gradients_reach_every_logit_and_no_endpoint():
    logits = torch.tensor([0.3, -1.2, 2.0, 0.0], dtype=torch.float64, requires_grad=True)
    sigmas = sigmas_from_logits(logits, SIGMA_MAX)
    (sigmas * torch.arange(1.0, 6.0, dtype=torch.float64)).sum().backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad != 0).any()
    assert torch.autograd.gradcheck(
        lambda x: sigmas_from_logits(x, SIGMA_MAX)[1:-1], (logits.detach().requires_grad_(),)
    )


def test_offset_window_is_half_the_smaller_log_gap():
    sigmas = torch.tensor([16.0, 4.0, 2.0, 0.25, 0.0], dtype=torch.float64)
    window = offset_window(sigmas)
    log2 = math.log(2.0)
    # gaps in log2 units between the evaluated sigmas 16, 4, 2, 0.25: 2, 1, 3
    expected = torch.tensor([0.0, 0.5, 0.5, 1.5], dtype=torch.float64) * log2
    torch.testing.assert_close(window, expected, rtol=1e-15, atol=1e-15)


def test_eval_offsets_are_clipped_to_the_window():
    sigmas = torch.tensor([16.0, 4.0, 2.0, 0.25, 0.0], dtype=torch.float64)
    window = offset_window(sigmas)
    for sign in (1.0, -1.0):
        out = eval_sigmas_from_offsets(sigmas, torch.full((4,), sign * 100.0, dtype=torch.float64))
        torch.testing.assert_close(out, sigmas[:-1] * (sign * window).exp(), rtol=1e-14, atol=0)
        assert out[0].item() == 16.0  # sigma_max is never moved
    small = torch.tensor([0.3, 0.1, -0.2, 0.4], dtype=torch.float64)
    out = eval_sigmas_from_offsets(sigmas, small)
    expected = sigmas[:-1] * torch.tensor([0.0, 0.1, -0.2, 0.4], dtype=torch.float64).exp()
    torch.testing.assert_close(out, expected, rtol=1e-14, atol=0)
    # Clipped eval sigmas never cross the log-midpoints to the neighbouring step sigmas.
    huge = eval_sigmas_from_offsets(sigmas, torch.full((4,), 100.0, dtype=torch.float64))
    assert (huge[1:] <= (sigmas[:-2] * sigmas[1:-1]).sqrt() * (1 + 1e-15)).all()


def test_zero_offsets_give_the_step_sigmas():
    sigmas = karras_to_zero(SIGMA_MAX, 6)
    assert torch.equal(eval_sigmas_from_offsets(sigmas, torch.zeros(6, dtype=torch.float64)), sigmas[:-1])


def test_ball_radius_is_the_papers():
    assert ball_radius(0.001, 4 * 64 * 64, 4) == pytest.approx(0.001 * 16384 / 16)
    assert ball_radius(0.0, 100, 5) == 0.0


def test_project_to_ball():
    x = torch.zeros(3, 2, 2, dtype=torch.float64)
    x_prime = torch.zeros(3, 2, 2, dtype=torch.float64)
    x_prime[0, 0, 0] = 0.5  # inside radius 1: unchanged
    x_prime[1] = 1.0  # norm 2: scaled to norm 1, same direction
    x_prime[2, 1, 1] = -1.0  # exactly on the sphere
    out = project_to_ball(x_prime, x, 1.0)
    assert torch.equal(out[0], x_prime[0]) and torch.equal(out[2], x_prime[2])
    torch.testing.assert_close(out[1], torch.full((2, 2), 0.5, dtype=torch.float64), rtol=1e-15, atol=0)
    # Around a non-zero centre, per sample.
    centre = torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    moved = centre + 10 * torch.randn(
        4, 3, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    out = project_to_ball(moved, centre, 0.25)
    norms = (out - centre).flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.full((4,), 0.25, dtype=torch.float64), rtol=1e-14, atol=0)
    cos = torch.nn.functional.cosine_similarity((out - centre).flatten(1), (moved - centre).flatten(1))
    torch.testing.assert_close(cos, torch.ones(4, dtype=torch.float64), rtol=1e-14, atol=1e-14)
    assert torch.equal(project_to_ball(centre, centre, 0.25), centre)  # zero offset: no NaN


# -- properties ------------------------------------------------------------------------------------

extreme_logits = st.lists(
    st.one_of(
        st.floats(-1e4, 1e4, allow_nan=False),
        st.sampled_from([-1e4, 1e4, 0.0, -50.0, 50.0]),
    ),
    min_size=1,
    max_size=16,
)


@settings(max_examples=300, deadline=None)
@given(
    logits=extreme_logits,
    sigma_max=st.floats(1e-2, 1e3),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_sigmas_are_monotone_finite_with_exact_endpoints(logits, sigma_max, dtype):
    out = sigmas_from_logits(torch.tensor(logits, dtype=dtype), sigma_max)
    assert out.dtype == dtype and out.shape == (len(logits) + 1,)
    assert torch.isfinite(out).all()
    assert out[0].item() == torch.tensor(sigma_max, dtype=dtype).item()
    assert out[-1].item() == 0.0
    assert (out[:-1] >= out[1:]).all(), out.tolist()
    assert (out >= 0).all()


@settings(max_examples=200, deadline=None)
@given(logits=extreme_logits, dtype=st.sampled_from([torch.float32, torch.float64]))
def test_gradients_are_finite_for_extreme_logits(logits, dtype):
    xi = torch.tensor(logits, dtype=dtype, requires_grad=True)
    sigmas = sigmas_from_logits(xi, SIGMA_MAX)
    offsets = torch.full((len(logits),), 0.1, dtype=dtype, requires_grad=True)
    evals = eval_sigmas_from_offsets(sigmas, offsets)
    (sigmas.sum() + evals.sum()).backward()
    assert torch.isfinite(xi.grad).all()
    assert torch.isfinite(offsets.grad).all()


@settings(max_examples=200, deadline=None)
@given(
    logits=st.lists(st.floats(-20, 20), min_size=1, max_size=12),
    offsets=st.lists(st.floats(-10, 10), min_size=12, max_size=12),
)
def test_eval_sigmas_stay_inside_their_window(logits, offsets):
    sigmas = sigmas_from_logits(torch.tensor(logits, dtype=torch.float64), SIGMA_MAX)
    n = len(logits)
    evals = eval_sigmas_from_offsets(sigmas, torch.tensor(offsets[:n], dtype=torch.float64))
    window = offset_window(sigmas)
    assert evals[0].item() == SIGMA_MAX
    positive = sigmas[:-1] > 0
    ratio = (evals[positive] / sigmas[:-1][positive]).log().abs()
    assert (ratio <= window[positive] * (1 + 1e-9) + 1e-12).all()


# -- the per-step schedule (step, model and scale sigmas) ----------------------------------------------


def test_schedule_parameters_start_at_the_plain_schedule():
    start = torch.tensor([SIGMA_MAX, 5.0, 1.5, 0.4, 0.05, 0.0])  # inside the model's sigma range
    for freedom in ("full", "window", "steps"):
        schedule = ScheduleParameters(start, freedom, (0.03, SIGMA_MAX)).schedule()
        torch.testing.assert_close(schedule.step_sigmas, start, rtol=2e-6, atol=0)
        torch.testing.assert_close(schedule.model_sigmas, start[:-1], rtol=2e-6, atol=0)
        torch.testing.assert_close(schedule.scale_sigmas, start[:-1], rtol=2e-6, atol=0)
    nudged = ScheduleParameters(start, "full", (0.03, SIGMA_MAX), first_offset=-0.02).schedule()
    expected = SIGMA_MAX * math.exp(-0.02)
    assert nudged.model_sigmas[0].item() == pytest.approx(expected, rel=1e-6)
    assert nudged.scale_sigmas[0].item() == pytest.approx(expected, rel=1e-6)
    # Phase 1 (not decoupled) is the plain schedule whatever the offsets are.
    assert ScheduleParameters(start, "full", (0.03, SIGMA_MAX), -0.5).schedule(decoupled=False).is_plain


def test_window_freedom_moves_only_the_network_time():
    start = karras_to_zero(SIGMA_MAX, 4).float()
    params = ScheduleParameters(start, "window")
    with torch.no_grad():
        params.model_offsets.fill_(0.2)
    schedule = params.schedule()
    assert torch.equal(schedule.scale_sigmas, schedule.step_sigmas[:-1])
    assert schedule.model_sigmas[0].item() == pytest.approx(SIGMA_MAX)  # pinned, as in the paper
    assert (schedule.model_sigmas[1:] > schedule.step_sigmas[1:-1]).all()
    assert params.offset_parameters() == [params.model_offsets]


@settings(max_examples=200, deadline=None)
@given(
    logits=st.lists(st.floats(-20, 20), min_size=2, max_size=10),
    offsets=st.lists(st.floats(-50, 50), min_size=20, max_size=20),
    flow=st.booleans(),
)
def test_full_freedom_stays_inside_the_model_range_with_finite_gradients(logits, offsets, flow):
    n = len(logits)
    sigma_max, sigma_range = (1.0, (0.001, 1.0)) if flow else (SIGMA_MAX, (0.0292, SIGMA_MAX))
    start = sigmas_from_logits(torch.tensor(logits), sigma_max)
    if not bool((start[:-1] > start[1:]).all()):
        return  # extreme logits can merge two sigmas in float32; no built-in schedule looks like that
    params = ScheduleParameters(start, "full", sigma_range)
    with torch.no_grad():
        params.model_offsets.copy_(torch.tensor(offsets[:n]))
        params.scale_offsets.copy_(torch.tensor(offsets[10 : 10 + n]))
    params.project()
    schedule = params.schedule()
    for per_step in (schedule.model_sigmas, schedule.scale_sigmas):
        assert (per_step >= sigma_range[0] * (1 - 1e-5)).all() and (
            per_step <= sigma_range[1] * (1 + 1e-5)
        ).all()
    (schedule.model_sigmas.sum() + schedule.scale_sigmas.log().sum()).backward()
    for p in (params.step_logits, params.model_offsets, params.scale_offsets):
        assert torch.isfinite(p.grad).all()


def test_a_pinned_first_step_stays_at_the_step_sigma_while_the_rest_moves():
    start = karras_to_zero(SIGMA_MAX, 4).float()
    params = ScheduleParameters(start, "full", (0.03, SIGMA_MAX), first_offset=-0.3, pin_first=True)
    optimizer = torch.optim.Adam(params.offset_parameters(), lr=0.1)
    for _ in range(5):
        schedule = params.schedule()
        loss = (schedule.model_sigmas.log().sum() - 3 * schedule.scale_sigmas.log().sum()) ** 2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        params.project()
    schedule = params.schedule()
    assert schedule.model_sigmas[0].item() == pytest.approx(SIGMA_MAX, rel=1e-6)
    assert schedule.scale_sigmas[0].item() == pytest.approx(SIGMA_MAX, rel=1e-6)
    assert not torch.allclose(schedule.model_sigmas[1:], schedule.step_sigmas[1:-1])
