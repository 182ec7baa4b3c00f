"""Dependency-free charts and tables drawn with PIL, returned as ComfyUI IMAGE tensors [1, H, W, 3]."""

import math

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

# Tableau-10: distinct hues that stay distinguishable for most colour-blind readers.
PALETTE = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)
MARKERS = ("circle", "square", "triangle", "diamond")
_BACKGROUND = (255, 255, 255)
_INK = (30, 30, 30)
_GRID = (225, 225, 225)
_MARKER_LIMIT = 80  # more points than this per series: markers would only smear the line


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _to_image_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)[None]


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _format_tick(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.0e}"
    return f"{value:.4g}"


def nice_ticks(low: float, high: float, target: int = 6) -> list[float]:
    """Round tick positions (1, 2, 5 x 10^k steps) inside [low, high], about `target` of them."""
    raw = (high - low) / max(target - 1, 1)
    base = 10 ** math.floor(math.log10(raw))
    best: list[float] = []
    for step in (m * base * scale for scale in (0.1, 1, 10) for m in (1, 2, 5)):
        first, last = math.ceil(low / step - 1e-9), math.floor(high / step + 1e-9)
        ticks = [float(f"{k * step:.12g}") for k in range(first, last + 1)]
        # Closest to the target count; on a tie the coarser step (fewer labels) wins.
        if not best or abs(len(ticks) - target) <= abs(len(best) - target):
            best = ticks
    return best


def _padded_range(values: list[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    if high - low < 1e-12 * max(abs(low), abs(high), 1.0):
        pad = 0.5 * max(abs(low), 1.0)
        return low - pad, high + pad
    pad = 0.05 * (high - low)
    return low - pad, high + pad


def line_plot(
    series: dict[str, list[tuple[float, float]]],
    title: str,
    x_label: str,
    y_label: str,
    log_y: bool = False,
    width: int = 768,
    height: int = 432,
    legend: bool = True,
) -> torch.Tensor:
    """Draw named (x, y) series as lines with markers, axes, ticks and a legend; IMAGE [1, H, W, 3]."""
    clean = {}
    for name, points in series.items():
        # Non-finite points (a diverged validation) are left out rather than failing a finished run's report.
        kept = [(float(x), float(y)) for x, y in points if math.isfinite(x) and math.isfinite(y)]
        if log_y:
            bad = [y for _, y in kept if y <= 0]
            if bad:
                raise ValueError(
                    f"line_plot: series '{name}' has a non-positive value {bad[0]:g}, which a logarithmic "
                    "y axis cannot show; plot it with log_y=False"
                )
        clean[name] = sorted(kept)
    all_points = [p for points in clean.values() for p in points]
    if not all_points:
        raise ValueError(f"line_plot '{title}': no finite points to draw")

    image = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    font, title_font = _font(13), _font(16)
    left, right, top, bottom = 78, width - 18, 36, height - 52
    x_low, x_high = _padded_range([x for x, _ in all_points])
    ys = [y for _, y in all_points]
    if log_y:
        y_low, y_high = _padded_range([math.log10(y) for y in ys])
        y_ticks = _log_ticks(y_low, y_high)
    else:
        y_low, y_high = _padded_range(ys)
        y_ticks = nice_ticks(y_low, y_high)
    x_ticks = nice_ticks(x_low, x_high)

    def px(x: float) -> float:
        return left + (x - x_low) / (x_high - x_low) * (right - left)

    def py(y: float) -> float:
        value = math.log10(y) if log_y else y
        return bottom - (value - y_low) / (y_high - y_low) * (bottom - top)

    for tick in x_ticks:
        x = px(tick)
        draw.line([(x, top), (x, bottom)], fill=_GRID)
        draw.line([(x, bottom), (x, bottom + 5)], fill=_INK)
        label = _format_tick(tick)
        w, _ = _text_size(draw, label, font)
        draw.text((x - w / 2, bottom + 8), label, fill=_INK, font=font)
    for tick in y_ticks:
        y = py(10**tick if log_y else tick)
        draw.line([(left, y), (right, y)], fill=_GRID)
        draw.line([(left - 5, y), (left, y)], fill=_INK)
        label = _format_tick(10**tick if log_y else tick)
        w, h = _text_size(draw, label, font)
        draw.text((left - 8 - w, y - h / 2 - 3), label, fill=_INK, font=font)
    draw.rectangle([left, top, right, bottom], outline=_INK)

    w, _ = _text_size(draw, title, title_font)
    draw.text(((width - w) / 2, 8), title, fill=_INK, font=title_font)
    w, _ = _text_size(draw, x_label, font)
    draw.text(((left + right - w) / 2, height - 22), x_label, fill=_INK, font=font)
    _draw_vertical_label(
        image, y_label + (" (log scale)" if log_y else ""), font, center_y=(top + bottom) / 2
    )

    drawn = []
    for index, points in enumerate(clean.values()):
        colour, marker = PALETTE[index % len(PALETTE)], MARKERS[index % len(MARKERS)]
        xy = [(px(x), py(y)) for x, y in points]
        drawn += _densify(xy)
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2, joint="curve")
        if len(xy) <= _MARKER_LIMIT:
            for cx, cy in xy:
                _draw_marker(draw, marker, cx, cy, 4, colour)
    if legend:
        _draw_legend(draw, list(clean), font, (left, top, right, bottom), drawn)
    return _to_image_tensor(image)


def _log_ticks(low: float, high: float) -> list[float]:
    """Tick exponents for a log axis over [10**low, 10**high]: decades, else 1-2-5, else 1..9 per decade."""
    decades = list(range(math.ceil(low), math.floor(high) + 1))
    if len(decades) >= 3:
        step = max(1, math.ceil(len(decades) / 8))
        return [float(d) for d in decades[::step]]
    for mantissas in ((1, 2, 5), tuple(range(1, 10))):
        ticks = [
            math.log10(m) + k
            for k in range(math.floor(low), math.ceil(high) + 1)
            for m in mantissas
            if low <= math.log10(m) + k <= high
        ]
        if len(ticks) >= 3:
            return ticks
    return [math.log10(v) for v in nice_ticks(10**low, 10**high, 5) if v > 0]


def _densify(xy: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points every ~10 px along a polyline, so the legend can avoid lines as well as markers."""
    out = list(xy[:1])
    for (x0, y0), (x1, y1) in zip(xy, xy[1:]):
        n = max(1, int(math.hypot(x1 - x0, y1 - y0) / 10))
        out += [(x0 + (x1 - x0) * k / n, y0 + (y1 - y0) * k / n) for k in range(1, n + 1)]
    return out


def _draw_marker(draw: ImageDraw.ImageDraw, marker: str, x: float, y: float, r: float, colour) -> None:
    if marker == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
    elif marker == "square":
        draw.rectangle([x - r, y - r, x + r, y + r], fill=colour)
    elif marker == "triangle":
        draw.polygon([(x, y - r - 1), (x - r - 1, y + r), (x + r + 1, y + r)], fill=colour)
    else:
        draw.polygon([(x, y - r - 1), (x + r + 1, y), (x, y + r + 1), (x - r - 1, y)], fill=colour)


def _draw_legend(draw: ImageDraw.ImageDraw, names: list[str], font, box: tuple, points: list) -> None:
    left, top, right, bottom = box
    row = max(_text_size(draw, "Ag", font)[1], 10) + 8
    text_width = max(_text_size(draw, name, font)[0] for name in names)
    box_w, box_h = text_width + 52, row * len(names) + 8
    corners = [
        (right - box_w - 8, top + 8),
        (left + 8, top + 8),
        (right - box_w - 8, bottom - box_h - 8),
        (left + 8, bottom - box_h - 8),
    ]

    def covered(corner):
        x0, y0 = corner
        return sum(x0 - 6 <= x <= x0 + box_w + 6 and y0 - 6 <= y <= y0 + box_h + 6 for x, y in points)

    # The corner hiding the fewest data points (ties keep matplotlib's usual upper right).
    x0, y0 = min(corners, key=covered)
    draw.rectangle([x0, y0, x0 + box_w, y0 + box_h], fill=(255, 255, 255), outline=(160, 160, 160))
    for index, name in enumerate(names):
        colour, marker = PALETTE[index % len(PALETTE)], MARKERS[index % len(MARKERS)]
        cy = y0 + 4 + row * index + row / 2
        draw.line([(x0 + 8, cy), (x0 + 36, cy)], fill=colour, width=2)
        _draw_marker(draw, marker, x0 + 22, cy, 4, colour)
        _, h = _text_size(draw, name, font)
        draw.text((x0 + 44, cy - h / 2 - 3), name, fill=_INK, font=font)


def _draw_vertical_label(image: Image.Image, text: str, font, center_y: float) -> None:
    probe = ImageDraw.Draw(image)
    w, h = _text_size(probe, text, font)
    label = Image.new("RGB", (w + 4, h + 8), _BACKGROUND)
    ImageDraw.Draw(label).text((2, 0), text, fill=_INK, font=font)
    rotated = label.rotate(90, expand=True)
    image.paste(rotated, (6, int(center_y - rotated.height / 2)))


def table_image(rows: list[list[str]], title: str) -> torch.Tensor:
    """Draw a small table (first row is the header) under a title; IMAGE [1, H, W, 3]."""
    if not rows or not any(rows):
        raise ValueError(f"table_image '{title}': no rows to draw")
    columns = max(len(row) for row in rows)
    cells = [[str(c) for c in row] + [""] * (columns - len(row)) for row in rows]
    font, title_font = _font(14), _font(16)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    col_widths = [max(_text_size(probe, row[c], font)[0] for row in cells) + 24 for c in range(columns)]
    row_height = max(_text_size(probe, "Ag", font)[1], 10) + 14
    title_w, title_h = _text_size(probe, title, title_font)
    width = max(sum(col_widths), title_w + 24, 160) + 20
    height = 20 + title_h + 14 + row_height * len(cells) + 12
    image = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.text(((width - title_w) / 2, 10), title, fill=_INK, font=title_font)
    y = 20 + title_h + 14
    for r, row in enumerate(cells):
        if r == 0:
            draw.rectangle([10, y, 10 + sum(col_widths), y + row_height], fill=(232, 238, 247))
        elif r % 2 == 0:
            draw.rectangle([10, y, 10 + sum(col_widths), y + row_height], fill=(247, 247, 247))
        x = 10
        for c, text in enumerate(row):
            _, h = _text_size(draw, text or "Ag", font)
            draw.text((x + 12, y + (row_height - h) / 2 - 3), text, fill=_INK, font=font)
            x += col_widths[c]
        y += row_height
        if r == 0:
            draw.line([(10, y), (10 + sum(col_widths), y)], fill=_INK)
    draw.rectangle([10, 20 + title_h + 14, 10 + sum(col_widths), y], outline=(160, 160, 160))
    return _to_image_tensor(image)
