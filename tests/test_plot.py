"""PIL charts and tables come out as ComfyUI IMAGE tensors with the right content."""

import math

import pytest
import torch

from ld3_core.plot import PALETTE, line_plot, nice_ticks, table_image


def colour_pixels(image: torch.Tensor, rgb: tuple[int, int, int], tol: int = 2) -> int:
    pixels = (image[0] * 255).round()
    target = torch.tensor(rgb, dtype=pixels.dtype)
    return int(((pixels - target).abs() <= tol).all(dim=-1).sum())


def check_image(image: torch.Tensor, height: int, width: int) -> None:
    assert image.shape == (1, height, width, 3)
    assert image.dtype == torch.float32
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert float(image.std()) > 0.01  # not blank
    assert float((image < 0.5).float().mean()) > 0.002  # dark ink: axes and text were drawn


def test_line_plot_shape_range_and_content():
    series = {"train": [(i, 1.0 / (i + 1)) for i in range(10)], "validation": [(0, 0.9), (5, 0.3), (9, 0.2)]}
    image = line_plot(series, "loss", "iteration", "LPIPS")
    check_image(image, 432, 768)
    small = line_plot(series, "loss", "iteration", "LPIPS", width=320, height=200)
    check_image(small, 200, 320)


def test_each_series_is_drawn_in_its_own_colour():
    names = ["a", "b", "c", "d", "e"]
    series = {name: [(x, math.sin(x + k)) for x in range(12)] for k, name in enumerate(names)}
    image = line_plot(series, "five series", "x", "y")
    colours = PALETTE[: len(names)]
    assert len(set(colours)) == len(names)
    for colour in colours:
        assert colour_pixels(image, colour) > 50, colour
    # A colour of a series that is not there is absent (not grey: anti-aliased text is grey).
    assert colour_pixels(image, PALETTE[8]) == 0


def test_single_series_uses_only_the_first_colour():
    image = line_plot({"only": [(0, 1.0), (1, 2.0), (2, 1.5)]}, "t", "x", "y")
    assert colour_pixels(image, PALETTE[0]) > 50
    assert colour_pixels(image, PALETTE[1]) == 0
    bare = line_plot({"only": [(0, 1.0), (1, 2.0), (2, 1.5)]}, "t", "x", "y", legend=False)
    assert colour_pixels(bare, PALETTE[0]) < colour_pixels(image, PALETTE[0])  # the legend swatch is gone


def test_log_scale_accepts_positive_values_over_many_decades():
    sigmas = [(i, 14.6 * 0.3**i) for i in range(10)]
    image = line_plot({"sigmas": sigmas}, "schedule", "step", "sigma", log_y=True)
    check_image(image, 432, 768)
    assert colour_pixels(image, PALETTE[0]) > 50
    # Within one decade the axis still gets several ticks and a drawing.
    narrow = line_plot({"v": [(0, 0.21), (1, 0.25), (2, 0.23)]}, "narrow", "x", "y", log_y=True)
    check_image(narrow, 432, 768)


def test_log_scale_is_linear_in_log_space():
    # A geometric sequence on a log axis is a straight line: its pixel rows are evenly spaced.
    points = [(i, 10.0**-i) for i in range(4)]
    image = line_plot({"g": points}, "", "x", "y", log_y=True, width=400, height=300, legend=False)
    mask = ((image[0] * 255).round() - torch.tensor(PALETTE[0], dtype=torch.float32)).abs().le(2).all(-1)
    rows = mask.nonzero()[:, 0].float()
    cols = mask.nonzero()[:, 1].float()
    fit = torch.linalg.lstsq(torch.stack([cols, torch.ones_like(cols)], 1), rows[:, None]).solution
    residual = rows - (fit[0] * cols + fit[1])
    assert float(residual.abs().max()) < 6.0  # markers are 4 px in radius
    assert float(cols.max() - cols.min()) > 250  # it spans the plot


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_log_scale_refuses_non_positive_values(bad):
    with pytest.raises(ValueError, match=r"series 'loss' has a non-positive value .*log_y=False"):
        line_plot({"loss": [(0, 1.0), (1, bad)]}, "t", "x", "y", log_y=True)
    # The same data is fine on a linear axis.
    check_image(line_plot({"loss": [(0, 1.0), (1, bad)]}, "t", "x", "y"), 432, 768)


def test_non_finite_points_are_skipped_and_empty_is_refused():
    image = line_plot({"a": [(0, 1.0), (1, float("nan")), (2, float("inf")), (3, 0.5)]}, "t", "x", "y")
    check_image(image, 432, 768)
    with pytest.raises(ValueError, match="no finite points"):
        line_plot({"a": [(0, float("nan"))]}, "t", "x", "y")
    with pytest.raises(ValueError, match="no finite points"):
        line_plot({}, "t", "x", "y")


def test_constant_series_and_single_point():
    check_image(line_plot({"flat": [(0, 0.3), (5, 0.3)]}, "t", "x", "y"), 432, 768)
    check_image(line_plot({"dot": [(1.0, 2.0)]}, "t", "x", "y", log_y=True), 432, 768)


@pytest.mark.parametrize("low, high", [(0.0, 1.0), (-3.2, 7.9), (0.001, 0.0013), (100.0, 12345.0)])
def test_nice_ticks_are_round_and_cover_the_range(low, high):
    ticks = nice_ticks(low, high)
    assert 3 <= len(ticks) <= 12
    assert all(low - 1e-12 <= t <= high + 1e-12 for t in ticks)
    steps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert max(steps) - min(steps) < 1e-9 * max(1.0, abs(high))
    mantissa = steps[0] / 10 ** math.floor(math.log10(steps[0]))
    assert any(abs(mantissa - m) < 1e-6 for m in (1, 2, 5, 10))


def test_table_image():
    rows = [
        ["schedule", "val LPIPS", "NFE"],
        ["karras", "0.3012", "6"],
        ["LD3", "0.1803", "6"],
        ["uniform", "0.4"],
    ]
    image = table_image(rows, "Held-out results")
    assert image.ndim == 4 and image.shape[0] == 1 and image.shape[-1] == 3
    assert image.shape[1] > 60 and image.shape[2] > 150
    check_image(image, image.shape[1], image.shape[2])
    wider = table_image([row + ["a much longer extra column"] for row in rows], "Held-out results")
    assert wider.shape[2] > image.shape[2]
    taller = table_image(rows + rows[1:], "Held-out results")
    assert taller.shape[1] > image.shape[1]


def test_table_refuses_nothing_to_draw():
    with pytest.raises(ValueError, match="no rows"):
        table_image([], "empty")
