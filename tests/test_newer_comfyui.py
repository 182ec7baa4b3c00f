"""What the pack does with the ComfyUI features users run today (0.4x) that ComfyUI 0.3.75 lacks.

The ComfyUI installed here is 0.3.75; the newer behaviour was read in the 0.38.1 sources (see
ld3_core/comfyui/adapter.py and ld3_core/comfyui/model_patch.py). Each test reproduces exactly the part of the
newer ComfyUI that the pack relies on, on top of the real 0.3.75 runtime:

- ``comfy.model_management.in_training``: a module flag newer ComfyUI reads inside its models to pick
  the differentiable (eager) path over fused in-place kernels;
- Dynamic VRAM's ``ModelPatcher.is_dynamic()`` / ``get_non_dynamic_delegate()``;
- Dynamic VRAM's buffer restore: ``register_buffer`` by attribute path onto whatever object is at
  ``model_sampling`` at the next load (``comfy.utils.set_attr_buffer`` in 0.38.1, ComfyUI issue #16490).
"""

import comfy.model_management
import comfy.model_patcher
import pytest
import torch

from ld3_core.comfyui.adapter import Conditioning, DifferentiableSampler, sample_stock
from ld3_core.comfyui.mixture_model import mixture_conditioning, mixture_model_patcher
from ld3_core.comfyui.model_patch import patch_model
from ld3_core.errors import LD3InputError
from ld3_core.mixture import make_mixture
from ld3_core.schedule import Schedule
from ld3_core.teacher import schedule_sigmas

SHAPE = (2, 4, 4)


@pytest.fixture(scope="module")
def eps_model():
    return mixture_model_patcher(make_mixture(SHAPE, components=4, seed=0), "eps")


@pytest.fixture(scope="module")
def cond():
    return Conditioning(*mixture_conditioning(), 1.0)


def _learned(model, steps=4) -> Schedule:
    s = schedule_sigmas(model, "karras", steps, "euler")
    m = s[:-1] * torch.tensor([0.8, 1.1, 0.9, 1.2])
    u = s[:-1] * torch.tensor([0.9, 0.95, 1.05, 1.1])
    return Schedule(s, m, u)


def test_differentiable_calls_run_in_comfyui_training_mode(eps_model, cond, monkeypatch):
    # Newer ComfyUI has the flag (False unless something trains); 0.3.75 does not: give it the attribute.
    monkeypatch.setattr(comfy.model_management, "in_training", False, raising=False)
    net = eps_model.model.diffusion_model
    seen = []
    forward = net.forward
    monkeypatch.setattr(
        net, "forward", lambda *a, **k: (seen.append(comfy.model_management.in_training), forward(*a, **k))[1]
    )

    leaves = [t.clone().requires_grad_() for t in _learned(eps_model).tensors()]
    noise = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(0))
    out = DifferentiableSampler(eps_model, "euler")(noise, cond, Schedule(*leaves))
    forward_calls = len(seen)
    assert comfy.model_management.in_training is False  # restored after the call
    out.square().sum().backward()
    # Every call, the checkpointed forward and its recompute in backward alike, saw the flag set.
    assert forward_calls == 4 and len(seen) == 8 and all(seen)
    assert comfy.model_management.in_training is False
    assert all(leaf.grad is not None and torch.isfinite(leaf.grad).all() for leaf in leaves)

    seen.clear()
    with torch.no_grad():  # validation and built-in scoring are not training
        DifferentiableSampler(eps_model, "euler")(noise, cond, _learned(eps_model))
    sample_stock(eps_model, cond, "euler", schedule_sigmas(eps_model, "karras", 4, "euler"), noise)
    assert len(seen) == 8 and not any(seen)


def test_without_the_flag_nothing_is_added(eps_model, cond):
    if hasattr(comfy.model_management, "in_training"):
        pytest.skip("this ComfyUI has the flag (newer than 0.3.75)")
    leaves = [t.clone().requires_grad_() for t in _learned(eps_model).tensors()]
    noise = torch.randn(1, *SHAPE, generator=torch.Generator().manual_seed(1))
    DifferentiableSampler(eps_model, "euler")(noise, cond, Schedule(*leaves)).sum().backward()
    assert not hasattr(comfy.model_management, "in_training")


class _DynamicPatcher(comfy.model_patcher.ModelPatcher):
    """ModelPatcherDynamic's two methods the pack uses (0.38.1): a static clone on request."""

    delegate_error: str | None = None

    def is_dynamic(self):
        return True

    def get_non_dynamic_delegate(self):
        if self.delegate_error:
            raise RuntimeError(self.delegate_error)
        static = comfy.model_patcher.ModelPatcher(self.model, self.load_device, self.offload_device)
        static.model_options["static_delegate"] = True
        return static


def _dynamic(model) -> _DynamicPatcher:
    return _DynamicPatcher(model.model, model.load_device, model.offload_device)


def test_training_uses_the_static_delegate_of_a_dynamic_model(eps_model, cond):
    student = DifferentiableSampler(_dynamic(eps_model), "euler")
    assert student.model.model_options.get("static_delegate") is True
    assert not isinstance(student.model, _DynamicPatcher)
    noise = torch.randn(1, *SHAPE, generator=torch.Generator().manual_seed(2))
    schedule = _learned(eps_model)
    assert torch.equal(
        student(noise, cond, schedule), DifferentiableSampler(eps_model, "euler")(noise, cond, schedule)
    )


def test_without_a_static_delegate_training_is_refused_with_the_fix():
    dynamic = _dynamic(mixture_model_patcher(make_mixture(SHAPE, components=4, seed=0), "eps"))
    dynamic.delegate_error = "Cannot create non-dynamic delegate: cached_patcher_init is not initialized."
    with pytest.raises(LD3InputError) as refused:
        DifferentiableSampler(dynamic, "euler")
    text = str(refused.value)
    assert text.startswith("model: ") and "cached_patcher_init" in text and "--disable-dynamic-vram" in text


def test_a_restored_foreign_sigma_table_does_not_change_what_the_network_is_told(eps_model):
    patched = patch_model(eps_model, _learned(eps_model), "euler")
    model_sampling = patched.get_model_object("model_sampling")
    sigmas = torch.tensor([14.0, 5.0, 1.3, 0.4, 0.05])
    before = model_sampling.timestep(sigmas)

    # Another object's table (e.g. a zero-terminal-SNR ModelSamplingDiscrete run earlier on this model),
    # written by attribute path as Dynamic VRAM's restore does.
    foreign = torch.linspace(0.03, 4500.0, model_sampling.sigmas.numel())
    original = patched.model.model_sampling
    patched.model.model_sampling = model_sampling  # what the object patch puts there while it is loaded
    try:
        for name, value in (("sigmas", foreign), ("log_sigmas", foreign.log())):
            model_sampling.register_buffer(name, value, persistent=False)
        torch.testing.assert_close(model_sampling.timestep(sigmas), before, rtol=0, atol=0)
    finally:
        patched.model.model_sampling = original
