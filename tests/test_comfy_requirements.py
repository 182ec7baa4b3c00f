"""The ComfyUI internals the pack relies on: all present in the ComfyUI run here, and a missing one named."""

import logging

import comfy.samplers

from ld3_core.comfyui import requirements as comfy_requirements


def test_every_required_internal_is_in_this_comfyui():
    assert comfy_requirements.missing() == []
    assert comfy_requirements.check_at_load() is None


def test_a_missing_internal_is_named_with_the_comfyui_version(monkeypatch, caplog):
    monkeypatch.delattr(comfy.samplers, "CFGGuider")
    monkeypatch.delattr(comfy.samplers.KSampler, "DISCARD_PENULTIMATE_SIGMA_SAMPLERS")
    with caplog.at_level(logging.ERROR):
        line = comfy_requirements.check_at_load()
    assert comfy_requirements.missing() == [
        "comfy.samplers.KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS",
        "comfy.samplers.CFGGuider",
    ]
    assert "this ComfyUI (0.3.75) lacks comfy.samplers.KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS" in line
    assert "teacher and training" in line and "the ld3 KSampler scheduler" in line
    assert caplog.text.count("LD3: this ComfyUI") == 1
