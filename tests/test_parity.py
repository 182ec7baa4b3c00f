"""A learned schedule samples the same in ComfyUI's stock samplers as in training.

Training runs DifferentiableSampler (grad-enabled twins of ComfyUI's samplers, live decoupled times);
users run ComfyUI's stock, no-grad samplers on the LD3-patched MODEL, through SamplerCustom or through
KSampler with the ``ld3`` scheduler. All three must give the same latent for the same schedule.
"""

import comfy.sample
import comfy.samplers
import pytest
import tiny_models
import torch

from ld3_core.api import sample_with_schedule
from ld3_core.comfy_adapter import Conditioning, DifferentiableSampler
from ld3_core.mixture import make_mixture, mixture_conditioning, mixture_model_patcher
from ld3_core.model_patch import learned_schedule, patch_model
from ld3_core.parameterisation import eval_sigmas_from_offsets, logits_from_sigmas, sigmas_from_logits
from ld3_core.scheduler import register_ld3_scheduler
from ld3_core.teacher import schedule_sigmas

# Multi-stage samplers (heun, dpm_2: extra evaluations between the knots; uni_pc: corrector) included.
SAMPLERS = ["euler", "heun", "dpm_2", "dpmpp_2m", "ipndm", "uni_pc", "uni_pc_bh2", "deis", "res_multistep"]
STEPS = 5


@pytest.fixture(scope="module", autouse=True)
def ld3_scheduler_registered():
    register_ld3_scheduler()


@pytest.fixture(scope="module")
def mixture_models():
    mixture = make_mixture((4, 8, 8), components=6, seed=1)
    return {kind: mixture_model_patcher(mixture, kind) for kind in ("eps", "flow")}


def learned_like_schedule(model, sampler_name, seed, steps=STEPS):
    """A 'learned' schedule: karras perturbed in logit space plus non-zero decoupled offsets."""
    gen = torch.Generator().manual_seed(seed)
    base = schedule_sigmas(model, "karras", steps, "euler")
    logits = logits_from_sigmas(base) + 0.3 * torch.randn(steps, generator=gen)
    step_sigmas = sigmas_from_logits(logits, float(base[0]))
    offsets = 0.5 * torch.randn(steps, generator=gen)  # clipped to each window: some at the boundary
    eval_sigmas = eval_sigmas_from_offsets(step_sigmas, offsets)
    assert (eval_sigmas[1:] != step_sigmas[1:-1]).all()
    return step_sigmas.detach(), eval_sigmas.detach()


def differentiable_forward(model, cond, sampler_name, step_sigmas, eval_sigmas, noise):
    """What training computes (with gradients flowing, as in the trainer)."""
    step_leaf = step_sigmas.clone().requires_grad_()
    eval_leaf = eval_sigmas.clone().requires_grad_()
    out = DifferentiableSampler(model, sampler_name)(noise, cond, step_leaf, eval_leaf)
    assert out.requires_grad
    return out.detach()


def assert_same_latent(stock, trained, tol=1e-5):
    scale = float(trained.abs().max())
    torch.testing.assert_close(stock, trained, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("kind", ["eps", "flow"])
@pytest.mark.parametrize("sampler_name", SAMPLERS)
def test_stock_sampler_reproduces_training_forward_on_mixture(mixture_models, kind, sampler_name):
    model = mixture_models[kind]
    step_sigmas, eval_sigmas = learned_like_schedule(model, sampler_name, seed=SAMPLERS.index(sampler_name))
    noise = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(7))
    cond = Conditioning(*mixture_conditioning(), 1.0)
    kept = step_sigmas.clone(), eval_sigmas.clone()
    trained = differentiable_forward(model, cond, sampler_name, step_sigmas, eval_sigmas, noise)
    stock = sample_with_schedule(model, cond, sampler_name, step_sigmas, eval_sigmas, noise)
    assert_same_latent(stock, trained)
    # Without the decoupled times the result differs: the check above is not vacuous.
    plain = sample_with_schedule(model, cond, sampler_name, step_sigmas, None, noise)
    assert (plain - trained).abs().max() > 1e-3 * trained.abs().max()
    # Stock UniPC writes 0.001 into its sigmas' last entry; the caller's schedule must survive.
    assert torch.equal(step_sigmas, kept[0]) and torch.equal(eval_sigmas, kept[1])


@pytest.mark.parametrize("sampler_name", ["euler", "heun", "dpm_2", "dpmpp_2m", "uni_pc"])
def test_stock_sampler_reproduces_training_forward_on_tiny_sd15(tiny_sd15, sd15_conds, sampler_name):
    step_sigmas, eval_sigmas = learned_like_schedule(tiny_sd15, sampler_name, seed=11, steps=4)
    noise = torch.randn(tiny_models.latent_shape(tiny_sd15, height=8, width=8))
    cond = Conditioning(*sd15_conds, 2.0)
    trained = differentiable_forward(tiny_sd15, cond, sampler_name, step_sigmas, eval_sigmas, noise)
    stock = sample_with_schedule(tiny_sd15, cond, sampler_name, step_sigmas, eval_sigmas, noise)
    assert_same_latent(stock, trained, tol=1e-4)


# -- the ld3 KSampler scheduler ---------------------------------------------------------------------


@pytest.mark.parametrize("sampler_name", ["euler", "dpmpp_2m", "heun", "dpm_2", "uni_pc", "uni_pc_bh2"])
def test_ld3_scheduler_returns_the_learned_sigmas(mixture_models, sampler_name):
    model = mixture_models["eps"]
    step_sigmas, eval_sigmas = learned_like_schedule(model, sampler_name, seed=3)
    patched = patch_model(model, step_sigmas, eval_sigmas, sampler_name)
    assert torch.equal(learned_schedule(patched)["step_sigmas"], step_sigmas)
    # KSampler asks dpm_2 / uni_pc schedulers for one step more and drops the penultimate sigma.
    ksampler = comfy.samplers.KSampler(patched, STEPS, "cpu", sampler=sampler_name, scheduler="ld3")
    assert torch.equal(ksampler.sigmas, step_sigmas), (ksampler.sigmas, step_sigmas)
    # The handler itself, asked directly for the trained step count.
    direct = comfy.samplers.calculate_sigmas(patched.get_model_object("model_sampling"), "ld3", STEPS)
    assert torch.equal(direct, step_sigmas)


@pytest.mark.parametrize("kind", ["eps", "flow"])
@pytest.mark.parametrize("sampler_name", ["dpmpp_2m", "uni_pc", "dpm_2"])
def test_ksampler_with_ld3_scheduler_reproduces_training_forward(mixture_models, kind, sampler_name):
    model = mixture_models[kind]
    step_sigmas, eval_sigmas = learned_like_schedule(model, sampler_name, seed=5)
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(2))
    positive, negative = mixture_conditioning()
    trained = differentiable_forward(
        model, Conditioning(positive, negative, 1.0), sampler_name, step_sigmas, eval_sigmas, noise
    )
    patched = patch_model(model, step_sigmas, eval_sigmas, sampler_name)
    stock = comfy.sample.sample(
        patched, noise, STEPS, 1.0, sampler_name, "ld3", positive, negative, torch.zeros_like(noise), seed=0
    )
    assert_same_latent(stock, trained)


def test_ld3_scheduler_without_a_learned_schedule_is_refused(mixture_models):
    from ld3_core.errors import LD3InputError

    with pytest.raises(LD3InputError, match="learned"):
        comfy.samplers.KSampler(mixture_models["eps"], STEPS, "cpu", sampler="euler", scheduler="ld3")
