"""LD3 Generate Teacher: teacher pairs (x_T, Psi*(x_T)) from the stock sampler with many steps (paper Sec. 3.1)."""

from comfy_api.latest import io

from ..ld3_core.api import generate_teacher_file, load_teacher_file
from ..ld3_core.comfyui.registry import sampler_names
from ..ld3_core.teacher import AUTO, TEACHER_SAMPLER, check_teacher_sampler, teacher_schedulers
from ._common import (
    NodeProgress,
    Teacher,
    TeacherBundle,
    data_seed,
    file_choice_error,
    refuse_if_incompatible,
    report_output,
    student_steps,
    teacher_dir,
    teacher_files,
    validation_answer,
    versions,
)

EXTRA_PROMPTS = ("positive_2", "positive_3", "positive_4")


def _extra_prompt_inputs(tooltip: str) -> list:
    """The optional positive_2 .. positive_4 inputs (prompts are used round-robin)."""
    return [io.Conditioning.Input(name, optional=True, tooltip=tooltip) for name in EXTRA_PROMPTS]


def _prompts(positive, *extra) -> list:
    """The connected prompts in input order (unconnected optional inputs arrive as None)."""
    return [positive] + [p for p in extra if p is not None]


class LD3GenerateTeacher(io.ComfyNode):
    """Sample the model with a strong solver at many steps: the targets LD3 learns to reach in few steps."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LD3GenerateTeacher",
            display_name="LD3 Generate Teacher",
            category="LD3",
            description=(
                "Generates the teacher data LD3 learns from: seeded start noises and where your model "
                "takes them with a strong sampler at many steps (paper: ~50 samples). The few-step schedule "
                "is then trained to land where the teacher does. Prompts are used round-robin; half the "
                "samples are held out for validation. Also saved to output/ld3/<name>_<counter>.safetensors. "
                "Then it checks itself: the first 2 noises are solved again at 5x the steps and at 4 and 8 "
                "steps (about +22 % time); the report says the teacher's error and, when it is more than 20 % "
                "of the 8-step error, to use more teacher steps."
            ),
            inputs=[
                io.Model.Input(
                    "model", tooltip="The model to learn a schedule for (with any LoRAs/patches)."
                ),
                io.Conditioning.Input("positive", tooltip="Prompt conditioning for the teacher samples."),
                io.Conditioning.Input("negative", tooltip="Negative conditioning, shared by every prompt."),
                io.Latent.Input(
                    "latent",
                    tooltip="Shape template only (e.g. Empty Latent Image): the resolution you will sample at. "
                    "Its values are ignored.",
                ),
                io.Int.Input(
                    "sample_count",
                    default=50,
                    min=2,
                    max=1000,
                    tooltip="How many teacher samples; half train, half validate (paper: 50 train + 50 "
                    "validation, Stable Diffusion 25 + 25).",
                ),
                data_seed(
                    "Start noise of sample i uses seed + i: a teacher for LD3 Compare Sigmas that shares no "
                    "noise with the training teacher starts at least sample_count above its seed."
                ),
                io.Float.Input(
                    "cfg",
                    default=7.0,
                    min=0.0,
                    max=100.0,
                    step=0.1,
                    round=0.01,
                    tooltip="CFG scale, the one you will sample with: a schedule is learned for one CFG.",
                ),
                io.Combo.Input(
                    "sampler_name",
                    options=sampler_names(),
                    default=TEACHER_SAMPLER,
                    tooltip="The teacher's sampler: a strong deterministic solver (uni_pc: 2-20x closer to the "
                    "exact solution than dpmpp_2m at 20 steps on the benchmark's models). Ancestral, SDE and "
                    "other samplers that add fresh noise are refused (they do not solve the ODE).",
                ),
                io.Combo.Input(
                    "scheduler",
                    options=teacher_schedulers(),
                    default=AUTO,
                    tooltip="The teacher's scheduler. auto: the most accurate one for the model's type "
                    "(measured: beta for flow models such as Flux / SD3, karras for eps / v-prediction / "
                    "EDM); the one used is in the report and the teacher file.",
                ),
                io.Int.Input(
                    "steps",
                    default=20,
                    min=2,
                    max=200,
                    tooltip="The teacher's step count; must exceed the student's (paper: 20 NFE, or 10 for "
                    "text-to-image).",
                ),
                io.Int.Input(
                    "batch_size",
                    default=4,
                    min=1,
                    max=64,
                    tooltip="Teacher samples per sampler call (memory vs speed); does not change results.",
                ),
                io.String.Input(
                    "name",
                    default="ld3_teacher",
                    tooltip="File name of the saved teacher data (output/ld3/<name>_<counter>.safetensors).",
                ),
                *_extra_prompt_inputs("Another prompt (shares the negative)."),
            ],
            outputs=[
                Teacher.Output(display_name="teacher", tooltip="Teacher data for LD3 Train Sigmas."),
                io.String.Output(
                    display_name="report",
                    tooltip="The teacher's self-check as text: its error, the 4- and 8-step error, and a "
                    "warning when the teacher needs more steps. Connect Preview as Text to read it on the "
                    "canvas; it is also in the console.",
                ),
            ],
            # The queued graph: the student step counts of the LD3 Train Sigmas nodes this teacher feeds,
            # checked before sampling (validate_inputs sees no other node's widgets).
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, sampler_name: str | None = None) -> bool | str:
        # Refuse a noisy or unknown sampler when the prompt is queued (ComfyUI 0.3.75 does not check v3
        # combo values itself). Only this input: ComfyUI labels a failure with every input taken here.
        # The scheduler list never offers 'ld3'; generate_teacher refuses it before sampling.
        return validation_answer(check_teacher_sampler(sampler_name) if sampler_name is not None else None)

    @classmethod
    def execute(
        cls,
        model,
        positive,
        negative,
        latent,
        sample_count: int,
        seed: int,
        cfg: float,
        sampler_name: str,
        scheduler: str,
        steps: int,
        batch_size: int,
        name: str,
        positive_2=None,
        positive_3=None,
        positive_4=None,
    ) -> io.NodeOutput:
        refuse_if_incompatible()
        made = generate_teacher_file(
            model,
            _prompts(positive, positive_2, positive_3, positive_4),
            negative,
            cfg,
            latent["samples"],
            sample_count,
            seed,
            sampler_name,
            scheduler,
            steps,
            batch_size,
            name,
            teacher_dir(),
            versions(),
            progress=NodeProgress(1),
            student_steps=student_steps(cls.hidden.prompt, cls.hidden.unique_id),
        )
        return report_output(TeacherBundle(made.data, made.conditionings), report=made.report)


class LD3LoadTeacher(io.ComfyNode):
    """Teacher data saved by LD3 Generate Teacher, back as an LD3_TEACHER for more trainings."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LD3LoadTeacher",
            display_name="LD3 Load Teacher",
            category="LD3",
            description=(
                "Loads teacher data saved by LD3 Generate Teacher (output/ld3/), so the teacher samples serve "
                "more trainings (another sampler or step count) and survive a failed or cancelled training. "
                "Connect the same prompts as when it was generated: they are checked against the file. The "
                "model is checked when training starts."
            ),
            inputs=[
                io.Combo.Input(
                    "teacher_file",
                    options=teacher_files(),
                    tooltip="A teacher file in output/ld3/ (newest first), saved by LD3 Generate Teacher.",
                ),
                io.Conditioning.Input("positive", tooltip="The first prompt the teacher was generated with."),
                io.Conditioning.Input("negative", tooltip="The negative conditioning it was generated with."),
                *_extra_prompt_inputs("Another prompt it was generated with, in the same order."),
            ],
            outputs=[Teacher.Output(display_name="teacher", tooltip="Teacher data for LD3 Train Sigmas.")],
        )

    @classmethod
    def validate_inputs(cls, teacher_file: str | None = None) -> bool | str:
        return validation_answer(_missing_teacher(teacher_file))

    @classmethod
    def execute(
        cls, teacher_file: str, positive, negative, positive_2=None, positive_3=None, positive_4=None
    ) -> io.NodeOutput:
        if error := _missing_teacher(teacher_file):  # also when the file went away after queueing
            raise error
        prompts = _prompts(positive, positive_2, positive_3, positive_4)
        data, conditionings = load_teacher_file(teacher_dir() / teacher_file, teacher_file, prompts, negative)
        return io.NodeOutput(TeacherBundle(data, conditionings))


def _missing_teacher(teacher_file: str | None):
    return file_choice_error(
        "teacher_file", teacher_file, str(teacher_dir()), teacher_files(), "LD3 Generate Teacher"
    )
