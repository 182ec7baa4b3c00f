"""The SD1.x workflows end to end on a real ComfyUI server: train -> sample -> save -> load -> sample.

workflows/api/ld3_sd15_train.json and ld3_sd15_use_saved.json are queued through POST /prompt as
shipped, with only sizes shrunk for the CPU and the checkpoint swapped for a tiny one written at test
time (testing/tiny_checkpoints.py: detected by CheckpointLoaderSimple like any SD1.x checkpoint).
"""

import time

import pytest
from workflow_files import load_api, max_pixel_difference, one_node, output_images, set_inputs, subgraph

from ld3_core.schedule_file import load_schedule

pytest_plugins = ["tiny_server"]
pytestmark = [pytest.mark.server, pytest.mark.slow]

STEPS = 2  # student steps (the workflow ships 6)
TEACHER_STEPS = 4
SEED = 42


def shrink_train(graph: dict, checkpoint: str, schedule_name: str, epochs=(0, 1)) -> dict:
    """The shipped SD1.x train workflow at CPU-test sizes: 64x64 px (8x8 latent), 2 samples, 2 steps.

    One epoch of phase 2 trains the step sigmas and the decoupled times together.
    """
    set_inputs(graph, "CheckpointLoaderSimple", ckpt_name=checkpoint)
    set_inputs(graph, "EmptyLatentImage", width=64, height=64)
    set_inputs(graph, "LD3GenerateTeacher", sample_count=2, steps=TEACHER_STEPS, batch_size=4)
    set_inputs(
        graph,
        "LD3TrainSigmas",
        steps=STEPS,
        epochs_phase1=epochs[0],
        epochs_phase2=epochs[1],
        schedule_name=schedule_name,
        recipe="custom",  # the widgets' short training
    )
    set_inputs(graph, "KSamplerAdvanced", steps=STEPS)
    return graph


def test_sd15_train_then_use_saved(tiny_models_server):
    """Training saves a valid schedule; all LD3 sampling paths and the reloaded file give the same image."""
    tiny = tiny_models_server
    graph = shrink_train(load_api("ld3_sd15_train"), tiny.sd15_checkpoint, "test_sd15_dpmpp_2m_2steps")
    custom = one_node(graph, "SamplerCustomAdvanced")
    ks_ld3 = one_node(graph, "KSamplerAdvanced", scheduler="ld3")
    ks_default = one_node(graph, "KSamplerAdvanced", scheduler="karras")
    assert graph[ks_ld3]["inputs"]["noise_seed"] == graph[ks_default]["inputs"]["noise_seed"] == SEED
    saves = {graph[n]["inputs"]["images"][0]: n for n in graph if graph[n]["class_type"] == "SaveImage"}
    decoders = {graph[n]["inputs"]["samples"][0]: n for n in graph if graph[n]["class_type"] == "VAEDecode"}
    save_of = {sampler: saves[decoders[sampler]] for sampler in (custom, ks_ld3, ks_default)}
    plot = one_node(graph, "PreviewImage")

    start = time.monotonic()
    entry = tiny.run(graph, timeout=400)
    train_s = time.monotonic() - start

    out = tiny.server.output_dir
    learned = output_images(entry, save_of[custom], out)[0]
    via_ld3_scheduler = output_images(entry, save_of[ks_ld3], out)[0]
    default = output_images(entry, save_of[ks_default], out)[0]
    assert learned.shape == default.shape == (64, 64, 3)
    assert entry["outputs"][plot]["images"], "LD3 Train Sigmas' plot was not previewed"
    # The stock KSampler with scheduler "ld3" on the patched MODEL is SamplerCustomAdvanced with the
    # learned SIGMAS on the same MODEL: same sigmas, same decoupled times, same noise.
    assert max_pixel_difference(learned, via_ld3_scheduler) <= 1

    record = load_schedule(tiny.schedule_dir / "test_sd15_dpmpp_2m_2steps.safetensors")
    assert record.steps == STEPS
    assert record.sampler == "dpmpp_2m"
    assert record.loss == "lpips"
    assert record.cfg == 7.0
    assert record.latent_shape == (4, 8, 8)
    assert record.train["status"] == "completed"
    # 1 epoch from each start (the best built-ins), then 1 after each of the 3 rounds of mining.
    starts = record.train["starts"]
    assert 1 <= len(starts) <= 3 and starts[0] == record.train["initial_scheduler"]
    assert record.train["epochs_done"] == len(starts) + 3 and record.train["mined_pairs"] > 0

    # A later session: LD3 Load Sigmas -> KSampler (scheduler ld3) reproduces the trained sampling.
    use = load_api("ld3_sd15_use_saved")
    set_inputs(use, "CheckpointLoaderSimple", ckpt_name=tiny.sd15_checkpoint)
    set_inputs(use, "EmptyLatentImage", width=64, height=64)
    set_inputs(use, "LD3LoadSigmas", schedule_file="test_sd15_dpmpp_2m_2steps.safetensors")
    set_inputs(use, "KSampler", steps=STEPS)
    assert use[one_node(use, "KSampler")]["inputs"]["seed"] == SEED
    start = time.monotonic()
    use_entry = tiny.run(use, timeout=200)
    use_s = time.monotonic() - start
    reloaded = output_images(use_entry, one_node(use, "SaveImage"), out)[0]
    assert max_pixel_difference(reloaded, via_ld3_scheduler) <= 1

    # Another step count from the teacher the train workflow saved: LD3 Load Teacher, with the prompts
    # encoded again by the checkpoint's CLIP (checked against the file), trains a 3-step schedule.
    teacher_name = graph[one_node(graph, "LD3GenerateTeacher")]["inputs"]["name"]
    saved = max((out / "ld3").glob(f"{teacher_name}_*.safetensors"), key=lambda p: p.stat().st_mtime)
    retrain = load_api("ld3_sd15_retrain")
    set_inputs(retrain, "CheckpointLoaderSimple", ckpt_name=tiny.sd15_checkpoint)
    set_inputs(retrain, "EmptyLatentImage", width=64, height=64)
    set_inputs(retrain, "LD3LoadTeacher", teacher_file=saved.name)
    set_inputs(
        retrain,
        "LD3TrainSigmas",
        steps=STEPS + 1,
        epochs_phase1=0,
        epochs_phase2=1,
        schedule_name="test_sd15_dpmpp_2m_3steps",
        recipe="custom",
    )
    set_inputs(retrain, "KSampler", steps=STEPS + 1)
    start = time.monotonic()
    retrain_entry = tiny.run(retrain, timeout=300)
    retrain_s = time.monotonic() - start
    assert output_images(retrain_entry, one_node(retrain, "SaveImage"), out)[0].shape == (64, 64, 3)
    record = load_schedule(tiny.schedule_dir / "test_sd15_dpmpp_2m_3steps.safetensors")
    assert record.steps == STEPS + 1 and record.train["status"] == "completed" and record.cfg == 7.0
    print(
        f"SD1.x train workflow {train_s:.1f} s, use-saved workflow {use_s:.1f} s, "
        f"retrain from the saved teacher {retrain_s:.1f} s"
    )


def test_sd15_interrupt_keeps_best_schedule(tiny_models_server):
    """POST /interrupt during training leaves a complete best-so-far schedule file that loads."""
    tiny = tiny_models_server
    name = "test_sd15_interrupted"
    path = tiny.schedule_dir / f"{name}.safetensors"
    graph = shrink_train(load_api("ld3_sd15_train"), tiny.sd15_checkpoint, name, epochs=(100, 0))
    # L2 instead of LPIPS: the first save comes sooner (no decoding); what is tested is the file.
    set_inputs(graph, "LD3TrainSigmas", loss="l2")
    prompt_id = tiny.queue(subgraph(graph, one_node(graph, "PreviewImage")))  # training, not sampling
    deadline = time.monotonic() + 300
    while not path.exists():  # written as soon as the initial schedule is chosen, then on each best
        assert time.monotonic() < deadline, "training never saved a schedule"
        history = tiny.server.get_json(f"/history/{prompt_id}")
        if prompt_id in history:
            pytest.fail(
                f"the prompt ended before training saved: {tiny.describe_failure(history[prompt_id])}"
            )
        time.sleep(0.2)
    tiny.interrupt()
    entry = tiny.wait(prompt_id, timeout=120)
    status = entry["status"]
    assert status["status_str"] == "error", status
    assert any(kind == "execution_interrupted" for kind, _ in status["messages"]), status["messages"]

    record = load_schedule(path)
    assert record.steps == STEPS
    assert record.train["status"] == "interrupted"
    assert record.train["epochs_done"] < 100
    assert not list(tiny.schedule_dir.glob(f".{name}*.tmp")), "a temporary file was left behind"
