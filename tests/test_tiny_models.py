"""The tiny test models run through ComfyUI's stock sampling path with finite, non-constant output."""

import comfy.model_base
import comfy.model_sampling
import comfy.samplers
import pytest
import tiny_models
import torch


def _sample(patcher, conds, scheduler: str, steps: int = 4, cfg: float = 3.0) -> torch.Tensor:
    """Euler through comfy.samplers.CFGGuider under inference mode, as ComfyUI's executor runs it."""
    positive, negative = conds
    with torch.inference_mode():
        guider = comfy.samplers.CFGGuider(patcher)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        sigmas = comfy.samplers.calculate_sigmas(patcher.get_model_object("model_sampling"), scheduler, steps)
        shape = tiny_models.latent_shape(patcher, height=16, width=24)
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        sampler = comfy.samplers.sampler_object("euler")
        return guider.sample(noise, torch.zeros(shape), sampler, sigmas.cpu(), disable_pbar=True, seed=0)


ModelType = comfy.model_base.ModelType
# fixture -> (conditioning fixture, scheduler, model type, model_sampling class, latent channels)
CASES = {
    "tiny_sd15": ("sd15_conds", "karras", ModelType.EPS, comfy.model_sampling.EPS, 4),
    "tiny_sd15_v": ("sd15_conds", "normal", ModelType.V_PREDICTION, comfy.model_sampling.V_PREDICTION, 4),
    "tiny_flux": ("flux_conds", "simple", ModelType.FLUX, comfy.model_sampling.CONST, 16),
}


@pytest.mark.parametrize("model_fixture", CASES)
def test_tiny_model_samples(request, model_fixture):
    conds_fixture, scheduler, model_type, sampling_class, channels = CASES[model_fixture]
    patcher = request.getfixturevalue(model_fixture)
    conds = request.getfixturevalue(conds_fixture)
    assert patcher.model.model_type == model_type
    assert isinstance(patcher.get_model_object("model_sampling"), sampling_class)
    out = _sample(patcher, conds, scheduler)
    assert out.shape == (1, channels, 16, 24)
    assert torch.isfinite(out).all()
    assert out.std() > 1e-3, "sampler output is (nearly) constant"


def test_tiny_model_depends_on_conditioning(tiny_sd15, sd15_conds):
    """Different prompts give different samples: cross-attention reaches the output."""
    positive, negative = sd15_conds
    a = _sample(tiny_sd15, (positive, negative), "karras", cfg=1.0)
    b = _sample(tiny_sd15, (negative, positive), "karras", cfg=1.0)
    assert not torch.allclose(a, b)


def test_flux_guidance_reaches_the_model(tiny_flux):
    """The guidance value in the conditioning changes Flux's output (guidance embedding is live)."""
    base = tiny_models.FLUX_CONTEXT, tiny_models.FLUX_POOLED
    low = tiny_models.conditioning(*base, guidance=1.0, seed=5)
    high = tiny_models.conditioning(*base, guidance=6.0, seed=5)
    a = _sample(tiny_flux, (low, low), "simple", cfg=1.0)
    b = _sample(tiny_flux, (high, high), "simple", cfg=1.0)
    assert not torch.allclose(a, b)
