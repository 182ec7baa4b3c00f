"""Failure paths of the core on the real ComfyUI runtime: out of memory, and patched state between models."""

import comfy.model_management
import comfy.patcher_extension
import comfy.samplers
import pytest
import torch

from ld3_core import api
from ld3_core.comfyui import model_patch, scheduler
from ld3_core.comfyui.adapter import Conditioning, LD3OutOfMemoryError, sample_stock
from ld3_core.comfyui.mixture_model import mixture_conditioning, mixture_model_patcher
from ld3_core.errors import LD3InputError
from ld3_core.losses import make_loss
from ld3_core.mixture import make_mixture
from ld3_core.schedule import Schedule
from ld3_core.teacher import generate_teacher
from ld3_core.trainer import TrainConfig

SHAPE = (4, 8, 8)


@pytest.fixture(scope="module")
def mixture_model():
    return mixture_model_patcher(make_mixture(SHAPE, seed=3, dtype=torch.float32), "eps")


@pytest.fixture(scope="module")
def cond():
    positive, negative = mixture_conditioning()
    return Conditioning(positive, negative, 1.0)


def _run_out_of_memory_after(model, calls: int):
    """A clone of ``model`` whose denoiser raises CUDA's out-of-memory error after ``calls`` calls."""
    clone = model.clone()
    seen = {"n": 0}

    def wrapper(executor, *args, **kwargs):
        seen["n"] += 1
        if seen["n"] > calls:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return executor(*args, **kwargs)

    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "test_oom", wrapper)
    return clone


def test_out_of_memory_in_teacher_generation_gives_advice_and_unloads(mixture_model, cond):
    failing = _run_out_of_memory_after(mixture_model, calls=3)
    with pytest.raises(
        LD3OutOfMemoryError, match="fewer samples per iteration.*smaller latent.*lower precision"
    ):
        generate_teacher(
            failing, [cond], SHAPE, count=4, seed=0, sampler="euler", scheduler="normal", steps=4
        )
    assert not comfy.model_management.current_loaded_models, "every model was unloaded"
    # The next run works.
    teacher = generate_teacher(
        mixture_model, [cond], SHAPE, count=2, seed=0, sampler="euler", scheduler="normal", steps=4
    )
    assert torch.isfinite(teacher.targets).all()


def test_out_of_memory_in_training_gives_advice_and_the_next_run_works(mixture_model, cond):
    teacher = generate_teacher(
        mixture_model, [cond], SHAPE, count=4, seed=0, sampler="euler", scheduler="normal", steps=8
    )
    config = TrainConfig(steps=3, epochs_phase1=1, epochs_phase2=0)
    failing = _run_out_of_memory_after(mixture_model, calls=40)
    with pytest.raises(LD3OutOfMemoryError, match="training the euler schedule"):
        api.learn_schedule(failing, teacher, [cond], "euler", config, make_loss("l2"))
    assert not comfy.model_management.current_loaded_models
    result = api.learn_schedule(mixture_model, teacher, [cond], "euler", config, make_loss("l2"))
    assert result.completed


def test_patched_state_does_not_leak_between_models(mixture_model, cond):
    scheduler.register_ld3_scheduler()
    other = mixture_model_patcher(make_mixture(SHAPE, seed=4, dtype=torch.float32), "eps")
    base_sampling = mixture_model.get_model_object("model_sampling")
    learned = torch.tensor([14.6146, 3.0, 0.5, 0.0])
    schedule = Schedule(learned, learned[:-1] * 1.01, learned[:-1] * 0.98)
    patched = model_patch.patch_model(mixture_model, schedule, "euler")

    ks = comfy.samplers.KSampler(patched, 3, torch.device("cpu"), sampler="euler", scheduler="ld3")
    torch.testing.assert_close(ks.sigmas.cpu(), learned)
    noise = torch.randn(1, *SHAPE, generator=torch.Generator().manual_seed(0))
    api.sample_with_schedule(mixture_model, cond, "euler", schedule, noise)

    # The unpatched model and another model carry nothing: the ld3 scheduler refuses them clearly.
    assert mixture_model.get_model_object("model_sampling") is base_sampling
    assert model_patch.learned_schedule(mixture_model) is None
    for model in (mixture_model, other):
        with pytest.raises(
            LD3InputError,
            match="carries a learned LD3 schedule, and this one carries none.*LD3 Train Sigmas or LD3 Load",
        ):
            comfy.samplers.KSampler(model, 3, torch.device("cpu"), sampler="euler", scheduler="ld3")
    # Sampling the unpatched model after the patched one restores ComfyUI's own timestep mapping.
    stock = comfy.samplers.calculate_sigmas(base_sampling, "normal", 3)
    api.sample_with_schedule(mixture_model, cond, "euler", Schedule.plain(stock), noise)
    sample_stock(mixture_model, cond, "euler", stock, noise)
    assert mixture_model.model.model_sampling is base_sampling


def test_mixture_models_do_not_change_comfyuis_latent_format():
    import comfy.latent_formats

    before = (
        comfy.latent_formats.LatentFormat.latent_channels,
        comfy.latent_formats.LatentFormat.latent_dimensions,
    )
    model = mixture_model_patcher(make_mixture((16, 2, 4, 4), seed=0, dtype=torch.float32), "flow")
    assert model.model.latent_format.latent_channels == 16
    assert model.model.latent_format.latent_dimensions == 3
    after = (
        comfy.latent_formats.LatentFormat.latent_channels,
        comfy.latent_formats.LatentFormat.latent_dimensions,
    )
    assert after == before
