"""A learned schedule samples the same in ComfyUI's stock samplers as in training.

Training runs DifferentiableSampler (grad-enabled twins of ComfyUI's samplers, live per-step sigmas);
users run ComfyUI's stock, no-grad samplers on the LD3-patched MODEL, through SamplerCustom or through
KSampler with the ``ld3`` scheduler, or after a save and load of the schedule file. All must give the
same latent for the same schedule, for every sampler LD3 trains.
"""

import comfy.sample
import comfy.samplers
import pytest
import tiny_models
import torch

from ld3_core.api import sample_with_schedule
from ld3_core.comfyui.adapter import Conditioning, DifferentiableSampler
from ld3_core.comfyui.mixture_model import mixture_conditioning, mixture_model_patcher
from ld3_core.comfyui.model_patch import learned_schedule, patch_model
from ld3_core.comfyui.scheduler import register_ld3_scheduler
from ld3_core.comfyui.solvers import SUPPORTED_SAMPLERS
from ld3_core.mixture import make_mixture
from ld3_core.parameterisation import ScheduleParameters, logits_from_sigmas
from ld3_core.schedule import Schedule
from ld3_core.schedule_file import ScheduleRecord, load_schedule, save_schedule
from ld3_core.teacher import schedule_sigmas

# Every sampler LD3 trains, multi-stage ones (heun, dpm_2: extra evaluations between the steps; uni_pc:
# corrector) included.
SAMPLERS = list(SUPPORTED_SAMPLERS)
STEPS = 5


@pytest.fixture(scope="module", autouse=True)
def ld3_scheduler_registered():
    register_ld3_scheduler()


@pytest.fixture(scope="module")
def mixture_models():
    mixture = make_mixture((4, 8, 8), components=6, seed=1)
    return {kind: mixture_model_patcher(mixture, kind) for kind in ("eps", "flow")}


def learned_like_schedule(model, sampler_name, seed, steps=STEPS) -> Schedule:
    """A 'learned' schedule: karras perturbed in logit space, every model and scale sigma moved."""
    gen = torch.Generator().manual_seed(seed)
    base = schedule_sigmas(model, "karras", steps, "euler")
    ms = model.get_model_object("model_sampling")
    params = ScheduleParameters(base, "full", (float(ms.sigma_min), float(ms.sigma_max)))
    with torch.no_grad():
        params.step_logits.copy_(logits_from_sigmas(base) + 0.3 * torch.randn(steps, generator=gen))
        params.model_offsets.copy_(0.4 * torch.randn(steps, generator=gen) - 0.1)
        params.scale_offsets.copy_(0.4 * torch.randn(steps, generator=gen) - 0.1)
    params.project()
    schedule = params.schedule().detach()
    # Most per-step sigmas moved (the first and last may sit at the ends of the model's range).
    assert int((schedule.model_sigmas != schedule.step_sigmas[:-1]).sum()) >= steps - 2
    assert int((schedule.scale_sigmas != schedule.model_sigmas).sum()) >= steps - 2
    return schedule


def differentiable_forward(model, cond, sampler_name, schedule, noise):
    """What training computes (with gradients flowing, as in the trainer)."""
    leaves = Schedule(*(t.clone().requires_grad_() for t in schedule.tensors()))
    out = DifferentiableSampler(model, sampler_name)(noise, cond, leaves)
    assert out.requires_grad
    return out.detach()


def assert_same_latent(stock, trained, tol=1e-5):
    scale = float(trained.abs().max())
    torch.testing.assert_close(stock, trained, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("kind", ["eps", "flow"])
@pytest.mark.parametrize("sampler_name", SAMPLERS)
def test_stock_sampler_reproduces_training_forward_on_mixture(mixture_models, kind, sampler_name, tmp_path):
    model = mixture_models[kind]
    schedule = learned_like_schedule(model, sampler_name, seed=SAMPLERS.index(sampler_name))
    noise = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(7))
    cond = Conditioning(*mixture_conditioning(), 1.0)
    kept = [t.clone() for t in schedule.tensors()]
    trained = differentiable_forward(model, cond, sampler_name, schedule, noise)
    stock = sample_with_schedule(model, cond, sampler_name, schedule, noise)
    assert_same_latent(stock, trained)
    # Through the schedule file: the loaded schedule samples the same.
    path = tmp_path / "s.safetensors"
    record = ScheduleRecord(*schedule.tensors(), sampler_name, 1.0, (4, 8, 8), {}, "l2", TRAIN_INFO)
    save_schedule(path, record)
    reloaded = sample_with_schedule(model, cond, sampler_name, load_schedule(path).schedule, noise)
    assert torch.equal(reloaded, stock)
    # Without the model and scale sigmas the result differs: the checks above are not vacuous, and
    # each of the two matters on its own.
    step_sigmas, model_sigmas, scale_sigmas = schedule.tensors()
    for partial in (
        Schedule.plain(step_sigmas),
        Schedule(step_sigmas, model_sigmas, step_sigmas[:-1]),
        Schedule(step_sigmas, step_sigmas[:-1], scale_sigmas),
    ):
        other = sample_with_schedule(model, cond, sampler_name, partial, noise)
        assert (other - trained).abs().max() > 1e-3 * trained.abs().max()
    # Stock UniPC writes 0.001 into its sigmas' last entry; the caller's schedule must survive.
    assert all(torch.equal(a, b) for a, b in zip(schedule.tensors(), kept))


TRAIN_INFO = {
    "validation_curve": [],
    "best_validation_loss": 0.1,
    "initial_scheduler": "karras",
    "initial_validation_loss": 0.2,
    "epochs_done": 1,
    "status": "completed",
}


@pytest.mark.parametrize("sampler_name", ["euler", "heun", "dpm_2", "dpmpp_2m", "uni_pc"])
def test_stock_sampler_reproduces_training_forward_on_tiny_sd15(tiny_sd15, sd15_conds, sampler_name):
    schedule = learned_like_schedule(tiny_sd15, sampler_name, seed=11, steps=4)
    noise = torch.randn(tiny_models.latent_shape(tiny_sd15, height=8, width=8))
    cond = Conditioning(*sd15_conds, 2.0)
    trained = differentiable_forward(tiny_sd15, cond, sampler_name, schedule, noise)
    stock = sample_with_schedule(tiny_sd15, cond, sampler_name, schedule, noise)
    assert_same_latent(stock, trained, tol=1e-4)


# -- the ld3 KSampler scheduler ---------------------------------------------------------------------


@pytest.mark.parametrize("sampler_name", ["euler", "dpmpp_2m", "heun", "dpm_2", "uni_pc", "uni_pc_bh2"])
def test_ld3_scheduler_returns_the_learned_sigmas(mixture_models, sampler_name):
    model = mixture_models["eps"]
    schedule = learned_like_schedule(model, sampler_name, seed=3)
    step_sigmas = schedule.step_sigmas
    patched = patch_model(model, schedule, sampler_name)
    assert torch.equal(learned_schedule(patched)["schedule"].step_sigmas, step_sigmas)
    # KSampler asks dpm_2 / uni_pc schedulers for one step more and drops the penultimate sigma.
    ksampler = comfy.samplers.KSampler(patched, STEPS, "cpu", sampler=sampler_name, scheduler="ld3")
    assert torch.equal(ksampler.sigmas, step_sigmas), (ksampler.sigmas, step_sigmas)
    # The handler itself, asked directly for the trained step count.
    direct = comfy.samplers.calculate_sigmas(patched.get_model_object("model_sampling"), "ld3", STEPS)
    assert torch.equal(direct, step_sigmas)


@pytest.mark.parametrize("kind", ["eps", "flow"])
@pytest.mark.parametrize("sampler_name", SAMPLERS)
def test_ksampler_with_ld3_scheduler_reproduces_training_forward(mixture_models, kind, sampler_name):
    model = mixture_models[kind]
    schedule = learned_like_schedule(model, sampler_name, seed=5)
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(2))
    positive, negative = mixture_conditioning()
    trained = differentiable_forward(
        model, Conditioning(positive, negative, 1.0), sampler_name, schedule, noise
    )
    patched = patch_model(model, schedule, sampler_name)
    stock = comfy.sample.sample(
        patched, noise, STEPS, 1.0, sampler_name, "ld3", positive, negative, torch.zeros_like(noise), seed=0
    )
    assert_same_latent(stock, trained)


def test_ld3_scheduler_without_a_learned_schedule_is_refused(mixture_models):
    from ld3_core.errors import LD3InputError

    with pytest.raises(LD3InputError, match="learned"):
        comfy.samplers.KSampler(mixture_models["eps"], STEPS, "cpu", sampler="euler", scheduler="ld3")
