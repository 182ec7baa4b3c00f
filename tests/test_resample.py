"""resample_log_linear on schedules with exact answers."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ld3_core.resample import resample_log_linear


def geometric(start: float, end: float, count: int, zero: bool = True) -> torch.Tensor:
    sigmas = torch.logspace(math.log10(start), math.log10(end), count, dtype=torch.float64)
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)]) if zero else sigmas


@pytest.mark.parametrize("steps", [1, 2, 3, 5, 10, 17, 40])
@pytest.mark.parametrize("zero", [True, False])
def test_geometric_stays_geometric(steps, zero):
    source = geometric(80.0, 0.002, 11, zero)
    expected = geometric(80.0, 0.002, steps if zero else steps + 1, zero)
    out = resample_log_linear(source, steps)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=0.0)


def test_midpoints_are_geometric_means():
    out = resample_log_linear(torch.tensor([8.0, 2.0, 0.5, 0.0], dtype=torch.float64), 5)
    expected = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.5, 0.0], dtype=torch.float64)
    torch.testing.assert_close(out, expected, rtol=1e-15, atol=0.0)


def test_same_step_count_is_identity():
    sigmas = torch.tensor([14.6146, 6.0822, 2.2322, 0.6926, 0.1698, 0.0292, 0.0])
    out = resample_log_linear(sigmas, 6)
    assert torch.equal(out, sigmas)
    assert out.data_ptr() != sigmas.data_ptr()


def test_integer_positions_copy_inputs_exactly():
    """Downsampling by an integer factor picks input sigmas bit for bit."""
    sigmas = torch.tensor([14.6146, 6.0822, 2.2322, 0.6926, 0.1698, 0.0292, 0.0])
    # 6 positive sigmas at positions 0..5; 3 steps with trailing 0 -> positions 0, 2.5, 5
    out = resample_log_linear(sigmas, 3)
    assert out[0] == sigmas[0] and out[2] == sigmas[5] and out[3] == 0.0
    torch.testing.assert_close(out[1], (sigmas[2] * sigmas[3]).sqrt())


def test_dtype_and_device_follow_input():
    out = resample_log_linear(torch.tensor([1.0, 0.5, 0.0], dtype=torch.float32), 4)
    assert out.dtype == torch.float32 and out.device.type == "cpu"


@settings(max_examples=200, deadline=None)
@given(
    log_start=st.floats(-3.0, 5.0),
    log_gaps=st.lists(st.floats(1e-3, 3.0), min_size=1, max_size=29),
    zero=st.booleans(),
    steps=st.integers(1, 60),
)
def test_endpoints_kept_and_strictly_decreasing(log_start, log_gaps, zero, steps):
    logs = log_start - torch.tensor(log_gaps, dtype=torch.float64).cumsum(0)
    positive = torch.cat([torch.tensor([log_start], dtype=torch.float64), logs]).exp()
    sigmas = torch.cat([positive, torch.zeros(1, dtype=torch.float64)]) if zero else positive
    out = resample_log_linear(sigmas, steps)
    assert out.numel() == steps + 1
    assert out[0] == sigmas[0]
    assert (out[1:] < out[:-1]).all()
    if zero:
        assert out[-1] == 0.0
        if steps > 1:
            assert out[-2] == positive[-1]
    else:
        assert out[-1] == positive[-1]


@pytest.mark.parametrize(
    ("sigmas", "steps", "words"),
    [
        (torch.tensor([1.0]), 4, "at least 2"),
        (torch.tensor([]), 4, "at least 2"),
        (torch.tensor([1.0, 2.0, 0.0]), 4, "strictly decreasing"),
        (torch.tensor([1.0, 1.0, 0.0]), 4, "strictly decreasing"),
        (torch.tensor([1.0, float("nan"), 0.0]), 4, "non-finite"),
        (torch.tensor([float("inf"), 1.0, 0.0]), 4, "non-finite"),
        (torch.tensor([1.0, 0.5, -0.1]), 4, "below zero"),
        (torch.ones(2, 3), 4, "1-D"),
        (torch.tensor([3.0, 0.0]), 4, "single positive sigma"),
        (torch.tensor([3.0, 1.0, 0.0]), 0, "steps"),
    ],
)
def test_bad_inputs_name_the_input_and_the_fix(sigmas, steps, words):
    with pytest.raises(ValueError, match=words) as info:
        resample_log_linear(sigmas, steps)
    message = str(info.value)
    assert ("sigmas" in message or "steps" in message) and ":" in message
