"""The ``ld3`` scheduler for the stock KSampler: the learned schedule carried by the patched MODEL.

ComfyUI calls a scheduler as ``handler(model_sampling, steps)`` with the MODEL's (patched)
model_sampling, which is where an LD3 patch keeps its schedule. A different step count than the one
trained is resampled log-linearly (``resample_log_linear``) with a warning: a learned schedule belongs
to one step count, but a smooth resample of it is still a reasonable schedule. KSampler's denoise works
through that too: it asks for steps / denoise steps and keeps the last ones, as with every scheduler.
KSampler asks for one step more and drops the penultimate sigma for a few samplers (dpm_2, uni_pc, ...);
that request is recognised and answered so that the dropped sigma is a duplicate and the learned
schedule survives.
"""

from __future__ import annotations

import torch

from ..comfy_ui import notify_user
from ..errors import LD3InputError
from ..resample import resample_log_linear

SCHEDULER_NAME = "ld3"
# Mirrors comfy.samplers.KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS (read from ComfyUI when registering).
_DISCARD_PENULTIMATE = {"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"}


def ld3_scheduler(model_sampling, steps: int) -> torch.Tensor:
    """KSampler scheduler handler: the learned step sigmas for ``steps`` steps."""
    schedule = getattr(model_sampling, "ld3_schedule", None)
    if schedule is None:
        raise LD3InputError(
            "scheduler",
            "'ld3' needs a MODEL that carries a learned LD3 schedule, and this one carries none",
            "Connect the MODEL output of LD3 Train Sigmas or LD3 Load Sigmas to this KSampler, "
            "or pick another scheduler",
        )
    sigmas = schedule["schedule"].step_sigmas.float()
    trained = sigmas.numel() - 1
    if steps == trained:
        return sigmas.clone()
    if steps == trained + 1 and schedule.get("sampler") in _DISCARD_PENULTIMATE:
        # KSampler will drop sigmas[-2]: duplicate the last positive sigma so what remains is ours.
        return torch.cat([sigmas[:-1], sigmas[-2:-1], sigmas[-1:]])
    notify_user(
        f"LD3: the schedule was learned for {trained} steps ({schedule.get('sampler')}); the ld3 scheduler "
        f"resamples it log-linearly to {steps} steps. With denoise below 1 this is expected: KSampler asks "
        "every scheduler for steps / denoise steps and samples the last ones. Otherwise set steps to "
        f"{trained}, or train a schedule for {steps} steps, for the best results."
    )
    return resample_log_linear(sigmas, steps)


def register_ld3_scheduler() -> None:
    """Add ``ld3`` to ComfyUI's schedulers once, in place (KSampler holds the same list object)."""
    import comfy.samplers

    _DISCARD_PENULTIMATE.update(comfy.samplers.KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS)
    comfy.samplers.SCHEDULER_HANDLERS[SCHEDULER_NAME] = comfy.samplers.SchedulerHandler(ld3_scheduler)
    if SCHEDULER_NAME not in comfy.samplers.SCHEDULER_NAMES:
        comfy.samplers.SCHEDULER_NAMES.append(SCHEDULER_NAME)
