"""The teacher: ``auto`` picks an accurate reference scheduler, and noisy samplers are refused.

Exact Gaussian-mixture models give the true ODE endpoint (a 500-step solve, as in the benchmark), so
"accurate" is measured, not assumed.
"""

import comfy.model_base
import comfy.patcher_extension
import comfy.samplers
import pytest
import tiny_models
import torch

from ld3_core.api import builtin_schedules
from ld3_core.comfy_adapter import Conditioning, sample_stock
from ld3_core.errors import LD3InputError
from ld3_core.mixture import make_mixture, mixture_conditioning, mixture_model_patcher
from ld3_core.model_patch import patch_model
from ld3_core.scheduler import register_ld3_scheduler
from ld3_core.solvers import is_stochastic
from ld3_core.teacher import (
    AUTO,
    DIFFUSION_REFERENCE_SCHEDULER,
    FLOW_REFERENCE_SCHEDULER,
    generate_teacher,
    resolve_scheduler,
    schedule_sigmas,
    start_noise,
    teacher_schedulers,
)

EXPECTED = {"eps": DIFFUSION_REFERENCE_SCHEDULER, "flow": FLOW_REFERENCE_SCHEDULER}
SMALL = (4, 8, 8)


def mixture_model(kind: str, shape=SMALL, seed: int = 0):
    model = mixture_model_patcher(make_mixture(shape, components=8, seed=seed, dtype=torch.float32), kind)
    return model, Conditioning(*mixture_conditioning(), 1.0)


def per_sample_rmse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.double() - b.double()).pow(2).flatten(1).mean(1).sqrt()


def count_model_calls(model) -> tuple[object, list]:
    """A clone of ``model`` that records every denoiser call (a real ComfyUI APPLY_MODEL wrapper)."""
    calls = []

    def wrapper(executor, *args, **kwargs):
        calls.append(1)
        return executor(*args, **kwargs)

    counted = model.clone()
    counted.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "test_count", wrapper)
    return counted, calls


# -- auto ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["eps", "flow"])
def test_auto_resolves_by_the_models_sampling_type(kind):
    model, cond = mixture_model(kind)
    teacher = generate_teacher(model, [cond], SMALL, count=2, seed=0, steps=3)
    assert teacher.info["scheduler"] == EXPECTED[kind] and teacher.info["scheduler_requested"] == AUTO
    # The resolution reads the model's sampling type, so an LD3-patched MODEL resolves the same way.
    assert resolve_scheduler(patch_model(model), AUTO) == EXPECTED[kind]
    assert resolve_scheduler(model, "normal") == "normal"


def test_auto_on_comfyui_model_types(tiny_sd15, tiny_sd15_v, tiny_flux):
    assert resolve_scheduler(tiny_sd15, AUTO) == DIFFUSION_REFERENCE_SCHEDULER  # EPS, discrete
    assert resolve_scheduler(tiny_sd15_v, AUTO) == DIFFUSION_REFERENCE_SCHEDULER  # V prediction
    assert resolve_scheduler(tiny_flux, AUTO) == FLOW_REFERENCE_SCHEDULER  # CONST, ModelSamplingFlux
    edm = tiny_models.build_tiny_sd15(comfy.model_base.ModelType.EDM, seed=4)  # continuous EDM
    assert resolve_scheduler(edm, AUTO) == DIFFUSION_REFERENCE_SCHEDULER


@pytest.mark.parametrize("kind", ["eps", "flow"])
def test_the_auto_teacher_is_close_to_the_exact_endpoint(kind):
    """Issue 17's acceptance: the default teacher's error to the exact endpoint is at most 10 % of the best
    built-in's error at NFE 4 (dpmpp_2m and euler). On the flow mixture the old default (karras) is not."""
    shape = (16, 16, 16) if kind == "flow" else (4, 16, 16)
    model, cond = mixture_model(kind, shape, seed=2 if kind == "flow" else 0)  # the benchmark's mixtures
    teacher = generate_teacher(model, [cond], shape, count=8, seed=100)  # every default: auto, 20 steps
    exact_sigmas = schedule_sigmas(model, "simple" if kind == "flow" else "karras", 500, "dpmpp_2m")
    exact = sample_stock(model, cond, "dpmpp_2m", exact_sigmas, teacher.noise)
    teacher_error = float(per_sample_rmse(teacher.targets, exact).mean())
    best_nfe4 = min(
        float(per_sample_rmse(sample_stock(model, cond, sampler, sigmas, teacher.noise), exact).mean())
        for sampler in ("dpmpp_2m", "euler")
        for sigmas in builtin_schedules(model, 4, sampler).values()
    )
    assert teacher_error <= 0.1 * best_nfe4, (teacher_error, best_nfe4)
    if kind == "flow":
        old = generate_teacher(model, [cond], shape, count=8, seed=100, scheduler="karras")
        assert float(per_sample_rmse(old.targets, exact).mean()) > 0.5 * best_nfe4


# -- refusals -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", [s for s in comfy.samplers.SAMPLER_NAMES if is_stochastic(s)])
def test_stochastic_samplers_are_refused_before_sampling(sampler):
    model, cond = mixture_model("eps")
    counted, calls = count_model_calls(model)
    with pytest.raises(LD3InputError) as excinfo:
        generate_teacher(counted, [cond], SMALL, count=4, seed=0, sampler=sampler, steps=4)
    assert excinfo.value.input_name == "sampler_name" and "stochastic" in excinfo.value.problem
    assert "deterministic sampler" in excinfo.value.fix
    assert calls == []


@pytest.mark.parametrize("kind", ["eps", "flow"])
def test_the_stochastic_predicate_is_what_the_samplers_do(kind):
    """Every ComfyUI sampler run twice from the same noise with two seeds: only the samplers the
    predicate calls stochastic give different results (so the list of names cannot drift)."""
    model, cond = mixture_model(kind, (2, 4, 4))
    noise = start_noise((2, 4, 4), 0, 2)
    for sampler in comfy.samplers.SAMPLER_NAMES:
        # 10 steps: sa_solver adds noise only between 20 % and 80 % of the schedule.
        sigmas = schedule_sigmas(model, "simple", 10, sampler)
        a = sample_stock(model, cond, sampler, sigmas, noise, seed=1)
        b = sample_stock(model, cond, sampler, sigmas, noise, seed=2)
        assert (not torch.equal(a, b)) == is_stochastic(sampler), sampler


@pytest.mark.parametrize("sampler", ["dpm_fast", "dpm_adaptive", "lms", "heun"])
def test_deterministic_samplers_ld3_cannot_train_still_teach(sampler):
    model, cond = mixture_model("flow")
    teacher = generate_teacher(model, [cond], SMALL, count=2, seed=0, sampler=sampler, steps=6)
    assert teacher.info["sampler"] == sampler and torch.isfinite(teacher.targets).all()


def test_learned_and_unknown_schedulers_are_refused():
    register_ld3_scheduler()
    assert "ld3" in comfy.samplers.SCHEDULER_NAMES and "ld3" not in teacher_schedulers()
    assert teacher_schedulers()[0] == AUTO
    model, cond = mixture_model("eps")
    counted, calls = count_model_calls(model)
    with pytest.raises(LD3InputError) as excinfo:
        generate_teacher(counted, [cond], SMALL, count=2, seed=0, scheduler="ld3")
    assert excinfo.value.input_name == "scheduler" and "learned" in excinfo.value.problem
    with pytest.raises(LD3InputError, match="unknown scheduler 'nope'"):
        generate_teacher(counted, [cond], SMALL, count=2, seed=0, scheduler="nope")
    assert calls == []
