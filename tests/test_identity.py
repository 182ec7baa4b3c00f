"""The model fingerprint recorded with teacher data and schedules: what makes two MODELs different.

A LoRA (any weight patch), its strength and the sampling shift change what the model computes, so they
change the fingerprint; whether ComfyUI currently holds the model loaded (patched weights written in
place, the originals in its backup) does not.
"""

import tiny_models
import torch
from comfy_extras.nodes_model_advanced import ModelSamplingFlux, ModelSamplingSD3

from ld3_core.comfyui.identity import model_identity
from ld3_core.identity import same_model


def with_patch(model, strength: float = 1.0, scale: float = 0.01):
    """A clone with a weight-difference patch ("diff", as model merges add) on one attention weight."""
    patched = model.clone()
    key = next(k for k in patched.model.state_dict() if "attn1.to_q.weight" in k)
    diff = torch.full_like(patched.model.state_dict()[key], scale)
    assert patched.add_patches({key: ("diff", (diff,))}, strength) == [key]
    return patched


def fingerprint(model) -> str:
    return model_identity(model)["fingerprint"]


def test_weight_patches_and_their_strength_change_the_fingerprint(tiny_sd15):
    base = fingerprint(tiny_sd15)
    assert fingerprint(tiny_sd15.clone()) == base
    assert fingerprint(with_patch(tiny_sd15)) != base
    assert fingerprint(with_patch(tiny_sd15)) == fingerprint(with_patch(tiny_sd15))
    assert fingerprint(with_patch(tiny_sd15, strength=0.5)) != fingerprint(with_patch(tiny_sd15))
    assert fingerprint(with_patch(tiny_sd15, scale=0.02)) != fingerprint(with_patch(tiny_sd15))


def test_loading_a_patched_model_does_not_change_its_fingerprint():
    patched = with_patch(tiny_models.build_tiny_sd15(seed=3))  # its own model: nothing else loads it
    # Patch the weights in place, as loading does; every weight of the UNet is then patched.
    every = {k: ("diff", (torch.full_like(v, 0.01),)) for k, v in patched.model.state_dict().items()}
    patched.add_patches(every, 1.0)
    before = fingerprint(patched)
    patched.patch_model()
    try:
        assert patched.backup, "the weights were patched in place"
        assert fingerprint(patched) == before
    finally:
        patched.unpatch_model()
    assert fingerprint(patched) == before


def test_sampling_shift_changes_the_fingerprint(tiny_flux):
    base = fingerprint(tiny_flux)
    # At 1024x1024 the node's shift is Flux's default (max_shift 1.15): the same model.
    (same,) = ModelSamplingFlux().patch(tiny_flux, 1.15, 0.5, 1024, 1024)
    (shifted,) = ModelSamplingFlux().patch(tiny_flux, 1.15, 0.5, 512, 512)
    assert fingerprint(same) == base
    assert fingerprint(shifted) != base
    (sd3,) = ModelSamplingSD3().patch(tiny_flux, 3.0)
    assert fingerprint(sd3) not in (base, fingerprint(shifted))


def test_fingerprints_of_another_version_compare_by_class_and_size(tiny_sd15, tiny_flux):
    given = model_identity(tiny_sd15)
    assert same_model(dict(given), given) is True
    assert same_model(model_identity(with_patch(tiny_sd15)), given) is False
    older = {k: v for k, v in given.items() if k != "fingerprint_version"} | {"fingerprint": "0123abcd"}
    assert same_model(older, given) is None  # cannot tell: classes, sigmas and size agree
    other = {k: v for k, v in model_identity(tiny_flux).items() if k != "fingerprint_version"}
    assert same_model(other, given) is False
