"""The teacher's self-check: how far its samples are from the ODE's solution, and when to say so.

LD3 trains the few-step schedule to land where the teacher lands, so a teacher that is itself far from
the ODE's solution is learned faithfully and silently (a 20-step dpmpp_2m karras teacher of a flow
mixture: RMSE 0.27 to the exact endpoint, more than the best 4-step built-in's 0.16). After sampling,
the first few noises are solved again at ``REFERENCE_FACTOR`` times the steps with the same sampler and
scheduler (the reference); the teacher's samples against it give the teacher's error, and the same
noises solved at 4 and 8 steps give the scale of few-step error. A teacher whose error is more than
``ERROR_SHARE`` of that scale is reported with "use more teacher steps". (A re-solve at only twice the
steps is no reference: a scheduler that converges slowly agrees with itself at 20 and 40 steps while
both are off, and the error reads several times too small.)

Cost at the defaults (50 samples, 20 steps): 2 noises x (100 + 4 + 8) = 224 sample-steps on top of the
teacher's 1000 (+22 %).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import torch

from .comfyui.adapter import Conditioning, out_of_memory_guard, sample_stock
from .errors import LD3InputError
from .teacher import (
    AUTO,
    TEACHER_SAMPLER,
    TeacherData,
    check_teacher_inputs,
    generate_teacher,
    schedule_sigmas,
    start_noise,
    step_callback,
)

SELF_CHECK_SAMPLES = 2
REFERENCE_FACTOR = 5  # the reference solve's steps, in teacher steps
FEW_STEP_CHECKS = (4, 8)
# A teacher error above this share of the few-step error is a visible part of what the student learns.
ERROR_SHARE = 0.2


def self_check_samples(count: int, prompts: int) -> int:
    """How many noises the self-check solves again: up to 2 of the first prompt (one sampler batch)."""
    return min(SELF_CHECK_SAMPLES, math.ceil(count / max(1, prompts)))


def self_check_work(count: int, prompts: int, steps: int) -> int:
    """The self-check's work in sample-steps (the teacher's own is ``count * steps``)."""
    return self_check_samples(count, prompts) * (REFERENCE_FACTOR * steps + sum(FEW_STEP_CHECKS))


def _mean_rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).pow(2).flatten(1).mean(1).sqrt().mean())


def generate_checked_teacher(
    model_patcher,
    conditionings: Sequence[Conditioning],
    latent_shape: Sequence[int],
    count: int,
    seed: int,
    sampler: str = TEACHER_SAMPLER,
    scheduler: str = AUTO,
    steps: int = 20,
    batch_size: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> TeacherData:
    """``generate_teacher``, then its self-check, stored as ``info["self_error"]``.

    ``progress(done, total)`` counts sample-steps over both, so the bar and Cancel cover the check.
    """
    check_teacher_inputs(sampler, scheduler, count, conditionings)
    checked = self_check_samples(count, len(conditionings))
    # The teacher's own first noises of the first prompt (prompts go round-robin; noise i uses seed + i).
    indices = [i * len(conditionings) for i in range(checked)]
    noise = start_noise(latent_shape, seed, count)[indices]
    total = count * steps + self_check_work(count, len(conditionings), steps)
    done = 0

    def solve(name: str, n: int) -> torch.Tensor:
        nonlocal done
        sigmas = schedule_sigmas(model_patcher, name, n, sampler)
        outs = []
        for start in range(0, len(noise), batch_size):
            batch = noise[start : start + batch_size]
            with out_of_memory_guard("checking the teacher's error"):
                callback = step_callback(progress, done, len(batch), total)
                outs.append(
                    sample_stock(
                        model_patcher, conditionings[0], sampler, sigmas, batch, seed=seed, callback=callback
                    )
                    .float()
                    .cpu()
                )
            done += len(batch) * n
            if progress is not None:
                progress(done, total)
        out = torch.cat(outs)
        if not torch.isfinite(out).all():
            raise LD3InputError(
                "model",
                f"the teacher's self-check ({name}, {n} steps) produced NaN or Inf",
                "Check the model and its dtype (try fp32) or lower the CFG",
            )
        return out

    def teacher_progress(finished: int, _total: int) -> None:  # sample-steps of the teacher itself
        if progress is not None:
            progress(finished, total)

    teacher = generate_teacher(
        model_patcher,
        conditionings,
        latent_shape,
        count,
        seed,
        sampler=sampler,
        scheduler=scheduler,
        steps=steps,
        batch_size=batch_size,
        progress=teacher_progress,
    )
    done = count * steps
    chosen = teacher.info["scheduler"]
    reference = solve(chosen, REFERENCE_FACTOR * steps)
    few_step = {str(n): _mean_rmse(solve(chosen, n), reference) for n in FEW_STEP_CHECKS}
    error = {
        "rmse": _mean_rmse(teacher.targets[indices], reference),
        "check_steps": REFERENCE_FACTOR * steps,
        "samples": checked,
        "few_step_rmse": few_step,
    }
    return dataclasses.replace(teacher, info={**teacher.info, "self_error": error})


def _percent(ratio: float) -> str:
    value = 100 * ratio
    return f"{value:.0f} %" if value >= 10 else f"{value:.1f} %"


def self_error_warning(info: dict) -> str | None:
    """The "use more teacher steps" warning when the teacher's error is above ERROR_SHARE of the
    8-step error of its own sampler and scheduler (with its share of the 4-step error, to say whether
    4-step schedules are still fine); None otherwise or without a self-check."""
    check = info.get("self_error")
    if not check:
        return None
    rmse = float(check["rmse"])
    few = {int(n): float(v) for n, v in check["few_step_rmse"].items()}
    most, least = max(few), min(few)
    if not rmse > ERROR_SHARE * few[most]:
        return None
    if rmse > ERROR_SHARE * few[least]:
        also = f"and {_share(rmse, few[least])} of the {least}-step error ({few[least]:.3g}): too far off"
        also += f" for {least}-step schedules too"
    else:
        also = f"it is {_share(rmse, few[least])} of the {least}-step error ({few[least]:.3g}): fine for"
        also += f" {least}-step schedules"
    return str(
        LD3InputError(
            "steps",
            f"the teacher's own error (RMSE {rmse:.3g}) is {_share(rmse, few[most])} of the {most}-step "
            f"error of its sampler and scheduler ({few[most]:.3g}), more than {_percent(ERROR_SHARE)}: "
            f"a schedule of {most} steps trained on it would learn the teacher's error ({also})",
            _more_steps_fix(info),
        )
    )


def _share(part: float, whole: float) -> str:
    return _percent(part / whole) if whole > 0 else "more than 100 %"


def teacher_error_warning(teacher_info: dict, builtin_rmse: float, student_steps: int) -> str | None:
    """For LD3 Train Sigmas: the warning when the teacher's own error is above ERROR_SHARE of the best
    built-in schedule's RMSE at the student's step count; None otherwise or for a teacher without a
    self-check (a file from before it was recorded)."""
    check = teacher_info.get("self_error")
    if not check:
        return None
    rmse = float(check["rmse"])
    if not rmse > ERROR_SHARE * builtin_rmse:
        return None
    share = _share(rmse, builtin_rmse)
    return str(
        LD3InputError(
            "teacher",
            f"the teacher's own error (RMSE {rmse:.3g}, measured against a {check['check_steps']}-step "
            f"re-solve) is {share} of the best built-in schedule's error at {student_steps} steps "
            f"({builtin_rmse:.3g}), more than {_percent(ERROR_SHARE)}: the schedule would learn the "
            "teacher's error rather than the model's solution",
            _more_steps_fix(teacher_info),
        )
    )


def _more_steps_fix(info: dict) -> str:
    steps = int(info.get("steps", 0))
    fix = f"Use more teacher steps: generate the teacher again with 'steps' at {2 * steps} or more"
    if info.get("scheduler_requested", AUTO) != AUTO:
        fix += f", or with the scheduler '{AUTO}' (the most accurate one for the model's type)"
    return fix


def teacher_report(info: dict) -> str:
    """The teacher's self-check in plain text lines, for the node's report output and the canvas."""
    scheduler = info["scheduler"]
    if info.get("scheduler_requested") == AUTO:
        scheduler += f" (chosen by {AUTO})"
    lines = [f"LD3 teacher: {info['sampler']}, {info['steps']} steps, scheduler {scheduler}."]
    check = info.get("self_error")
    if not check:
        return "\n".join(lines + ["Teacher error: not measured (a teacher file from before the self-check)."])

    few = check["few_step_rmse"]
    lines.append(
        f"Teacher error: RMSE {check['rmse']:.3g} (its {info['steps']}-step samples against a "
        f"{check['check_steps']}-step re-solve of the first {check['samples']} noises)."
    )
    lines.append(
        "Few-step error of the same sampler and scheduler (RMSE to the re-solve): "
        + ", ".join(f"{n} steps {float(v):.3g}" for n, v in few.items())
        + "."
    )
    warning = self_error_warning(info)
    if warning:
        lines.append(f"WARNING: {warning}")
    else:
        eight = float(few[str(max(FEW_STEP_CHECKS))])
        share = _percent(check["rmse"] / eight) if eight > 0 else "0 %"
        lines.append(
            f"OK: the teacher's error is {share} of the {max(FEW_STEP_CHECKS)}-step error "
            f"(at most {_percent(ERROR_SHARE)} is fine)."
        )
    return "\n".join(lines)
