"""LD3 Load Sigmas: a saved schedule file back as SIGMAS and an LD3-patched MODEL."""

import logging
import os

import folder_paths
from comfy_api.latest import io

from ..ld3_core.errors import LD3InputError
from ..ld3_core.identity import model_identity, same_model
from ..ld3_core.model_patch import patch_model
from ..ld3_core.resample import resample_log_linear
from ..ld3_core.schedule_file import load_schedule
from ..ld3_core.solvers import SUPPORTED_SAMPLERS
from ._common import SCHEDULE_FOLDER, file_choice_error, validation_answer

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
                "SamplerCustom; the SIGMAS alone are only the step sigmas). Warns if the model differs from the one it was trained for; a "
                "different step count is resampled log-linearly, with a warning."
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
            ],
            outputs=[
                io.Sigmas.Output(display_name="sigmas", tooltip="The learned step sigmas."),
                io.Model.Output(
                    display_name="model",
                    tooltip="The MODEL carrying the whole learned schedule (per-step network times and scaling).",
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
        cls, model, schedule_file: str, sampler_name: str = ANY_SAMPLER, steps: int = 0
    ) -> io.NodeOutput:
        path = folder_paths.get_full_path(SCHEDULE_FOLDER, schedule_file)
        if path is None:  # gone since the prompt was queued (the listing may not know yet)
            raise _missing_schedule(schedule_file, gone=True)
        record = load_schedule(path)
        if sampler_name not in (ANY_SAMPLER, "", None) and sampler_name != record.sampler:
            raise LD3InputError(
                "sampler_name",
                f"'{schedule_file}' was trained for the sampler {record.sampler}, not {sampler_name}; "
                "learned schedules do not transfer between samplers",
                f"Sample with {record.sampler}, or train a schedule for {sampler_name}",
            )
        given = model_identity(model)
        if record.model and same_model(record.model, given) is False:
            logging.warning(
                "LD3: '%s' was trained for model %s [%s], but the MODEL input is %s [%s]; using it anyway.",
                schedule_file,
                record.model.get("model_class"),
                record.model.get("fingerprint"),
                given["model_class"],
                given["fingerprint"],
            )
        sigmas = record.step_sigmas
        if steps and steps != record.steps:
            logging.warning(
                "LD3: '%s' was learned for %d steps (%s); resampling it log-linearly to %d steps. "
                "Train a schedule for %d steps for the best results.",
                schedule_file,
                record.steps,
                record.sampler,
                steps,
                steps,
            )
            sigmas = resample_log_linear(sigmas, steps)
        # The MODEL keeps the schedule as trained (its per-step sigmas map any sigma), as the 'ld3'
        # KSampler scheduler expects.
        patched = patch_model(model, record.schedule, record.sampler)
        return io.NodeOutput(sigmas, patched)


def _missing_schedule(schedule_file: str | None, gone: bool = False):
    folders = " or ".join(folder_paths.get_folder_paths(SCHEDULE_FOLDER))
    available = [
        f for f in folder_paths.get_filename_list(SCHEDULE_FOLDER) if not (gone and f == schedule_file)
    ]
    return file_choice_error("schedule_file", schedule_file, folders, available, "LD3 Train Sigmas")
