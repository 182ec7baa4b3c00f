"""LD3 Train Sigmas: learn the step sigmas (and decoupled model times) of a few-step sampler (paper Alg. 1)."""

import logging

from comfy_api.latest import io

from ..ld3_core.api import candidate_schedules, check_teacher, learn_schedule
from ..ld3_core.errors import LD3InputError
from ..ld3_core.identity import model_identity
from ..ld3_core.losses import LOSSES, make_loss
from ..ld3_core.model_patch import patch_model
from ..ld3_core.plot import line_plot
from ..ld3_core.schedule_file import ScheduleRecord, save_schedule, validate_schedule_name
from ..ld3_core.solvers import SUPPORTED_SAMPLERS
from ..ld3_core.trainer import Progress, TrainConfig, TrainResult
from ._common import (
    NodeProgress,
    Teacher,
    TeacherBundle,
    lpips_weights_path,
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
                "Learns where a few-step sampler should evaluate your model (LD3, arXiv 2405.15506): starts "
                "from the best built-in scheduler (ComfyUI's, plus AYS / GITS / OptimalSteps where they fit the "
                "model) and trains the step sigmas, plus the times the network "
                "sees (decoupled), so the student lands where the teacher does. The best schedule so far is "
                "saved to models/ld3/<schedule_name>.safetensors whenever it improves, so Cancel keeps it. "
                "Outputs the SIGMAS, a MODEL carrying the schedule (use it with the 'ld3' scheduler or "
                "SamplerCustom) and a plot of the losses and the schedule."
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
                io.Float.Input(
                    "soft_gamma",
                    default=0.001,
                    min=0.0,
                    max=0.1,
                    step=0.0001,
                    round=0.0001,
                    tooltip="Soft teacher forcing (paper Eq. 5): the student may start within r = gamma * "
                    "d / steps^2 of the teacher's noise. 0 = hard teacher forcing.",
                ),
                io.Boolean.Input(
                    "decoupled_times",
                    default=True,
                    tooltip="Also learn the time the network sees at each step, apart from the solver's "
                    "step (paper Sec. 3.3; phase 2).",
                ),
                io.Int.Input(
                    "epochs_phase1",
                    default=2,
                    min=0,
                    max=100,
                    tooltip="Epochs training the step sigmas only (paper: 2).",
                ),
                io.Int.Input(
                    "epochs_phase2",
                    default=3,
                    min=0,
                    max=100,
                    tooltip="Epochs also training the decoupled times (paper: 3-5).",
                ),
                io.Float.Input(
                    "lr_steps",
                    default=0.001,
                    min=0.000001,
                    max=1.0,
                    step=0.0001,
                    round=0.000001,
                    tooltip="RMSprop learning rate of the step sigmas (paper: 0.001 latent, 0.005 pixel).",
                ),
                io.Int.Input(
                    "batch_size",
                    default=1,
                    min=1,
                    max=64,
                    tooltip="Teacher samples per training iteration (paper: 1-2).",
                ),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=0xFFFFFFFFFFFFFFFF,
                    tooltip="Seed of the order in which training samples are visited.",
                ),
                io.String.Input(
                    "schedule_name",
                    default="ld3_schedule",
                    tooltip="File name in models/ld3/ (overwritten); load it later with LD3 Load Sigmas.",
                ),
                io.Vae.Input(
                    "vae",
                    optional=True,
                    tooltip="The model's VAE; required for the lpips loss (images are compared decoded).",
                ),
            ],
            outputs=[
                io.Sigmas.Output(
                    display_name="sigmas", tooltip="The learned step sigmas (steps + 1 values)."
                ),
                io.Model.Output(
                    display_name="model",
                    tooltip="The MODEL with the learned schedule and decoupled times applied; use the 'ld3' "
                    "scheduler in KSampler, or SamplerCustom with these sigmas.",
                ),
                io.Image.Output(
                    display_name="plot", tooltip="Loss curves and the learned vs built-in schedules."
                ),
            ],
        )

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
        config = TrainConfig(
            steps=steps,
            soft_gamma=soft_gamma,
            decoupled=decoupled_times,
            epochs_phase1=epochs_phase1,
            epochs_phase2=epochs_phase2,
            batch_size=batch_size,
            lr_steps=lr_steps,
            seed=seed,
        )
        loss_fn = make_loss(loss, vae, lpips_weights_path())
        saver = _ScheduleSaver(path, model, teacher, sampler_name, loss)
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
        )
        saver(result)  # once more, now marked "completed"
        logging.info("LD3: schedule saved to %s", path)
        patched = patch_model(model, result.step_sigmas, result.eval_sigmas, sampler_name)
        candidates = candidate_schedules(model, steps, sampler_name)
        plot = stack_images([_loss_plot(result, loss), _schedule_plot(result, candidates, decoupled_times)])
        return io.NodeOutput(result.step_sigmas.clone(), patched, plot)


class _ScheduleSaver:
    """on_best callback: writes the best schedule so far (atomically), "completed" once training ends."""

    def __init__(self, path, model, teacher: TeacherBundle, sampler: str, loss: str):
        self.path = path
        self.sampler = sampler
        self.loss = loss
        self.cfg = teacher.cfg
        self.latent_shape = tuple(teacher.data.info.get("latent_shape") or teacher.data.noise.shape[1:])
        self.identity = model_identity(model)
        self.versions = versions()

    def __call__(self, result: TrainResult) -> None:
        record = ScheduleRecord(
            step_sigmas=result.step_sigmas,
            eval_sigmas=result.eval_sigmas,
            sampler=self.sampler,
            cfg=self.cfg,
            latent_shape=self.latent_shape,
            model=self.identity,
            loss=self.loss,
            train={
                "validation_curve": list(result.validation_curve),
                "best_validation_loss": float(result.best_validation_loss),
                "initial_scheduler": result.initial_scheduler,
                "initial_validation_loss": float(result.initial_validation_loss),
                "epochs_done": int(result.epochs_done),
                "status": "completed" if result.completed else "interrupted",
            },
            versions=self.versions,
        )
        save_schedule(self.path, record)


def _loss_plot(result: TrainResult, loss: str):
    """Training loss per iteration and validation loss per epoch (x: iterations)."""
    per_epoch = len(result.train_curve) / max(1, len(result.validation_curve))
    series = {
        "train": [(i + 1, v) for i, v in enumerate(result.train_curve)],
        "validation": [(0, result.initial_validation_loss)]
        + [((e + 1) * per_epoch, v) for e, v in enumerate(result.validation_curve)],
    }
    values = [v for points in series.values() for _, v in points]
    title = f"LD3 training ({loss} loss; start: {result.initial_scheduler})"
    return line_plot(series, title, "iteration", f"{loss} loss", log_y=all(v > 0 for v in values))


def _schedule_plot(result: TrainResult, candidates: dict, decoupled: bool):
    """The learned step sigmas (and model-input sigmas) against the built-in schedulers, log axis."""
    series = {"LD3 learned": list(enumerate(result.step_sigmas[:-1].tolist()))}
    if decoupled:
        series["LD3 model input"] = list(enumerate(result.eval_sigmas.tolist()))
    for name, sigmas in candidates.items():
        series[name] = list(enumerate(sigmas[:-1].tolist()))
    return line_plot(series, "Schedules (the final sigma 0 not shown)", "step", "sigma", log_y=True)
