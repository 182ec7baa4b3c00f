"""The LD3 nodes through ComfyUI's real server and executor, on the exact Gaussian-mixture demo model.

Graphs are API-format prompts POSTed to a real ComfyUI (the session ``comfy_server`` fixture); schedule
files go to the user's ComfyUI/models/ld3 under unique names and are removed afterwards.
"""

import importlib
import importlib.util
import json
import re
import time
import urllib.request
import uuid

import pytest
import torch
from conftest import COMFYUI_DIR, PACK_DIR_NAME, load_script_module, log_tail

SCHEDULE_DIR = COMFYUI_DIR / "models" / "ld3"
SAMPLER = "dpmpp_2m"
STEPS = 3


def _node_module(name: str):
    return importlib.import_module(f"{PACK_DIR_NAME}.nodes.{name}")


# -- helpers ----------------------------------------------------------------------------------------


def queue(server, graph: dict, timeout: float = 120.0) -> tuple[str, dict]:
    """Queue a graph and wait for its /history entry, whatever its outcome."""
    prompt_id = server.post_json("/prompt", {"prompt": graph})["prompt_id"]
    return prompt_id, wait_history(server, prompt_id, timeout)


def wait_history(server, prompt_id: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = server.get_json(f"/history/{prompt_id}").get(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None:
            return entry
        time.sleep(0.1)
    raise AssertionError(f"prompt {prompt_id} did not finish in {timeout} s:\n{log_tail(server.log_path)}")


def interrupt(server) -> None:
    """POST /interrupt (it answers with an empty body)."""
    request = urllib.request.Request(server.base_url + "/interrupt", data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200


def messages(entry: dict, kind: str) -> list[dict]:
    return [data for name, data in entry["status"].get("messages", []) if name == kind]


def error_of(entry: dict) -> dict:
    assert entry["status"]["status_str"] == "error", json.dumps(entry["status"], indent=1)
    errors = messages(entry, "execution_error")
    assert errors, json.dumps(entry["status"], indent=1)
    return errors[0]


def tensor_values(text: str) -> list[float]:
    """The numbers of a PreviewAny'd tensor ("tensor([1.0, 2.0])")."""
    return [float(v) for v in re.findall(r"-?\d+\.?\d*(?:e[-+]?\d+)?", text.split("tensor(", 1)[1])]


def demo_nodes(kind: str = "eps", seed: int = 0, size: int = 8) -> dict:
    return {
        "demo": {
            "class_type": "LD3DemoModel",
            "inputs": {"kind": kind, "width": size, "height": size, "seed": seed},
        }
    }


def teacher_node(
    samples: int = 4, steps: int = 8, model=("demo", 0), name: str = "test_nodes_teacher"
) -> dict:
    return {
        "class_type": "LD3GenerateTeacher",
        "inputs": {
            "model": list(model),
            "positive": ["demo", 1],
            "negative": ["demo", 2],
            "latent": ["demo", 3],
            "sample_count": samples,
            "seed": 0,
            "cfg": 1.0,
            "sampler_name": SAMPLER,
            "scheduler": "karras",
            "steps": steps,
            "batch_size": 4,
            "name": name,
        },
    }


def train_node(schedule_name: str, steps: int = STEPS, epochs=(1, 1), model=("demo", 0)) -> dict:
    return {
        "class_type": "LD3TrainSigmas",
        "inputs": {
            "model": list(model),
            "teacher": ["teacher", 0],
            "sampler_name": SAMPLER,
            "steps": steps,
            "loss": "l2",
            "soft_gamma": 0.001,
            "decoupled_times": True,
            "epochs_phase1": epochs[0],
            "epochs_phase2": epochs[1],
            "lr_steps": 0.01,
            "batch_size": 1,
            "seed": 0,
            "schedule_name": schedule_name,
            "recipe": "custom",  # the widgets' short training, not the ld3 recipe's
        },
    }


@pytest.fixture
def schedule_names():
    """Unique schedule names for a test; their files in models/ld3 are deleted afterwards."""
    names = []

    def make(label: str) -> str:
        names.append(f"test_nodes_{uuid.uuid4().hex[:8]}_{label}")
        return names[-1]

    yield make
    for name in names:
        (SCHEDULE_DIR / f"{name}.safetensors").unlink(missing_ok=True)
    for leftover in SCHEDULE_DIR.glob(".test_nodes_*.tmp"):
        leftover.unlink()


# -- end to end -------------------------------------------------------------------------------------


@pytest.mark.server
def test_pipeline_trains_saves_compares_and_samples(comfy_server, schedule_names):
    """Demo model -> teacher -> train -> compare; the sigmas and the patched MODEL drive stock samplers."""
    from ld3_core.schedule_file import load_schedule

    name = schedule_names("pipeline")
    graph = demo_nodes()
    graph["teacher"] = teacher_node()
    graph["train"] = train_node(name)
    graph["compare"] = {
        "class_type": "LD3CompareSigmas",
        "inputs": {
            "model": ["train", 1],
            "teacher": ["teacher", 0],
            "sampler_name": SAMPLER,
            "sigmas": ["train", 0],
            "include_builtin": True,
        },
    }
    graph["report"] = {"class_type": "PreviewAny", "inputs": {"source": ["compare", 1]}}
    graph["save_plot"] = {
        "class_type": "SaveImage",
        "inputs": {"images": ["train", 2], "filename_prefix": f"test_nodes/{name}_train"},
    }
    graph["save_compare"] = {
        "class_type": "SaveImage",
        "inputs": {"images": ["compare", 0], "filename_prefix": f"test_nodes/{name}_compare"},
    }
    graph["show_sigmas"] = {"class_type": "PreviewAny", "inputs": {"source": ["train", 0]}}
    # The learned SIGMAS with the patched MODEL in SamplerCustom, and KSampler's 'ld3' scheduler: same result.
    graph["select"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": SAMPLER}}
    graph["custom"] = {
        "class_type": "SamplerCustom",
        "inputs": {
            "model": ["train", 1],
            "add_noise": True,
            "noise_seed": 7,
            "cfg": 1.0,
            "positive": ["demo", 1],
            "negative": ["demo", 2],
            "sampler": ["select", 0],
            "sigmas": ["train", 0],
            "latent_image": ["demo", 3],
        },
    }
    graph["ksampler"] = {
        "class_type": "KSampler",
        "inputs": {
            "model": ["train", 1],
            "seed": 7,
            "steps": STEPS,
            "cfg": 1.0,
            "sampler_name": SAMPLER,
            "scheduler": "ld3",
            "positive": ["demo", 1],
            "negative": ["demo", 2],
            "latent_image": ["demo", 3],
            "denoise": 1.0,
        },
    }
    graph["show_custom"] = {"class_type": "PreviewAny", "inputs": {"source": ["custom", 0]}}
    graph["show_ksampler"] = {"class_type": "PreviewAny", "inputs": {"source": ["ksampler", 0]}}
    entry, texts = comfy_server.run_prompt_with_node_texts(graph)
    outputs = entry["outputs"]
    # The verdict and the teacher's report are shown on the nodes themselves (the frontend's node text),
    # line by line; their STRING outputs are the same text as Markdown paragraphs (PreviewAny renders it).
    shown_on = {node: text for node, text in texts}
    assert shown_on["train"].startswith(f"LD3 {SAMPLER} {STEPS} steps: "), texts
    assert shown_on["teacher"].startswith("LD3 teacher: ") and "Teacher error: RMSE" in shown_on["teacher"]
    assert outputs["train"]["text"][0] == shown_on["train"].replace("\n", "\n\n")

    record = load_schedule(SCHEDULE_DIR / f"{name}.safetensors")
    assert record.steps == STEPS and record.sampler == SAMPLER and record.loss == "l2"
    # 1 + 1 epochs from each start (the best built-ins), then one more after each of the 3 rounds of
    # hard-example mining (the teacher has 4 samples: it solves 2 of 24 fresh noises per round).
    starts = record.train["starts"]
    assert 1 <= len(starts) <= 3 and starts[0] == record.train["initial_scheduler"]
    assert record.train["status"] == "completed" and record.train["epochs_done"] == 2 * len(starts) + 3
    assert record.train["mined_pairs"] == 6, record.train
    assert record.latent_shape == (4, 8, 8) and record.cfg == 1.0
    assert record.versions["comfyui_version"] == "0.3.75" and record.model["fingerprint"]
    shown = tensor_values(outputs["show_sigmas"]["text"][0])
    assert shown == pytest.approx(record.step_sigmas.tolist(), rel=1e-3, abs=1e-4)

    custom, ksampler = outputs["show_custom"]["text"][0], outputs["show_ksampler"]["text"][0]
    assert "samples" in custom and "nan" not in custom
    assert tensor_values(custom) == pytest.approx(tensor_values(ksampler), abs=1e-4)

    report = outputs["report"]["text"][0]
    rows = load_script_module("demo").parse_report(report)
    names = [row["schedule"] for row in rows]
    assert "sigmas(ld3)" in names and "karras" in names, report
    learned = rows[names.index("sigmas(ld3)")]
    assert float(learned["rmse_mean"]) >= 0 and learned["steps"] == str(STEPS)
    # Compared on the validation samples of the teacher it was trained on: the report says so.
    assert "Note: 2 of these 2 samples are noises the MODEL's schedule was trained or chosen on" in report
    assert len(record.train["teacher_noises"]) == 4

    teacher_files = sorted((comfy_server.output_dir / "ld3").glob("test_nodes_teacher_*.safetensors"))
    assert teacher_files, "the teacher data was not saved"
    from safetensors import safe_open

    with safe_open(str(teacher_files[-1]), "pt") as handle:
        assert set(handle.keys()) == {"noise", "targets", "prompt_index", "is_validation"}
        assert handle.get_tensor("targets").shape == (4, 4, 8, 8)
        info = json.loads(handle.metadata()["ld3_teacher"])
    assert info["format"] == "ld3-teacher" and info["steps"] == 8 and info["latent_shape"] == [4, 8, 8]

    for key in ("save_plot", "save_compare"):
        images = outputs[key]["images"]
        assert len(images) == 1
        assert (
            comfy_server.output_dir / images[0]["subfolder"] / images[0]["filename"]
        ).stat().st_size > 1000


@pytest.mark.server
def test_saved_teacher_loads_and_trains_again(comfy_server, schedule_names):
    """LD3 Load Teacher: a saved teacher trains a second schedule; the prompts given are checked."""
    first = schedule_names("teacher_first")
    teacher_name = f"test_nodes_load_{uuid.uuid4().hex[:8]}"
    graph = demo_nodes()
    graph["teacher"] = teacher_node(name=teacher_name)
    graph["train"] = train_node(first)
    graph["show"] = {"class_type": "PreviewAny", "inputs": {"source": ["train", 0]}}
    comfy_server.run_prompt(graph)
    saved = sorted((comfy_server.output_dir / "ld3").glob(f"{teacher_name}_*.safetensors"))
    assert len(saved) == 1
    load_teacher = {
        "class_type": "LD3LoadTeacher",
        "inputs": {"teacher_file": saved[0].name, "positive": ["demo", 1], "negative": ["demo", 2]},
    }
    try:
        # The file is offered by the node (newest first), and it trains without the teacher's sampling.
        inputs = comfy_server.get_json("/object_info/LD3LoadTeacher")["LD3LoadTeacher"]["input"]["required"]
        kind, spec = inputs["teacher_file"]
        assert kind == "COMBO" and spec["options"][0] == saved[0].name

        second = schedule_names("teacher_second")
        graph = demo_nodes()
        graph["teacher"] = load_teacher
        graph["train"] = train_node(second, steps=STEPS + 1)
        graph["show"] = {"class_type": "PreviewAny", "inputs": {"source": ["train", 0]}}
        comfy_server.run_prompt(graph)
        assert (SCHEDULE_DIR / f"{second}.safetensors").is_file()

        # One prompt more than the teacher was made with: refused, naming the input.
        graph["teacher"] = {**load_teacher, "inputs": {**load_teacher["inputs"], "positive_2": ["demo", 1]}}
        _, entry = queue(comfy_server, graph)
        error = error_of(entry)
        assert error["exception_message"].startswith("positive_2: the teacher was made with 1 prompt(s)")
        # A different model: refused when training starts.
        graph = demo_nodes(seed=5)
        graph["teacher"] = load_teacher
        graph["train"] = train_node(schedule_names("teacher_other_model"))
        graph["show"] = {"class_type": "PreviewAny", "inputs": {"source": ["train", 0]}}
        _, entry = queue(comfy_server, graph)
        assert error_of(entry)["exception_message"].startswith(
            "teacher: the teacher data was made with model"
        )
        # A loaded teacher's step count is known only to LD3 Train Sigmas: refused there, before training.
        graph = demo_nodes()
        graph["teacher"] = load_teacher
        graph["train"] = train_node(schedule_names("teacher_steps"), steps=8)
        graph["show"] = {"class_type": "PreviewAny", "inputs": {"source": ["train", 0]}}
        _, entry = queue(comfy_server, graph)
        assert error_of(entry)["node_id"] == "train"
        assert error_of(entry)["exception_message"].startswith(
            "steps: the student's 8 steps are not fewer than the teacher's 8 steps"
        )
    finally:
        for path in saved:
            path.unlink(missing_ok=True)


@pytest.mark.server
def test_flow_model_trains(comfy_server, schedule_names):
    """The rectified-flow demo model (continuous time) goes through teacher and training too."""
    from ld3_core.schedule_file import load_schedule

    name = schedule_names("flow")
    graph = demo_nodes(kind="flow")
    graph["teacher"] = teacher_node(name="test_nodes_flow_teacher")
    graph["train"] = train_node(name)
    graph["show"] = {"class_type": "PreviewAny", "inputs": {"source": ["train", 0]}}
    comfy_server.run_prompt(graph)
    record = load_schedule(SCHEDULE_DIR / f"{name}.safetensors")
    assert record.model["model_sampling_class"] != "ModelSamplingDiscrete"
    assert float(record.step_sigmas[0]) <= 1.0 + 1e-6


@pytest.mark.server
def test_load_sigmas_checks_sampler_model_and_steps(comfy_server, schedule_names):
    name = schedule_names("load")
    graph = demo_nodes()
    graph["teacher"] = teacher_node()
    graph["train"] = train_node(name, epochs=(1, 0))
    graph["show"] = {"class_type": "PreviewAny", "inputs": {"source": ["train", 0]}}
    comfy_server.run_prompt(graph)
    file = f"{name}.safetensors"

    def load_graph(model_seed=0, **inputs):
        g = demo_nodes(seed=model_seed)
        g["load"] = {
            "class_type": "LD3LoadSigmas",
            "inputs": {"model": ["demo", 0], "schedule_file": file, **inputs},
        }
        g["show"] = {"class_type": "PreviewAny", "inputs": {"source": ["load", 0]}}
        g["select"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": SAMPLER}}
        g["ksampler"] = {
            "class_type": "KSampler",
            "inputs": {
                "model": ["load", 1],
                "seed": 1,
                "steps": STEPS,
                "cfg": 1.0,
                "sampler_name": SAMPLER,
                "scheduler": "ld3",
                "positive": ["demo", 1],
                "negative": ["demo", 2],
                "latent_image": ["demo", 3],
                "denoise": 1.0,
            },
        }
        g["show_latent"] = {"class_type": "PreviewAny", "inputs": {"source": ["ksampler", 0]}}
        return g

    # As trained: same values as the file, and KSampler's 'ld3' scheduler runs on the loaded MODEL.
    from ld3_core.schedule_file import load_schedule

    record = load_schedule(SCHEDULE_DIR / file)
    outputs = comfy_server.run_prompt(load_graph(sampler_name=SAMPLER, steps=0))["outputs"]
    # PreviewAny prints 4 decimals: half a unit of the last one, or 1e-3 relative for the large values.
    shown = tensor_values(outputs["show"]["text"][0])
    assert shown == pytest.approx(record.step_sigmas.tolist(), rel=1e-3, abs=5e-5)

    report = outputs["load"]["text"][0]  # the node's canvas text, as /history has it
    assert report.startswith(f"LD3 schedule '{file}': {SAMPLER}, {STEPS} steps") and "Warning" not in report

    # KSampler with another sampler than the schedule was learned for: it samples, and says so on the
    # KSampler node (the frontend shows the text there) and in the log.
    mismatch = load_graph(sampler_name=SAMPLER, steps=0)
    mismatch["ksampler"]["inputs"]["sampler_name"] = "euler"
    log_start = len(comfy_server.log())
    _, texts = comfy_server.run_prompt_with_node_texts(mismatch)
    said = [text for node, text in texts if node == "ksampler"]
    assert any(f"chosen for the {SAMPLER} sampler" in t and "sampled with euler" in t for t in said), texts
    assert f"set sampler_name to {SAMPLER}" in comfy_server.log()[log_start:]
    # ... and the trained sampler (and steps) sample without a word; LD3 Load Sigmas shows its report on
    # itself (steps given explicitly: other inputs than the runs above, so the node runs, not cached).
    _, texts = comfy_server.run_prompt_with_node_texts(load_graph(sampler_name=SAMPLER, steps=STEPS))
    assert not [t for node, t in texts if node == "ksampler" and "LD3" in t], texts
    assert [t for node, t in texts if node == "load" and t.startswith(f"LD3 schedule '{file}'")], texts
    # KSampler with another step count than trained: the ld3 scheduler resamples and says so there too.
    steps_off = load_graph(sampler_name=SAMPLER, steps=0)
    steps_off["ksampler"]["inputs"]["steps"] = STEPS + 2
    _, texts = comfy_server.run_prompt_with_node_texts(steps_off)
    assert any(node == "ksampler" and "resamples it log-linearly" in t for node, t in texts), texts

    # Another step count: resampled log-linearly, with a warning on the canvas.
    outputs = comfy_server.run_prompt(load_graph(steps=5))["outputs"]
    values = tensor_values(outputs["show"]["text"][0])
    assert len(values) == 6 and values[-1] == 0
    assert values[0] == pytest.approx(float(record.step_sigmas[0]), rel=1e-3)
    assert (
        f"Warning: resampled log-linearly from the {STEPS} steps it was learned for to 5"
        in (outputs["load"]["text"][0])
    )

    # denoise (img2img, a hires pass): the last round(steps x denoise) steps, as AlignYourSteps does.
    outputs = comfy_server.run_prompt(load_graph(steps=6, denoise=0.5))["outputs"]
    tail = tensor_values(outputs["show"]["text"][0])
    full = tensor_values(comfy_server.run_prompt(load_graph(steps=6))["outputs"]["show"]["text"][0])
    assert len(tail) == 4 and tail == pytest.approx(full[-4:], rel=1e-3, abs=5e-5)
    assert "denoise 0.5: the last 3 of its 6 steps" in outputs["load"]["text"][0]
    outputs = comfy_server.run_prompt(load_graph(steps=6, denoise=0.05))["outputs"]
    assert "[]" in outputs["show"]["text"][0]  # no step left: empty SIGMAS, the latent as it is
    assert "denoise 0.05: the last 0 of its 6 steps, nothing to sample" in outputs["load"]["text"][0]

    # Another model of the same kind: a warning naming both, and it goes on.
    outputs = comfy_server.run_prompt(load_graph(model_seed=1))["outputs"]
    assert re.search(
        r"Warning: it was trained for model .* but the MODEL input is", outputs["load"]["text"][0]
    )

    # Another kind of model (an EPS schedule on a flow model): refused, it would sample garbage.
    flow = load_graph()
    flow["demo"]["inputs"]["kind"] = "flow"
    error = error_of(queue(comfy_server, flow)[1])
    assert error["node_id"] == "load" and "schedule_file" in error["exception_message"]
    assert "highest sigma is 1" in error["exception_message"], error["exception_message"]

    # A damaged file (what the network is told x100): refused before sampling.
    from dataclasses import replace

    from ld3_core.schedule_file import save_schedule

    damaged = schedule_names("damaged")
    save_schedule(
        SCHEDULE_DIR / f"{damaged}.safetensors", replace(record, model_sigmas=record.model_sigmas * 100)
    )
    graph = load_graph()
    graph["load"]["inputs"]["schedule_file"] = f"{damaged}.safetensors"
    error = error_of(queue(comfy_server, graph)[1])
    assert "outside this MODEL's range" in error["exception_message"], error["exception_message"]

    # Another sampler: refused, naming both.
    _, entry = queue(comfy_server, load_graph(sampler_name="euler"))
    error = error_of(entry)
    assert error["node_id"] == "load"
    assert "sampler_name" in error["exception_message"] and SAMPLER in error["exception_message"]
    assert "euler" in error["exception_message"]


@pytest.mark.server
def test_ksampler_ld3_scheduler_needs_a_patched_model(comfy_server):
    graph = demo_nodes()
    graph["ksampler"] = {
        "class_type": "KSampler",
        "inputs": {
            "model": ["demo", 0],
            "seed": 0,
            "steps": STEPS,
            "cfg": 1.0,
            "sampler_name": SAMPLER,
            "scheduler": "ld3",
            "positive": ["demo", 1],
            "negative": ["demo", 2],
            "latent_image": ["demo", 3],
            "denoise": 1.0,
        },
    }
    graph["show"] = {"class_type": "PreviewAny", "inputs": {"source": ["ksampler", 0]}}
    _, entry = queue(comfy_server, graph)
    message = error_of(entry)["exception_message"]
    assert "'ld3' needs a MODEL that carries a learned LD3 schedule" in message
    assert "LD3 Train Sigmas" in message


@pytest.mark.server
def test_train_refuses_bad_inputs_with_named_errors(comfy_server, schedule_names):
    name = schedule_names("refused")

    def run(**changes):
        graph = demo_nodes()
        graph["other"] = {
            "class_type": "LD3DemoModel",
            "inputs": {"kind": "eps", "width": 8, "height": 8, "seed": 1},
        }
        graph["teacher"] = teacher_node(steps=4)
        graph["train"] = train_node(changes.pop("schedule_name", name))
        graph["train"]["inputs"].update(changes)
        graph["show"] = {"class_type": "PreviewAny", "inputs": {"source": ["train", 0]}}
        _, entry = queue(comfy_server, graph)
        error = error_of(entry)
        assert error["node_id"] == "train"
        return error["exception_message"]

    message = run(model=["other", 0])
    assert message.startswith("teacher:") and "the MODEL input is" in message
    # A bad schedule_name and lpips without a VAE are refused when queued (the test below).
    assert not list(SCHEDULE_DIR.glob(f"{name}*")), "a refused training wrote a file"


@pytest.mark.server
def test_a_teacher_with_no_more_steps_than_its_student_is_refused_before_it_samples(
    comfy_server, schedule_names
):
    """LD3 Generate Teacher reads the step count of the LD3 Train Sigmas it feeds from the queued graph
    and refuses before sampling (ComfyUI's queue-time validation shows no node another node's widgets)."""
    teacher_name = f"test_nodes_steps_{uuid.uuid4().hex[:8]}"
    graph = demo_nodes()
    graph["teacher"] = teacher_node(steps=4, name=teacher_name)
    graph["train"] = train_node(schedule_names("steps"), steps=5)
    graph["train_2"] = {**graph["train"], "inputs": {**graph["train"]["inputs"], "steps": 3}}
    graph["show"] = {"class_type": "PreviewAny", "inputs": {"source": ["train", 0]}}
    graph["show_2"] = {"class_type": "PreviewAny", "inputs": {"source": ["train_2", 0]}}
    _, entry = queue(comfy_server, graph)
    error = error_of(entry)
    assert error["node_id"] == "teacher", error
    assert error["exception_message"].strip() == (
        "steps: LD3 Train Sigmas (node train) learns a 5-step schedule from this teacher, which takes 4 "
        "steps: the teacher must take more steps than its student. Set steps here above 5 (20 or more is "
        "typical), or fewer steps in LD3 Train Sigmas"
    )
    assert not list((comfy_server.output_dir / "ld3").glob(f"{teacher_name}*")), "the teacher sampled"


@pytest.mark.server
def test_interrupt_keeps_a_valid_best_so_far_schedule(comfy_server, schedule_names):
    """Cancel mid-training: the schedule file on disk is complete, marked interrupted, and loads."""
    from ld3_core.schedule_file import load_schedule

    name = schedule_names("interrupt")
    path = SCHEDULE_DIR / f"{name}.safetensors"
    graph = demo_nodes()
    graph["teacher"] = teacher_node(samples=16)
    graph["train"] = train_node(name, epochs=(100, 100))
    graph["show"] = {"class_type": "PreviewAny", "inputs": {"source": ["train", 0]}}
    prompt_id = comfy_server.post_json("/prompt", {"prompt": graph})["prompt_id"]
    deadline = time.monotonic() + 60
    while not path.exists():  # the first best (the initial schedule) is saved before training starts
        assert time.monotonic() < deadline, f"no schedule file appeared:\n{log_tail(comfy_server.log_path)}"
        time.sleep(0.01)
    # At once: early stopping can end a short run on this small model within a fraction of a second.
    interrupt(comfy_server)
    entry = wait_history(comfy_server, prompt_id)
    assert entry["status"]["status_str"] == "error"
    interrupted = messages(entry, "execution_interrupted")
    assert interrupted and interrupted[0]["node_id"] == "train", json.dumps(entry["status"], indent=1)

    record = load_schedule(path)
    assert record.train["status"] == "interrupted"
    assert record.train["epochs_done"] < 200
    assert not list(SCHEDULE_DIR.glob(f".{name}*")), "a temporary file was left behind"

    load = demo_nodes()
    load["load"] = {
        "class_type": "LD3LoadSigmas",
        "inputs": {"model": ["demo", 0], "schedule_file": path.name, "sampler_name": SAMPLER, "steps": 0},
    }
    load["show"] = {"class_type": "PreviewAny", "inputs": {"source": ["load", 0]}}
    shown = tensor_values(comfy_server.run_prompt(load)["outputs"]["show"]["text"][0])
    assert shown == pytest.approx(record.step_sigmas.tolist(), rel=1e-3, abs=1e-4)


@pytest.mark.server
def test_a_saved_schedule_is_replaced_only_by_a_better_one(comfy_server, schedule_names):
    """Train to completion; then, under the same name: a re-run cancelled at once, a re-run that fails with
    NaN, two runs queued back to back and a run for another step count. The completed schedule is never
    replaced by a worse or untrained one, and every file on disk is complete."""
    from ld3_core.schedule_file import load_schedule

    name = schedule_names("keep")
    path = SCHEDULE_DIR / f"{name}.safetensors"
    graph = demo_nodes()
    graph["teacher"] = teacher_node(samples=16)
    graph["train"] = train_node(name, epochs=(1, 4))
    graph["report"] = {"class_type": "PreviewAny", "inputs": {"source": ["train", 3]}}
    first = comfy_server.run_prompt(graph)["outputs"]["report"]["text"][0]
    assert f"Saved to models/ld3/{name}.safetensors." in first, first
    assert load_schedule(path).train["status"] == "completed"
    saved_bytes = path.read_bytes()

    # A longer re-run, cancelled as soon as it runs: its starting schedule must not replace the file.
    graph["train"] = train_node(name, epochs=(100, 100))
    prompt_id = comfy_server.post_json("/prompt", {"prompt": graph})["prompt_id"]
    deadline = time.monotonic() + 60
    while not comfy_server.get_json("/queue")["queue_running"]:
        assert time.monotonic() < deadline, "the re-run never started"
        time.sleep(0.02)
    time.sleep(0.3)
    interrupt(comfy_server)
    assert messages(wait_history(comfy_server, prompt_id), "execution_interrupted")
    assert path.read_bytes() == saved_bytes

    # A re-run that fails at once (the largest learning rate diverges): the file stays as it was.
    graph["train"] = train_node(name, epochs=(1, 1))
    graph["train"]["inputs"]["lr_steps"] = 1.0
    _, entry = queue(comfy_server, graph)
    if entry["status"]["status_str"] == "error":
        assert path.read_bytes() == saved_bytes
    else:  # it did not diverge on this model: then it may only have replaced the file by a better one
        assert load_schedule(path).train["status"] == "completed"

    # Two runs queued back to back on one name: both complete, the file holds the better of all runs.
    reports = []
    for seed in (1, 2):
        graph["train"] = train_node(name, epochs=(1, 4))
        graph["train"]["inputs"]["seed"] = seed
        reports.append(comfy_server.post_json("/prompt", {"prompt": graph})["prompt_id"])
    for prompt_id in reports:
        entry = wait_history(comfy_server, prompt_id)
        assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)
        text = entry["outputs"]["report"]["text"][0]
        assert f"Saved to models/ld3/{name}.safetensors." in text or "Kept the schedule already in" in text
    assert load_schedule(path).train["status"] == "completed"

    # Another step count under the same name: refused before training, the file untouched.
    kept = path.read_bytes()
    graph["train"] = train_node(name, steps=STEPS + 1)
    error = error_of(queue(comfy_server, graph)[1])
    assert "schedule_name" in error["exception_message"] and "already holds" in error["exception_message"]
    assert "Choose another schedule_name" in error["exception_message"]
    assert path.read_bytes() == kept


# -- the node-independent glue ----------------------------------------------------------------------


def test_register_pack_is_idempotent(ld3_pack):
    import comfy.samplers
    import folder_paths

    common = _node_module("_common")
    common.register_pack()
    common.register_pack()
    assert comfy.samplers.SCHEDULER_NAMES.count("ld3") == 1
    for folder in ("ld3", "lpips"):
        paths, extensions = folder_paths.folder_names_and_paths[folder]
        assert len(paths) == len(set(paths)) and extensions == {".safetensors"}


def test_atomic_write_and_numbered_paths(tmp_path):
    from ld3_core.schedule_file import atomic_write
    from ld3_core.teacher_file import next_numbered_path

    assert next_numbered_path(tmp_path / "none", "t") == tmp_path / "none" / "t_00001.safetensors"
    for n in (1, 7):
        (tmp_path / f"t_{n:05d}.safetensors").write_bytes(b"x")
    (tmp_path / "t_x_00009.safetensors").write_bytes(b"x")  # another stem
    assert next_numbered_path(tmp_path, "t").name == "t_00008.safetensors"

    target = tmp_path / "sub" / "f.bin"
    atomic_write(target, b"first")
    atomic_write(target, b"second")
    assert target.read_bytes() == b"second"

    with pytest.raises(TypeError):
        atomic_write(target, object())  # the write fails: the old file stays, no temp file
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["f.bin"]


def test_stack_images_pads_to_the_widest():
    from ld3_core.plot import stack_images

    a, b = torch.zeros(1, 10, 20, 3), torch.zeros(1, 5, 30, 3)
    out = stack_images([a, b])
    assert out.shape == (1, 15, 30, 3)
    assert float(out[0, :10, 20:].min()) == 1.0 and float(out[0, 10:].max()) == 0.0


def test_report_rows_and_text_round_trip():
    from ld3_core import compare

    errors = {
        "karras": torch.tensor([0.2, 0.4]),
        "sigmas(ld3)": torch.tensor([0.1, 0.1]),
        "simple": torch.tensor([0.5]),
    }
    rows = compare.report_rows(errors, {"karras": 4, "sigmas(ld3)": 4, "simple": 4}, ["karras", "simple"])
    assert [r[0] for r in rows] == ["sigmas(ld3)", "karras", "simple"]
    assert rows[0][4] == "0.333" and rows[1][4] == "1.000" and rows[2][3] == "0.00000"
    text = compare.format_report(rows, SAMPLER, 2)
    parsed = load_script_module("demo").parse_report(text)
    assert load_script_module("demo").parse_report(text + "\n\n" + compare.seen_note(1, 2)) == parsed
    assert parsed[0] == {
        "schedule": "sigmas(ld3)",
        "steps": "4",
        "rmse_mean": "0.10000",
        "rmse_sd": "0.00000",
        "vs_best_builtin": "0.333",
    }
    assert "3.00x lower" in load_script_module("demo").summary_line(4, parsed)


def test_demo_graph_uses_the_published_node_inputs(ld3_node_classes):
    """scripts/demo.py's graph names only inputs the nodes define (saved workflows rely on them)."""
    schemas = {cls.GET_SCHEMA().node_id: cls.GET_SCHEMA() for cls in ld3_node_classes}
    for node in load_script_module("demo").demo_graph().values():
        schema = schemas.get(node["class_type"])
        if schema is None:
            continue
        names = {i.id for i in schema.inputs}
        assert set(node["inputs"]) <= names, (node["class_type"], set(node["inputs"]) - names)


def test_published_node_ids_and_inputs(ld3_node_classes):
    """Node ids and input names are the API of saved workflows: they must not change."""
    expected = {
        "LD3GenerateTeacher": [
            "model",
            "positive",
            "negative",
            "latent",
            "sample_count",
            "seed",
            "cfg",
            "sampler_name",
            "scheduler",
            "steps",
            "batch_size",
            "name",
            "positive_2",
            "positive_3",
            "positive_4",
        ],
        "LD3TrainSigmas": [
            "model",
            "teacher",
            "sampler_name",
            "steps",
            "loss",
            "soft_gamma",
            "decoupled_times",
            "epochs_phase1",
            "epochs_phase2",
            "lr_steps",
            "batch_size",
            "seed",
            "schedule_name",
            "vae",
            "recipe",
        ],
        "LD3LoadSigmas": ["model", "schedule_file", "sampler_name", "steps", "denoise"],
        "LD3LoadTeacher": ["teacher_file", "positive", "negative", "positive_2", "positive_3", "positive_4"],
        "LD3CompareSigmas": [
            "model",
            "teacher",
            "sampler_name",
            "sigmas",
            "sigmas_2",
            "sigmas_3",
            "sigmas_4",
            "include_builtin",
        ],
        "LD3DemoModel": ["kind", "width", "height", "seed"],
        "LD3LogLinearResample": ["sigmas", "steps"],
    }
    schemas = {cls.GET_SCHEMA().node_id: cls.GET_SCHEMA() for cls in ld3_node_classes}
    assert set(schemas) == set(expected)
    for node_id, inputs in expected.items():
        assert [i.id for i in schemas[node_id].inputs] == inputs, node_id
    outputs = {node_id: [o.io_type for o in s.outputs] for node_id, s in schemas.items()}
    assert outputs["LD3GenerateTeacher"] == ["LD3_TEACHER", "STRING"]  # report appended: never reorder
    assert outputs["LD3TrainSigmas"] == ["SIGMAS", "MODEL", "IMAGE", "STRING"]  # report appended
    assert outputs["LD3LoadSigmas"] == ["SIGMAS", "MODEL", "STRING"]  # report appended
    assert outputs["LD3CompareSigmas"] == ["IMAGE", "STRING"]
    assert outputs["LD3DemoModel"] == ["MODEL", "CONDITIONING", "CONDITIONING", "LATENT"]
    optional = {i.id for s in schemas.values() for i in s.inputs if i.optional}
    assert optional == {
        "positive_2",
        "positive_3",
        "positive_4",
        "vae",
        "sampler_name",
        "steps",
        "denoise",
        "sigmas_2",
        "sigmas_3",
        "sigmas_4",
    }


@pytest.mark.server
def test_train_refuses_what_it_can_know_when_the_prompt_is_queued(comfy_server, schedule_names):
    """Before LD3 Generate Teacher samples anything: a bad schedule_name, lpips without a VAE, and (the
    check ComfyUI leaves to a node whose validate_inputs takes input_types) a link of the wrong type."""
    name = schedule_names("queued")

    def refused(changes: dict) -> list[str]:
        graph = demo_nodes()
        graph["teacher"] = teacher_node(steps=4)
        graph["train"] = train_node(name, steps=2)
        graph["train"]["inputs"].update(changes)
        graph["show"] = {"class_type": "PreviewAny", "inputs": {"source": ["train", 0]}}
        status, body = comfy_server.post("/prompt", {"prompt": graph})
        assert status == 400, body
        assert set(body["node_errors"]) == {"train"}, body
        return [e["details"] for e in body["node_errors"]["train"]["errors"]]

    details = refused({"schedule_name": "../escape"})
    assert any("schedule_name: '../escape' contains a path separator" in d for d in details), details
    details = refused({"loss": "lpips"})
    assert any("vae: the lpips loss compares decoded images and no VAE is connected" in d for d in details)
    details = refused({"teacher": ["demo", 0]})  # a MODEL where the teacher data goes
    assert any("teacher: the link carries MODEL, this input takes LD3_TEACHER" in d for d in details), details
    assert not list(SCHEDULE_DIR.glob(f"{name}*"))
    # A valid graph still queues (and the teacher's and the VAE's links pass the node's own type check).
    graph = demo_nodes()
    graph["teacher"] = teacher_node(steps=4)
    graph["train"] = train_node(name, steps=2)
    graph["show"] = {"class_type": "PreviewAny", "inputs": {"source": ["train", 0]}}
    _, entry = queue(comfy_server, graph)
    assert entry["status"]["status_str"] == "success", entry["status"]
