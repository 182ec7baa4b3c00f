"""A MODEL carrying a learned schedule warns when it is sampled with another sampler, and only then."""

import logging

import comfy.patcher_extension as pe
import pytest
import torch

from ld3_core.comfyui.adapter import Conditioning, sample_stock
from ld3_core.comfyui.mixture_model import mixture_conditioning, mixture_model_patcher
from ld3_core.comfyui.model_patch import LD3_KEY, patch_model
from ld3_core.mixture import make_mixture
from ld3_core.schedule import Schedule
from ld3_core.teacher import schedule_sigmas

SHAPE = (2, 4, 4)


@pytest.fixture(scope="module")
def model():
    return mixture_model_patcher(make_mixture(SHAPE, components=4, seed=0), "eps")


def _learned(model) -> Schedule:
    s = schedule_sigmas(model, "karras", 4, "euler")
    return Schedule(s, s[:-1] * 0.9, s[:-1] * 1.1)


def _warnings(model, sampler, caplog) -> list[str]:
    caplog.clear()
    noise = torch.randn(1, *SHAPE, generator=torch.Generator().manual_seed(0))
    cond = Conditioning(*mixture_conditioning(), 1.0)
    with caplog.at_level(logging.WARNING):
        sample_stock(model, cond, sampler, schedule_sigmas(model, "karras", 4, sampler), noise)
    return [r.getMessage() for r in caplog.records if "LD3: this MODEL" in r.getMessage()]


def test_another_sampler_is_named_once_per_sampling(model, caplog):
    patched = patch_model(model, _learned(model), "dpmpp_2m")
    assert _warnings(patched, "dpmpp_2m", caplog) == []
    said = _warnings(patched, "euler", caplog)
    assert len(said) == 1 and "chosen for the dpmpp_2m sampler (4 steps)" in said[0]
    assert "sampled with euler" in said[0] and "set sampler_name to dpmpp_2m" in said[0]


def test_a_repatched_model_checks_only_its_own_schedule(model, caplog):
    first = patch_model(model, _learned(model), "euler")
    second = patch_model(first, _learned(model), "dpmpp_2m")
    assert len(second.get_wrappers(pe.WrappersMP.SAMPLER_SAMPLE, LD3_KEY)) == 1
    assert _warnings(second, "dpmpp_2m", caplog) == []
    # Step sigmas only (or the built-in a verdict handed back) were chosen for a sampler too.
    plain = patch_model(first, Schedule.plain(schedule_sigmas(model, "karras", 4, "euler")), "dpmpp_2m")
    assert len(_warnings(plain, "euler", caplog)) == 1
    # A MODEL patched without a schedule (as for training) checks nothing.
    assert _warnings(patch_model(first), "dpmpp_2m", caplog) == []
