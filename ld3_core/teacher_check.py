"""The teacher's self-check: how far its samples are from the ODE's solution, and when to say so.

LD3 trains the few-step schedule to land where the teacher lands, so a teacher that is itself far from
the ODE's solution is learned faithfully and silently (a 20-step dpmpp_2m karras teacher of a flow
mixture: RMSE 0.27 to the exact endpoint, more than the best 4-step built-in's 0.16). After sampling,
the first few samples are solved again at twice the steps with the same sampler and scheduler; the
RMSE between the two estimates the teacher's error (for a solver of order p it is (1 - 2^-p) of it:
3/4 for dpmpp_2m). The same noises solved at 4 and 8 steps give the scale of few-step error. A teacher
whose error is more than ``ERROR_SHARE`` of that scale is reported with "use more teacher steps".

Cost at the defaults (50 samples, 20 steps, batch 4): 4 samples x (40 + 4 + 8) steps = 208 sample-steps
on top of the teacher's 1000, +21 % on a CPU (where time goes with samples x steps), and 52 sampler
calls on top of 260 (+20 %) where a batch of 4 costs what one sample does (a GPU).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import torch

from .comfy_adapter import Conditioning, out_of_memory_guard, sample_stock
from .errors import LD3InputError
from .teacher import AUTO, TeacherData, generate_teacher, schedule_sigmas

SELF_CHECK_SAMPLES = 4
FEW_STEP_CHECKS = (4, 8)
# A teacher error above this share of the few-step error is a visible part of what the student learns.
ERROR_SHARE = 0.2


def self_check_samples(count: int, prompts: int) -> int:
    """How many samples the self-check re-solves: up to 4 of the first prompt (one sampler batch)."""
    return min(SELF_CHECK_SAMPLES, math.ceil(count / max(1, prompts)))


def self_check_work(count: int, prompts: int, steps: int) -> int:
    """The self-check's work in sample-steps (the teacher's own is ``count * steps``)."""
    return self_check_samples(count, prompts) * (2 * steps + sum(FEW_STEP_CHECKS))


def measure_self_error(
    model_patcher,
    teacher: TeacherData,
    conditionings: Sequence[Conditioning],
    batch_size: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """The teacher's error against a re-solve at twice the steps, and the 4- and 8-step errors.

    Every RMSE is the mean over the checked samples of the per-sample RMSE to the re-solve (the best
    estimate of the exact endpoint at hand). ``progress(done, total)`` counts sample-steps.
    """
    info = teacher.info
    sampler, scheduler, steps = info["sampler"], info["scheduler"], int(info["steps"])
    seed = int(info.get("seed", 0))
    indices = [i for i in range(len(teacher.noise)) if int(teacher.prompt_index[i]) == 0]
    indices = indices[:SELF_CHECK_SAMPLES]
    noise, cond = teacher.noise[indices], conditionings[0]
    total = len(indices) * (2 * steps + sum(FEW_STEP_CHECKS))
    done = 0

    def solve(n: int) -> torch.Tensor:
        nonlocal done
        sigmas = schedule_sigmas(model_patcher, scheduler, n, sampler)
        outs = []
        for start in range(0, len(indices), batch_size):
            batch = noise[start : start + batch_size]
            with out_of_memory_guard("checking the teacher's error"):
                outs.append(
                    sample_stock(model_patcher, cond, sampler, sigmas, batch, seed=seed).float().cpu()
                )
            done += len(batch) * n
            if progress is not None:
                progress(done, total)
        out = torch.cat(outs)
        if not torch.isfinite(out).all():
            raise LD3InputError(
                "model",
                f"the teacher's self-check ({n} steps) produced NaN or Inf",
                "Check the model and its dtype (try fp32) or lower the CFG",
            )
        return out

    check = solve(2 * steps)
    few_step = {str(n): _mean_rmse(solve(n), check) for n in FEW_STEP_CHECKS}
    return {
        "rmse": _mean_rmse(teacher.targets[indices], check),
        "check_steps": 2 * steps,
        "samples": len(indices),
        "few_step_rmse": few_step,
    }


def _mean_rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).pow(2).flatten(1).mean(1).sqrt().mean())


def generate_checked_teacher(
    model_patcher,
    conditionings: Sequence[Conditioning],
    latent_shape: Sequence[int],
    count: int,
    seed: int,
    sampler: str = "dpmpp_2m",
    scheduler: str = AUTO,
    steps: int = 20,
    batch_size: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> TeacherData:
    """``generate_teacher``, then its self-check, stored as ``info["self_error"]``.

    ``progress(done, total)`` counts sample-steps over both, so the bar and Cancel cover the check.
    """
    sampling = count * steps
    total = sampling + self_check_work(count, len(conditionings), steps)

    def teacher_progress(done: int, _count: int) -> None:
        if progress is not None:
            progress(done * steps, total)

    def check_progress(done: int, _total: int) -> None:
        if progress is not None:
            progress(sampling + done, total)

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
    error = measure_self_error(model_patcher, teacher, conditionings, batch_size, check_progress)
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
