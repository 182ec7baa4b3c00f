"""The ComfyUI internals the pack relies on: all present in the ComfyUI run here, and a missing one named."""

import logging

import comfy.samplers
import pytest

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


def test_nodes_that_need_a_missing_internal_refuse_with_the_line_logged_at_load(ld3_pack, monkeypatch):
    """The LD3 nodes stay listed (saved workflows open) but those that sample, train or patch a MODEL
    refuse with the load-time line; a node that needs none of ComfyUI's internals still runs."""
    import importlib

    import torch
    from conftest import PACK_DIR_NAME

    common, demo, tools = (
        importlib.import_module(f"{PACK_DIR_NAME}.nodes.{name}")
        for name in ("_common", "demo", "schedule_tools")
    )
    monkeypatch.delattr(comfy.samplers, "CFGGuider")
    common.register_pack()
    try:
        with pytest.raises(RuntimeError, match=r"this ComfyUI \(0\.3\.75\) lacks comfy\.samplers\.CFGGuider"):
            demo.LD3DemoModel.execute("eps", 8, 8, 0)
        resampled = tools.LD3LogLinearResample.execute(torch.tensor([14.6, 1.0, 0.0]), 4).result[0]
        assert len(resampled) == 5
    finally:
        monkeypatch.undo()
        common.register_pack()
    model = demo.LD3DemoModel.execute("eps", 8, 8, 0).result[0]
    assert model.get_model_object("model_sampling") is not None
