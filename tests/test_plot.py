"""matplotlib charts and tables come out as ComfyUI IMAGE tensors that show what they should."""

import math

import pytest
import torch
from matplotlib.colors import to_rgb

from ld3_core.plot import ROLES, line_plot, loss_plot, schedule_plot, series_styles, strip_plot, table_image
from ld3_core.schedule import Schedule
from ld3_core.trainer import TrainResult


def rgb255(colour: str) -> tuple[int, int, int]:
    return tuple(round(255 * c) for c in to_rgb(colour))


def colour_mask(image: torch.Tensor, colour: str, tol: int = 2) -> torch.Tensor:
    """[H, W] True where a pixel is ``colour`` (within ``tol`` per channel; anti-aliased edges are not)."""
    pixels = (image[0] * 255).round()
    return ((pixels - torch.tensor(rgb255(colour), dtype=pixels.dtype)).abs() <= tol).all(dim=-1)


def colour_pixels(image: torch.Tensor, colour: str) -> int:
    return int(colour_mask(image, colour).sum())


def check_image(image: torch.Tensor, height: int, width: int) -> None:
    assert image.shape == (1, height, width, 3)
    assert image.dtype == torch.float32
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert float(image.std()) > 0.01  # not blank
    assert float((image < 0.5).float().mean()) > 0.002  # dark ink: axes and text were drawn


def one_style(names, emphasis=None, name=None):
    styles = series_styles(names, emphasis)
    return styles[name or names[0]]


LEARNED = one_style(["a"], {"a": "learned"})
REFERENCE = one_style(["a"], {"a": "reference"})
FIRST_OTHER = one_style(["a"])

# -- the style of each series ----------------------------------------------------------------------


def fifteen_series() -> tuple[list[str], dict]:
    names = [f"builtin {k}" for k in range(11)] + ["LD3 step", "LD3 time", "LD3 scale", "best built-in"]
    emphasis = {"LD3 step": "learned", "LD3 time": "learned", "LD3 scale": "learned"}
    emphasis["best built-in"] = "reference"
    return names, emphasis


def test_every_series_among_fifteen_has_its_own_colour_and_line_style():
    names, emphasis = fifteen_series()
    styles = series_styles(names, emphasis)
    assert set(styles) == set(names)
    pairs = [(s.colour, s.linestyle) for s in styles.values()]
    assert len(set(pairs)) == len(names), pairs
    # No muted series borrows a colour of the emphasised ones.
    emphasised = {styles[n].colour for n in emphasis}
    assert not emphasised & {styles[n].colour for n in names if n not in emphasis}


@pytest.mark.parametrize("role, count", [("other", 32), ("learned", 12), ("reference", 8)])
def test_styles_stay_distinct_up_to_the_stated_count(role, count):
    names = [f"s{k}" for k in range(count)]
    styles = series_styles(names, dict.fromkeys(names, role))
    assert len({(s.colour, s.linestyle) for s in styles.values()}) == count


def test_legend_order_and_emphasis():
    names, emphasis = fifteen_series()
    styles = series_styles(names, emphasis)
    # Learned first (in the given order), then the best built-in, then the rest in the given order.
    assert list(styles) == ["LD3 step", "LD3 time", "LD3 scale", "best built-in"] + names[:11]
    learned, reference, other = styles["LD3 step"], styles["best built-in"], styles["builtin 0"]
    assert learned.linewidth > reference.linewidth > other.linewidth
    assert learned.zorder > reference.zorder > other.zorder
    assert min(styles[n].zorder for n in emphasis) > max(styles[n].zorder for n in names[:11])
    assert reference.linestyle != "-" and learned.linestyle == "-"  # the best built-in is dashed
    assert sum(to_rgb(reference.colour)) < 0.3  # and (nearly) black


def test_styles_refuse_unknown_names_and_roles():
    with pytest.raises(ValueError, match=r"not plotted: \['typo'\]"):
        series_styles(["a"], {"typo": "learned"})
    with pytest.raises(ValueError, match="unknown role"):
        series_styles(["a"], {"a": "bold"})
    assert ROLES == ("learned", "reference", "other")


# -- line plots ------------------------------------------------------------------------------------


def test_line_plot_shape_range_and_content():
    series = {"train": [(i, 1.0 / (i + 1)) for i in range(10)], "validation": [(0, 0.9), (5, 0.3), (9, 0.2)]}
    check_image(line_plot(series, "loss", "iteration", "LPIPS"), 560, 1000)
    check_image(line_plot(series, "loss", "iteration", "LPIPS", width=480, height=300), 300, 480)


def test_emphasised_series_is_drawn_in_its_colour_and_thicker():
    curve = [(x, math.sin(x / 2)) for x in range(12)]
    plain = {"a": curve, "b": [(x, y + 3) for x, y in curve]}
    image = line_plot(plain, "t", "x", "y", legend=False)
    assert colour_pixels(image, LEARNED.colour) == 0  # nothing is red unless emphasised
    emphasised = line_plot(plain, "t", "x", "y", emphasis={"b": "learned"}, legend=False)
    muted_a = colour_pixels(emphasised, FIRST_OTHER.colour)  # "a" is the first (and only) muted series
    assert muted_a > 100
    assert colour_pixels(emphasised, LEARNED.colour) > 1.6 * muted_a  # the same curve, drawn thicker


def test_learned_series_lies_on_top_whatever_the_order():
    points = [(x, x**2) for x in range(8)]
    image = line_plot(
        {"builtin": points, "LD3": points}, "t", "x", "y", emphasis={"LD3": "learned"}, legend=False
    )
    assert colour_pixels(image, LEARNED.colour) > 500
    assert colour_pixels(image, FIRST_OTHER.colour) < 5  # hidden under the thicker LD3 line


def column_groups(mask: torch.Tensor) -> list[tuple[int, int]]:
    """Runs of consecutive image columns that hold any True pixel: [(first, last), ...]."""
    cols = sorted(set(mask.nonzero()[:, 1].tolist()))
    groups = [[cols[0], cols[0]]]
    for c in cols[1:]:
        if c - groups[-1][1] > 8:
            groups.append([c, c])
        groups[-1][1] = c
    return [tuple(g) for g in groups]


def test_legend_lies_right_of_the_data():
    # A level line across the whole x range: a legend inside the axes would sit on it.
    series = {"level": [(x, 1.0) for x in range(100)], "other": [(x, 2.0) for x in range(100)]}
    emphasis = {"level": "learned"}
    bare = column_groups(
        colour_mask(line_plot(series, "t", "x", "y", emphasis=emphasis, legend=False), LEARNED.colour)
    )
    assert len(bare) == 1
    groups = column_groups(colour_mask(line_plot(series, "t", "x", "y", emphasis=emphasis), LEARNED.colour))
    assert len(groups) == 2, groups  # the line, then the legend's swatch right of it
    (line_start, line_end), (swatch_start, swatch_end) = groups
    assert line_end - line_start > 500 and swatch_end - swatch_start < 60 and swatch_start > line_end


def test_reference_line_spans_the_axes_at_its_value():
    series = {"loss": [(i, 1.0 - 0.005 * i) for i in range(100)]}

    def level_rows(value: float) -> torch.Tensor:
        image = line_plot(
            series, "t", "x", "y", hlines={"best": value}, emphasis={"best": "learned"}, legend=False
        )
        mask = colour_mask(image, LEARNED.colour)
        assert int(mask.any(0).sum()) > 500  # (dashed) across the axes
        return mask.nonzero()[:, 0].float()

    high, low = level_rows(0.9), level_rows(0.6)
    assert float(high.max() - high.min()) < 8  # one horizontal line
    assert float(low.mean()) > float(high.mean()) + 100  # a lower value is drawn further down


def test_reference_line_refuses_non_positive_on_log_axis_and_skips_non_finite():
    series = {"loss": [(0, 1.0), (1, 0.5)]}
    with pytest.raises(ValueError, match=r"series 'zero' has a non-positive value 0"):
        line_plot(series, "t", "x", "y", log_y=True, hlines={"zero": 0.0})
    image = line_plot(series, "t", "x", "y", hlines={"nan": float("nan")}, emphasis={"nan": "learned"})
    assert colour_pixels(image, LEARNED.colour) == 0  # left out, from the legend too
    check_image(image, 560, 1000)


def test_log_scale_is_linear_in_log_space():
    # A geometric sequence on a log axis is a straight line: its pixel rows fit a line of its columns.
    points = [(i, 14.6 * 0.3**i) for i in range(8)]
    image = line_plot({"g": points}, "", "x", "y", log_y=True, emphasis={"g": "learned"}, legend=False)
    mask = colour_mask(image, LEARNED.colour)
    rows, cols = mask.nonzero()[:, 0].float(), mask.nonzero()[:, 1].float()
    fit = torch.linalg.lstsq(torch.stack([cols, torch.ones_like(cols)], 1), rows[:, None]).solution
    residual = rows - (fit[0] * cols + fit[1])
    assert float(residual.abs().max()) < 7.0  # markers are about 5 px in radius
    assert float(cols.max() - cols.min()) > 600  # it spans the plot
    # On a linear axis the same points bend: the straight-line fit is far off.
    curved = colour_mask(
        line_plot({"g": points}, "", "x", "y", emphasis={"g": "learned"}, legend=False), LEARNED.colour
    )
    rows, cols = curved.nonzero()[:, 0].float(), curved.nonzero()[:, 1].float()
    fit = torch.linalg.lstsq(torch.stack([cols, torch.ones_like(cols)], 1), rows[:, None]).solution
    assert float((rows - (fit[0] * cols + fit[1])).abs().max()) > 40


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_log_scale_refuses_non_positive_values(bad):
    with pytest.raises(ValueError, match=r"series 'loss' has a non-positive value .*log_y=False"):
        line_plot({"loss": [(0, 1.0), (1, bad)]}, "t", "x", "y", log_y=True)
    # The same data is fine on a linear axis.
    check_image(line_plot({"loss": [(0, 1.0), (1, bad)]}, "t", "x", "y"), 560, 1000)


def test_non_finite_points_are_skipped_and_empty_is_refused():
    image = line_plot({"a": [(0, 1.0), (1, float("nan")), (2, float("inf")), (3, 0.5)]}, "t", "x", "y")
    check_image(image, 560, 1000)
    with pytest.raises(ValueError, match="no finite points"):
        line_plot({"a": [(0, float("nan"))]}, "t", "x", "y")
    with pytest.raises(ValueError, match="no finite points"):
        line_plot({}, "t", "x", "y")


@pytest.mark.slow
def test_constant_series_single_point_and_many_series():
    check_image(line_plot({"flat": [(0, 0.3), (5, 0.3)]}, "t", "x", "y"), 560, 1000)
    check_image(line_plot({"dot": [(1.0, 2.0)]}, "t", "x", "y", log_y=True), 560, 1000)
    # More series than legend rows fit: the legend takes two columns, the image keeps its size.
    many = {f"series {k}": [(0, 1.0 + k), (1, 2.0 + k)] for k in range(40)}
    check_image(line_plot(many, "t", "x", "y"), 560, 1000)


# -- the training node's two plots ------------------------------------------------------------------


def train_result() -> TrainResult:
    start = torch.tensor([14.6, 5.0, 2.0, 0.8, 0.3, 0.1, 0.03, 0.0])
    learned = Schedule(start * 1.1, start[:-1] * 0.9, start[:-1] * 1.05)
    return TrainResult(
        schedule=learned,
        initial_schedule=Schedule.plain(start),
        best_validation_loss=0.2,
        initial_scheduler="karras",
        initial_validation_loss=0.3,
        candidate_losses={"karras": 0.3},
        validation_curve=[0.28, 0.24, 0.2, 0.21, 0.2],
        train_curve=[0.3 - 0.0006 * i + 0.02 * math.sin(i) for i in range(150)],
        epochs_done=5,
        completed=True,
    )


def test_training_plots_emphasise_ld3_and_the_best_builtin():
    result = train_result()
    loss = loss_plot(result, "lpips")
    check_image(loss, 560, 1000)
    assert colour_pixels(loss, LEARNED.colour) > 500  # LD3's validation curve
    second_learned = series_styles(["a", "b"], {"a": "learned", "b": "learned"})["b"]
    assert colour_pixels(loss, second_learned.colour) > 150  # LD3's best: a line across the axes
    # The best built-in's validation loss: a dashed near-black line across the axes (text alone has < 100
    # pixels of that colour, and none in long rows).
    reference = colour_mask(loss, REFERENCE.colour)
    assert int(reference.sum()) > 400 and int(reference.sum(1).max()) > 200
    start = torch.tensor([14.6, 5.0, 2.0, 0.8, 0.3, 0.1, 0.03, 0.0])
    candidates = {name: start * f for name, f in [("simple", 0.7), ("karras", 1.0), ("beta", 1.3)]}
    schedules = schedule_plot(result, candidates, decoupled=True)
    check_image(schedules, 560, 1000)
    assert colour_pixels(schedules, LEARNED.colour) > 500
    assert colour_pixels(schedules, REFERENCE.colour) > 400  # karras, where training started
    # The two other built-ins are the first two muted styles; karras is drawn once, as the reference.
    others = series_styles(["x", "y", "z"])
    assert colour_pixels(schedules, others["x"].colour) > 100
    assert colour_pixels(schedules, others["y"].colour) > 100
    assert colour_pixels(schedules, others["z"].colour) == 0


# -- strips and tables ------------------------------------------------------------------------------


def test_strip_plot_rows_and_emphasis():
    groups = {
        "LD3": [0.05, 0.06, 0.04, 0.07],
        "karras": [0.08, 0.09, 0.1, 0.07],
        "beta": [0.1, 0.2, 0.15, 0.12],
    }
    image = strip_plot(
        groups, "held-out", "RMSE", log_x=True, emphasis={"LD3": "learned", "karras": "reference"}
    )
    assert image.shape[2] == 1000 and image.dtype == torch.float32
    check_image(image, image.shape[1], 1000)
    assert colour_pixels(image, LEARNED.colour) > 100  # the LD3 row's label (bold red) and mean bar
    taller = strip_plot({**groups, **{f"g{k}": [0.1, 0.2] for k in range(12)}}, "held-out", "RMSE")
    assert taller.shape[1] > image.shape[1]
    with pytest.raises(ValueError, match=r"series 'beta' has a non-positive value .*log_x=False"):
        strip_plot({**groups, "beta": [0.0, 0.1]}, "held-out", "RMSE", log_x=True)
    with pytest.raises(ValueError, match="no finite values"):
        strip_plot({"a": [float("nan")]}, "held-out", "RMSE")


TABLE = [
    ["schedule", "val LPIPS", "NFE"],
    ["LD3", "0.1803", "6"],
    ["karras", "0.3012", "6"],
    ["uniform", "0.4"],
]
HEADER_BAND, HIGHLIGHT_BAND = "#2f3e52", "#d8f0d8"


def test_table_image_content_header_and_highlight():
    image = table_image(TABLE, "Held-out results")
    check_image(image, image.shape[1], image.shape[2])
    assert image.shape[1] > 100 and image.shape[2] > 200
    assert colour_pixels(image, HEADER_BAND) > 1000  # the header row stands out
    assert colour_pixels(image, HIGHLIGHT_BAND) == 0
    # Text was drawn in every row: each row's band holds dark (ink) pixels.
    highlighted = table_image(TABLE, "Held-out results", highlight_rows=[1])
    assert colour_pixels(highlighted, HIGHLIGHT_BAND) > 1000
    band_rows = colour_mask(highlighted, HIGHLIGHT_BAND).any(1).nonzero()[:, 0]
    ink = (highlighted[0, band_rows.min() : band_rows.max() + 1] < 0.3).all(-1)
    assert int(ink.sum()) > 100  # the best row's text, on its band


def test_table_grows_with_content_and_centres_in_min_width():
    image = table_image(TABLE, "Held-out results")
    wider = table_image([row + ["a much longer extra column"] for row in TABLE], "Held-out results")
    assert wider.shape[2] > image.shape[2]
    taller = table_image(TABLE + TABLE[1:], "Held-out results")
    assert taller.shape[1] > image.shape[1]
    padded = table_image(TABLE, "Held-out results", min_width=1000)
    assert padded.shape[2] == 1000 and padded.shape[1] == image.shape[1]
    header_cols = colour_mask(padded, HEADER_BAND).any(0).nonzero()[:, 0]
    left, right = int(header_cols.min()), 999 - int(header_cols.max())
    assert abs(left - right) <= 2 and left > 100  # centred


def test_table_refuses_nothing_to_draw():
    with pytest.raises(ValueError, match="no rows"):
        table_image([], "empty")
