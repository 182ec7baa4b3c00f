"""The one adapter between a ComfyUI MODEL and the trainer: differentiable sampling through ComfyUI.

A ``DifferentiableSampler`` runs ComfyUI's own sampler (a grad-enabled twin, ``solvers.py``) through
``comfy.samplers.CFGGuider``, so conditioning, CFG, noise scaling and model loading are ComfyUI's.
Here, and only here, we:

- leave inference mode (ComfyUI runs every prompt under ``torch.inference_mode()``) and replace the
  loaded model's inference-tensor weights by normal tensors, since autograd cannot save them;
- rematerialise each denoiser call: a reentrant checkpoint per call keeps only the x_t chain alive
  (paper Sec. 4, memory), with a saved-tensor hook that clones activations at save time, since some
  models (Flux) update activations in place and would otherwise fail or leak in backward;
- feed the learned sigmas in: the LD3 ``model_sampling`` patch (``model_patch.py``) with live knots;
- train on a model whose weights stay put, and tell ComfyUI that a differentiable call is running.
  Newer ComfyUI (Dynamic VRAM, on by default in 0.4x builds) streams weights into each op while
  sampling; ``ModelPatcher.is_dynamic()`` / ``get_non_dynamic_delegate()`` give the static clone
  ComfyUI itself uses where a sampling pass needs fixed weights (hook patches), and we train on it.
  ``comfy.model_management.in_training`` (newer ComfyUI) switches its fused in-place kernels (Flux's
  RoPE, fused linear activations) to the differentiable eager path; without it a backward through Flux
  fails ("no autograd formula") or, with checkpointing, gives wrong gradients. It is set around every
  grad-enabled model call, including the recompute in backward, and restored after. Both are feature
  detected: ComfyUI 0.3.75 has neither, and nothing changes there.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.utils.checkpoint

from ..errors import LD3InputError
from ..schedule import Schedule
from . import model_patch, solvers


class LD3OutOfMemoryError(RuntimeError):
    """The device ran out of memory; the models were unloaded so the next prompt starts clean."""


@contextmanager
def out_of_memory_guard(what: str) -> Iterator[None]:
    """Turn an out-of-memory error into advice, after unloading every model and emptying the cache."""
    import comfy.model_management as mm

    try:
        yield
    except mm.OOM_EXCEPTION:
        pass  # leave the except block first, so the traceback's frames (and their tensors) can be freed
    else:
        return
    mm.unload_all_models()
    mm.soft_empty_cache(True)
    raise LD3OutOfMemoryError(
        f"Out of GPU memory while {what}. The models were unloaded, so the next prompt starts clean. "
        "Use fewer samples per iteration (batch_size), a smaller latent (width/height or frames), "
        "fewer steps, or lower precision model weights (fp16/fp8)."
    )


def weights_as_constants(module: torch.nn.Module) -> int:
    """Make a module's weights constants for LD3's autograd; returns how many tensors were replaced.

    Inference-mode parameters and buffers (ComfyUI loads models under inference mode) cannot be saved
    for backward, so they are replaced by normal clones. Every parameter also stops requiring grad:
    LD3 differentiates with respect to the sampler's inputs only, and a weight that requires grad
    makes each backward also compute and store its gradient (one more copy of the weights, and about
    twice the backward's work). ComfyUI never trains these weights, so the change is not undone.
    """
    replaced = 0
    with torch.inference_mode(False):
        for sub in module.modules():
            for name, param in list(sub._parameters.items()):
                if param is None:
                    continue
                if param.is_inference():
                    sub._parameters[name] = torch.nn.Parameter(param.clone(), requires_grad=False)
                    replaced += 1
                elif param.requires_grad:
                    param.requires_grad_(False)
                    param.grad = None
            for name, buf in list(sub._buffers.items()):
                if buf is not None and buf.is_inference():
                    sub._buffers[name] = buf.clone()
                    replaced += 1
    return replaced


@contextmanager
def training_mode(enabled: bool = True) -> Iterator[None]:
    """ComfyUI's ``in_training`` flag set to ``enabled`` for the block (where the ComfyUI has it)."""
    import comfy.model_management as mm

    if not enabled or not hasattr(mm, "in_training"):
        yield
        return
    previous = mm.in_training
    mm.in_training = True
    try:
        yield
    finally:
        mm.in_training = previous


def static_model(model_patcher):
    """The model with its weights loaded whole (not streamed per op), for differentiable sampling.

    Returns ``model_patcher`` itself on a ComfyUI without Dynamic VRAM, or when it is off. ComfyUI makes
    the static delegate by loading the model again (a second copy in memory while it is cached). Where it
    cannot (a model from a loader that did not register how to load it again), training is refused:
    streamed weights are cast into buffers that later ops reuse, so a backward through them could read
    overwritten weights and compute wrong gradients.
    """
    is_dynamic = getattr(model_patcher, "is_dynamic", None)
    delegate = getattr(model_patcher, "get_non_dynamic_delegate", None)
    if not callable(is_dynamic) or not callable(delegate) or not is_dynamic():
        return model_patcher
    try:
        return delegate()
    except Exception as exc:  # noqa: BLE001 - any failure to make the copy means: do not train on streaming
        raise LD3InputError(
            "model",
            "this MODEL is loaded with ComfyUI's Dynamic VRAM and ComfyUI could not make the static copy "
            f"training needs ({type(exc).__name__}: {exc}); a backward through streamed weights could give "
            "wrong gradients",
            "Start ComfyUI with --disable-dynamic-vram, or load the model with a core loader (Load "
            "Checkpoint, Load Diffusion Model)",
        ) from exc


def _prepare_sampling_wrapper(executor, model, *args, **kwargs):
    result = executor(model, *args, **kwargs)
    weights_as_constants(model.model)
    return result


def _pack_clone(tensor: torch.Tensor):
    # Activations (tensors with a history) are cloned when saved, so in-place updates later in the
    # same call cannot invalidate them; parameters and inputs are saved as they are.
    return tensor.clone() if tensor.grad_fn is not None else tensor


def _unpack(tensor: torch.Tensor):
    return tensor


def _checkpointed_apply_model(executor, x, t, *args, **kwargs):
    if not torch.is_grad_enabled():
        return executor(x, t, *args, **kwargs)
    base_model = executor.class_obj
    model_sampling = base_model.model_sampling
    knots = getattr(model_sampling, "ld3_knots", None)

    def run(x_in, t_in, *knot_in):
        # The recompute runs in backward, when ComfyUI may have loaded another patcher of the same
        # model and restored its model_sampling: put ours back for the call, or time would differ.
        current = base_model.model_sampling
        base_model.model_sampling = model_sampling
        if knots is not None:
            model_sampling.ld3_knots = tuple(knot_in)
        try:
            with torch.autograd.graph.saved_tensors_hooks(_pack_clone, _unpack), training_mode():
                return executor(x_in, t_in, *args, **kwargs)
        finally:
            model_sampling.ld3_knots = knots
            base_model.model_sampling = current

    knot_args = tuple(knots) if knots is not None else ()
    if not any(arg.requires_grad for arg in (x, t, *knot_args)):
        return run(x, t, *knot_args)  # nothing here to differentiate (e.g. a call under a frozen schedule)
    return torch.utils.checkpoint.checkpoint(run, x, t, *knot_args, use_reentrant=True)


@dataclass
class Conditioning:
    """What a sampling call needs besides the model: ComfyUI conditioning lists and the CFG scale."""

    positive: list
    negative: list
    cfg: float


def _guider(model_patcher, cond: Conditioning):
    import comfy.samplers

    guider = comfy.samplers.CFGGuider(model_patcher)
    guider.set_conds(cond.positive, cond.negative)
    guider.set_cfg(cond.cfg)
    return guider


class DifferentiableSampler:
    """Student solver Psi_xi: ComfyUI's sampler on the user's model, differentiable in its inputs."""

    def __init__(self, model_patcher, sampler_name: str, checkpoint: bool = True):
        import comfy.patcher_extension as pe

        solvers.check_sampler(sampler_name)
        self.sampler_name = sampler_name
        self.model = model_patch.patch_model(static_model(model_patcher))
        self.model.add_wrapper_with_key(
            pe.WrappersMP.PREPARE_SAMPLING, model_patch.LD3_KEY, _prepare_sampling_wrapper
        )
        if checkpoint:
            self.model.add_wrapper_with_key(
                pe.WrappersMP.APPLY_MODEL, model_patch.LD3_KEY, _checkpointed_apply_model
            )
        self.model_sampling = self.model.get_model_object("model_sampling")
        self.sampler = solvers.grad_sampler(sampler_name)

    def __call__(
        self, noise: torch.Tensor, cond: Conditioning, schedule: Schedule, seed: int = 0
    ) -> torch.Tensor:
        """Sample from unit noise with the schedule's step sigmas and per-step model / scale sigmas."""
        # A plain schedule runs exactly as stock ComfyUI does (no sigma map at all), unless its model or
        # scale sigmas are being learned: they need the map for their gradients even while equal to s.
        learning = schedule.model_sigmas.requires_grad or schedule.scale_sigmas.requires_grad
        self.model_sampling.ld3_knots = None if schedule.is_plain and not learning else schedule.knots()
        try:
            # Grad mode is the caller's: the trainer evaluates candidates and validation under no_grad
            # (leaving inference mode would otherwise turn gradients back on).
            grad = torch.is_grad_enabled()
            with (
                torch.inference_mode(False),
                torch.set_grad_enabled(grad),
                training_mode(grad),
                warnings.catch_warnings(),
            ):
                # KSAMPLER reads float(sigmas[0]); sigma_max is a constant of ours, so that is harmless.
                warnings.filterwarnings(
                    "ignore", message="Converting a tensor with requires_grad=True to a scalar"
                )
                guider = _guider(self.model, cond)
                latent = torch.zeros_like(noise)
                return guider.sample(
                    noise, latent, self.sampler, schedule.step_sigmas, disable_pbar=True, seed=seed
                )
        finally:
            self.model_sampling.ld3_knots = None


def sample_stock(
    model_patcher,
    cond: Conditioning,
    sampler_name: str,
    sigmas: torch.Tensor,
    noise: torch.Tensor,
    seed: int = 0,
    callback: Callable | None = None,
) -> torch.Tensor:
    """ComfyUI's stock sampler, no gradients: the teacher, and what users get when they sample."""
    import comfy.samplers

    with torch.no_grad():
        guider = _guider(model_patcher, cond)
        latent = torch.zeros_like(noise)
        sampler = comfy.samplers.sampler_object(sampler_name)
        # A copy: stock UniPC writes 0.001 into its sigmas' last entry, which would change the caller's
        # schedule (e.g. a learned schedule, or the teacher's sigmas reused for the next batch).
        return guider.sample(
            noise, latent, sampler, sigmas.clone(), callback=callback, disable_pbar=True, seed=seed
        )
