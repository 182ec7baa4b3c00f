"""Every latent layout ComfyUI samples goes through LD3 end to end: 3-D audio, 4-D images, 5-D video.

Shapes come from the tensors: a teacher is generated for the latent's shape, saved and read back, a
schedule is learned on it, and the stock KSampler with the ``ld3`` scheduler on the patched MODEL then
gives exactly what the trainer's differentiable student computed for that schedule. The LPIPS loss
compares every frame a video VAE decodes, and refuses an audio VAE's waveform with what to do.
"""

import comfy.sample
import comfy.sd
import pytest
import tiny_models
import torch
from conftest import COMFYUI_DIR

from ld3_core import api
from ld3_core.comfyui.adapter import Conditioning, DifferentiableSampler
from ld3_core.comfyui.mixture_model import mixture_conditioning, mixture_model_patcher
from ld3_core.comfyui.model_patch import patch_model
from ld3_core.comfyui.scheduler import register_ld3_scheduler
from ld3_core.errors import LD3InputError
from ld3_core.losses import make_loss
from ld3_core.mixture import make_mixture
from ld3_core.schedule import Schedule
from ld3_core.teacher import generate_teacher
from ld3_core.teacher_file import parse_teacher_bytes, teacher_file_bytes
from ld3_core.trainer import TrainConfig

LPIPS_WEIGHTS = COMFYUI_DIR / "models" / "lpips" / "alexnet.safetensors"
LAYOUTS = {
    "audio [C, L]": ((8, 32), "eps"),
    "image, 16 channels [C, H, W]": ((16, 4, 4), "flow"),
    "video [C, T, H, W]": ((16, 2, 4, 4), "flow"),
}
TEACHER_SCHEDULER = {"eps": "karras", "flow": "simple"}
SAMPLER = "dpmpp_2m"
STEPS = 4


@pytest.mark.parametrize("shape, kind", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_teacher_training_and_ksampler_follow_the_latent_shape(shape, kind):
    register_ld3_scheduler()
    model = mixture_model_patcher(make_mixture(shape, seed=0, dtype=torch.float32), kind)
    positive, negative = mixture_conditioning()
    cond = Conditioning(positive, negative, 1.0)

    teacher = generate_teacher(
        model, [cond], shape, count=8, seed=0, sampler=SAMPLER, scheduler=TEACHER_SCHEDULER[kind], steps=20
    )
    assert teacher.noise.shape == teacher.targets.shape == (8, *shape)
    loaded = parse_teacher_bytes(teacher_file_bytes(teacher, {}))
    assert torch.equal(loaded.targets, teacher.targets) and loaded.info["latent_shape"] == list(shape)

    # No hard-example mining: with 4 validation pairs the few pairs it adds decide whether the end beats
    # the start (a flow model's first step started at 0.905: the video layout 0.96x with mining, 0.51x
    # without); mining through a video latent is tested by test_lpips_through_a_video_vae_compares_...
    config = TrainConfig(steps=STEPS, epochs_phase1=1, epochs_phase2=1, batch_size=2, mining_rounds=0)
    result = api.learn_schedule(model, loaded, [cond], SAMPLER, config, make_loss("l2"))
    assert result.completed
    assert result.best_validation_loss < 0.95 * result.initial_validation_loss, result

    # The user's path: the stock KSampler, scheduler "ld3", on the MODEL carrying the learned schedule.
    learned = result.schedule
    patched = patch_model(model, learned, SAMPLER)
    noise = teacher.noise[:2]
    with torch.inference_mode():
        sampled = comfy.sample.sample(
            patched,
            noise,
            STEPS,
            1.0,
            SAMPLER,
            "ld3",
            positive,
            negative,
            torch.zeros_like(noise),
            disable_pbar=True,
            seed=0,
        )
    leaves = Schedule(*(t.clone().requires_grad_() for t in learned.tensors()))
    trained = DifferentiableSampler(model, SAMPLER)(noise, cond, leaves)
    assert sampled.shape == noise.shape
    torch.testing.assert_close(sampled, trained.detach(), rtol=1e-5, atol=1e-5 * float(trained.abs().max()))


def tiny_wan_vae() -> comfy.sd.VAE:
    """ComfyUI's Wan 2.1 video VAE (causal 3-D, 4x in time, 8x in space) at toy width, random weights."""
    import comfy.ldm.wan.vae

    module = comfy.ldm.wan.vae.WanVAE(
        dim=8,  # ComfyUI reads the width back from decoder.head.0.gamma
        z_dim=16,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=2,
        attn_scales=[],
        temperal_downsample=[False, True, True],
        dropout=0.0,
    )
    tiny_models.init_weights(module, seed=0)
    return comfy.sd.VAE(sd=module.state_dict())


@pytest.mark.slow
def test_lpips_through_a_video_vae_compares_every_frame_and_trains():
    vae = tiny_wan_vae()
    assert vae.latent_dim == 3  # ComfyUI took it for a video VAE
    loss = make_loss("lpips", vae=vae, lpips_weights=str(LPIPS_WEIGHTS))
    shape = (16, 2, 4, 4)  # 2 latent frames -> 5 video frames of 32 x 32
    targets = torch.randn((2, *shape), generator=torch.Generator().manual_seed(0))
    prepared = loss.prepare(targets)
    assert prepared.shape == (2, 5, 3, 32, 32)  # [sample, frame, C, H, W]
    assert torch.allclose(loss(targets, prepared), torch.zeros(2), atol=1e-6)
    # The last latent frame only reaches the later video frames: the loss must see them too.
    moved = targets.clone()
    # (A seeded change: with the global generator the loss depended on which tests ran before.)
    moved[:, :, -1] += torch.randn(moved[:, :, -1].shape, generator=torch.Generator().manual_seed(1))
    assert (loss(moved, prepared) > 1e-3).all(), loss(moved, prepared)

    model = mixture_model_patcher(make_mixture(shape, seed=0, dtype=torch.float32), "flow")
    cond = Conditioning(*mixture_conditioning(), 1.0)
    teacher = generate_teacher(
        model, [cond], shape, count=4, seed=0, sampler="euler", scheduler="simple", steps=10
    )
    config = TrainConfig(steps=3, epochs_phase1=1, epochs_phase2=1, batch_size=1, mining_rounds=2)
    result = api.learn_schedule(model, teacher, [cond], "euler", config, loss)
    # 2 epochs of the 2 training samples from each start (the 3 best built-ins), then hard-example
    # mining (LPIPS through the video VAE too):
    # 2 rounds (of the default 3, to keep the test short), each adds 2 teacher pairs (60 % of the 4
    # samples, of 24 fresh noises) and trains 1 epoch: 4, then 6 samples.
    assert result.completed and result.mined_pairs == 4
    assert len(result.starts) == 3
    assert len(result.train_curve) == 2 * 2 * 3 + 4 + 6
    assert all(torch.isfinite(torch.tensor(result.train_curve)))
    assert result.best_validation_loss <= result.initial_validation_loss


@pytest.mark.slow
def test_lpips_with_an_audio_vae_is_refused_with_what_to_do():
    # ComfyUI builds Stable Audio's Oobleck VAE at its one size (156 M parameters; random weights here).
    import comfy.ldm.audio.autoencoder

    vae = comfy.sd.VAE(sd=comfy.ldm.audio.autoencoder.AudioOobleckVAE().state_dict())
    assert vae.latent_dim == 1  # ComfyUI took it for an audio VAE
    loss = make_loss("lpips", vae=vae, lpips_weights=str(LPIPS_WEIGHTS))
    with pytest.raises(LD3InputError, match=r"^loss: LPIPS needs images.*\[1, 2, 4096\].*Use the L2 loss"):
        loss.prepare(torch.randn(1, 64, 2))  # 2 latent samples -> a stereo waveform of 4096
