"""Every training mode runs end to end on a real (tiny) ComfyUI model, and training is deterministic.

Both recipes (ld3: hard teacher forcing, every per-step sigma free; paper: soft teacher forcing, Eq. 5,
the student starting from x'_T inside a ball around x_T, and the network's time within half a step),
with or without what the network is told (decoupled), with the L2 or the LPIPS loss (through a tiny,
randomly initialised ComfyUI VAE built from a state dict, and the offline LPIPS weights). A spy on
DifferentiableSampler.__call__ records what the student was given, so each mode is checked to do what it
says, not merely to finish.
"""

import math
from dataclasses import replace

import pytest
import tiny_models
import torch
from conftest import COMFYUI_DIR

from ld3_core.api import learn_schedule
from ld3_core.comfyui import adapter as comfy_adapter
from ld3_core.comfyui.adapter import Conditioning
from ld3_core.losses import make_loss
from ld3_core.parameterisation import ball_radius
from ld3_core.schedule import Schedule
from ld3_core.teacher import generate_teacher
from ld3_core.trainer import TrainConfig

pytestmark = pytest.mark.slow  # the fast tier (scripts/test.sh) leaves these to --all

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
    """Every call of DifferentiableSampler: (noise, schedule, trained?)."""
    calls = []
    original = comfy_adapter.DifferentiableSampler.__call__

    def spy(self, noise, cond, schedule, seed=0):
        trained = torch.is_grad_enabled() and schedule.step_sigmas.requires_grad
        calls.append(
            (noise.detach().clone(), Schedule(*(t.detach().clone() for t in schedule.tensors())), trained)
        )
        return original(self, noise, cond, schedule, seed)

    monkeypatch.setattr(comfy_adapter.DifferentiableSampler, "__call__", spy)
    return calls


def train(setup, vae, loss_kind, recipe, decoupled, seed=0):
    model, cond, teacher = setup
    loss = make_loss(loss_kind, vae=vae, lpips_weights=str(LPIPS_WEIGHTS))
    config = TrainConfig.for_recipe(recipe, STEPS, decoupled, seed)
    # Three epochs exactly from each start (ld3: the 3 best built-ins), on the teacher's noises only:
    # hard-example mining (more epochs and pairs) is tested in test_trainer, test_latent_shapes and
    # test_nodes, the verdict's fresh noises in test_trainer and test_quality_server.
    config = replace(
        config,
        epochs_phase1=1,
        epochs_phase2=2,
        stop_patience=None,
        batch_size=1,
        mining_rounds=0,
        check_pairs=0.0,
    )
    return learn_schedule(model, teacher, [cond], SAMPLER, config, loss)


def check_schedule(result, model):
    schedule = result.schedule
    step_sigmas = schedule.step_sigmas
    assert step_sigmas.shape == (STEPS + 1,) and schedule.model_sigmas.shape == (STEPS,)
    assert all(torch.isfinite(t).all() for t in schedule.tensors())
    assert (step_sigmas[:-1] > step_sigmas[1:]).all()
    assert step_sigmas[-1].item() == 0.0
    assert step_sigmas[0].item() == pytest.approx(float(model.get_model_object("model_sampling").sigma_max))
    assert result.completed and result.epochs_done == 3 * len(result.starts)
    assert all(math.isfinite(v) and v >= 0 for v in result.train_curve + result.validation_curve)


@pytest.mark.parametrize("loss_kind", ["l2", "lpips"])
@pytest.mark.parametrize("decoupled", [True, False], ids=["decoupled", "steps-only"])
@pytest.mark.parametrize("recipe", ["ld3", "paper"])
def test_training_mode_runs_end_to_end(setup, vae, student_calls, loss_kind, recipe, decoupled):
    model, _, teacher = setup
    result = train(setup, vae, loss_kind, recipe, decoupled)
    check_schedule(result, model)
    assert len(result.starts) == (3 if recipe == "ld3" else 1)
    assert len(result.train_curve) == 3 * len(result.starts) * len(teacher.train_indices)

    trained = [call for call in student_calls if call[2]]
    assert trained, "no training step reached the student"
    # Soft (paper): the student starts from x'_T, moved but inside the ball; hard (ld3): from x_T.
    radius = ball_radius(0.001, math.prod(LATENT), STEPS)
    moved = []
    for noise, _, _ in student_calls:
        distance = (noise[:, None] - teacher.noise[None]).flatten(2).norm(dim=2).min(dim=1).values
        moved.append(float(distance.max()))
    if recipe == "paper":
        assert 0 < max(moved) <= radius * (1 + 1e-4)
    else:
        assert max(moved) == 0.0
    # Decoupled: phase 2 tells the network other sigmas than the step sigmas; the paper's recipe only
    # its time (the scaling sigma stays the step sigma), ld3 both.
    schedules = [call[1] for call in trained]
    if not decoupled:
        assert all(schedule.is_plain for schedule in schedules) and result.schedule.is_plain
        return
    model_moved = [(s.model_sigmas != s.step_sigmas[:-1]).any() for s in schedules]
    scale_moved = [(s.scale_sigmas != s.step_sigmas[:-1]).any() for s in schedules]
    assert any(model_moved)
    assert any(scale_moved) == (recipe == "ld3")


@pytest.mark.parametrize("loss_kind", ["l2", "lpips"])
def test_same_seed_gives_a_bitwise_identical_schedule(setup, vae, loss_kind):
    first = train(setup, vae, loss_kind, "paper", decoupled=True, seed=3)
    second = train(setup, vae, loss_kind, "paper", decoupled=True, seed=3)
    for a, b in zip(first.schedule.tensors(), second.schedule.tensors()):
        assert torch.equal(a, b)
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
    result = learn_schedule(model, teacher, [cond], SAMPLER, config, loss)  # the ld3 recipe's settings
    assert result.completed
    weights = [*model.model.parameters(), *vae.first_stage_model.parameters()]
    assert all(p.grad is None and not p.requires_grad for p in weights)
