"""The Flux workflows end to end on a real ComfyUI server, with a tiny Flux in place of Flux-dev.

Why not the shipped loaders: a Flux that UNETLoader detects needs the full width (detection hard-codes
24 heads x 128 = 3072 channels: ~0.2 B parameters for even one block) and DualCLIPLoader's type
"flux" needs a full T5-XXL (4.7 B parameters); neither fits a CPU test. So the test server loads
tests/comfy_custom_nodes, and the shipped API workflows are queued with exactly two substitutions:
UNETLoader -> LD3TestTinyFluxModel (testing/tiny_models.py's Flux-dev layout with guidance embedding)
and DualCLIPLoader + CLIPTextEncode -> LD3TestTinyFluxText (seeded random T5/CLIP-shaped
conditioning). Everything else is the shipped graph through the real executor: ModelSamplingFlux,
FluxGuidance, ConditioningZeroOut, EmptySD3LatentImage, VAELoader (a 16-channel TAESD-format file it
detects), LD3 Generate Teacher at CFG 1, LD3 Train Sigmas (LPIPS through the VAE), BasicGuider,
SamplerCustomAdvanced, BasicScheduler, VAEDecode, SaveImage, and later LD3 Load Sigmas.
"""

import time

import pytest
from workflow_files import load_api, max_pixel_difference, one_node, output_images, set_inputs

from ld3_core.schedule_file import load_schedule

pytest_plugins = ["tiny_server"]
pytestmark = [pytest.mark.server, pytest.mark.slow]

STEPS = 2  # student steps (the workflow ships 6)
SCHEDULE = "test_flux_euler_2steps"


def use_tiny_flux(graph: dict, vae_name: str) -> dict:
    """Swap the weights-only nodes (UNETLoader, DualCLIPLoader + CLIPTextEncode) for the tiny Flux ones."""
    unet = one_node(graph, "UNETLoader")
    graph[unet] = {"class_type": "LD3TestTinyFluxModel", "inputs": {"seed": 2}}
    clip = one_node(graph, "DualCLIPLoader", type="flux")
    del graph[clip]
    for node_id in [n for n in graph if graph[n]["class_type"] == "CLIPTextEncode"]:
        assert graph[node_id]["inputs"]["clip"] == [clip, 0]
        graph[node_id] = {
            "class_type": "LD3TestTinyFluxText",
            "inputs": {"text": graph[node_id]["inputs"]["text"]},
        }
    set_inputs(graph, "VAELoader", vae_name=vae_name)
    # 64x64 px: an 8x8x16 latent, 16 image tokens for the 2x2-patch DiT; the shift follows the size.
    set_inputs(graph, "ModelSamplingFlux", width=64, height=64)
    set_inputs(graph, "EmptySD3LatentImage", width=64, height=64)
    return graph


def test_flux_train_then_use_saved(tiny_models_server):
    """Train at CFG 1 with FluxGuidance, save, reload: the reloaded schedule samples the same image."""
    tiny = tiny_models_server
    graph = use_tiny_flux(load_api("ld3_flux_train"), tiny.flux_vae)
    teacher = one_node(graph, "LD3GenerateTeacher")
    assert graph[teacher]["inputs"]["cfg"] == 1.0  # Flux-dev: guidance comes from FluxGuidance
    set_inputs(graph, "LD3GenerateTeacher", sample_count=2, steps=4, batch_size=2)
    set_inputs(
        graph,
        "LD3TrainSigmas",
        steps=STEPS,
        epochs_phase1=0,
        epochs_phase2=1,
        schedule_name=SCHEDULE,
        recipe="custom",  # the widgets' short training
    )
    set_inputs(graph, "BasicScheduler", steps=STEPS)
    learned_sampler = one_node(graph, "SamplerCustomAdvanced", sigmas=[one_node(graph, "LD3TrainSigmas"), 0])
    saves = {graph[n]["inputs"]["images"][0]: n for n in graph if graph[n]["class_type"] == "SaveImage"}
    decoders = {graph[n]["inputs"]["samples"][0]: n for n in graph if graph[n]["class_type"] == "VAEDecode"}
    assert len(saves) == 2, "the learned and the default-schedule image"

    start = time.monotonic()
    entry = tiny.run(graph, timeout=400)
    train_s = time.monotonic() - start
    out = tiny.server.output_dir
    images = {node: output_images(entry, node, out)[0] for node in saves.values()}
    assert all(image.shape == (64, 64, 3) for image in images.values())
    assert entry["outputs"][one_node(graph, "PreviewImage")]["images"], "no training plot"

    record = load_schedule(tiny.schedule_dir / f"{SCHEDULE}.safetensors")
    assert record.sampler == "euler"
    assert record.steps == STEPS
    assert record.cfg == 1.0
    assert record.loss == "lpips"
    assert record.latent_shape == (16, 8, 8)
    assert record.model["model_class"] == "Flux"
    assert record.train["status"] == "completed"

    use = use_tiny_flux(load_api("ld3_flux_use_saved"), tiny.flux_vae)
    set_inputs(use, "LD3LoadSigmas", schedule_file=f"{SCHEDULE}.safetensors")
    start = time.monotonic()
    use_entry = tiny.run(use, timeout=200)
    use_s = time.monotonic() - start
    reloaded = output_images(use_entry, one_node(use, "SaveImage"), out)[0]
    learned = images[saves[decoders[learned_sampler]]]
    # Same seed, prompt, guidance, shift and sampler: the saved schedule (with its decoupled times)
    # reproduces what the trained MODEL + SIGMAS sampled.
    assert max_pixel_difference(reloaded, learned) <= 1
    print(f"Flux train workflow {train_s:.1f} s, use-saved workflow {use_s:.1f} s")
