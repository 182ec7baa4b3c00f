"""Failure paths through the real server: cancelled teacher generation, missing and hostile files.

Each case ends with a normal prompt on the same server: a failure must leave nothing half-done behind.
"""

import json
import pickle
import uuid

import aiohttp
import pytest
import torch
from safetensors.torch import save_file
from test_nodes import (
    SCHEDULE_DIR,
    demo_nodes,
    error_of,
    messages,
    queue,
    teacher_node,
    wait_history,
)

pytestmark = pytest.mark.server


def _server_still_works(server):
    graph = demo_nodes()
    graph["teacher"] = teacher_node(samples=2, steps=3, name=f"after_{uuid.uuid4().hex[:6]}")
    graph["sigmas"] = {
        "class_type": "BasicScheduler",
        "inputs": {"model": ["demo", 0], "scheduler": "karras", "steps": 3, "denoise": 1.0},
    }
    graph["show"] = {"class_type": "PreviewAny", "inputs": {"source": ["sigmas", 0]}}
    server.run_prompt(graph)


def _cancel_at_first_progress(
    server, graph: dict, node: str, timeout: float = 120.0
) -> tuple[str, list[int]]:
    """Queue ``graph`` listening on the websocket as the frontend does; press Cancel (POST /interrupt) at
    ``node``'s first progress message. The prompt id and every progress value ``node`` reported."""
    values: list[int] = []

    async def on_message(session, message) -> None:
        if message.type != aiohttp.WSMsgType.TEXT:
            return
        data = json.loads(message.data)
        if data["type"] == "progress" and data["data"].get("node") == node:
            values.append(int(data["data"]["value"]))
            if len(values) == 1:
                async with session.post(server.base_url + "/interrupt", json={}) as answer:
                    assert answer.status == 200

    return server.queue_and_listen(graph, on_message, timeout), values


def test_cancel_during_teacher_generation_stops_within_a_step_and_writes_no_file(comfy_server):
    """One batch of 64 samples x 200 steps: Cancel at the first progress message stops the teacher inside
    that batch (progress and the interruption check come after every sampler step, not every batch)."""
    name = f"cancelled_{uuid.uuid4().hex[:8]}"
    teacher_dir = comfy_server.output_dir / "ld3"
    samples, steps = 64, 200
    graph = demo_nodes(size=32)
    graph["teacher"] = teacher_node(samples=samples, steps=steps, name=name)
    graph["teacher"]["inputs"]["batch_size"] = samples
    graph["show"] = {"class_type": "PreviewAny", "inputs": {"source": ["teacher", 0]}}
    prompt_id, values = _cancel_at_first_progress(comfy_server, graph, "teacher")
    entry = wait_history(comfy_server, prompt_id, timeout=120)
    assert values and values[0] == samples  # the first step of the batch: 64 sample-steps
    assert max(values) < samples * steps, f"the batch ran to its end before Cancel took: {values}"
    interrupted = messages(entry, "execution_interrupted")
    assert interrupted and interrupted[0]["node_id"] == "teacher", entry["status"]
    written = list(teacher_dir.glob(f"{name}*")) + list(teacher_dir.glob(f".{name}*"))
    assert not written, f"a cancelled teacher left files behind: {written}"
    _server_still_works(comfy_server)


class _Marker:
    """A pickle payload that would create a file if anything ever unpickled it."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _hostile_files(tmp_marker):
    valid_steps = torch.tensor([14.6, 3.0, 0.5, 0.0])
    yield "pickle", pickle.dumps({"step_sigmas": _Marker(tmp_marker)})
    yield "torch_save", None  # written below with torch.save, also a pickle inside a zip
    yield "random", bytes(range(256)) * 8
    yield "empty", b""
    path = SCHEDULE_DIR / f".tmp_{uuid.uuid4().hex}.safetensors"
    save_file({"step_sigmas": valid_steps, "eval_sigmas": valid_steps[:-1].clone()}, str(path))  # no metadata
    data = path.read_bytes()
    path.unlink()
    yield "no_metadata", data
    yield "truncated", data[: len(data) // 2]


@pytest.mark.parametrize("kind", ["pickle", "torch_save", "random", "empty", "no_metadata", "truncated"])
def test_hostile_schedule_files_are_refused_and_nothing_runs(comfy_server, tmp_path, kind):
    marker = tmp_path / "executed"
    data = dict(_hostile_files(marker))[kind]
    path = SCHEDULE_DIR / f"test_hostile_{kind}_{uuid.uuid4().hex[:6]}.safetensors"
    SCHEDULE_DIR.mkdir(parents=True, exist_ok=True)
    try:
        if data is None:
            torch.save({"step_sigmas": _Marker(marker)}, path)
        else:
            path.write_bytes(data)
        graph = demo_nodes()
        graph["load"] = {
            "class_type": "LD3LoadSigmas",
            "inputs": {"model": ["demo", 0], "schedule_file": path.name, "sampler_name": "any", "steps": 0},
        }
        graph["show"] = {"class_type": "PreviewAny", "inputs": {"source": ["load", 0]}}
        _, entry = queue(comfy_server, graph)
        error = error_of(entry)
        assert error["node_id"] == "load"
        assert error["exception_message"].startswith("schedule_file:"), error["exception_message"]
        assert not marker.exists(), "a schedule file's payload was executed"
    finally:
        path.unlink(missing_ok=True)
    _server_still_works(comfy_server)


def test_missing_files_are_refused_at_queue_time_with_what_to_do(comfy_server):
    """A workflow naming a teacher or schedule file this machine lacks (someone else's, or none saved yet)."""
    graph = demo_nodes()
    graph["teacher"] = {
        "class_type": "LD3LoadTeacher",
        "inputs": {
            "teacher_file": "from_elsewhere_00001.safetensors",
            "positive": ["demo", 1],
            "negative": ["demo", 2],
        },
    }
    graph["load"] = {
        "class_type": "LD3LoadSigmas",
        "inputs": {
            "model": ["demo", 0],
            "schedule_file": "from_elsewhere.safetensors",
            "sampler_name": "any",
            "steps": 0,
        },
    }
    graph["show_teacher"] = {"class_type": "PreviewAny", "inputs": {"source": ["teacher", 0]}}
    graph["show_sigmas"] = {"class_type": "PreviewAny", "inputs": {"source": ["load", 0]}}
    status, body = comfy_server.post("/prompt", {"prompt": graph})
    assert status == 400, body
    details = {node: [e["details"] for e in err["errors"]] for node, err in body["node_errors"].items()}
    assert details.keys() == {"teacher", "load"}, details
    [teacher] = details["teacher"]
    assert teacher.startswith("teacher_file - there is no file 'from_elsewhere_00001.safetensors' in "), (
        teacher
    )
    assert "Run LD3 Generate Teacher to make one, or copy the file there" in teacher
    [load] = details["load"]
    assert load.startswith("schedule_file - there is no file 'from_elsewhere.safetensors' in "), load
    assert "Run LD3 Train Sigmas to make one" in load
    _server_still_works(comfy_server)
