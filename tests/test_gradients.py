"""Gradients of DifferentiableSampler against central finite differences, and refused samplers.

The float64 checks run ComfyUI's own samplers (grad-enabled twins) through CFGGuider on the exact
Gaussian-mixture models (ld3_core/mixture.py in its float64 mode), so every sigma, time and network value
stays in float64. The scalar is a random projection of the sampler's output; we compare its gradient
with respect to the step sigmas (all but the constant sigma_max and final 0), the model sigmas (the
network's time at each step), the scale sigmas (what its input and output are scaled with) and the
start noise (one random direction) with central differences.
"""

import comfy.patcher_extension
import comfy.samplers
import pytest
import tiny_models
import torch

from ld3_core.comfyui.adapter import Conditioning, DifferentiableSampler, sample_stock
from ld3_core.comfyui.mixture_model import mixture_conditioning, mixture_model_patcher
from ld3_core.comfyui.model_patch import patch_model
from ld3_core.comfyui.solvers import PAPER_SAMPLERS, SUPPORTED_SAMPLERS, check_sampler
from ld3_core.errors import LD3InputError
from ld3_core.mixture import make_mixture
from ld3_core.schedule import Schedule
from ld3_core.teacher import schedule_sigmas

MIXTURE_SHAPE = (2, 4, 4)
# (model kind, scheduler, NFE): schedules from the model's own model_sampling.
SETUPS = {"eps": ("karras", 5), "flow": ("normal", 4)}
# Finite-difference steps, relative to each sigma (absolute along the noise direction), with a fourth-order
# five-point stencil. The discrete (EPS) model's time is piecewise linear in log-sigma between the 1000
# table sigmas (~0.6 % apart), so its step stays far below that spacing. Flow time is smooth, but with
# the network told other sigmas than it is stepped with, the mixture's responsibilities can bend sharply
# within 1e-4 of a sigma (heun at NFE 4 did), so the same small step.
FD_STEP = {"eps": 1e-5, "flow": 1e-5}
RTOL = 1e-5
# DEIS' coefficient Jacobian is itself a central difference (relative step 1e-4 over ComfyUI's
# 10,000-point numerical integration, ld3_core/comfyui/solvers.py), so its gradient carries that error too.
RTOL_DEIS = 1e-4

REFUSED = (
    "euler_ancestral",
    "euler_ancestral_cfg_pp",
    "dpm_2_ancestral",
    "dpmpp_2s_ancestral",
    "dpmpp_sde",
    "dpmpp_2m_sde",
    "dpmpp_3m_sde",
    "dpm_fast",
    "dpm_adaptive",
    "lms",
    "ddpm",
    "lcm",
)


@pytest.fixture
def float64_default():
    # UniPC builds small constants such as torch.tensor([0.5]) in the default dtype; in float64 they
    # must be float64 too (float32 sampling is unaffected: that is the default).
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(scope="module")
def mixture_models():
    mixture = make_mixture(MIXTURE_SHAPE, components=4, seed=0)
    return {kind: mixture_model_patcher(mixture, kind, dtype=torch.float64) for kind in ("eps", "flow")}


class CapturingSampler:
    """DifferentiableSampler returning the sampler's own float64 output.

    CFGGuider casts its result to float32 (comfy/samplers.py, inner_sample); a SAMPLER_SAMPLE wrapper
    keeps the value before that cast, with its graph.
    """

    def __init__(self, model, sampler_name):
        self.sampler = DifferentiableSampler(model, sampler_name)
        self.captured = None
        self.sampler.model.add_wrapper_with_key(
            comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, "ld3_test_capture", self._capture
        )

    def _capture(self, executor, *args, **kwargs):
        self.captured = executor(*args, **kwargs)
        return self.captured

    def __call__(self, noise, cond, schedule):
        self.sampler(noise, cond, schedule)
        return self.captured


def perturbed_schedule(step_sigmas: torch.Tensor, generator: torch.Generator) -> Schedule:
    """Model and scale sigmas moved by up to 15 % from the step sigmas, every step included.

    The first ones move down (a flow model's range ends at sigma_max = 1); the last model sigma moves
    up: below a discrete model's smallest table sigma its time clamps, and the gradient with respect to
    it is rightly 0 (nothing to check).
    """
    model_offsets = (
        torch.rand(step_sigmas.numel() - 1, generator=generator, dtype=step_sigmas.dtype) * 0.6 - 0.3
    )
    scale_offsets = (
        torch.rand(step_sigmas.numel() - 1, generator=generator, dtype=step_sigmas.dtype) * 0.6 - 0.3
    )
    model_offsets[0], scale_offsets[0] = -0.05 - model_offsets[0].abs(), -0.05 - scale_offsets[0].abs()
    model_offsets[-1] = model_offsets[-1].abs() + 0.05
    s = step_sigmas[:-1]
    return Schedule(step_sigmas, s * model_offsets.exp(), s * scale_offsets.exp())


def central_difference(fn, x: torch.Tensor, direction: torch.Tensor, h: float) -> float:
    """Fourth-order five-point stencil for d/de fn(x + e * direction) at e = 0."""
    with torch.no_grad():
        values = [fn(x + k * h * direction).item() for k in (2, 1, -1, -2)]
    return (-values[0] + 8 * values[1] - 8 * values[2] + values[3]) / (12 * h)


# The fast tier (scripts/test.sh) checks one sampler of each kind of solver; --all checks every one.
FAST_TIER_SAMPLERS = ("euler", "heun", "dpmpp_2m", "uni_pc")


@pytest.mark.parametrize("kind", ["eps", "flow"])
@pytest.mark.parametrize(
    "sampler_name",
    [s if s in FAST_TIER_SAMPLERS else pytest.param(s, marks=pytest.mark.slow) for s in SUPPORTED_SAMPLERS],
)
def test_gradients_match_finite_differences(mixture_models, float64_default, kind, sampler_name):
    model = mixture_models[kind]
    scheduler, steps = SETUPS[kind]
    step_sigmas = schedule_sigmas(model, scheduler, steps, "euler").double()
    gen = torch.Generator().manual_seed(sorted(SUPPORTED_SAMPLERS).index(sampler_name))
    schedule = perturbed_schedule(step_sigmas, gen)
    noise = torch.randn((1, *MIXTURE_SHAPE), generator=gen, dtype=torch.float64)
    projection = torch.randn((1, *MIXTURE_SHAPE), generator=gen, dtype=torch.float64)
    noise_direction = torch.randn((1, *MIXTURE_SHAPE), generator=gen, dtype=torch.float64)
    positive, negative = mixture_conditioning()
    cond = Conditioning(positive, negative, 1.0)
    student = CapturingSampler(model, sampler_name)

    def scalar(tensors, x):
        out = student(x, cond, Schedule(*tensors))
        assert out.dtype == torch.float64
        return (out * projection).sum()

    leaves = [t.clone().requires_grad_() for t in schedule.tensors()]
    noise_leaf = noise.clone().requires_grad_()
    scalar(leaves, noise_leaf).backward()

    analytic, numeric, labels = [], [], []
    names = ("step", "model", "scale")
    for which, tensor in enumerate(schedule.tensors()):
        indices = range(1, steps) if which == 0 else range(steps)  # step sigmas: interior ones only
        for i in indices:
            bump = torch.zeros_like(tensor)
            bump[i] = 1.0
            h = FD_STEP[kind] * float(tensor[i])

            def moved(t, which=which):
                return scalar([t if k == which else v for k, v in enumerate(schedule.tensors())], noise)

            numeric.append(central_difference(moved, tensor, bump, h))
            analytic.append(float(leaves[which].grad[i]))
            labels.append(f"{names[which]}[{i}]")
    numeric.append(
        central_difference(lambda x: scalar(schedule.tensors(), x), noise, noise_direction, FD_STEP[kind])
    )
    analytic.append(float((noise_leaf.grad * noise_direction).sum()))
    labels.append("noise")

    analytic_t = torch.tensor(analytic, dtype=torch.float64)
    numeric_t = torch.tensor(numeric, dtype=torch.float64)
    rtol = RTOL_DEIS if sampler_name == "deis" else RTOL
    assert numeric_t.abs().max() > 1e-3, "the check would be vacuous"
    worst = ((analytic_t - numeric_t).abs() / numeric_t.abs().max()).max()
    assert torch.allclose(analytic_t, numeric_t, rtol=rtol, atol=rtol * float(numeric_t.abs().max())), (
        f"{sampler_name}/{kind}: worst error {float(worst):.2e} of the largest entry\n"
        + "\n".join(f"{lab}: {a:+.10e} vs FD {n:+.10e}" for lab, a, n in zip(labels, analytic, numeric))
    )
    # Gradients reach every interior step sigma, every model and scale sigma and the noise. (The
    # constant sigma_max may get a NaN gradient, e.g. flow euler_cfg_pp at sigma = 1; the
    # parameterisation never differentiates it.)
    step_grad, model_grad, scale_grad = (leaf.grad for leaf in leaves)
    assert (step_grad[1:steps] != 0).all() and (model_grad != 0).all() and (scale_grad != 0).all()
    assert torch.isfinite(step_grad[1:steps]).all() and torch.isfinite(model_grad).all()
    assert (noise_leaf.grad != 0).any()


def test_paper_samplers_are_supported():
    assert set(PAPER_SAMPLERS) <= set(SUPPORTED_SAMPLERS)
    assert set(SUPPORTED_SAMPLERS) <= set(comfy.samplers.SAMPLER_NAMES)


# -- float32 smoke on the tiny real networks -------------------------------------------------------


def _smoke(model, cond, latent, sampler_name, steps=4, checkpoint=True):
    step_sigmas = schedule_sigmas(model, "karras", steps, sampler_name)
    schedule = perturbed_schedule(step_sigmas, torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(latent, generator=gen).requires_grad_()
    projection = torch.randn(latent, generator=gen)
    leaves = [t.clone().requires_grad_() for t in schedule.tensors()]
    out = DifferentiableSampler(model, sampler_name, checkpoint=checkpoint)(noise, cond, Schedule(*leaves))
    assert out.shape == latent and torch.isfinite(out).all()
    (out * projection).sum().backward()
    step_grad, model_grad, scale_grad = (leaf.grad for leaf in leaves)
    named = (("step", step_grad[1:-1]), ("model", model_grad), ("scale", scale_grad), ("noise", noise.grad))
    for name, grad in named:
        assert grad is not None and torch.isfinite(grad).all(), name
        assert (grad != 0).all() if name != "noise" else (grad != 0).any(), (name, grad)
    return step_grad, model_grad, scale_grad, noise.grad


@pytest.mark.parametrize("sampler_name", ["dpmpp_2m", "uni_pc", "heun"])
def test_tiny_sd15_gradients_are_finite_and_nonzero(tiny_sd15, sd15_conds, sampler_name):
    cond = Conditioning(*sd15_conds, 2.0)
    _smoke(tiny_sd15, cond, tiny_models.latent_shape(tiny_sd15, height=8, width=8), sampler_name)


def test_tiny_sd15_checkpointing_gives_the_same_gradients(tiny_sd15, sd15_conds):
    cond = Conditioning(*sd15_conds, 2.0)
    latent = tiny_models.latent_shape(tiny_sd15, height=8, width=8)
    with_remat = _smoke(tiny_sd15, cond, latent, "dpmpp_2m", checkpoint=True)
    plain = _smoke(tiny_sd15, cond, latent, "dpmpp_2m", checkpoint=False)
    # Interior step sigmas (the trailing 0's gradient is NaN through log 0 either way), model and scale
    # sigmas, noise.
    pairs = [(with_remat[0][1:-1], plain[0][1:-1])] + list(zip(with_remat[1:], plain[1:]))
    for a, b in pairs:
        # Equal to float32 round-off (about 1e-6 of the largest entry here): the reentrant checkpoint
        # accumulates the recomputed graph's gradients in another order.
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))


@pytest.mark.parametrize("sampler_name", ["euler", "uni_pc"])
def test_tiny_flux_gradients_are_finite_and_nonzero(tiny_flux, flux_conds, sampler_name):
    # Flux updates activations in place: this needs the checkpoint's clone-on-save hook.
    cond = Conditioning(*flux_conds, 1.0)
    _smoke(tiny_flux, cond, tiny_models.latent_shape(tiny_flux, height=8, width=8), sampler_name)


# -- refusals ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler_name", REFUSED)
def test_unsupported_samplers_are_refused(tiny_sd15, sampler_name):
    assert sampler_name in comfy.samplers.SAMPLER_NAMES  # a real ComfyUI sampler, not a made-up name
    with pytest.raises(LD3InputError) as excinfo:
        DifferentiableSampler(tiny_sd15, sampler_name)
    message = str(excinfo.value)
    assert excinfo.value.input_name == "sampler_name"
    assert sampler_name in message
    for supported in SUPPORTED_SAMPLERS:
        assert supported in message
    stochastic = any(tag in sampler_name for tag in ("ancestral", "sde", "ddpm", "lcm"))
    assert ("stochastic" in message) == stochastic
    with pytest.raises(LD3InputError):
        check_sampler(sampler_name)


@pytest.mark.parametrize("kind", ["eps", "flow"])
def test_float64_mixture_model_is_the_float32_model(mixture_models, kind):
    """The float64 mode changes precision only: same ComfyUI sampling, same answer to float32 accuracy."""
    mixture = make_mixture(MIXTURE_SHAPE, components=4, seed=0)
    model32 = mixture_model_patcher(mixture, kind)
    sigmas = schedule_sigmas(model32, *SETUPS[kind], "euler")
    noise = torch.randn((1, *MIXTURE_SHAPE), generator=torch.Generator().manual_seed(0))
    cond = Conditioning(*mixture_conditioning(), 1.0)
    # Through the LD3 patch (continuous time for EPS), as the DifferentiableSampler does.
    out32 = sample_stock(patch_model(model32), cond, "dpmpp_2m", sigmas, noise)
    student = CapturingSampler(mixture_models[kind], "dpmpp_2m")
    with torch.no_grad():
        out64 = student(noise.double(), cond, Schedule.plain(sigmas.double()))
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64.float(), out32, rtol=1e-4, atol=1e-4)
