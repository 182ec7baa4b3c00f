"""LD3 Compare Sigmas: held-out error of schedules against the teacher, as a table, a plot and text."""

import torch
from comfy_api.latest import io

from ..ld3_core.comfyui.solvers import SUPPORTED_SAMPLERS
from ..ld3_core.compare import compare_schedules
from ._common import NodeProgress, Teacher, TeacherBundle, refuse_if_incompatible

SIGMAS_INPUTS = ("sigmas", "sigmas_2", "sigmas_3", "sigmas_4")


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
                    "teacher",
                    tooltip="Teacher data from LD3 Generate Teacher (its validation half is scored). Use a teacher of "
                    "other noises than the training teacher's (another seed range): on noises the schedule was "
                    "trained or chosen on it looks better, and the report says how many there are.",
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
        refuse_if_incompatible()
        given = dict(zip(SIGMAS_INPUTS, (sigmas, sigmas_2, sigmas_3, sigmas_4)))
        image, report = compare_schedules(
            model, teacher.data, teacher.conditionings, sampler_name, given, include_builtin, NodeProgress(1)
        )
        return io.NodeOutput(image, report)
