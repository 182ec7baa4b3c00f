"""LD3 Generate Teacher through the real server: the report output and canvas text, the self-check in
the saved file, and a noisy sampler refused when the prompt is queued."""

import json
import uuid

import pytest
from safetensors import safe_open
from test_nodes import demo_nodes, error_of, queue, teacher_node

pytestmark = pytest.mark.server


def test_report_reaches_the_api_output_and_the_saved_file(comfy_server):
    name = f"test_teacher_report_{uuid.uuid4().hex[:8]}"
    graph = demo_nodes(kind="flow")
    graph["teacher"] = teacher_node(samples=4, steps=10, name=name)
    graph["teacher"]["inputs"]["scheduler"] = "auto"
    graph["show"] = {"class_type": "PreviewAny", "inputs": {"source": ["teacher", 1]}}
    outputs = comfy_server.run_prompt(graph)["outputs"]
    report = outputs["show"]["text"][0]
    # The same text is the node's own UI output (what the canvas is sent) and its STRING output.
    assert outputs["teacher"]["text"] == [report]
    lines = [line for line in report.splitlines() if line]  # Markdown paragraphs: one blank line between
    assert lines[0] == "LD3 teacher: dpmpp_2m, 10 steps, scheduler beta (chosen by auto)."
    assert lines[1].startswith("Teacher error: RMSE ") and "against a 50-step re-solve" in lines[1]
    assert lines[2].startswith("Few-step error of the same sampler and scheduler (RMSE to the re-solve): 4 ")
    assert lines[3].startswith(("OK: ", "WARNING: steps: ")) and len(lines) == 4
    saved = list((comfy_server.output_dir / "ld3").glob(f"{name}_*.safetensors"))
    try:
        assert len(saved) == 1
        with safe_open(str(saved[0]), "pt") as handle:
            info = json.loads(handle.metadata()["ld3_teacher"])
        assert info["scheduler"] == "beta" and info["scheduler_requested"] == "auto"
        assert info["self_error"]["check_steps"] == 50 and info["self_error"]["samples"] == 2
        assert f"RMSE {info['self_error']['rmse']:.3g} " in lines[1]
    finally:
        for path in saved:
            path.unlink()


def test_a_noisy_sampler_is_refused_when_queued(comfy_server):
    graph = demo_nodes()
    graph["teacher"] = teacher_node(samples=2, steps=3, name="never_written")
    graph["teacher"]["inputs"]["sampler_name"] = "euler_ancestral"
    graph["show"] = {"class_type": "PreviewAny", "inputs": {"source": ["teacher", 1]}}
    status, body = comfy_server.post("/prompt", {"prompt": graph})
    assert status == 400, body
    [detail] = [e["details"] for e in body["node_errors"]["teacher"]["errors"]]
    assert detail.startswith("sampler_name - 'euler_ancestral' is stochastic"), detail
    assert "Use a deterministic sampler for the teacher" in detail
    # 'ld3' (a learned schedule) is not offered as the teacher's scheduler; an API prompt naming it
    # stops before sampling with what to do (ComfyUI 0.3.75 does not check v3 combo values at queue time).
    options = comfy_server.object_info()["LD3GenerateTeacher"]["input"]["required"]["scheduler"][1]["options"]
    assert options[0] == "auto" and "ld3" not in options
    graph["teacher"]["inputs"].update(sampler_name="dpmpp_2m", scheduler="ld3")
    _, entry = queue(comfy_server, graph)
    message = error_of(entry)["exception_message"]
    assert message.startswith("scheduler: 'ld3' is a learned few-step schedule"), message
    assert not list((comfy_server.output_dir / "ld3").glob("never_written*"))
