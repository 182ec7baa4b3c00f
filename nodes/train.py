"""LD3 Train Sigmas: learn a few-step schedule (three sigmas per step) for one model, sampler and step count."""

import logging

from comfy_api.latest import io

from ..ld3_core.api import train_sigmas
from ..ld3_core.comfyui.solvers import SUPPORTED_SAMPLERS
from ..ld3_core.errors import LD3InputError
from ..ld3_core.losses import LOSSES
from ..ld3_core.schedule_file import validate_schedule_name
from ..ld3_core.trainer import RECIPES, TrainConfig
from ._common import (
    NodeProgress,
    Teacher,
    TeacherBundle,
    advanced,
    data_seed,
    link_type_error,
    lpips_weights_path,
    refuse_if_incompatible,
    report_output,
    schedule_dir,
    versions,
)


class LD3TrainSigmas(io.ComfyNode):
    """Learn a schedule for one model + sampler + step count from teacher data; save it as it improves."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LD3TrainSigmas",
            display_name="LD3 Train Sigmas",
            category="LD3",
            description=(
                "Learns a few-step schedule for your model, sampler and step count (LD3, arXiv 2405.15506): "
                "starts from the best built-in schedulers (ComfyUI's, plus AYS / GITS / OptimalSteps where they "
                "fit the model; the three best on validation, each trained in turn) and learns, per step, the "
                "solver's sigma, the time the network is told and the "
                "sigma its input and output are scaled with, so the student lands where the teacher does. Ends "
                "with a verdict against the best built-in on fresh noises the teacher solves after training "
                "(nothing trained or chose on them; the validation samples where the teacher cannot), with its 95 % "
                "range on new noises; if the learned "
                "schedule is not significantly better, the outputs carry that built-in. The best schedule so "
                "far is saved to models/ld3/<schedule_name>.safetensors whenever it improves, so Cancel keeps "
                "it; a schedule already saved under that name (same sampler and steps) is scored first and "
                "replaced only by a better one. Outputs the SIGMAS (step sigmas only), a MODEL carrying the whole schedule (use it with the "
                "'ld3' scheduler or SamplerCustom), a plot, and the verdict as text."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The same MODEL that made the teacher data."),
                Teacher.Input("teacher", tooltip="Teacher data from LD3 Generate Teacher."),
                io.Combo.Input(
                    "sampler_name",
                    options=list(SUPPORTED_SAMPLERS),
                    default="dpmpp_2m",
                    tooltip="The sampler you will use: a schedule is learned for one sampler and does not "
                    "transfer to others.",
                ),
                io.Int.Input(
                    "steps",
                    default=6,
                    min=2,
                    max=100,
                    tooltip="Number of sampling steps to learn (LD3 helps most at 4-10).",
                ),
                io.Combo.Input(
                    "loss",
                    options=list(LOSSES),
                    default="lpips",
                    tooltip="lpips: perceptual distance of decoded images (paper; needs the VAE). l2: root-mean-"
                    "square distance in latent space (no VAE, faster, usually worse).",
                ),
                advanced(
                    io.Float.Input(
                        "soft_gamma",
                        default=0.0,
                        min=0.0,
                        max=0.1,
                        step=0.0001,
                        round=0.0001,
                        tooltip="recipe 'custom' only. Soft teacher forcing (paper Eq. 5): the student may start "
                        "within r = gamma * d / steps^2 of the teacher's noise. 0 = hard teacher forcing.",
                    )
                ),
                io.Boolean.Input(
                    "decoupled_times",
                    default=True,
                    tooltip="Also learn what the network is told at each step (its time and the sigma its "
                    "input and output are scaled with; the paper's recipe: its time within half a step). Off: "
                    "the step sigmas only, usable as a plain SIGMAS schedule, usually much less gain.",
                ),
                advanced(
                    io.Int.Input(
                        "epochs_phase1",
                        default=0,
                        min=0,
                        max=100,
                        tooltip="recipe 'custom' only. Epochs training the step sigmas only (paper: 2), fewer if "
                        "they stop improving; phase 2 starts from their best.",
                    )
                ),
                advanced(
                    io.Int.Input(
                        "epochs_phase2",
                        default=40,
                        min=0,
                        max=100,
                        tooltip="recipe 'custom' only. Epochs also training what the network is told (paper: 3-5; "
                        "training stops earlier when validation stops improving).",
                    )
                ),
                advanced(
                    io.Float.Input(
                        "lr_steps",
                        default=0.03,
                        min=0.000001,
                        max=1.0,
                        step=0.0001,
                        round=0.000001,
                        tooltip="recipe 'custom' only. Adam learning rate of the step sigmas' logits.",
                    )
                ),
                advanced(
                    io.Int.Input(
                        "batch_size",
                        default=5,
                        min=1,
                        max=64,
                        tooltip="recipe 'custom' only. Teacher samples per training iteration (paper: 1-2).",
                    )
                ),
                data_seed("Seed of the order in which training samples are visited."),
                io.String.Input(
                    "schedule_name",
                    default="ld3_schedule",
                    tooltip="File name in models/ld3/; load it later with LD3 Load Sigmas. A schedule already "
                    "there for the same sampler and steps is replaced only by a better one; one for another "
                    "sampler, step count or model is refused (choose another name).",
                ),
                io.Vae.Input(
                    "vae",
                    optional=True,
                    tooltip="The model's VAE; required for the lpips loss (images are compared decoded).",
                ),
                io.Combo.Input(
                    "recipe",
                    options=list(RECIPES),
                    default="ld3",
                    tooltip="ld3: every per-step sigma learned, Adam, from the three best built-ins in turn, each "
                    "until validation stops improving, then more teacher samples where it errs (the pack's "
                    "default, measured best). paper: the LD3 paper's App. B.1 recipe (soft teacher "
                    "forcing, 2 + 3 epochs, the network's time within half a step). custom: the ld3 recipe with "
                    "soft_gamma, epochs, lr_steps and batch_size taken from the widgets above.",
                ),
            ],
            outputs=[
                io.Sigmas.Output(
                    display_name="sigmas", tooltip="The learned step sigmas (steps + 1 values)."
                ),
                io.Model.Output(
                    display_name="model",
                    tooltip="The MODEL carrying the whole learned schedule (per-step network times and scaling); use the 'ld3' "
                    "scheduler in KSampler, or SamplerCustom with these sigmas.",
                ),
                io.Image.Output(
                    display_name="plot", tooltip="Loss curves and the learned vs built-in schedules."
                ),
                io.String.Output(
                    display_name="report",
                    tooltip="The verdict: learned vs the best built-in on fresh teacher samples (or validation), in one line, with the ratio's 95 % range on new noises.",
                ),
            ],
        )

    @classmethod
    def validate_inputs(
        cls, loss: str | None = None, schedule_name: str | None = None, input_types: dict | None = None
    ) -> bool | str:
        # Refused when the prompt is queued, before LD3 Generate Teacher samples for minutes: what the
        # widgets and the links' types tell. (LD3 Generate Teacher checks this node's steps against its own.)
        # Taking input_types turns off ComfyUI's link type check for this node: link_type_error does it.
        error = link_type_error(cls, input_types)
        if error is None and loss == "lpips" and "vae" not in (input_types or {}):
            error = LD3InputError(
                "vae",
                "the lpips loss compares decoded images and no VAE is connected",
                "Connect the model's VAE to 'vae', or choose the l2 loss",
            )
        if error is None and schedule_name is not None:
            try:
                validate_schedule_name(schedule_name, "schedule_name")
            except LD3InputError as exc:
                error = exc
        return True if error is None else str(error)  # "<input>: <problem>. <fix>" under each input taken

    @classmethod
    def execute(
        cls,
        model,
        teacher: TeacherBundle,
        sampler_name: str,
        steps: int,
        loss: str,
        soft_gamma: float,
        decoupled_times: bool,
        epochs_phase1: int,
        epochs_phase2: int,
        lr_steps: float,
        batch_size: int,
        seed: int,
        schedule_name: str,
        vae=None,
        recipe: str = "ld3",
    ) -> io.NodeOutput:
        refuse_if_incompatible()
        config = TrainConfig.for_recipe(
            recipe,
            steps,
            decoupled_times,
            seed,
            soft_gamma=soft_gamma,
            epochs_phase1=epochs_phase1,
            epochs_phase2=epochs_phase2,
            lr_steps=lr_steps,
            batch_size=batch_size,
        )
        progress = NodeProgress(1)
        trained = train_sigmas(
            model,
            teacher.data,
            teacher.conditionings,
            sampler_name,
            config,
            loss,
            schedule_dir(),
            schedule_name,
            versions(),
            vae=vae,
            lpips_weights=lpips_weights_path(),
            on_progress=lambda p: progress(p.iteration, p.total_iterations),
        )
        logging.info("%s", trained.report)
        return report_output(trained.sigmas, trained.model, trained.plot, report=trained.report)
