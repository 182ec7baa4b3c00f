"""Charts and tables drawn with matplotlib (Agg, no pyplot state), returned as ComfyUI IMAGE tensors [1, H, W, 3]."""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, MaxNLocator

# How a series is drawn: the learned schedule stands out most, the reference (the best built-in) next,
# every other series is thin and muted.
Role = Literal["learned", "reference", "other"]
ROLES: tuple[Role, ...] = ("learned", "reference", "other")
DPI = 100
_FONT_PT = 12.0
_MARKER_LIMIT = 60  # more points than this per series: markers would only smear the line


@dataclass(frozen=True)
class LineStyle:
    """How one series is drawn (matplotlib's Line2D arguments)."""

    colour: str  # "#rrggbb"
    linestyle: str  # "-", "--", ":" or "-."
    marker: str
    linewidth: float
    markersize: float
    zorder: float


# Tableau-20 pairs (dark, light) without red, which only the learned schedule uses, and without grey,
# whose light half is as pale as the grid.
_MUTED_PAIRS = (
    ("#1f77b4", "#aec7e8"),  # blue
    ("#ff7f0e", "#ffbb78"),  # orange
    ("#2ca02c", "#98df8a"),  # green
    ("#9467bd", "#c5b0d5"),  # purple
    ("#8c564b", "#c49c94"),  # brown
    ("#e377c2", "#f7b6d2"),  # pink
    ("#bcbd22", "#dbdb8d"),  # olive
    ("#17becf", "#9edae5"),  # cyan
)
_LEARNED_COLOURS = ("#d10a1e", "#7a0010", "#f25c05")  # red, dark red, red-orange
_REFERENCE_COLOURS = ("#111111", "#5c5c5c")
_LINESTYLES = ("-", "--", ":", "-.")
_REFERENCE_LINESTYLES = ("--", "-.", ":", "-")  # the best built-in: dashed, unlike the solid learned line
_MARKERS = ("o", "s", "^", "v", "D", "P")
_ROLE_DRAWING = {  # role: (linewidth, markersize, zorder); later-drawn (higher zorder) lies on top
    "learned": (3.2, 7.0, 30.0),
    "reference": (2.6, 6.0, 20.0),
    "other": (1.4, 4.0, 10.0),
}


def series_styles(names: Sequence[str], emphasis: Mapping[str, Role] | None = None) -> dict[str, LineStyle]:
    """The style of each named series (role from ``emphasis``, default "other"), in legend order: learned
    series first, then the reference, then the rest, each group in the given order.

    Within a role no two series share (colour, line style) up to colours x line styles of that role
    (32 muted, 12 learned, 8 reference); markers cycle on top of that.
    """
    emphasis = dict(emphasis or {})
    unknown = sorted(set(emphasis) - set(names))
    if unknown:
        raise ValueError(f"series_styles: emphasis names series that are not plotted: {unknown}")
    bad = sorted(r for r in set(emphasis.values()) if r not in ROLES)
    if bad:
        raise ValueError(f"series_styles: unknown role(s) {bad}; use one of {ROLES}")
    styles = {}
    for role in ROLES:
        group = [name for name in names if emphasis.get(name, "other") == role]
        for k, name in enumerate(group):
            colour, linestyle = _colour_and_linestyle(role, k)
            width, size, zorder = _ROLE_DRAWING[role]
            # Earlier series of a role lie on top of later ones: LD3's step sigmas above its other series.
            styles[name] = LineStyle(
                colour, linestyle, _MARKERS[k % len(_MARKERS)], width, size, zorder - k * 0.01
            )
    return styles


def _colour_and_linestyle(role: Role, k: int) -> tuple[str, str]:
    if role == "other":
        # Rounds of 8 hues: dark solid, light dashed, dark dotted, light dash-dot (32 distinct pairs).
        hue, round_ = k % len(_MUTED_PAIRS), k // len(_MUTED_PAIRS)
        return _MUTED_PAIRS[hue][round_ % 2], _LINESTYLES[round_ % len(_LINESTYLES)]
    colours, linestyles = (
        (_LEARNED_COLOURS, _LINESTYLES) if role == "learned" else (_REFERENCE_COLOURS, _REFERENCE_LINESTYLES)
    )
    # The line style changes with the colour, so that even a grey-scale print tells the series apart.
    colour = k % len(colours)
    return colours[colour], linestyles[(colour + k // len(colours)) % len(linestyles)]


def _new_figure(width: int, height: int) -> tuple[Figure, FigureCanvasAgg]:
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    return figure, FigureCanvasAgg(figure)


def _to_image_tensor(canvas: FigureCanvasAgg) -> torch.Tensor:
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return torch.from_numpy(rgba[..., :3].astype(np.float32) / 255.0)[None]


def _log_axis(axis, set_scale) -> None:
    # Plain numbers (0.2, 0.3, 10) rather than mathtext powers (2 x 10^-1): quicker to read on a preview.
    set_scale("log")

    def label(value: float, _position) -> str:
        low, high = axis.get_view_interval()
        decades = math.log10(high / low) if low > 0 else math.inf
        mantissa = round(value / 10 ** math.floor(math.log10(value) + 1e-9))
        # Decades always; within two decades also 2 and 5; within one, every 1..9 (else too few labels).
        shown = mantissa == 1 or decades <= 1.0 or (decades <= 2.0 and mantissa in (2, 5))
        return f"{value:g}" if shown else ""

    axis.set_major_formatter(FuncFormatter(label))
    axis.set_minor_formatter(FuncFormatter(label))


def _finite_points(name: str, points, log: bool, flag: str = "log_y") -> list[tuple[float, float]]:
    """The finite (x, y) points, sorted; refuses y <= 0 on a log axis (``flag``: the caller's argument)."""
    # Non-finite points (a diverged validation) are left out rather than failing a finished run's report.
    kept = sorted((float(x), float(y)) for x, y in points if math.isfinite(x) and math.isfinite(y))
    bad = [y for _, y in kept if y <= 0] if log else []
    if bad:
        raise ValueError(
            f"series '{name}' has a non-positive value {bad[0]:g}, which a logarithmic axis cannot show; "
            f"plot it with {flag}=False"
        )
    return kept


def line_plot(
    series: Mapping[str, Sequence[tuple[float, float]]],
    title: str,
    x_label: str,
    y_label: str,
    log_y: bool = False,
    emphasis: Mapping[str, Role] | None = None,
    hlines: Mapping[str, float] | None = None,
    width: int = 1000,
    height: int = 560,
    legend: bool = True,
) -> torch.Tensor:
    """Named (x, y) series as lines, plus horizontal reference lines ``hlines`` (label: y), legend right of
    the axes; ``emphasis`` gives series or hlines a role (see ``series_styles``). IMAGE [1, H, W, 3]."""
    clean = {name: _finite_points(name, points, log_y) for name, points in series.items()}
    # A non-finite level is left out like a non-finite point (its name keeps its style and role).
    levels = {name: _finite_points(name, [(0.0, value)], log_y) for name, value in (hlines or {}).items()}
    if not any(clean.values()):
        raise ValueError(f"line_plot '{title}': no finite points to draw")
    styles = series_styles(list(clean) + list(levels), emphasis)

    figure, canvas = _new_figure(width, height)
    axes = figure.add_subplot()
    for name, style in styles.items():
        common = dict(
            color=style.colour, linestyle=style.linestyle, linewidth=style.linewidth, zorder=style.zorder
        )
        if name in levels:
            for _, value in levels[name]:
                axes.axhline(value, label=f"{name} = {value:.4g}", **common)
            continue
        points = clean[name]
        marker = style.marker if len(points) <= _MARKER_LIMIT else "None"
        axes.plot(
            [x for x, _ in points],
            [y for _, y in points],
            label=name,
            marker=marker,
            markersize=style.markersize,
            markeredgecolor="white" if style.linewidth > 2 else style.colour,
            markeredgewidth=0.8,
            **common,
        )
    if log_y:
        _log_axis(axes.yaxis, axes.set_yscale)
    xs = [x for points in clean.values() for x, _ in points]
    if all(float(x).is_integer() for x in xs):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(True, which="major", color="#dddddd", linewidth=0.8)
    axes.grid(True, which="minor", axis="y", color="#f0f0f0", linewidth=0.6)
    axes.set_axisbelow(True)
    axes.set_title(title, fontsize=_FONT_PT + 2, loc="left")
    axes.set_xlabel(x_label, fontsize=_FONT_PT)
    axes.set_ylabel(y_label + (" (log scale)" if log_y else ""), fontsize=_FONT_PT)
    axes.tick_params(labelsize=_FONT_PT - 1)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    if legend:
        # Outside the axes, to the right: a legend can never hide data there.
        rows = max(1, int((height - 40) / (1.55 * (_FONT_PT - 1) * DPI / 72)))
        figure.legend(
            loc="outside right upper",
            fontsize=_FONT_PT - 1,
            ncols=math.ceil(len(styles) / rows),
            frameon=False,
            handlelength=3.2,
        )
    return _to_image_tensor(canvas)


def strip_plot(
    groups: Mapping[str, Sequence[float]],
    title: str,
    value_label: str,
    log_x: bool = False,
    emphasis: Mapping[str, Role] | None = None,
    width: int = 1000,
) -> torch.Tensor:
    """One row per group (top to bottom in the given order): a dot per value and a bar at the mean; the
    learned groups red, the reference black, the rest grey. IMAGE [1, H, W, 3]."""
    clean = {
        name: _finite_points(name, [(0.0, v) for v in values], log_x, "log_x")
        for name, values in groups.items()
    }
    if not any(clean.values()):
        raise ValueError(f"strip_plot '{title}': no finite values to draw")
    styles = series_styles(list(clean), emphasis)
    roles = dict(emphasis or {})
    figure, canvas = _new_figure(width, max(260, 90 + 30 * len(clean)))
    axes = figure.add_subplot()
    for row, (name, points) in enumerate(clean.items()):
        values = np.array([v for _, v in points])
        role = roles.get(name, "other")
        colour = "#8a8a8a" if role == "other" else styles[name].colour
        # Three lanes taken in turn by rank: neighbouring values sit at different heights, both visible.
        lanes = (np.argsort(np.argsort(values)) % 3 - 1) * 0.2
        size = 36 if role != "other" else 18
        axes.scatter(values, row + lanes, s=size, color=colour, alpha=0.75, linewidths=0, zorder=3)
        if len(values):
            mean = float(values.mean())
            axes.plot(
                [mean, mean],
                [row - 0.38, row + 0.38],
                color=colour,
                linewidth=3.5 if role != "other" else 2,
                zorder=4,
            )
    axes.set_yticks(range(len(clean)), list(clean))
    for label in axes.get_yticklabels():
        role = roles.get(label.get_text(), "other")
        if role != "other":
            label.set_fontweight("bold")
            label.set_color(styles[label.get_text()].colour)
    axes.set_ylim(len(clean) - 0.5, -0.5)  # first group on top
    if log_x:
        _log_axis(axes.xaxis, axes.set_xscale)
    axes.grid(True, axis="x", which="both", color="#e6e6e6", linewidth=0.7)
    axes.set_axisbelow(True)
    axes.set_title(title, fontsize=_FONT_PT + 2, loc="left")
    scale = " (log scale)" if log_x else ""
    axes.set_xlabel(f"{value_label}{scale}: a dot per value, a bar at the mean", fontsize=_FONT_PT)
    axes.tick_params(labelsize=_FONT_PT - 1)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    return _to_image_tensor(canvas)


def table_image(
    rows: list[list[str]], title: str, highlight_rows: Sequence[int] = (), min_width: int = 0
) -> torch.Tensor:
    """A table (first row: the header, on a dark band) under a title; ``highlight_rows`` (indices into
    ``rows``) bold on a green band; centred in at least ``min_width`` pixels. IMAGE [1, H, W, 3]."""
    if not rows or not any(rows):
        raise ValueError(f"table_image '{title}': no rows to draw")
    columns = max(len(row) for row in rows)
    cells = [[str(c) for c in row] + [""] * (columns - len(row)) for row in rows]
    font = FontProperties(size=_FONT_PT + 1)
    bold = FontProperties(size=_FONT_PT + 1, weight="bold")
    title_font = FontProperties(size=_FONT_PT + 2, weight="bold")
    renderer = FigureCanvasAgg(Figure(dpi=DPI)).get_renderer()

    def text_width(text: str, prop: FontProperties) -> float:
        return renderer.get_text_width_height_descent(text, prop, ismath=False)[0]

    pad = 14.0  # pixels either side of a cell's text
    col_widths = [max(text_width(row[c], bold) for row in cells) + 2 * pad for c in range(columns)]
    row_h = 1.9 * font.get_size_in_points() * DPI / 72
    margin, title_h = 12.0, 2.4 * title_font.get_size_in_points() * DPI / 72
    table_w = sum(col_widths)
    width = math.ceil(max(table_w + 2 * margin, text_width(title, title_font) + 2 * margin, min_width))
    height = math.ceil(title_h + row_h * len(cells) + 2 * margin)
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    canvas = FigureCanvasAgg(figure)
    left = (width - table_w) / 2

    def to_figure(x: float, y_from_top: float) -> tuple[float, float]:
        return x / width, 1 - y_from_top / height

    figure.text(*to_figure(left, margin + title_h / 2), title, fontproperties=title_font, va="center")
    highlighted = set(highlight_rows)
    # Columns of numbers are right-aligned, header included, so their digits line up.
    numeric_columns = [
        any(row[c] for row in cells[1:]) and all(_is_number(row[c]) for row in cells[1:] if row[c])
        for c in range(columns)
    ]
    for r, row in enumerate(cells):
        top = margin + title_h + r * row_h
        fill = "#2f3e52" if r == 0 else "#d8f0d8" if r in highlighted else "#f4f4f4" if r % 2 == 0 else None
        if fill:
            x0, y0 = to_figure(left, top + row_h)
            figure.add_artist(
                Rectangle((x0, y0), table_w / width, row_h / height, transform=figure.transFigure, color=fill)
            )
        x = left
        for c, text in enumerate(row):
            numeric = numeric_columns[c]
            anchor = x + col_widths[c] - pad if numeric else x + pad
            figure.text(
                *to_figure(anchor, top + row_h / 2),
                text,
                fontproperties=bold if r == 0 or r in highlighted else font,
                color="white" if r == 0 else "#111111",
                ha="right" if numeric else "left",
                va="center",
            )
            x += col_widths[c]
    return _to_image_tensor(canvas)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# -- the training plots (LD3 Train Sigmas) ----------------------------------------------------------


def loss_plot(result, loss: str) -> torch.Tensor:
    """A TrainResult's training loss per iteration, LD3's validation loss per epoch, and the best built-in's validation loss
    (and LD3's best, when it beat it) as horizontal lines (x: iterations)."""
    per_epoch = len(result.train_curve) / max(1, len(result.validation_curve))
    validation = "LD3 validation (per epoch)"
    series = {
        validation: [(0, result.initial_validation_loss)]
        + [((e + 1) * per_epoch, v) for e, v in enumerate(result.validation_curve)],
        "train (per iteration)": [(i + 1, v) for i, v in enumerate(result.train_curve)],
    }
    builtin = f"best built-in ({result.initial_scheduler}) on validation"
    hlines = {builtin: result.initial_validation_loss}
    emphasis = {validation: "learned", builtin: "reference"}
    if result.validation_curve and result.best_validation_loss < result.initial_validation_loss:
        hlines["LD3 best on validation"] = result.best_validation_loss
        emphasis["LD3 best on validation"] = "learned"
    values = [v for points in series.values() for _, v in points] + list(hlines.values())
    title = f"LD3 training ({loss} loss; start: {result.initial_scheduler})"
    if len(result.starts) > 1:  # one validation curve after another, one per start
        starts = ", ".join(result.starts)
        title = f"LD3 training ({loss} loss; starts: {starts}; best from {result.winning_start})"
    log_y = all(v > 0 for v in values if math.isfinite(v))
    return line_plot(series, title, "iteration", f"{loss} loss", log_y, emphasis=emphasis, hlines=hlines)


def schedule_plot(result, candidates: Mapping[str, torch.Tensor], decoupled: bool) -> torch.Tensor:
    """The learned step sigmas (and what the network is told) against the best built-in (where training
    started) and the other built-in schedulers, log axis."""
    learned = result.schedule
    series = {"LD3 step sigma": list(enumerate(learned.step_sigmas[:-1].tolist()))}
    if decoupled:
        series["LD3 network time"] = list(enumerate(learned.model_sigmas.tolist()))
        series["LD3 scaling sigma"] = list(enumerate(learned.scale_sigmas.tolist()))
    emphasis = dict.fromkeys(series, "learned")
    start = f"{result.initial_scheduler} (best built-in, start)"
    series[start] = list(enumerate(result.initial_schedule.step_sigmas[:-1].tolist()))
    emphasis[start] = "reference"
    for name, sigmas in candidates.items():
        if name != result.initial_scheduler:
            series[name] = list(enumerate(sigmas[:-1].tolist()))
    title = "Schedules (the final sigma 0 not shown)"
    return line_plot(series, title, "step", "sigma", log_y=True, emphasis=emphasis)


def stack_images(images: list[torch.Tensor]) -> torch.Tensor:
    """Stack IMAGE tensors [1, H, W, 3] vertically into one image, padding narrower ones with white."""
    width = max(int(img.shape[2]) for img in images)
    padded = [
        torch.nn.functional.pad(img, (0, 0, 0, width - int(img.shape[2])), value=1.0)
        if img.shape[2] < width
        else img
        for img in images
    ]
    return torch.cat(padded, dim=1)


def training_plots(
    result, candidates: Mapping[str, torch.Tensor], loss: str, decoupled: bool
) -> torch.Tensor:
    """LD3 Train Sigmas' plot: the loss curves above the schedules, one IMAGE."""
    return stack_images([loss_plot(result, loss), schedule_plot(result, candidates, decoupled)])
