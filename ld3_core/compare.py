"""LD3 Compare Sigmas' work: held-out error of schedules against the teacher, as a table, a plot and text."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from .api import candidate_schedules, check_teacher, heldout_errors
from .comfyui.adapter import Conditioning
from .comfyui.model_patch import learned_schedule
from .plot import stack_images, strip_plot, table_image
from .schedule import Schedule
from .teacher import TeacherData, noise_keys

REPORT_COLUMNS = ("schedule", "steps", "rmse_mean", "rmse_sd", "vs_best_builtin")
PLOT_WIDTH = 1000  # pixels: the table and the plot are stacked at one width


def compare_schedules(
    model_patcher,
    teacher: TeacherData,
    conditionings: Sequence[Conditioning],
    sampler: str,
    sigmas: Mapping[str, torch.Tensor | None],
    include_builtin: bool,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[torch.Tensor, str]:
    """Sample the teacher's held-out noises with each named SIGMAS (the whole learned schedule where the
    MODEL carries it for those sigmas) and, if asked, every built-in at the first one's step count; the
    RMSE to the teacher per sample. Returns the table above the per-sample plot (one IMAGE) and the text
    report. ``progress(done, total)`` is called before and after each schedule (Cancel between them)."""
    check_teacher(teacher, model_patcher, "LD3 Compare Sigmas")
    carried = learned_schedule(model_patcher)
    schedules, scores_carried = {}, False
    for name, value in sigmas.items():
        if value is None:
            continue
        value = value.detach().float().cpu()
        schedule = Schedule.plain(value)
        if carried is not None and _same(value, carried["schedule"].step_sigmas):
            schedule, scores_carried = carried["schedule"], True
            name = f"{name}(ld3)"
        schedules[name] = schedule
    steps = next(iter(schedules.values())).steps
    builtin_names = []
    if include_builtin:
        for name, value in candidate_schedules(model_patcher, steps, sampler).items():
            schedules[name] = Schedule.plain(value)
            builtin_names.append(name)
    errors = {}
    for done, (name, schedule) in enumerate(schedules.items()):
        if progress is not None:
            progress(done, len(schedules))
        errors.update(heldout_errors(model_patcher, teacher, conditionings, sampler, {name: schedule}))
    if progress is not None:
        progress(len(schedules), len(schedules))
    rows = report_rows(errors, {k: v.steps for k, v in schedules.items()}, builtin_names)
    samples = len(teacher.validation_indices)
    report = format_report(rows, sampler, samples)
    seen = seen_count(teacher, carried["trained_on"]) if scores_carried else 0
    title = f"Held-out RMSE to the teacher ({sampler}, {samples} samples)"
    if seen:
        report += "\n\n" + seen_note(seen, samples)
        title += f"; {seen} seen in training: optimistic"
    table = table_image([list(REPORT_COLUMNS)] + rows, title, highlight_rows=[1], min_width=PLOT_WIDTH)
    plot = _per_sample_plot(errors, builtin_names, width=int(table.shape[2]))
    return stack_images([table, plot]), report


def seen_count(teacher: TeacherData, trained_on) -> int:
    """How many of the compared (validation) noises the MODEL's schedule was trained or chosen on."""
    return sum(key in trained_on for key in noise_keys(teacher.noise[teacher.validation_indices]))


def seen_note(seen: int, samples: int) -> str:
    return (
        f"Note: {seen} of these {samples} samples are noises the MODEL's schedule was trained or chosen "
        "on, so on them it looks better than it will on new noises. For a fair comparison, connect a "
        "teacher generated with seeds the training teacher did not use (LD3 Generate Teacher's sample i "
        "uses seed + i: start at least sample_count above the training teacher's seed)."
    )


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b.float(), rtol=1e-5, atol=0))


def _per_sample_plot(errors: dict, builtin_names: list[str], width: int) -> torch.Tensor:
    """Each schedule's held-out errors as a row of dots with its mean, best mean on top.

    A strip per schedule rather than lines over the sample index: the samples have no order, so lines
    joining them drew patterns that meant nothing; dots show the spread and the outliers. The SIGMAS
    inputs (the schedules being evaluated) are red, the best built-in black, the other built-ins grey.
    """
    names = _sorted_names(errors)
    best_builtin = min(builtin_names, key=lambda n: float(errors[n].mean()), default=None)
    labels = {name: f"{name} (best built-in)" if name == best_builtin else name for name in names}
    groups = {labels[name]: errors[name].tolist() for name in names}
    emphasis = {labels[name]: "other" if name in builtin_names else "learned" for name in names}
    if best_builtin is not None:
        emphasis[labels[best_builtin]] = "reference"
    title = "Per held-out sample (best mean on top)"
    return strip_plot(groups, title, "RMSE", log_x=_all_positive(errors), emphasis=emphasis, width=width)


def _sorted_names(errors: dict) -> list[str]:
    return sorted(errors, key=lambda name: float(errors[name].mean()))


def _all_positive(errors: dict) -> bool:
    return all(bool((e > 0).all()) for e in errors.values())


def report_rows(errors: dict, steps: dict, builtin_names: list[str]) -> list[list[str]]:
    """One row per schedule, best first: name, steps, mean, sd, ratio to the best built-in mean."""
    means = {name: float(e.mean()) for name, e in errors.items()}
    best_builtin = min((means[n] for n in builtin_names), default=None)
    rows = []
    for name in _sorted_names(errors):
        e = errors[name]
        sd = float(e.std()) if e.numel() > 1 else 0.0
        ratio = f"{means[name] / best_builtin:.3f}" if best_builtin else "-"
        rows.append([name, str(steps[name]), f"{means[name]:.5f}", f"{sd:.5f}", ratio])
    return rows


def format_report(rows: list[list[str]], sampler: str, samples: int) -> str:
    """The rows as an aligned text table under a one-line title; the table is a Markdown code block, so
    PreviewAny (which renders Markdown) keeps its lines and columns."""
    table = [list(REPORT_COLUMNS)] + rows
    widths = [max(len(row[c]) for row in table) for c in range(len(REPORT_COLUMNS))]
    lines = [
        f"LD3 held-out RMSE to the teacher ({sampler}, {samples} samples; vs_best_builtin < 1 is better)",
        "",
        "```",
    ]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    return "\n".join(lines + ["```"])
