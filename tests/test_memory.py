"""Rematerialisation (paper Sec. 4): with checkpointing, what autograd keeps grows with NFE only by the x_t chain.

We count the bytes of every distinct storage autograd saves for backward during a DifferentiableSampler
call (``torch.autograd.graph.saved_tensors_hooks``; model weights excluded, they exist anyway). With
the per-call reentrant checkpoint the network runs without saving anything and only its inputs are
kept, so the growth per NFE is a few latent-sized tensors (the sampler's own x_t / denoised history);
without it every call keeps all its activations.
"""

import json
from pathlib import Path

import pytest
import tiny_models
import torch

from ld3_core.comfyui.adapter import Conditioning, DifferentiableSampler
from ld3_core.schedule import Schedule
from ld3_core.teacher import schedule_sigmas

pytestmark = pytest.mark.slow  # the fast tier (scripts/test.sh) leaves these to --all

NFES = (4, 10)
ARTIFACT = Path(__file__).resolve().parents[1] / "test-artifacts" / "memory.json"
# Per NFE, the checkpointed graph may keep this many latent-sized tensors: the sampler's arithmetic on
# x_t (measured: dpmpp_2m 9, UniPC's predictor-corrector 19; the CFG batch of 2 doubles the model inputs).
LATENTS_PER_NFE = 24


def saved_bytes(model, cond, latent_shape, sampler_name, nfe, checkpoint):
    """Bytes of the distinct non-weight storages autograd saves during one sampling call."""
    weights = {t.untyped_storage().data_ptr() for t in (*model.model.parameters(), *model.model.buffers())}
    step_sigmas = schedule_sigmas(model, "karras", nfe, sampler_name).requires_grad_()
    schedule = Schedule(step_sigmas, *(step_sigmas[:-1].detach().clone().requires_grad_() for _ in range(2)))
    noise = torch.randn(latent_shape, generator=torch.Generator().manual_seed(0)).requires_grad_()
    student = DifferentiableSampler(model, sampler_name, checkpoint=checkpoint)
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage  # kept alive, so no address is reused while counting
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = student(noise, cond, schedule)
    out.sum().backward()  # the graph is a real one: backward works and reaches the inputs
    assert torch.isfinite(step_sigmas.grad[1:-1]).all() and noise.grad is not None
    return sum(storage.nbytes() for storage in saved.values())


@pytest.fixture(scope="module")
def report():
    results = {}
    yield results
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    ARTIFACT.write_text(json.dumps(results, indent=1) + "\n")


@pytest.mark.parametrize("sampler_name", ["dpmpp_2m", "uni_pc"])
def test_checkpointed_memory_grows_only_by_the_latent_chain(tiny_sd15, sd15_conds, report, sampler_name):
    cond = Conditioning(*sd15_conds, 2.0)
    latent_shape = tiny_models.latent_shape(tiny_sd15, height=16, width=16)
    latent_bytes = torch.zeros(latent_shape).nbytes
    measured = {
        checkpoint: {
            nfe: saved_bytes(tiny_sd15, cond, latent_shape, sampler_name, nfe, checkpoint) for nfe in NFES
        }
        for checkpoint in (True, False)
    }
    growth = {
        checkpoint: (values[NFES[1]] - values[NFES[0]]) / (NFES[1] - NFES[0])
        for checkpoint, values in measured.items()
    }
    report[sampler_name] = {
        "latent_bytes": latent_bytes,
        "saved_bytes_checkpointed": measured[True],
        "saved_bytes_plain": measured[False],
        "growth_per_nfe_checkpointed": growth[True],
        "growth_per_nfe_plain": growth[False],
        "growth_per_nfe_checkpointed_in_latents": growth[True] / latent_bytes,
    }
    print(
        f"{sampler_name}: saved bytes per NFE {growth[True]:.0f} checkpointed "
        f"({growth[True] / latent_bytes:.1f} latents) vs {growth[False]:.0f} plain; "
        f"totals {measured[True]} vs {measured[False]}"
    )
    assert 0 < growth[True] <= LATENTS_PER_NFE * latent_bytes
    # One denoiser call's activations dwarf that: the plain graph grows hundreds of times faster.
    assert growth[True] < 0.01 * growth[False]
    assert measured[True][NFES[1]] < 0.01 * measured[False][NFES[1]]
