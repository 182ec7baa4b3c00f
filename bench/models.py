"""The benchmark models: exact Gaussian mixtures, the tiny test models and a trained digits network.

Every model is a real ComfyUI MODEL (ModelPatcher); conditioning, CFG and noise scaling are ComfyUI's.
Import after ``bench.env.bootstrap()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ld3_core.comfy_adapter import Conditioning

# The mixtures' exact endpoint: a 500-step solve (dpmpp_2m; karras for EPS, simple for flow).
EXACT_STEPS = 500


@dataclass
class BenchModel:
    """One benchmark model: its MODEL, conditioning, latent shape and how its reference is made."""

    name: str
    patcher: object
    cond: Conditioning
    latent_shape: tuple[int, ...]  # one sample, no batch dimension
    family: str  # "sd1" (SD1.x discrete sigmas), "edm" (continuous EDM sigmas) or "flow"
    exact: bool  # True: reference = exact endpoint (500-step solve); False: the teacher
    teacher_scheduler: str
    teacher_steps: int
    vae: object | None = None
    notes: dict = field(default_factory=dict)


def _mixture(name: str, shape: tuple[int, ...], kind: str, seed: int) -> BenchModel:
    from ld3_core import mixture

    mix = mixture.make_mixture(shape, components=8, seed=seed, dtype=torch.float32)
    patcher = mixture.mixture_model_patcher(mix, kind)
    positive, negative = mixture.mixture_conditioning()
    return BenchModel(
        name=name,
        patcher=patcher,
        cond=Conditioning(positive, negative, 1.0),
        latent_shape=shape,
        family="sd1" if kind == "eps" else "flow",
        exact=True,
        teacher_scheduler="karras" if kind == "eps" else "simple",
        teacher_steps=EXACT_STEPS,
        notes={"components": 8, "separation": mixture.mixture_separation(mix)},
    )


def tiny_vae(seed: int = 3, dtype: torch.dtype = torch.float32):
    """A randomly initialised SD-architecture VAE at toy width (8x upsampling, 4 latent channels)."""
    from tiny_models import build_tiny_vae

    return build_tiny_vae(seed, dtype)


def build(name: str) -> BenchModel:
    """Build one benchmark model by name (see MODELS)."""
    import comfy.model_base
    import tiny_models

    if name == "mix-eps-4x16x16":
        return _mixture(name, (4, 16, 16), "eps", seed=0)
    if name == "mix-eps-4x32x32":
        return _mixture(name, (4, 32, 32), "eps", seed=1)
    if name == "mix-flow-16x16x16":
        return _mixture(name, (16, 16, 16), "flow", seed=2)
    if name in ("tiny-sd15-eps", "tiny-sd15-v"):
        kind = (
            comfy.model_base.ModelType.EPS
            if name.endswith("eps")
            else comfy.model_base.ModelType.V_PREDICTION
        )
        patcher = tiny_models.build_tiny_sd15(kind, seed=0 if name.endswith("eps") else 1)
        positive, negative = tiny_models.sd15_conditioning(seed=0)
        return BenchModel(
            name=name,
            patcher=patcher,
            cond=Conditioning(positive, negative, 3.0),
            latent_shape=(4, 8, 8),
            family="sd1",
            exact=False,
            teacher_scheduler="karras",
            teacher_steps=20,
            vae=tiny_vae() if name.endswith("eps") else None,
        )
    if name == "tiny-flux":
        patcher = tiny_models.build_tiny_flux(seed=2)
        positive, negative = tiny_models.flux_conditioning(seed=0)
        return BenchModel(
            name=name,
            patcher=patcher,
            cond=Conditioning(positive, negative, 1.0),
            latent_shape=(16, 16, 16),
            family="flow",
            exact=False,
            teacher_scheduler="simple",
            teacher_steps=20,
        )
    if name == "digits-edm":
        from bench import digits

        return BenchModel(
            name=name,
            patcher=digits.build_digits_model(),
            cond=Conditioning(*digits.conditioning(), 1.0),
            latent_shape=digits.LATENT_SHAPE,
            family="edm",
            exact=False,  # a trained network: the reference is its own many-step solve
            teacher_scheduler="karras",
            teacher_steps=EXACT_STEPS,
            notes={"weights": digits.WEIGHTS.name},
        )
    raise KeyError(name)


# The default suite. Also buildable: "digits-edm" (bench/digits.py), a trained network, not yet in it.
MODELS = (
    "mix-eps-4x16x16",
    "mix-eps-4x32x32",
    "mix-flow-16x16x16",
    "tiny-sd15-eps",
    "tiny-sd15-v",
    "tiny-flux",
)


def steps_for_nfe(sampler: str, nfe: int) -> int:
    """Solver steps within an NFE budget: Heun spends 2 calls a step except the last (2s - 1)."""
    if sampler in ("heun", "dpm_2", "heunpp2"):
        return max(2, (nfe + 1) // 2)
    return nfe


def used_nfe(sampler: str, steps: int) -> int:
    return 2 * steps - 1 if sampler in ("heun", "dpm_2", "heunpp2") else steps
