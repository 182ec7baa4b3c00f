"""LD3 Load Sigmas: a saved schedule file back as SIGMAS and an LD3-patched MODEL."""

import os

import folder_paths
from comfy_api.latest import io

from ..ld3_core.api import load_for_model
from ..ld3_core.comfyui.solvers import SUPPORTED_SAMPLERS
from ._common import (
    SCHEDULE_FOLDER,
    file_choice_error,
    refuse_if_incompatible,
    report_output,
    validation_answer,
)

ANY_SAMPLER = "any"


class LD3LoadSigmas(io.ComfyNode):
    """Load a learned schedule from models/ld3 and apply it to a MODEL."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LD3LoadSigmas",
            display_name="LD3 Load Sigmas",
            category="LD3",
            description=(
                "Loads a schedule learned by LD3 Train Sigmas from models/ld3/. Outputs its SIGMAS and the "
                "MODEL carrying the whole learned schedule: per step, the time the network is told and the "
                "sigma its input and output are scaled with (use it with the 'ld3' scheduler in KSampler or with "
                "SamplerCustom; the SIGMAS alone are only the step sigmas). Refuses a file whose sigmas do not fit the "
                "MODEL (another kind of model, or damaged); warns on the canvas and in its report output if the "
                "model differs from the one it was trained for, or when another step count is resampled log-linearly."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The model the schedule was learned for."),
                io.Combo.Input(
                    "schedule_file",
                    options=folder_paths.get_filename_list(SCHEDULE_FOLDER),
                    tooltip="A schedule file in models/ld3/ (saved by LD3 Train Sigmas).",
                ),
                io.Combo.Input(
                    "sampler_name",
                    options=[ANY_SAMPLER, *SUPPORTED_SAMPLERS],
                    default=ANY_SAMPLER,
                    optional=True,
                    tooltip="The sampler you will use, checked against the one the schedule was trained "
                    "for (schedules do not transfer between samplers). 'any' skips the check.",
                ),
                io.Int.Input(
                    "steps",
                    default=0,
                    min=0,
                    max=1000,
                    optional=True,
                    tooltip="0 = the trained step count. Another count resamples the schedule log-linearly "
                    "(with a warning); train for that count for the best results.",
                ),
                io.Float.Input(
                    "denoise",
                    default=1.0,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    optional=True,
                    tooltip="Below 1: only the last steps of the schedule (round(steps x denoise)), for img2img "
                    "or a hires pass, as AlignYourSteps does. The schedule was learned from pure noise, so "
                    "this is an approximation.",
                ),
            ],
            outputs=[
                io.Sigmas.Output(display_name="sigmas", tooltip="The learned step sigmas."),
                io.Model.Output(
                    display_name="model",
                    tooltip="The MODEL carrying the whole learned schedule (per-step network times and scaling).",
                ),
                io.String.Output(
                    display_name="report",
                    tooltip="What was loaded (sampler, steps, its verdict) and any warning: another model, "
                    "a resampled step count.",
                ),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, schedule_file: str, **kwargs):
        # Re-run when the file is rewritten (training saves over the same name).
        path = folder_paths.get_full_path(SCHEDULE_FOLDER, schedule_file)
        if path is None:
            return schedule_file
        stat = os.stat(path)
        return f"{schedule_file}:{stat.st_mtime_ns}:{stat.st_size}"

    @classmethod
    def validate_inputs(cls, schedule_file: str | None = None) -> bool | str:
        return validation_answer(_missing_schedule(schedule_file))

    @classmethod
    def execute(
        cls, model, schedule_file: str, sampler_name: str = ANY_SAMPLER, steps: int = 0, denoise: float = 1.0
    ) -> io.NodeOutput:
        refuse_if_incompatible()
        path = folder_paths.get_full_path(SCHEDULE_FOLDER, schedule_file)
        if path is None:  # gone since the prompt was queued (the listing may not know yet)
            raise _missing_schedule(schedule_file, gone=True)
        wanted = None if sampler_name in (ANY_SAMPLER, "", None) else sampler_name
        loaded = load_for_model(path, schedule_file, model, wanted, steps, denoise)
        return report_output(loaded.sigmas, loaded.model, report=loaded.report)


def _missing_schedule(schedule_file: str | None, gone: bool = False):
    folders = " or ".join(folder_paths.get_folder_paths(SCHEDULE_FOLDER))
    available = [
        f for f in folder_paths.get_filename_list(SCHEDULE_FOLDER) if not (gone and f == schedule_file)
    ]
    return file_choice_error("schedule_file", schedule_file, folders, available, "LD3 Train Sigmas")
