"""What the nodes and benchmarks call: learn a schedule for a ComfyUI model, and measure schedules."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .comfyui import model_patch
from .comfyui.adapter import Conditioning, DifferentiableSampler, out_of_memory_guard, sample_stock
from .comfyui.identity import model_identity
from .comfyui.registry import (
    builtin_schedules,
    extra_schedules,
    is_flow_model,
    sampling_latent_shape,
    schedule_sigmas,
    sigma_range,
)
from .comfyui.solvers import check_sampler
from .errors import LD3InputError
from .identity import same_model
from .losses import L2Loss, make_loss
from .plot import training_plots
from .resample import resample_log_linear
from .schedule import Schedule
from .schedule_file import (
    SUFFIX,
    ScheduleRecord,
    ScheduleSaver,
    atomic_write,
    load_schedule,
    validate_schedule_name,
)
from .teacher import TeacherData, noise_keys
from .teacher_check import generate_checked_teacher, self_error_warning, teacher_error_warning, teacher_report
from .teacher_file import check_prompts, next_numbered_path, parse_teacher_bytes, teacher_file_bytes
from .trainer import Loss, Progress, TrainConfig, TrainResult, train_schedule
from .verdict import range_text

MAX_STEPS = 100


def check_steps(steps: int, input_name: str = "steps") -> int:
    if not 2 <= steps <= MAX_STEPS:
        raise LD3InputError(
            input_name,
            f"{steps} steps is outside 2..{MAX_STEPS}",
            "LD3 is for few-step sampling: use 4-10 steps",
        )
    return steps


def candidate_schedules(model_patcher, steps: int, sampler: str) -> dict[str, torch.Tensor]:
    """Every schedule LD3 can start from: ComfyUI's schedulers and the fitting AYS/GITS/OptimalSteps."""
    return {**builtin_schedules(model_patcher, steps, sampler), **extra_schedules(model_patcher, steps)}


def check_teacher(teacher: TeacherData, model_patcher, node: str = "LD3 Train Sigmas") -> None:
    """Refuse teacher data made with another model (or the same one with other patches or shift);
    ``node`` is the node the message tells the user to connect it to."""
    made_with = teacher.info.get("model", {})
    if not made_with:
        return
    given = model_identity(model_patcher)
    same = same_model(made_with, given)
    if same is False:
        raise LD3InputError(
            "teacher",
            f"the teacher data was made with model {made_with.get('model_class')} "
            f"[{made_with.get('fingerprint')}], but the MODEL input is {given['model_class']} [{given['fingerprint']}]",
            f"Connect the same MODEL (with the same patches) to LD3 Generate Teacher and {node}",
        )
    if same is None:
        logging.warning(
            "LD3: the teacher data was made by an older LD3 whose model fingerprint cannot be compared; "
            "the model's classes, sigma range and size match. Make sure it is the same MODEL, with the "
            "same LoRAs and shift."
        )


def _checked_candidates(model_patcher, teacher: TeacherData, sampler: str, steps: int) -> dict:
    """The sampler, step count and teacher (its model) checked; the built-in schedules to start from."""
    check_sampler(sampler)
    check_steps(steps)
    check_teacher(teacher, model_patcher)
    return candidate_schedules(model_patcher, steps, sampler)


def learn_schedule(
    model_patcher,
    teacher: TeacherData,
    conditionings: Sequence[Conditioning],
    sampler: str,
    config: TrainConfig,
    loss: Loss,
    on_progress: Callable[[Progress], None] | None = None,
    on_best: Callable[[TrainResult], None] | None = None,
    incumbent: Schedule | None = None,
    candidates: Mapping[str, torch.Tensor] | None = None,
) -> TrainResult:
    """LD3 for one model + sampler + step count, started from the best of ``candidate_schedules``.

    ``incumbent``: the schedule already saved under the run's name (``schedule_to_beat``); see
    ``train_schedule``. ``candidates``: the built-in schedules from ``_checked_candidates`` when the
    caller has checked the inputs already (None: checked and built here).
    """
    if candidates is None:
        candidates = _checked_candidates(model_patcher, teacher, sampler, config.steps)
    student = DifferentiableSampler(model_patcher, sampler)

    def run_student(noise, prompt, schedule):
        return student(noise, conditionings[prompt], schedule)

    model_range = sigma_range(model_patcher)
    config = config_for_model(config, model_patcher)
    # ComfyUI runs every prompt under inference mode: training needs autograd back.
    with (
        out_of_memory_guard(f"training the {sampler} schedule"),
        torch.inference_mode(False),
        torch.enable_grad(),
    ):
        result = train_schedule(
            config,
            run_student,
            loss,
            teacher.noise,
            teacher.targets,
            teacher.prompt_index,
            teacher.is_validation,
            candidates,
            sigma_range=model_range,
            on_progress=on_progress,
            on_best=on_best,
            incumbent=incumbent,
            reference=teacher_reference(model_patcher, teacher, conditionings),
        )
    if len(result.starts) > 1:
        result.notes.append(
            f"Trained from the {len(result.starts)} best built-in schedules ({', '.join(result.starts)}), each to "
            f"its own plateau; the best by validation started from {result.winning_start}."
        )
    if result.mined_pairs:
        result.notes.append(
            f"The teacher also solved {result.mined_pairs} of {result.mining_pool} fresh noises, those where the "
            f"learned schedule and {result.initial_scheduler} parted most; training and validation include them, "
            "each weighted as the share of noises it was picked from."
        )
    if result.check_pairs:
        result.notes.append(
            f"The verdict's {result.check_pairs} fresh noises, solved by the teacher after training: the "
            f"{result.check_extreme} of {result.check_pool} new noises where the learned schedule and "
            f"{result.initial_scheduler} part most, and {result.check_pairs - result.check_extreme} drawn at random "
            "from the others, each weighted as the share of noises it stands for."
        )
    if warning := _teacher_warning(teacher, result, loss, run_student, config):
        logging.warning("LD3: %s", warning)
        result.warnings.append(warning)
    if note := exact_ratio_note(teacher.info, result, loss):
        result.notes.append(note)
    return result


@dataclass
class TrainedSigmas:
    """Everything LD3 Train Sigmas outputs: the verdict's schedule as SIGMAS and on a MODEL, the plot
    (an IMAGE), the report, and the full TrainResult."""

    sigmas: torch.Tensor
    model: object
    plot: torch.Tensor
    report: str
    result: TrainResult


def train_sigmas(
    model_patcher,
    teacher: TeacherData,
    conditionings: Sequence[Conditioning],
    sampler: str,
    config: TrainConfig,
    loss_name: str,
    directory: str | os.PathLike,
    schedule_name: str,
    versions: dict,
    vae=None,
    lpips_weights: str | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> TrainedSigmas:
    """LD3 Train Sigmas in one call. Everything that can be checked is checked before any work (the name,
    sampler, steps, the teacher and its model and step count, the schedule already saved under the name,
    the loss); then the schedule is learned from the best built-in candidate (built once), the best one so
    far saved at ``directory/schedule_name`` whenever it improves on what the file held; then the
    verdict's choice goes onto a patched MODEL, with the plot and the one-line report."""
    path = os.path.join(directory, validate_schedule_name(schedule_name, "schedule_name"))
    steps = config.steps
    candidates = _checked_candidates(model_patcher, teacher, sampler, steps)
    teacher_steps = int(teacher.info.get("steps", 0))
    if teacher_steps and teacher_steps <= steps:
        raise LD3InputError(
            "steps",
            f"the student's {steps} steps are not fewer than the teacher's {teacher_steps} steps",
            "Use fewer steps here, or generate the teacher with more steps",
        )
    incumbent = schedule_to_beat(path, model_patcher, sampler, steps)
    loss = make_loss(loss_name, vae, lpips_weights)
    saver = ScheduleSaver(
        path,
        model_identity(model_patcher),
        float(conditionings[0].cfg),
        teacher.info.get("latent_shape") or teacher.noise.shape[1:],
        sampler,
        loss_name,
        config.recipe,
        versions,
        noise_keys(teacher.noise),
    )
    result = learn_schedule(
        model_patcher,
        teacher,
        conditionings,
        sampler,
        config,
        loss,
        on_progress,
        saver,
        incumbent,
        candidates,
    )
    saver(result)  # once more, now marked "completed", with what the verdict chose
    output = result.output_schedule
    return TrainedSigmas(
        sigmas=output.step_sigmas.clone(),
        model=model_patch.patch_model(model_patcher, output, sampler, saver.teacher_noises),
        plot=training_plots(result, candidates, loss_name, decoupled=config.freedom != "steps"),
        report=result.report(sampler, steps, f"models/ld3/{os.path.basename(path)}"),
        result=result,
    )


def teacher_reference(model_patcher, teacher: TeacherData, conditionings: Sequence[Conditioning]):
    """The teacher as a function of new noises (``TrainConfig.mining_rounds``), or None if its data does
    not record how it was made (sampler, scheduler, steps)."""
    info = teacher.info
    if not all(info.get(key) for key in ("sampler", "scheduler", "steps")):
        return None
    sampler = info["sampler"]
    sigmas = schedule_sigmas(model_patcher, info["scheduler"], int(info["steps"]), sampler)
    seed = int(info.get("seed", 0))

    def solve(noise: torch.Tensor, prompt: int) -> torch.Tensor:
        return sample_stock(model_patcher, conditionings[prompt], sampler, sigmas, noise, seed=seed)

    return solve


def config_for_model(config: TrainConfig, model_patcher) -> TrainConfig:
    """``config`` with what it leaves to the model decided: the first step is free on flow models only
    (``TrainConfig.pin_first``)."""
    if config.pin_first is not None:
        return config
    return replace(config, pin_first=not is_flow_model(model_patcher))


def _verdict_text(train: dict) -> str:
    """A schedule file's verdict, for LD3 Load Sigmas' first line (nothing if the built-in was kept)."""
    verdict = train.get("verdict") or {}
    if not verdict.get("use_learned"):
        return "."
    text = f", {verdict['ratio']:.2f}x the error of the best built-in ({verdict['builtin']}) on "
    if verdict.get("on") != "fresh":
        return text + "its validation samples."
    return text + f"fresh teacher samples{range_text(verdict.get('ratio_low'), verdict.get('ratio_high'))}."


def exact_ratio_note(teacher_info: dict, result: TrainResult, loss: Loss) -> str | None:
    """What the verdict's ratio (against the teacher) means against the model's exact solution.

    The teacher is off the exact endpoint by its own error e (its self-check). By the triangle inequality
    the mean RMSE of a schedule to the exact endpoint lies within e of its mean RMSE to the teacher, so a
    learned L and a built-in B (both to the teacher) bound the exact ratio to [(L - e) / (B + e),
    (L + e) / (B - e)]. Only for the l2 loss (RMSE in the teacher's units) and a learned schedule in use.
    """
    check = teacher_info.get("self_error")
    verdict = result.verdict
    if not check or not isinstance(loss, L2Loss) or verdict is None or not verdict.use_learned:
        return None
    e, b, learned = float(check["rmse"]), verdict.builtin_loss, verdict.learned_loss
    if b is None or learned is None or not b > 0:
        return None
    low = max(learned - e, 0.0) / (b + e)
    offset = (
        f"Against the model's exact solution (the teacher is itself off by RMSE {e:.3g}, {e / b:.0%} of the "
        f"best built-in's error to it), "
    )
    if b > e:
        return offset + (
            f"the learned schedule's error is {low:.2f}x to {(learned + e) / (b - e):.2f}x the best "
            "built-in's on these samples."
        )
    return offset + (
        f"these samples cannot tell whether the learned schedule is better: its error is at least {low:.2f}x "
        "the best built-in's, with no upper bound, because the teacher is as far from that solution as the "
        "best built-in is from the teacher."
    )


def schedule_to_beat(path, model_patcher, sampler: str, steps: int) -> Schedule | None:
    """The schedule saved at ``path`` that a new run for this model, sampler and step count must beat.

    None if there is no file, or it cannot be read (nothing in it can be lost). A readable schedule for
    another sampler, step count or model is refused before any work: a run would replace it.
    """
    if not os.path.isfile(path):
        return None
    try:
        record = load_schedule(path)
    except LD3InputError as exc:
        logging.warning("LD3: %s cannot be read (%s); this run replaces it.", path, exc)
        return None
    name = os.path.basename(path)
    other_model = _other_model(record, model_patcher) is not None
    if record.sampler != sampler or record.steps != steps or other_model:
        holds = f"{record.sampler} {record.steps} steps" + (" on another model" if other_model else "")
        raise LD3InputError(
            "schedule_name",
            f"'{name}' already holds a schedule for {holds}; this run ({sampler} {steps} steps) would replace it",
            "Choose another schedule_name, or delete or rename that file in models/ld3",
        )
    return record.schedule


def _other_model(record: ScheduleRecord, model_patcher) -> dict | None:
    """The MODEL's identity if the schedule was recorded for another model, else None (same, or unknown)."""
    given = model_identity(model_patcher)
    return given if record.model and same_model(record.model, given) is False else None


@dataclass(frozen=True)
class LoadedSchedule:
    """A saved schedule ready for a model: the SIGMAS to sample with, the patched MODEL, and what the user
    should read (what the file is, and any warning)."""

    sigmas: torch.Tensor
    model: object
    report: str


# How far the highest sigma a schedule was learned for may sit from the MODEL's, and its first step sigma
# above it (one model family gives the same value to float precision; families differ by far more:
# SD1.x 14.6, flow 1.0).
SIGMA_MAX_TOLERANCE = 0.05
# The trainer keeps what the network is told inside the model's range (the paper's window could reach
# half a log-gap below the last step sigma); a factor past that means the file is not for this model.
SIGMA_RANGE_SLACK = 10.0


def load_for_model(
    path: str | os.PathLike,
    name: str,
    model_patcher,
    sampler: str | None = None,
    steps: int = 0,
    denoise: float = 1.0,
) -> LoadedSchedule:
    """LD3 Load Sigmas: the schedule file at ``path`` read, checked and applied to the MODEL.

    Refused: another sampler than ``sampler`` (None: any), or values this model cannot have been trained
    with (learned for a model with another highest sigma, a first step sigma above the model's highest,
    or what the network is told outside the model's sigma range). Warned in the report: another model of
    the same kind, a resampled step count. ``denoise`` < 1 keeps the last round(steps * denoise) steps
    of the SIGMAS (img2img, a hires pass), as ComfyUI's AlignYourSteps / OptimalSteps nodes do; the MODEL
    still carries the whole schedule, whose per-step sigmas map the steps kept.
    """
    record = load_schedule(path)
    if sampler is not None and sampler != record.sampler:
        raise LD3InputError(
            "sampler_name",
            f"'{name}' was trained for the sampler {record.sampler}, not {sampler}; "
            "learned schedules do not transfer between samplers",
            f"Sample with {record.sampler}, or train a schedule for {sampler}",
        )
    low, high = sigma_range(model_patcher)
    fix = "Load a schedule trained for this MODEL, or train one with LD3 Train Sigmas"
    recorded = (record.model or {}).get("sigma_max")
    if isinstance(recorded, (int, float)) and recorded > 0:
        if abs(math.log(recorded / high)) > math.log1p(SIGMA_MAX_TOLERANCE):
            raise LD3InputError(
                "schedule_file",
                f"'{name}' was learned for a model whose highest sigma is {recorded:.4g}, but this MODEL's "
                f"highest sigma is {high:.4g}: another kind of model",
                fix,
            )
    first = float(record.step_sigmas[0])  # a built-in start may begin below the top (ddim_uniform)
    if first > high * (1 + SIGMA_MAX_TOLERANCE):
        raise LD3InputError(
            "schedule_file",
            f"'{name}' starts at sigma {first:.4g}, above this MODEL's highest sigma {high:.4g}: it was "
            "learned for another kind of model, or the file is damaged",
            fix,
        )
    told = torch.cat([record.model_sigmas, record.scale_sigmas]).double()
    if bool((told > high * (1 + 1e-3)).any() or (told < low / SIGMA_RANGE_SLACK).any()):
        raise LD3InputError(
            "schedule_file",
            f"'{name}' tells the network sigmas from {float(told.min()):.4g} to {float(told.max()):.4g}, "
            f"outside this MODEL's range {low:.4g}-{high:.4g}: the file is damaged or for another model",
            fix,
        )
    lines = [f"LD3 schedule '{name}': {record.sampler}, {record.steps} steps{_verdict_text(record.train)}"]
    given = _other_model(record, model_patcher)
    if given is not None:
        lines.append(
            f"Warning: it was trained for model {record.model.get('model_class')} "
            f"[{record.model.get('fingerprint')}], but the MODEL input is {given['model_class']} "
            f"[{given['fingerprint']}]: a schedule is learned for one model (its LoRAs and shift included); "
            "it is used anyway. Train one for this model for the best results."
        )
    sigmas = record.step_sigmas
    if steps and steps != record.steps:
        lines.append(
            f"Warning: resampled log-linearly from the {record.steps} steps it was learned for to {steps}; "
            f"train a schedule for {steps} steps for the best results."
        )
        sigmas = resample_log_linear(sigmas, steps)
    if denoise < 1.0:
        count = sigmas.numel() - 1
        kept = max(0, round(count * denoise))
        # No step left: empty SIGMAS, which ComfyUI's samplers answer with the latent untouched (as
        # AlignYourSteps gives for denoise 0).
        sigmas = sigmas[-(kept + 1) :] if kept else sigmas[:0]
        start = f"from sigma {float(sigmas[0]):.4g}" if kept else "nothing to sample (the latent as it is)"
        lines.append(f"denoise {denoise:g}: the last {kept} of its {count} steps, {start}.")
    for line in lines[1:]:
        if line.startswith("Warning"):
            logging.warning("LD3: %s", line)
    # The MODEL keeps the schedule as trained (its per-step sigmas map any sigma), as the 'ld3' KSampler
    # scheduler expects.
    patched = model_patch.patch_model(
        model_patcher, record.schedule, record.sampler, record.train.get("teacher_noises", ())
    )
    return LoadedSchedule(sigmas, patched, "\n".join(lines))


def _teacher_warning(
    teacher: TeacherData, result: TrainResult, loss: Loss, run_student, config
) -> str | None:
    """The teacher's own error against the best built-in's RMSE at the student's step count, if too large."""
    if not teacher.info.get("self_error"):
        return None
    if isinstance(loss, L2Loss):  # the validation loss is that RMSE already
        builtin_rmse = result.initial_validation_loss
    else:
        indices = teacher.validation_indices
        with torch.no_grad():
            errors = [
                L2Loss()(
                    run_student(teacher.noise[[i]], int(teacher.prompt_index[i]), result.initial_schedule),
                    teacher.targets[[i]],
                )
                for i in indices
            ]
        builtin_rmse = float(torch.cat(errors).mean())
    return teacher_error_warning(teacher.info, builtin_rmse, config.steps)


def sample_with_schedule(
    model_patcher, cond: Conditioning, sampler: str, schedule: Schedule, noise: torch.Tensor
) -> torch.Tensor:
    """What a user gets: ComfyUI's stock sampler on the LD3-patched model (no gradients)."""
    patched = model_patch.patch_model(model_patcher, schedule, sampler)
    return sample_stock(patched, cond, sampler, schedule.step_sigmas.float(), noise)


def heldout_errors(
    model_patcher,
    teacher: TeacherData,
    conditionings: Sequence[Conditioning],
    sampler: str,
    schedules: Mapping[str, Schedule],
    indices: Sequence[int] | None = None,
) -> dict[str, torch.Tensor]:
    """Per-sample RMSE to the teacher endpoint for each named schedule, stock sampling."""
    indices = list(indices if indices is not None else teacher.validation_indices)
    errors = {}
    for name, schedule in schedules.items():
        per_sample = []
        for i in indices:
            cond = conditionings[int(teacher.prompt_index[i])]
            out = sample_with_schedule(model_patcher, cond, sampler, schedule, teacher.noise[i : i + 1])
            per_sample.append((out.float().cpu() - teacher.targets[i : i + 1]).pow(2).mean().sqrt())
        errors[name] = torch.stack(per_sample)
    return errors


@dataclass
class GeneratedTeacher:
    """What LD3 Generate Teacher outputs: the checked teacher data, its prompts, where it was saved and the
    report (which carries the "use more teacher steps" warning when the teacher's own error is too large)."""

    data: TeacherData
    conditionings: tuple[Conditioning, ...]
    path: Path
    report: str


def generate_teacher_file(
    model_patcher,
    positives: Sequence[list],
    negative: list,
    cfg: float,
    latent_samples: torch.Tensor,
    count: int,
    seed: int,
    sampler: str,
    scheduler: str,
    steps: int,
    batch_size: int,
    name: str,
    directory: str | os.PathLike,
    versions: Mapping[str, str],
    progress: Callable[[int, int], None] | None = None,
    student_steps: Mapping[str, int] | None = None,
) -> GeneratedTeacher:
    """LD3 Generate Teacher: inputs checked before any sampling, the teacher and its self-check solved
    (``progress(done, total)`` in sample-steps), saved as ``<directory>/<name>_<counter>.safetensors``.
    ``student_steps``: the step counts the queued LD3 Train Sigmas nodes will learn from it (by node id);
    each must be fewer than the teacher's."""
    stem = validate_schedule_name(name, "name", "the LD3 teacher folder (output/ld3)")[: -len(SUFFIX)]
    for node_id, student in sorted((student_steps or {}).items(), key=lambda item: -item[1]):
        if student >= steps:
            raise LD3InputError(
                "steps",
                f"LD3 Train Sigmas (node {node_id}) learns a {student}-step schedule from this teacher, which "
                f"takes {steps} steps: the teacher must take more steps than its student",
                f"Set steps here above {student} (20 or more is typical), or fewer steps in LD3 Train Sigmas",
            )
    conditionings = tuple(Conditioning(p, negative, cfg) for p in positives)
    data = generate_checked_teacher(
        model_patcher,
        conditionings,
        sampling_latent_shape(model_patcher, latent_samples),
        count,
        seed,
        sampler,
        scheduler,
        steps,
        batch_size,
        progress,
    )
    path = next_numbered_path(directory, stem)
    atomic_write(path, teacher_file_bytes(data, dict(versions)))
    logging.info("LD3: teacher data (%d samples) saved to %s", count, path)
    if warning := self_error_warning(data.info):
        logging.warning("LD3: %s", warning)
    return GeneratedTeacher(data, conditionings, path, teacher_report(data.info))


def load_teacher_file(
    path: str | os.PathLike, name: str, positives: Sequence[list], negative: list
) -> tuple[TeacherData, tuple[Conditioning, ...]]:
    """LD3 Load Teacher: a saved teacher file, checked, with the prompts it was made with (checked too)."""
    data = parse_teacher_bytes(Path(path).read_bytes(), name=name)
    check_prompts(data, positives, negative)
    conditionings = tuple(
        Conditioning(p, negative, float(cfg)) for p, cfg in zip(positives, data.info["cfg"], strict=True)
    )
    logging.info("LD3: teacher data (%d samples) loaded from %s", len(data.noise), path)
    return data, conditionings
