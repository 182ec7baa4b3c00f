"""What LD3 Train Sigmas' recipe leaves to the model, decided on real ComfyUI models."""

import torch

from ld3_core.api import config_for_model
from ld3_core.comfyui.mixture_model import mixture_model_patcher
from ld3_core.mixture import make_mixture
from ld3_core.trainer import TrainConfig


def test_the_first_step_is_free_on_flow_models_only():
    mixture = make_mixture((2, 4, 4), components=4, seed=0, dtype=torch.float32)
    eps, flux, flow = (mixture_model_patcher(mixture, kind) for kind in ("eps", "flux", "flow"))
    assert config_for_model(TrainConfig(steps=4), eps).pin_first is True
    assert config_for_model(TrainConfig(steps=4), flux).pin_first is False
    assert config_for_model(TrainConfig(steps=4), flow).pin_first is False
    # An explicit choice stays.
    assert config_for_model(TrainConfig(steps=4, pin_first=False), eps).pin_first is False
