"""LD3 Compare Sigmas: held-out error of schedules against the teacher, as a table, a plot and text."""

import torch
from comfy_api.latest import io

from ..ld3_core.api import candidate_schedules, check_teacher, heldout_errors
from ..ld3_core.model_patch import learned_schedule
from ..ld3_core.plot import strip_plot, table_image
from ..ld3_core.schedule import Schedule
from ..ld3_core.solvers import SUPPORTED_SAMPLERS
from ._common import NodeProgress, Teacher, TeacherBundle, stack_images

SIGMAS_INPUTS = ("sigmas", "sigmas_2", "sigmas_3", "sigmas_4")
REPORT_COLUMNS = ("schedule", "steps", "rmse_mean", "rmse_sd", "vs_best_builtin")
PLOT_WIDTH = 1000  # pixels: the table and the plot are stacked at one width


class LD3CompareSigmas(io.ComfyNode):
    """Sample the teacher's held-out noises with each schedule and report the distance to the teacher."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LD3CompareSigmas",
            display_name="LD3 Compare Sigmas",
            category="LD3",
            description=(
                "Compares schedules on the teacher's held-out (validation) samples: each schedule samples the "
                "same start noises with the chosen sampler, and the RMSE of its result to the teacher's is "
                "reported (mean ± sd, and the ratio to the best built-in scheduler at the same step count). "
                "A SIGMAS input equal to the schedule the (LD3-patched) MODEL carries is run with its "
                "learned per-step network times and scaling sigmas."
            ),
            inputs=[
                io.Model.Input(
                    "model", tooltip="The teacher's model; may be the MODEL output of LD3 Train/Load Sigmas."
                ),
                Teacher.Input(
                    "teacher", tooltip="Teacher data from LD3 Generate Teacher (its held-out half)."
                ),
                io.Combo.Input(
                    "sampler_name",
                    options=list(SUPPORTED_SAMPLERS),
                    default="dpmpp_2m",
                    tooltip="The sampler every schedule is run with (the one the schedule was learned for).",
                ),
                io.Sigmas.Input("sigmas", tooltip="A schedule to evaluate (e.g. from LD3 Train Sigmas)."),
                io.Sigmas.Input("sigmas_2", optional=True, tooltip="Another schedule to evaluate."),
                io.Sigmas.Input("sigmas_3", optional=True, tooltip="Another schedule to evaluate."),
                io.Sigmas.Input("sigmas_4", optional=True, tooltip="Another schedule to evaluate."),
                io.Boolean.Input(
                    "include_builtin",
                    default=True,
                    tooltip="Also evaluate every ComfyUI scheduler at the step count of 'sigmas', and AYS / GITS / "
                    "OptimalSteps where their tables fit the model.",
                ),
            ],
            outputs=[
                io.Image.Output(display_name="image", tooltip="Result table and per-sample error plot."),
                io.String.Output(display_name="report", tooltip="The result table as text."),
            ],
        )

    @classmethod
    def execute(
        cls,
        model,
        teacher: TeacherBundle,
        sampler_name: str,
        sigmas: torch.Tensor,
        include_builtin: bool,
        sigmas_2=None,
        sigmas_3=None,
        sigmas_4=None,
    ) -> io.NodeOutput:
        check_teacher(teacher.data, model, "LD3 Compare Sigmas")
        carried = learned_schedule(model)
        schedules = {}
        for name, value in zip(SIGMAS_INPUTS, (sigmas, sigmas_2, sigmas_3, sigmas_4)):
            if value is None:
                continue
            value = value.detach().float().cpu()
            schedule = Schedule.plain(value)
            if carried is not None and _same(value, carried["schedule"].step_sigmas):
                schedule = carried["schedule"]
                name = f"{name}(ld3)"
            schedules[name] = schedule
        steps = sigmas.numel() - 1
        builtin_names = []
        if include_builtin:
            for name, value in candidate_schedules(model, steps, sampler_name).items():
                schedules[name] = Schedule.plain(value)
                builtin_names.append(name)
        # One schedule at a time: progress on the node, and Cancel is honoured between schedules.
        progress = NodeProgress(len(schedules))
        errors = {}
        for done, (name, schedule) in enumerate(schedules.items(), start=1):
            progress.check()
            errors.update(
                heldout_errors(model, teacher.data, teacher.conditionings, sampler_name, {name: schedule})
            )
            progress(done, len(schedules))
        rows = report_rows(errors, {k: v.steps for k, v in schedules.items()}, builtin_names)
        report = format_report(rows, sampler_name, len(teacher.data.validation_indices))
        title = (
            f"Held-out RMSE to the teacher ({sampler_name}, {len(teacher.data.validation_indices)} samples)"
        )
        table = table_image([list(REPORT_COLUMNS)] + rows, title, highlight_rows=[1], min_width=PLOT_WIDTH)
        plot = _per_sample_plot(errors, builtin_names, width=int(table.shape[2]))
        return io.NodeOutput(stack_images([table, plot]), report)


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
