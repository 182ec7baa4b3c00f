"""The Gaussian-mixture denoiser is exact, and ComfyUI's own model and samplers run on it unchanged."""

import math

import comfy.model_sampling
import comfy.patcher_extension
import comfy.sample
import comfy.samplers
import pytest
import torch

from ld3_core.comfyui.mixture_model import mixture_conditioning, mixture_model_patcher
from ld3_core.mixture import GaussianMixture, make_mixture, mixture_separation

SHAPES = {"3d": (3, 16), "4d": (4, 8, 8), "5d": (2, 3, 4, 4)}


def gaussian_logpdf(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1]
    return -0.5 * d * torch.log(2 * math.pi * var) - 0.5 * (x - mean).pow(2).sum(-1) / var


def one_d_mixture() -> GaussianMixture:
    means = torch.tensor([[-2.0], [0.5], [3.0]], dtype=torch.float64)
    return GaussianMixture(
        means, torch.tensor([0.3, 0.15, 0.5], dtype=torch.float64), torch.tensor([0.2, 0.5, 0.3])
    )


# ---- the closed-form denoiser ----------------------------------------------------------------------------


@pytest.mark.parametrize("alpha, sigma", [(1.0, 0.05), (1.0, 1.0), (1.0, 20.0), (0.7, 0.3), (0.0, 1.0)])
def test_single_component_matches_the_gaussian_formula(alpha, sigma):
    gen = torch.Generator().manual_seed(0)
    mu = torch.randn(1, 2, 5, 5, generator=gen, dtype=torch.float64)
    s = 0.4
    mixture = GaussianMixture(mu, torch.tensor([s], dtype=torch.float64), torch.ones(1))
    x = torch.randn(3, 2, 5, 5, generator=gen, dtype=torch.float64)
    expected = mu + alpha * s**2 / (alpha**2 * s**2 + sigma**2) * (x - alpha * mu)
    assert torch.allclose(mixture.posterior_mean(x, alpha, sigma), expected, rtol=1e-12, atol=1e-12)
    if alpha == 1.0:
        assert torch.allclose(mixture.denoise(x, sigma), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sigma", [0.02, 0.3, 1.0, 4.0])
def test_one_dimensional_mixture_matches_numerical_integration(sigma):
    mixture = one_d_mixture()
    grid = torch.linspace(-12, 12, 80001, dtype=torch.float64)
    weights = mixture.log_weights.exp()
    prior = sum(
        w * torch.exp(gaussian_logpdf(grid[:, None], m, s**2))
        for w, m, s in zip(weights, mixture.means, mixture.stds)
    )
    for x in (-2.5, -0.7, 0.4, 1.7, 3.3):
        # p(x0 | x) is proportional to p(x0) N(x; x0, sigma^2): integrate on a fine grid.
        post = prior * torch.exp(-0.5 * (x - grid) ** 2 / sigma**2)
        expected = torch.trapezoid(post * grid, grid) / torch.trapezoid(post, grid)
        got = mixture.denoise(torch.tensor([[x]], dtype=torch.float64), sigma)
        assert float(got) == pytest.approx(float(expected), abs=1e-6), x


@pytest.mark.parametrize("sigma", [0.05, 0.5, 3.0])
def test_tweedie_identity_in_many_dimensions(sigma):
    # E[x0 | x] = x + sigma^2 * grad log p_sigma(x), with p_sigma an independently written mixture density.
    mixture = make_mixture((2, 6, 6), components=5, seed=3)
    gen = torch.Generator().manual_seed(1)
    x = (
        mixture.sample(4, gen) + sigma * torch.randn(4, 2, 6, 6, generator=gen, dtype=torch.float64)
    ).requires_grad_()
    flat = x.reshape(4, 1, -1)
    means = mixture.means.reshape(5, -1)
    log_p = torch.logsumexp(
        mixture.log_weights + gaussian_logpdf(flat, means, mixture.stds**2 + sigma**2), dim=1
    )
    (score,) = torch.autograd.grad(log_p.sum(), x)
    assert torch.allclose(
        mixture.denoise(x.detach(), sigma), x.detach() + sigma**2 * score, rtol=1e-9, atol=1e-9
    )


def test_denoiser_is_differentiable_in_x_and_sigma():
    mixture = make_mixture((1, 3, 3), components=3, seed=2)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    sigma = torch.tensor([0.4, 1.3], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: mixture.denoise(a, b), (x, sigma))
    alpha = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: mixture.posterior_mean(a, c, b), (x, sigma, alpha))


def test_per_sample_sigmas_equal_separate_calls():
    mixture = make_mixture((4, 8, 8), seed=5)
    x = torch.randn(3, 4, 8, 8, dtype=torch.float64)
    sigmas = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    together = mixture.denoise(x, sigmas)
    for i in range(3):
        assert torch.allclose(
            together[i : i + 1], mixture.denoise(x[i : i + 1], float(sigmas[i])), atol=1e-12
        )
    assert mixture.denoise(x.float(), sigmas).dtype == torch.float32


def test_limits_of_the_denoiser():
    mixture = make_mixture((4, 8, 8), seed=5)
    x0 = mixture.sample(2, torch.Generator().manual_seed(0))
    assert torch.allclose(mixture.denoise(x0, 1e-6), x0, atol=1e-8)  # no noise: x is the answer
    prior_mean = (mixture.log_weights.exp()[:, None, None, None] * mixture.means).sum(0)
    far = mixture.denoise(torch.zeros(1, 4, 8, 8, dtype=torch.float64), 1e4)
    assert torch.allclose(far[0], prior_mean, atol=1e-6)  # all noise: the prior mean


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_make_mixture_is_structured_and_deterministic(shape):
    mixture = make_mixture(shape, components=8, seed=0)
    assert mixture.means.shape == (8, *shape) and mixture.shape == shape
    assert mixture.means.dtype == torch.float64
    rms = mixture.means.reshape(8, -1).pow(2).mean(1).sqrt()
    assert torch.allclose(rms, torch.ones(8, dtype=torch.float64), atol=1e-9)
    assert bool(((mixture.stds >= 0.1) & (mixture.stds <= 0.3)).all())
    assert torch.equal(make_mixture(shape, seed=0).means, mixture.means)
    assert not torch.equal(make_mixture(shape, seed=1).means, mixture.means)
    assert mixture_separation(mixture) > 3 * float(mixture.stds.max())
    # Low frequency: neighbouring values along the last axis differ far less than the amplitude.
    steps = mixture.means.diff(dim=-1).abs().mean()
    assert float(steps) < 0.5


def test_mixture_refuses_bad_parameters():
    with pytest.raises(ValueError, match="positive"):
        GaussianMixture(torch.zeros(2, 3), torch.tensor([0.1, 0.0]), torch.ones(2))
    with pytest.raises(ValueError, match="means"):
        GaussianMixture(torch.zeros(2, 3), torch.ones(3), torch.ones(2))
    with pytest.raises(ValueError, match="shape"):
        make_mixture((4, 8, 8)).denoise(torch.zeros(1, 4, 8, 9), 1.0)


# ---- the ComfyUI model -----------------------------------------------------------------------------------


def comfy_denoised(patcher, x: torch.Tensor, sigma: torch.Tensor, cfg: float = 2.0) -> torch.Tensor:
    """One denoiser call through ComfyUI's CFGGuider (conds, CFG, model loading), as KSampler makes it."""
    seen = {}

    def record(model, noise, sigmas, extra_args=None, callback=None, disable=None):
        seen["denoised"] = model(noise, sigmas[0] * noise.new_ones(noise.shape[0]), **extra_args)
        return noise

    positive, negative = mixture_conditioning()
    guider = comfy.samplers.CFGGuider(patcher)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    with torch.inference_mode():
        # A zero latent plus noise scaled by the sampler: feed noise = x / sigma (EPS) so the model sees x.
        guider.sample(
            x, torch.zeros_like(x), comfy.samplers.KSAMPLER(record), sigma, disable_pbar=True, seed=0
        )
    return seen["denoised"].clone()


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_eps_model_is_exact_on_the_discrete_grid(shape):
    mixture = make_mixture(shape, seed=4)
    patcher = mixture_model_patcher(mixture, "eps")
    model = patcher.model
    grid = model.model_sampling.sigmas
    gen = torch.Generator().manual_seed(0)
    for index in (0, 10, 250, 600, 999):
        sigma = grid[index]
        x = mixture.sample(2, gen).float() + float(sigma) * torch.randn(2, *shape, generator=gen)
        context = torch.zeros(2, 1, 8)
        got = model.apply_model(x, sigma.expand(2), c_crossattn=context)
        expected = mixture.denoise(x.double(), float(sigma)).float()
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * max(1.0, float(sigma))), index


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_flow_model_is_exact_at_any_sigma(shape):
    mixture = make_mixture(shape, seed=4)
    model = mixture_model_patcher(mixture, "flow").model
    gen = torch.Generator().manual_seed(0)
    for s in (1.0, 0.93, 0.5, 0.137, 0.01):
        x0 = mixture.sample(2, gen)
        x = ((1 - s) * x0 + s * torch.randn(2, *shape, generator=gen, dtype=torch.float64)).float()
        got = model.apply_model(x, torch.full((2,), s), c_crossattn=torch.zeros(2, 1, 8))
        expected = mixture.posterior_mean(x.double(), 1 - s, s)
        assert torch.allclose(got.double(), expected, atol=2e-5), s
        if s < 1:  # the same answer in variance-exploding form: E[x0 | x/(1-s) = x0 + s/(1-s) eps]
            ve = mixture.denoise(x.double() / (1 - s), s / (1 - s))
            assert torch.allclose(got.double(), ve, atol=2e-5), s


def test_denoised_through_cfg_guider_equals_the_mixture():
    mixture = make_mixture((4, 8, 8), seed=6)
    gen = torch.Generator().manual_seed(2)
    eps = mixture_model_patcher(mixture, "eps")
    sigma = eps.model.model_sampling.sigmas[400]
    x = mixture.sample(2, gen).float() + float(sigma) * torch.randn(2, 4, 8, 8, generator=gen)
    # KSAMPLER scales the noise by sigma (and adds the zero latent): pass x / sigma to get x back.
    got = comfy_denoised(eps, x / sigma, torch.stack([sigma, torch.tensor(0.0)]))
    assert torch.allclose(got, mixture.denoise(x.double(), float(sigma)).float(), atol=1e-4)

    flow = mixture_model_patcher(mixture, "flow")
    s = 0.42
    x = (
        (1 - s) * mixture.sample(2, gen) + s * torch.randn(2, 4, 8, 8, generator=gen, dtype=torch.float64)
    ).float()
    got = comfy_denoised(flow, x / s, torch.tensor([s, 0.0]))  # CONST scaling: s * noise + (1 - s) * 0
    assert torch.allclose(got.double(), mixture.posterior_mean(x.double(), 1 - s, s), atol=2e-5)


def test_flow_model_stays_exact_under_a_shifted_model_sampling():
    # ComfyUI's ModelSamplingSD3 node patches in a shifted sampler; sigma(timestep(s)) is then not s.
    mixture = make_mixture((4, 8, 8), seed=6)
    patcher = mixture_model_patcher(mixture, "flow")

    class ModelSamplingAdvanced(comfy.model_sampling.ModelSamplingDiscreteFlow, comfy.model_sampling.CONST):
        pass

    shifted = ModelSamplingAdvanced(patcher.model.model_config)
    shifted.set_parameters(shift=3.0)
    patcher = patcher.clone()
    patcher.add_object_patch("model_sampling", shifted)
    assert float(shifted.sigma(shifted.timestep(torch.tensor(0.3)))) != pytest.approx(0.3)
    x = torch.randn(2, 4, 8, 8)
    s = 0.3
    got = comfy_denoised(patcher, x / s, torch.tensor([s, 0.0]), cfg=1.0)
    assert torch.allclose(got.double(), mixture.posterior_mean(x.double(), 1 - s, s), atol=2e-5)


def test_flow_model_gives_sigma_gradients():
    mixture = make_mixture((2, 4, 4), seed=7)
    model = mixture_model_patcher(mixture, "flow").model
    x = torch.randn(1, 2, 4, 4)
    sigma = torch.tensor([0.4], requires_grad=True)
    out = model.apply_model(x, sigma, c_crossattn=torch.zeros(1, 1, 8)).sum()
    (grad,) = torch.autograd.grad(out, sigma)
    h = 1e-3
    with torch.no_grad():
        plus = model.apply_model(x, sigma + h, c_crossattn=torch.zeros(1, 1, 8)).sum()
        minus = model.apply_model(x, sigma - h, c_crossattn=torch.zeros(1, 1, 8)).sum()
    assert float(grad) == pytest.approx(float((plus - minus) / (2 * h)), rel=2e-2, abs=1e-3)


def sample_with_euler(patcher, shape, steps: int, cfg: float, seed: int) -> torch.Tensor:
    positive, negative = mixture_conditioning()
    sigmas = comfy.samplers.calculate_sigmas(patcher.get_model_object("model_sampling"), "normal", steps)
    noise = torch.randn((4, *shape), generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        guider = comfy.samplers.CFGGuider(patcher)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        out = guider.sample(
            noise,
            torch.zeros_like(noise),
            comfy.samplers.sampler_object("euler"),
            sigmas,
            disable_pbar=True,
            seed=seed,
        )
    return out.clone()


@pytest.mark.parametrize("kind", ["eps", "flow"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_stock_euler_lands_in_distribution(kind, shape):
    mixture = make_mixture(shape, seed=11)
    out = sample_with_euler(mixture_model_patcher(mixture, kind), shape, steps=200, cfg=2.0, seed=3)
    assert out.shape == (4, *shape) and torch.isfinite(out).all()
    flat = out.reshape(4, -1).double()
    dist = torch.cdist(flat, mixture.means.reshape(8, -1))
    nearest, k = dist.min(dim=1)
    expected = mixture.stds[k] * math.sqrt(flat.shape[1])  # typical |x0 - mu_k| for a sample of component k
    assert bool((nearest < 0.5 * mixture_separation(mixture)).all()), (nearest, mixture_separation(mixture))
    assert bool(((nearest > 0.4 * expected) & (nearest < 1.6 * expected)).all()), (nearest, expected)


def test_ksampler_path_runs_on_the_mixture():
    mixture = make_mixture((4, 8, 8), seed=12)
    patcher = mixture_model_patcher(mixture, "eps")
    positive, negative = mixture_conditioning()
    latent = torch.zeros(2, 4, 8, 8)
    noise = comfy.sample.prepare_noise(latent, 0)
    with torch.inference_mode():
        out = comfy.sample.sample(
            patcher,
            noise,
            30,
            3.0,
            "dpmpp_2m",
            "karras",
            positive,
            negative,
            latent,
            disable_pbar=True,
            seed=0,
        )
    nearest = torch.cdist(out.reshape(2, -1).double(), mixture.means.reshape(8, -1)).min(dim=1).values
    assert bool((nearest < 0.5 * mixture_separation(mixture)).all())


def test_model_refuses_unknown_kind():
    with pytest.raises(ValueError, match=r"one of \('eps', 'flow', 'flux'\)"):
        mixture_model_patcher(make_mixture((4, 8, 8)), "v")


def test_diffusion_model_wrappers_see_the_network_inputs():
    # A DIFFUSION_MODEL wrapper (how decoupled model times are patched in) moves the time the network sees:
    # the output is the exact prediction at the wrapper's time, used with the step's own sigma.
    mixture = make_mixture((4, 8, 8), seed=8)
    patcher = mixture_model_patcher(mixture, "flow").clone()
    s_step, s_eval = 0.5, 0.45
    calls = []

    def shift_time(executor, x, timesteps, *args, **kwargs):
        calls.append(float(timesteps.reshape(-1)[0]))
        return executor(x, torch.full_like(timesteps, s_eval * 1000), *args, **kwargs)

    patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test", shift_time)
    x = torch.randn(2, 4, 8, 8)
    got = comfy_denoised(patcher, x / s_step, torch.tensor([s_step, 0.0]), cfg=1.0)
    assert calls and calls[0] == pytest.approx(s_step * 1000)
    x0_eval = mixture.posterior_mean(x.double(), 1 - s_eval, s_eval)
    expected = x.double() - s_step * (x.double() - x0_eval) / s_eval
    assert torch.allclose(got.double(), expected, atol=5e-5)
