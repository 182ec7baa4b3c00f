"""A small trained EDM network on handwritten digits: a real denoiser to judge schedules on.

What it is: ComfyUI's own SD1.x UNet (``comfy.supported_models.SD15`` -> ``get_model``) at toy width
with one input / output channel, run as an EDM model (``ModelType.EDM``: ModelSamplingContinuousEDM,
sigma in [0.002, 80], sigma_data 0.5, network time 0.25 log sigma; Karras et al. 2022, Table 1). It is
unconditional: the cross-attention context is all zeros. Latents are 1x16x16 images, pixels in [-1, 1].

Data: scikit-learn's bundled ``load_digits()`` (1797 8x8 images, no download), upsampled to 16x16
(bilinear) and mapped from [0, 16] to [-1, 1]; the last HELDOUT_IMAGES are kept out of training for
the tests. No augmentation: in this short training each image is seen ~30 times, far from overfitting.

Training: EDM's loss (Karras et al. 2022, Sec. 5 / Eq. 8): log-normal sigma (P_mean -1.2, P_std 1.2),
weight (sigma^2 + sigma_data^2) / (sigma sigma_data)^2, computed through ComfyUI's
``BaseModel.apply_model`` (calculate_input, timestep, calculate_denoised), so the denoiser trained is
the one ComfyUI samples. Adam with a cosine learning-rate decay and an EMA of the weights (what is
shipped), fixed seeds, one CPU thread: 1600 steps of 32 images took 540 s on a shared 2-core machine
(final EDM loss 0.154 on the training images, 0.167 held out). The weights are stored in fp16 (1.9 MB,
0.96 M parameters) and load as fp32; the file's metadata holds the config and these results. Retrain
and look at samples with

    .venv/bin/python bench/digits.py --train            # writes bench/weights/digits_edm.safetensors
    .venv/bin/python bench/digits.py --grid /tmp/d.png  # 64 samples (50-step dpmpp_2m, karras)
    .venv/bin/python bench/digits.py --compare          # built-in schedulers at NFE 4, 6 vs 500 steps

The few-step error is large on this network: at NFE 4 / 6 the best built-in scheduler is 0.12 / 0.08
(euler) and 0.13 / 0.08 (dpmpp_2m) RMSE from a 500-step solve, against samples of RMS 0.74 (--compare;
250 steps are 5e-5 from 500).

Import after ``bench.env.bootstrap()`` (ComfyUI first on sys.path), as the other bench modules.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WEIGHTS = Path(__file__).resolve().parent / "weights" / "digits_edm.safetensors"
LATENT_SHAPE = (1, 16, 16)  # one sample, no batch dimension
CONTEXT_SHAPE = (1, 1, 8)  # the zero cross-attention context: (batch, tokens, context_dim)
SIGMA_MIN, SIGMA_MAX, SIGMA_DATA = 0.002, 80.0, 0.5
HELDOUT_IMAGES = 197  # the last images of load_digits(): never trained on (1600 train)

# SD1.x's UNet layout (comfy/model_detection.py) at toy width: 3 levels (16, 8, 4 px), 32-32-64 channels,
# a spatial transformer (self + cross attention) at 4 px and in the middle block.
DIGITS_UNET = {
    "use_checkpoint": False,
    "image_size": 16,
    "in_channels": LATENT_SHAPE[0],
    "out_channels": LATENT_SHAPE[0],
    "model_channels": 32,
    "num_res_blocks": [1, 1, 1],
    "channel_mult": [1, 1, 2],
    "transformer_depth": [0, 0, 1],
    "transformer_depth_middle": 1,
    "transformer_depth_output": [1, 1, 0, 0, 0, 0],
    "use_spatial_transformer": True,
    "use_linear_in_transformer": False,
    "legacy": False,
    "adm_in_channels": None,
    "context_dim": CONTEXT_SHAPE[2],
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the trained weights (stored in the weights file's metadata)."""

    steps: int = 1600
    batch_size: int = 32
    lr: float = 2e-3
    lr_warmup: int = 100
    ema_halflife_steps: float = 150.0
    p_mean: float = -1.2
    p_std: float = 1.2
    seed: int = 0
    threads: int = 1


def _config():
    """ComfyUI's SD15 model config with the toy UNet, EDM sampling and a 1-channel, unscaled latent."""
    import comfy.latent_formats
    import comfy.model_base
    import comfy.supported_models

    class DigitsLatent(comfy.latent_formats.LatentFormat):
        latent_channels = LATENT_SHAPE[0]  # scale_factor 1: the latent is the image

    class DigitsEDM(comfy.supported_models.SD15):
        unet_extra_config = {"num_heads": -1, "num_head_channels": 32}
        sampling_settings = {"sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX, "sigma_data": SIGMA_DATA}
        latent_format = DigitsLatent

        def model_type(self, state_dict, prefix=""):
            return comfy.model_base.ModelType.EDM

    config = DigitsEDM(DIGITS_UNET)
    config.set_inference_dtype(torch.float32, None)
    return config


def build_model(device="cpu"):
    """The architecture as a ComfyUI BaseModel (EDM sampling), weights uninitialised."""
    return _config().get_model({}, device=torch.device(device))


def init_weights(unet: torch.nn.Module, seed: int) -> None:
    """PyTorch's default init for every layer (ComfyUI's layers skip it); residual outputs start at 0."""
    torch.manual_seed(seed)
    for module in unet.modules():
        for base in (torch.nn.Conv2d, torch.nn.Linear, torch.nn.GroupNorm, torch.nn.LayerNorm):
            if isinstance(module, base):
                base.reset_parameters(module)
    # Each residual branch and the output start as zero (as in the original UNet), so the initial
    # network is the identity on its skip paths and EDM's D starts at c_skip x.
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if name.startswith("out.2.") or ".out_layers.3." in name or ".proj_out." in name:
                param.zero_()


def conditioning() -> tuple[list, list]:
    """(positive, negative) in ComfyUI's format: the zero context (the network is unconditional)."""
    return [[torch.zeros(CONTEXT_SHAPE), {}]], [[torch.zeros(CONTEXT_SHAPE), {}]]


def load_images(heldout: bool = False) -> torch.Tensor:
    """load_digits() as [N, 1, 16, 16] in [-1, 1]: training images, or (heldout) the last ones."""
    from sklearn.datasets import load_digits

    images = torch.from_numpy(load_digits().images).float()[:, None] / 8.0 - 1.0  # [0, 16] -> [-1, 1]
    images = torch.nn.functional.interpolate(images, size=LATENT_SHAPE[1:], mode="bilinear")
    return images[-HELDOUT_IMAGES:] if heldout else images[:-HELDOUT_IMAGES]


def denoise(model, x_noisy: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """EDM's D(x; sigma) as ComfyUI computes it (BaseModel.apply_model with the zero context)."""
    context = torch.zeros((len(x_noisy), *CONTEXT_SHAPE[1:]), dtype=x_noisy.dtype, device=x_noisy.device)
    return model.apply_model(x_noisy, sigma, c_crossattn=context, transformer_options={})


def edm_loss(model, images: torch.Tensor, gen: torch.Generator, p_mean: float, p_std: float) -> torch.Tensor:
    """Karras et al. 2022 Eq. 8: lambda(sigma) |D(y + sigma n; sigma) - y|^2, ln sigma ~ N(P_mean, P_std^2)."""
    sigma = (torch.randn(len(images), generator=gen) * p_std + p_mean).exp()
    noise = torch.randn(images.shape, generator=gen)
    weight = (sigma**2 + SIGMA_DATA**2) / (sigma * SIGMA_DATA) ** 2
    denoised = denoise(model, images + sigma.view(-1, 1, 1, 1) * noise, sigma)
    return (weight.view(-1, 1, 1, 1) * (denoised - images) ** 2).mean()


def evaluate_loss(model, images: torch.Tensor, config: TrainConfig, draws: int = 2) -> float:
    """The EDM loss of the model on these images: a fixed draw of sigmas and noise, no gradients."""
    gen = torch.Generator().manual_seed(12345)
    with torch.no_grad():
        losses = [
            float(edm_loss(model, chunk, gen, config.p_mean, config.p_std)) * len(chunk)
            for _ in range(draws)
            for chunk in images.split(256)
        ]
    return sum(losses) / (draws * len(images))


def train(config: TrainConfig = TrainConfig(), log: Callable[[str], None] = print):
    """Train from scratch; returns (EMA state dict, info). Same config and torch build -> same weights."""
    torch.set_num_threads(config.threads)
    model = build_model()
    unet = model.diffusion_model
    init_weights(unet, config.seed)
    unet.train()
    ema = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    ema_decay = 0.5 ** (1.0 / config.ema_halflife_steps)
    optimizer = torch.optim.Adam(unet.parameters(), lr=config.lr)
    images = load_images()
    gen = torch.Generator().manual_seed(config.seed)
    started, recent = time.perf_counter(), []
    for step in range(config.steps):
        warm = min(1.0, (step + 1) / config.lr_warmup)
        for group in optimizer.param_groups:
            group["lr"] = config.lr * warm * 0.5 * (1 + math.cos(math.pi * step / config.steps))
        batch = images[torch.randint(0, len(images), (config.batch_size,), generator=gen)]
        loss = edm_loss(model, batch, gen, config.p_mean, config.p_std)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            decay = min(ema_decay, (step + 1) / (step + 10))
            for k, v in unet.state_dict().items():
                ema[k].lerp_(v, 1 - decay)
        recent = (recent + [loss.item()])[-200:]
        if (step + 1) % 200 == 0 or step + 1 == config.steps:
            seconds = time.perf_counter() - started
            log(f"step {step + 1}/{config.steps} loss {sum(recent) / len(recent):.4f} ({seconds:.0f} s)")
    unet.load_state_dict(ema)
    unet.eval()
    seconds = time.perf_counter() - started
    info = {
        "train_seconds": round(seconds, 1),
        "final_edm_loss": round(evaluate_loss(model, images, config), 5),
        "heldout_edm_loss": round(evaluate_loss(model, load_images(heldout=True), config), 5),
        "train_images": len(images),
        "parameters": sum(p.numel() for p in unet.parameters()),
        "torch": torch.__version__,
    }
    return {k: v.contiguous() for k, v in ema.items()}, info


def save(state_dict: dict, config: TrainConfig, info: dict, path: Path = WEIGHTS) -> None:
    """Weights as fp16 safetensors, with the training config and results as metadata."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "model": "digits-edm: ComfyUI SD1.x UNet (toy width), EDM, 1x16x16, sklearn load_digits",
        "unet_config": json.dumps(DIGITS_UNET),
        "sampling": json.dumps({"sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX, "sigma_data": SIGMA_DATA}),
        "train_config": json.dumps(asdict(config)),
        "train_info": json.dumps(info),
        "command": ".venv/bin/python bench/digits.py --train",
    }
    save_file({k: v.half() for k, v in state_dict.items()}, str(path), metadata=metadata)


def build_digits_model(device="cpu"):
    """The shipped network as a ComfyUI MODEL (ModelPatcher), fp32."""
    import comfy.model_patcher
    from safetensors.torch import load_file

    model = build_model(device)
    state = {k: v.float() for k, v in load_file(str(WEIGHTS), device=str(device)).items()}
    model.diffusion_model.load_state_dict(state)
    device = torch.device(device)
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


def metadata(path: Path = WEIGHTS) -> dict:
    """The weights file's metadata, JSON fields decoded."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        raw = f.metadata()
    return {k: json.loads(v) if v[:1] in "{[" else v for k, v in raw.items()}


def sample(
    patcher, noise: torch.Tensor, steps: int = 50, sampler: str = "dpmpp_2m", scheduler: str = "karras"
):
    """Samples from unit noise with ComfyUI's sampler and scheduler (CFG 1), as KSampler runs them."""
    from ld3_core.comfyui.adapter import Conditioning, sample_stock
    from ld3_core.teacher import schedule_sigmas

    sigmas = schedule_sigmas(patcher, scheduler, steps, sampler)
    return sample_stock(patcher, Conditioning(*conditioning(), 1.0), sampler, sigmas, noise)


def compare_schedulers(
    patcher, count: int = 64, nfes=(4, 6), samplers=("euler", "dpmpp_2m"), reference_steps: int = 500
) -> dict:
    """Per-sample RMSE of every built-in scheduler to a many-step dpmpp_2m karras solve (seeded noise)."""
    from ld3_core import api
    from ld3_core.comfyui.adapter import Conditioning, sample_stock
    from ld3_core.teacher import start_noise

    noise = start_noise(LATENT_SHAPE, 900_000, count)
    reference = sample(patcher, noise, reference_steps)
    half = sample(patcher, noise, reference_steps // 2)
    rmse = lambda x: float((x - reference).flatten(1).pow(2).mean(1).sqrt().mean())  # noqa: E731
    out = {"reference_rms": rmse(torch.zeros_like(reference)), "half_steps": rmse(half)}
    cond = Conditioning(*conditioning(), 1.0)
    for sampler in samplers:
        for nfe in nfes:
            schedules = api.builtin_schedules(patcher, nfe, sampler)
            out[f"{sampler} {nfe}"] = {
                name: rmse(sample_stock(patcher, cond, sampler, sigmas, noise))
                for name, sigmas in schedules.items()
            }
    return out


def save_grid(images: torch.Tensor, path: str, scale: int = 4) -> None:
    """[N, 1, H, W] in [-1, 1] as a square PNG grid (nearest upscaling)."""
    from PIL import Image

    n = len(images)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    h, w = images.shape[-2:]
    grid = torch.full((rows * (h + 1) + 1, cols * (w + 1) + 1), -1.0)
    for i, img in enumerate(images[:, 0].float().cpu()):
        r, c = divmod(i, cols)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = img
    pixels = ((grid.clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
    Image.fromarray(pixels).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(path)


def main(argv=None) -> int:
    from bench import env

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", action="store_true", help=f"train and write {WEIGHTS.name}")
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--grid", help="write 64 samples of the shipped weights as a PNG grid here")
    parser.add_argument(
        "--compare", action="store_true", help="few-step error of every built-in scheduler (64 noises)"
    )
    args = parser.parse_args(argv)
    env.bootstrap(threads=1)
    if args.train:
        config = TrainConfig(steps=args.steps)
        state, info = train(config, log=lambda msg: print(msg, flush=True))
        save(state, config, info)
        print(f"wrote {WEIGHTS} ({WEIGHTS.stat().st_size / 1e6:.2f} MB): {json.dumps(info)}")
    if args.grid:
        from ld3_core.teacher import start_noise

        samples = sample(build_digits_model(), start_noise(LATENT_SHAPE, 0, 64))
        save_grid(samples, args.grid)
        print(f"wrote {args.grid}: mean {samples.mean():.3f} std {samples.std():.3f}")
    if args.compare:
        print(json.dumps(compare_schedulers(build_digits_model()), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
