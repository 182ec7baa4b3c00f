"""Every training mode runs end to end on a real (tiny) ComfyUI model, and training is deterministic.

Soft (paper Eq. 5: the student starts from x'_T inside a ball around x_T) or hard (soft_gamma 0) teacher
forcing, with or without decoupled model-input times, with the L2 or the LPIPS loss (through a tiny,
randomly initialised ComfyUI VAE built from a state dict, and the offline LPIPS weights). A spy on
DifferentiableSampler.__call__ records what the student was given, so each mode is checked to do what it
says, not merely to finish.
"""

import math

import pytest
import tiny_models
import torch
from conftest import COMFYUI_DIR

from ld3_core import comfy_adapter
from ld3_core.api import learn_schedule
from ld3_core.comfy_adapter import Conditioning
from ld3_core.losses import make_loss
from ld3_core.parameterisation import ball_radius
from ld3_core.teacher import generate_teacher
from ld3_core.trainer import TrainConfig

LATENT = (4, 8, 8)
STEPS = 3
SAMPLER = "euler"
LPIPS_WEIGHTS = COMFYUI_DIR / "models" / "lpips" / "alexnet.safetensors"


@pytest.fixture(scope="module")
def setup(tiny_sd15, sd15_conds):
    cond = Conditioning(*sd15_conds, 2.0)
    teacher = generate_teacher(tiny_sd15, [cond], LATENT, count=4, seed=0, steps=8)
    return tiny_sd15, cond, teacher


@pytest.fixture(scope="module")
def vae():
    return tiny_models.build_tiny_vae()


@pytest.fixture
def student_calls(monkeypatch):
    """Every call of DifferentiableSampler: (noise, eval_sigmas or None, step_sigmas, trained?)."""
    calls = []
    original = comfy_adapter.DifferentiableSampler.__call__

    def spy(self, noise, cond, step_sigmas, eval_sigmas=None, seed=0):
        trained = torch.is_grad_enabled() and step_sigmas.requires_grad
        calls.append(
            (
                noise.detach().clone(),
                None if eval_sigmas is None else eval_sigmas.detach().clone(),
                step_sigmas.detach().clone(),
                trained,
            )
        )
        return original(self, noise, cond, step_sigmas, eval_sigmas, seed)

    monkeypatch.setattr(comfy_adapter.DifferentiableSampler, "__call__", spy)
    return calls


def train(setup, vae, loss_kind, soft, decoupled, seed=0):
    model, cond, teacher = setup
    loss = make_loss(loss_kind, vae=vae, lpips_weights=str(LPIPS_WEIGHTS))
    config = TrainConfig(
        steps=STEPS,
        soft_gamma=0.001 if soft else 0.0,
        decoupled=decoupled,
        epochs_phase1=1,
        epochs_phase2=2,
        seed=seed,
    )
    return learn_schedule(model, teacher, [cond], SAMPLER, config, loss)


def check_schedule(result, model):
    step_sigmas = result.step_sigmas
    assert step_sigmas.shape == (STEPS + 1,) and result.eval_sigmas.shape == (STEPS,)
    assert torch.isfinite(step_sigmas).all() and torch.isfinite(result.eval_sigmas).all()
    assert (step_sigmas[:-1] > step_sigmas[1:]).all()
    assert step_sigmas[-1].item() == 0.0
    assert step_sigmas[0].item() == pytest.approx(float(model.get_model_object("model_sampling").sigma_max))
    assert result.completed and result.epochs_done == 3
    assert all(math.isfinite(v) and v >= 0 for v in result.train_curve + result.validation_curve)


@pytest.mark.parametrize("loss_kind", ["l2", "lpips"])
@pytest.mark.parametrize("decoupled", [True, False], ids=["decoupled", "coupled"])
@pytest.mark.parametrize("soft", [True, False], ids=["soft", "hard"])
def test_training_mode_runs_end_to_end(setup, vae, student_calls, loss_kind, soft, decoupled):
    model, _, teacher = setup
    result = train(setup, vae, loss_kind, soft, decoupled)
    check_schedule(result, model)
    assert len(result.train_curve) == 3 * len(teacher.train_indices)

    trained = [call for call in student_calls if call[3]]
    assert trained, "no training step reached the student"
    # Soft: the student starts from x'_T, moved but inside the ball; hard: from the teacher's x_T.
    radius = ball_radius(0.001, math.prod(LATENT), STEPS)
    moved = []
    for noise, _, _, _ in student_calls:
        distance = (noise[:, None] - teacher.noise[None]).flatten(2).norm(dim=2).min(dim=1).values
        moved.append(float(distance.max()))
    if soft:
        assert max(moved) > 0
        assert max(moved) <= radius * (1 + 1e-4)
    else:
        assert max(moved) == 0.0
    # Decoupled: phase 2 feeds the network eval sigmas that differ from the step sigmas.
    with_eval = [call for call in trained if call[1] is not None]
    if decoupled:
        assert with_eval
        assert any((call[1][1:] != call[2][1:-1]).any() for call in with_eval)
    else:
        assert not with_eval and all(call[1] is None for call in student_calls)
        assert torch.equal(result.eval_sigmas, result.step_sigmas[:-1])


@pytest.mark.parametrize("loss_kind", ["l2", "lpips"])
def test_same_seed_gives_a_bitwise_identical_schedule(setup, vae, loss_kind):
    first = train(setup, vae, loss_kind, soft=True, decoupled=True, seed=3)
    second = train(setup, vae, loss_kind, soft=True, decoupled=True, seed=3)
    assert torch.equal(first.step_sigmas, second.step_sigmas)
    assert torch.equal(first.eval_sigmas, second.eval_sigmas)
    assert first.train_curve == second.train_curve
    assert first.validation_curve == second.validation_curve


def test_lpips_needs_a_vae():
    from ld3_core.errors import LD3InputError

    with pytest.raises(LD3InputError) as excinfo:
        make_loss("lpips", vae=None, lpips_weights=str(LPIPS_WEIGHTS))
    assert excinfo.value.input_name == "vae"


def test_training_computes_no_weight_gradients(sd15_conds):
    """LD3 differentiates the sampler's inputs only: no UNet or VAE weight gets a gradient.

    A model built outside inference mode (as this one is) has parameters that require grad; if they
    kept requiring it, every backward would also compute and store a gradient per weight (a second
    copy of the weights and about twice the backward's work).
    """
    model = tiny_models.build_tiny_sd15(seed=0)
    vae = tiny_models.build_tiny_vae()
    weights = [*model.model.parameters(), *vae.first_stage_model.parameters()]
    assert all(p.requires_grad for p in weights)  # the case under test
    cond = Conditioning(*sd15_conds, 2.0)
    teacher = generate_teacher(model, [cond], LATENT, count=4, seed=0, steps=8)
    loss = make_loss("lpips", vae=vae, lpips_weights=str(LPIPS_WEIGHTS))
    config = TrainConfig(steps=STEPS, epochs_phase1=1, epochs_phase2=1)
    result = learn_schedule(model, teacher, [cond], SAMPLER, config, loss)
    assert result.completed
    weights = [*model.model.parameters(), *vae.first_stage_model.parameters()]
    assert all(p.grad is None and not p.requires_grad for p in weights)
