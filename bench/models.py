"""The benchmark models: exact Gaussian mixtures, the tiny test models and a trained digits network.

Every model is a real ComfyUI MODEL (ModelPatcher); conditioning, CFG and noise scaling are ComfyUI's.
Import after ``bench.env.bootstrap()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ld3_core.comfyui.adapter import Conditioning

# The mixtures' exact endpoint, and the trained network's reference: a 500-step solve (dpmpp_2m; karras
# for EPS / EDM, simple for flow).
EXACT_STEPS = 500
# What LD3 trains on: LD3 Generate Teacher with its default widgets (uni_pc, scheduler auto, 20 steps).
TEACHER_STEPS = 20
TEACHER_SAMPLER = "uni_pc"


@dataclass
class BenchModel:
    """One benchmark model: its MODEL, conditioning, latent shape and how its reference is made."""

    name: str
    patcher: object
    cond: Conditioning
    latent_shape: tuple[int, ...]  # one sample, no batch dimension
    family: str  # "sd1" (SD1.x discrete sigmas), "edm" (continuous EDM sigmas) or "flow"
    exact: bool  # True: the reference is the exact endpoint (a mixture's 500-step solve)
    # The held-out reference: a many-step solve (mixtures, the trained network) or, for the random tiny
    # models, the teacher itself (their few-step error is measured against it).
    reference_scheduler: str
    reference_steps: int
    reference_sampler: str = "dpmpp_2m"
    vae: object | None = None
    notes: dict = field(default_factory=dict)


def _mixture(name: str, shape: tuple[int, ...], kind: str, seed: int) -> BenchModel:
    from ld3_core import mixture
    from ld3_core.comfyui import mixture_model

    mix = mixture.make_clustered_mixture(shape, seed=seed, dtype=torch.float32)
    patcher = mixture_model.mixture_model_patcher(mix, kind)
    positive, negative = mixture_model.mixture_conditioning()
    return BenchModel(
        name=name,
        patcher=patcher,
        cond=Conditioning(positive, negative, 1.0),
        latent_shape=shape,
        family="sd1" if kind == "eps" else "flow",
        exact=True,
        reference_scheduler="karras" if kind == "eps" else "simple",
        reference_steps=EXACT_STEPS,
        notes={"separation": mixture.mixture_separation(mix)},
    )


def tiny_vae(seed: int = 3, dtype: torch.dtype = torch.float32):
    """A randomly initialised SD-architecture VAE at toy width (8x upsampling, 4 latent channels)."""
    from tiny_models import build_tiny_vae

    return build_tiny_vae(seed, dtype)


def _tiny(name, patcher, conds, cfg, latent_shape, family, scheduler, vae=None) -> BenchModel:
    """A tiny random network: its reference is the teacher itself (LD3 Generate Teacher's defaults)."""
    return BenchModel(
        name=name,
        patcher=patcher,
        cond=Conditioning(*conds, cfg),
        latent_shape=latent_shape,
        family=family,
        exact=False,
        reference_sampler=TEACHER_SAMPLER,
        reference_scheduler=scheduler,
        reference_steps=TEACHER_STEPS,
        vae=vae,
    )


def build(name: str) -> BenchModel:
    """Build one benchmark model by name (see MODELS)."""
    import comfy.model_base
    import tiny_models

    if name == "mix-eps-4x16x16":
        return _mixture(name, (4, 16, 16), "eps", seed=0)
    if name == "mix-flux-16x8x8":
        return _mixture(name, (16, 8, 8), "flux", seed=2)
    if name in ("tiny-sd15-eps", "tiny-sd15-v"):
        kind = (
            comfy.model_base.ModelType.EPS
            if name.endswith("eps")
            else comfy.model_base.ModelType.V_PREDICTION
        )
        patcher = tiny_models.build_tiny_sd15(kind, seed=0 if name.endswith("eps") else 1)
        vae = tiny_vae() if name.endswith("eps") else None
        return _tiny(
            name, patcher, tiny_models.sd15_conditioning(seed=0), 3.0, (4, 8, 8), "sd1", "karras", vae
        )
    if name == "tiny-flux":
        patcher = tiny_models.build_tiny_flux(seed=2)
        return _tiny(name, patcher, tiny_models.flux_conditioning(seed=0), 1.0, (16, 16, 16), "flow", "beta")
    if name == "digits-edm":
        from bench import digits

        return BenchModel(
            name=name,
            patcher=digits.build_digits_model(),
            cond=Conditioning(*digits.conditioning(), 1.0),
            latent_shape=digits.LATENT_SHAPE,
            family="edm",
            exact=False,  # a trained network: the reference is its own many-step solve
            reference_scheduler="karras",
            reference_steps=EXACT_STEPS,
            notes={"weights": digits.WEIGHTS.name},
        )
    raise KeyError(name)


EXACT_MODELS = ("mix-eps-4x16x16", "mix-flux-16x8x8")
MODELS = (*EXACT_MODELS, "digits-edm", "tiny-sd15-eps", "tiny-sd15-v", "tiny-flux")


def steps_for_nfe(sampler: str, nfe: int) -> int:
    """Solver steps within an NFE budget: Heun spends 2 calls a step except the last (2s - 1)."""
    if sampler in ("heun", "dpm_2", "heunpp2"):
        return max(2, (nfe + 1) // 2)
    return nfe


def used_nfe(sampler: str, steps: int) -> int:
    return 2 * steps - 1 if sampler in ("heun", "dpm_2", "heunpp2") else steps
