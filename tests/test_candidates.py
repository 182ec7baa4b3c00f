"""The schedules LD3 starts from: ComfyUI's schedulers plus its AYS / GITS / OptimalSteps tables that fit.

Each table is made for one model family; it is a candidate when it starts at the model's own sigma_max
(SD1.x: 14.61, flow models: 1.0), and it is exactly what ComfyUI's node gives.
"""

import torch
from comfy_extras.nodes_align_your_steps import AlignYourStepsScheduler
from comfy_extras.nodes_gits import GITSScheduler
from comfy_extras.nodes_optimalsteps import OptimalStepsScheduler

from ld3_core.api import builtin_schedules, candidate_schedules, extra_schedules
from ld3_core.comfyui.mixture_model import mixture_model_patcher
from ld3_core.mixture import make_mixture

STEPS = 6


def test_sd_range_model_gets_ays_and_gits(tiny_sd15):
    extras = extra_schedules(tiny_sd15, STEPS)
    assert set(extras) == {"ays_sd1", "ays_sdxl", "gits"}
    assert torch.equal(
        extras["ays_sd1"], AlignYourStepsScheduler.execute("SD1", STEPS, 1.0).result[0].float()
    )
    assert torch.equal(extras["gits"], GITSScheduler.execute(1.20, STEPS, 1.0).result[0].float())


def test_flow_model_gets_optimal_steps(tiny_flux):
    extras = extra_schedules(tiny_flux, STEPS)
    assert set(extras) == {"optimal_steps_flux", "optimal_steps_wan", "optimal_steps_chroma"}
    assert torch.equal(
        extras["optimal_steps_flux"], OptimalStepsScheduler.execute("FLUX", STEPS, 1.0).result[0].float()
    )
    flow_mixture = mixture_model_patcher(make_mixture((4, 8, 8), seed=0), "flow")
    assert set(extra_schedules(flow_mixture, STEPS)) == set(extras)


def test_candidates_are_the_builtins_plus_the_fitting_extras(tiny_sd15):
    candidates = candidate_schedules(tiny_sd15, STEPS, "euler")
    builtins = builtin_schedules(tiny_sd15, STEPS, "euler")
    assert set(candidates) == set(builtins) | {"ays_sd1", "ays_sdxl", "gits"}
    for sigmas in candidates.values():
        assert sigmas.numel() == STEPS + 1 and float(sigmas[-1]) == 0
        assert bool((sigmas[:-1] > sigmas[1:]).all())
