"""LD3 Train Sigmas: learn a few-step schedule (three sigmas per step) for one model, sampler and step count."""

import logging
import math

from comfy_api.latest import io

from ..ld3_core.api import candidate_schedules, check_teacher, learn_schedule, schedule_to_beat
from ..ld3_core.errors import LD3InputError
from ..ld3_core.identity import model_identity
from ..ld3_core.losses import LOSSES, make_loss
from ..ld3_core.model_patch import patch_model
from ..ld3_core.plot import line_plot
from ..ld3_core.schedule_file import ScheduleRecord, save_schedule, validate_schedule_name
from ..ld3_core.solvers import SUPPORTED_SAMPLERS
from ..ld3_core.trainer import RECIPES, Progress, TrainConfig, TrainResult
from ._common import (
    NodeProgress,
    Teacher,
    TeacherBundle,
    advanced,
    link_type_error,
    lpips_weights_path,
    report_output,
    schedule_dir,
    stack_images,
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
                "starts from the best built-in scheduler (ComfyUI's, plus AYS / GITS / OptimalSteps where they "
                "fit the model) and learns, per step, the solver's sigma, the time the network is told and the "
                "sigma its input and output are scaled with, so the student lands where the teacher does. Ends "
                "with a verdict against the best built-in on the teacher's validation samples; if the learned "
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
                        tooltip="recipe 'custom' only. Epochs training the step sigmas only (paper: 2).",
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
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=0xFFFFFFFFFFFFFFFF,
                    # It defines the model / the data: the frontend must not randomize it after each run.
                    control_after_generate=False,
                    tooltip="Seed of the order in which training samples are visited.",
                ),
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
                    tooltip="ld3: every per-step sigma learned, Adam, stops when validation stops improving "
                    "(the pack's default, measured best). paper: the LD3 paper's App. B.1 recipe (soft teacher "
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
                    tooltip="The verdict: learned vs the best built-in on the validation samples, in one line.",
                ),
            ],
        )

    @classmethod
    def validate_inputs(
        cls, loss: str | None = None, schedule_name: str | None = None, input_types: dict | None = None
    ) -> bool | str:
        # Refused when the prompt is queued, before LD3 Generate Teacher samples for minutes: what the
        # widgets and the links' types tell. (The teacher's step count is known only once it has run.)
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
        path = schedule_dir() / validate_schedule_name(schedule_name, "schedule_name")
        check_teacher(teacher.data, model)
        teacher_steps = int(teacher.data.info.get("steps", 0))
        if teacher_steps and teacher_steps <= steps:
            raise LD3InputError(
                "steps",
                f"the student's {steps} steps are not fewer than the teacher's {teacher_steps} steps",
                "Use fewer steps here, or generate the teacher with more steps",
            )
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
        incumbent = schedule_to_beat(path, model, sampler_name, steps)
        loss_fn = make_loss(loss, vae, lpips_weights_path())
        saver = _ScheduleSaver(path, model, teacher, sampler_name, loss, config.recipe)
        progress = NodeProgress(1)

        def on_progress(p: Progress) -> None:
            progress(p.iteration, p.total_iterations)

        result = learn_schedule(
            model,
            teacher.data,
            teacher.conditionings,
            sampler_name,
            config,
            loss_fn,
            on_progress=on_progress,
            on_best=saver,
            incumbent=incumbent,
        )
        saver(result)  # once more, now marked "completed", with what the verdict chose
        report = result.report(sampler_name, steps, f"models/ld3/{path.name}")
        logging.info("%s", report)
        output = result.output_schedule
        patched = patch_model(model, output, sampler_name)
        candidates = candidate_schedules(model, steps, sampler_name)
        plot = stack_images([_loss_plot(result, loss), _schedule_plot(result, candidates, decoupled_times)])
        return report_output(output.step_sigmas.clone(), patched, plot, report=report)


class _ScheduleSaver:
    """on_best callback: writes the best schedule so far (atomically), "completed" once training ends."""

    def __init__(self, path, model, teacher: TeacherBundle, sampler: str, loss: str, recipe: str):
        self.path = path
        self.sampler = sampler
        self.loss = loss
        self.recipe = recipe
        self.cfg = teacher.cfg
        self.latent_shape = tuple(teacher.data.info.get("latent_shape") or teacher.data.noise.shape[1:])
        self.identity = model_identity(model)
        self.versions = versions()

    def __call__(self, result: TrainResult) -> None:
        if not result.beats_incumbent:  # the schedule saved under this name is better: keep it
            return
        schedule = result.output_schedule if result.completed else result.schedule
        train = {
            "validation_curve": list(result.validation_curve),
            "best_validation_loss": float(result.best_validation_loss),
            "initial_scheduler": result.initial_scheduler,
            "initial_validation_loss": float(result.initial_validation_loss),
            "epochs_done": int(result.epochs_done),
            "mined_pairs": int(result.mined_pairs),
            "status": "completed" if result.completed else "interrupted",
            "recipe": self.recipe,
        }
        if result.verdict is not None:
            train["verdict"] = result.verdict.as_dict()
        record = ScheduleRecord(
            *schedule.tensors(),
            sampler=self.sampler,
            cfg=self.cfg,
            latent_shape=self.latent_shape,
            model=self.identity,
            loss=self.loss,
            train=train,
            versions=self.versions,
        )
        save_schedule(self.path, record)


def _loss_plot(result: TrainResult, loss: str):
    """Training loss per iteration, LD3's validation loss per epoch, and the best built-in's validation loss
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
    log_y = all(v > 0 for v in values if math.isfinite(v))
    return line_plot(series, title, "iteration", f"{loss} loss", log_y, emphasis=emphasis, hlines=hlines)


def _schedule_plot(result: TrainResult, candidates: dict, decoupled: bool):
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
