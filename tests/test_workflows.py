"""The shipped workflows (workflows/*.json, workflows/api/*.json) against a live ComfyUI's /object_info.

Checks what a user would hit on loading or queueing them: unknown node types or inputs, widget values
out of range or not among the options, links between incompatible types, an API twin that differs
from its UI file, missing thumbnails; and runs the zero-download demo workflow end to end.
"""

import urllib.request

import pytest
from conftest import PACK_DIR_NAME, load_script_module
from PIL import Image
from workflow_files import (
    API_DIR,
    WORKFLOW_NAMES,
    WORKFLOWS_DIR,
    load_api,
    load_ui,
    node_ids,
    one_node,
    output_images,
    set_inputs,
)
from workflow_schema import FRONTEND_ONLY, FRONTEND_WIDGETS, check_api, check_ui, widgets

pytest_plugins = ["tiny_server"]

THUMBNAIL_MAX_WIDTH = 800
THUMBNAIL_MAX_BYTES = 300_000


def test_every_workflow_file_is_listed():
    """The list the tests walk is the set of files shipped (nothing untested, nothing missing)."""
    assert sorted(p.stem for p in WORKFLOWS_DIR.glob("*.json")) == sorted(WORKFLOW_NAMES)
    assert sorted(p.stem for p in API_DIR.glob("*.json")) == sorted(WORKFLOW_NAMES)


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_thumbnail(name, suffix):
    """A same-name small image beside each UI workflow (.jpg is what the template browser asks for)."""
    path = WORKFLOWS_DIR / f"{name}{suffix}"
    assert path.is_file(), f"no thumbnail {path.name}: run scripts/build_workflows.py"
    assert path.stat().st_size <= THUMBNAIL_MAX_BYTES
    with Image.open(path) as image:
        assert image.format == {".png": "PNG", ".jpg": "JPEG"}[suffix]
        assert 200 <= image.width <= THUMBNAIL_MAX_WIDTH


def test_screenshot_script_knows_every_workflow():
    """scripts/screenshots.py runs every shipped workflow, each after the one whose file it reads, and
    its CPU sizes name node types and inputs the workflows have."""
    shots = load_script_module("screenshots")
    assert sorted(shots.ORDER) == sorted(WORKFLOW_NAMES)
    for name, needed in shots.NEEDS.items():
        assert shots.ORDER.index(needed) < shots.ORDER.index(name)
    for name, edits in shots.CPU_SIZES.items():
        graph = load_api(name)
        for node_type, values in edits.items():
            set_inputs(graph, node_type, **values)  # fails for a missing node type or input


@pytest.mark.server
@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_ui_workflow_fits_the_server(comfy_server, name):
    problems = check_ui(load_ui(name), comfy_server.object_info())
    assert not problems, "\n".join(problems)


@pytest.mark.server
@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_api_workflow_fits_the_server(comfy_server, name):
    problems = check_api(load_api(name), comfy_server.object_info())
    assert not problems, "\n".join(problems)


@pytest.mark.server
@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_api_twin_is_the_ui_workflow(comfy_server, name):
    """workflows/api/<name>.json is the UI file's graph: same nodes, widget values and links."""
    ui, api = load_ui(name), load_api(name)
    object_info = comfy_server.object_info()
    nodes = {str(n["id"]): n for n in ui["nodes"] if n["type"] not in FRONTEND_ONLY}
    assert sorted(nodes) == sorted(api), "the API twin has other nodes than the UI file"
    links = {link[0]: link for link in ui["links"]}
    for node_id, node in nodes.items():
        assert api[node_id]["class_type"] == node["type"]
        expected = {name: value for (kind, name), value in FRONTEND_WIDGETS.items() if kind == node["type"]}
        for widget, value in zip(widgets(object_info[node["type"]]), node.get("widgets_values") or []):
            if widget.type != "CONTROL":
                expected[widget.name] = value
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                _, origin, origin_slot, *_ = links[slot["link"]]
                expected[slot["name"]] = [str(origin), origin_slot]
        assert api[node_id]["inputs"] == expected, f"node {node_id} ({node['type']}) differs"


def _source(graph: dict, node_id: str, name: str) -> tuple[str, int]:
    source, slot = graph[node_id]["inputs"][name]
    return graph[source]["class_type"], slot


def test_sd15_train_workflow_wiring():
    """Teacher -> LPIPS training (VAE connected) -> learned SIGMAS, 'ld3' KSampler and a default twin."""
    graph = load_api("ld3_sd15_train")
    train = one_node(graph, "LD3TrainSigmas")
    assert graph[train]["inputs"]["loss"] == "lpips"
    assert _source(graph, train, "vae") == ("CheckpointLoaderSimple", 2)
    assert _source(graph, train, "teacher") == ("LD3GenerateTeacher", 0)
    custom = one_node(graph, "SamplerCustomAdvanced")
    assert graph[custom]["inputs"]["sigmas"] == [train, 0]
    guider = graph[custom]["inputs"]["guider"][0]
    assert graph[guider]["class_type"] == "CFGGuider"
    assert graph[guider]["inputs"]["model"] == [train, 1], "the decoupled times live in the patched MODEL"
    ld3 = one_node(graph, "KSamplerAdvanced", scheduler="ld3")
    assert graph[ld3]["inputs"]["model"] == [train, 1]
    default = [n for n in graph if graph[n]["class_type"] == "KSamplerAdvanced" and n != ld3]
    assert len(default) == 1
    steps = graph[train]["inputs"]["steps"]
    assert graph[ld3]["inputs"]["steps"] == graph[default[0]]["inputs"]["steps"] == steps
    assert _source(graph, default[0], "model") == ("CheckpointLoaderSimple", 0)
    teacher = one_node(graph, "LD3GenerateTeacher")
    assert graph[teacher]["inputs"]["cfg"] == graph[ld3]["inputs"]["cfg"] == graph[guider]["inputs"]["cfg"]
    assert len([n for n in graph if graph[n]["class_type"] == "SaveImage"]) == 3


def test_flux_train_workflow_wiring():
    """Flux-dev: FluxGuidance conditioning, CFG 1 teacher, shifted MODEL, BasicGuider sampling."""
    graph = load_api("ld3_flux_train")
    assert graph[one_node(graph, "DualCLIPLoader")]["inputs"]["type"] == "flux"
    teacher = one_node(graph, "LD3GenerateTeacher")
    assert graph[teacher]["inputs"]["cfg"] == 1.0
    assert _source(graph, teacher, "positive") == ("FluxGuidance", 0)
    assert _source(graph, teacher, "model") == ("ModelSamplingFlux", 0)
    assert _source(graph, teacher, "latent") == ("EmptySD3LatentImage", 0)
    shift = graph[one_node(graph, "ModelSamplingFlux")]["inputs"]
    latent = graph[one_node(graph, "EmptySD3LatentImage")]["inputs"]
    assert (shift["width"], shift["height"]) == (latent["width"], latent["height"])
    train = one_node(graph, "LD3TrainSigmas")
    assert graph[train]["inputs"]["loss"] == "lpips"
    assert _source(graph, train, "vae") == ("VAELoader", 0)
    custom = one_node(graph, "SamplerCustomAdvanced", sigmas=[train, 0])
    guider = graph[custom]["inputs"]["guider"][0]
    assert graph[guider]["class_type"] == "BasicGuider"
    assert graph[guider]["inputs"]["model"] == [train, 1]


def test_sd15_retrain_loads_the_teacher_sd15_train_saves():
    """Same teacher file name, the same prompt texts in the same inputs, another step count."""
    trained, retrain = load_api("ld3_sd15_train"), load_api("ld3_sd15_retrain")
    generate = trained[one_node(trained, "LD3GenerateTeacher")]["inputs"]
    load = retrain[one_node(retrain, "LD3LoadTeacher")]["inputs"]
    assert load["teacher_file"] == f"{generate['name']}_00001.safetensors"
    for name in ("positive", "positive_2", "negative"):
        assert trained[generate[name][0]]["inputs"]["text"] == retrain[load[name][0]]["inputs"]["text"], name
    train = one_node(retrain, "LD3TrainSigmas")
    assert _source(retrain, train, "teacher") == ("LD3LoadTeacher", 0)
    first = trained[one_node(trained, "LD3TrainSigmas")]["inputs"]
    assert retrain[train]["inputs"]["steps"] != first["steps"]
    assert retrain[train]["inputs"]["schedule_name"] != first["schedule_name"]
    ks = one_node(retrain, "KSampler", scheduler="ld3")
    assert retrain[ks]["inputs"]["model"] == [train, 1]
    assert retrain[ks]["inputs"]["steps"] == retrain[train]["inputs"]["steps"]
    assert retrain[ks]["inputs"]["cfg"] == generate["cfg"]


@pytest.mark.parametrize(
    ("use", "train"), [("ld3_sd15_use_saved", "ld3_sd15_train"), ("ld3_flux_use_saved", "ld3_flux_train")]
)
def test_use_saved_loads_what_train_saves(use, train):
    """The use-saved workflow's default file is the train workflow's schedule name, same sampler."""
    trained = load_api(train)
    trainer = trained[one_node(trained, "LD3TrainSigmas")]["inputs"]
    graph = load_api(use)
    loader = graph[one_node(graph, "LD3LoadSigmas")]["inputs"]
    assert loader["schedule_file"] == trainer["schedule_name"] + ".safetensors"
    assert loader["sampler_name"] == trainer["sampler_name"]


@pytest.mark.server
def test_workflows_are_templates(comfy_server):
    """ComfyUI lists the UI workflows (not the API twins) as the pack's templates, with thumbnails."""
    templates = comfy_server.get_json("/workflow_templates")
    assert sorted(templates.get(PACK_DIR_NAME, [])) == sorted(WORKFLOW_NAMES)
    for name in WORKFLOW_NAMES:
        url = f"{comfy_server.base_url}/api/workflow_templates/{PACK_DIR_NAME}/{name}.jpg"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200


@pytest.mark.server
@pytest.mark.slow
def test_demo_workflow_runs(tiny_models_server):
    """The zero-download demo as shipped, shrunk: teacher, training, comparison image and report."""
    tiny = tiny_models_server
    graph = load_api("ld3_demo")
    set_inputs(graph, "LD3DemoModel", width=8, height=8)
    set_inputs(graph, "LD3GenerateTeacher", sample_count=4, steps=12, batch_size=4)
    set_inputs(
        graph,
        "LD3TrainSigmas",
        steps=3,
        epochs_phase1=1,
        epochs_phase2=1,
        schedule_name="test_demo",
        recipe="custom",  # the widgets' short training
    )
    entry = tiny.run(graph, timeout=300)
    assert output_images(entry, one_node(graph, "SaveImage"), tiny.server.output_dir)
    compare, train = (one_node(graph, t) for t in ("LD3CompareSigmas", "LD3TrainSigmas"))
    teacher, heldout = graph[train]["inputs"]["teacher"][0], graph[compare]["inputs"]["teacher"][0]
    # Compare scores a second teacher whose noises the training never saw (sample i uses seed + i).
    seeds = [graph[n]["inputs"]["seed"] for n in (teacher, heldout)]
    assert heldout != teacher and seeds[1] >= seeds[0] + graph[teacher]["inputs"]["sample_count"], seeds
    previews = {graph[n]["inputs"]["source"][0]: n for n in node_ids(graph, "PreviewAny")}
    assert set(previews) == {compare, train, teacher}  # every report is on the canvas
    report = "\n".join(entry["outputs"][previews[compare]]["text"])
    assert "karras" in report, report  # the built-in schedulers are compared with the learned one
    assert "Note:" not in report, report  # no noise of the training teacher among those scored
    verdict = "\n".join(entry["outputs"][previews[train]]["text"])
    assert verdict.startswith("LD3 dpmpp_2m 3 steps: ") and "built-in" in verdict, verdict
    assert "LD3 teacher: uni_pc" in "\n".join(entry["outputs"][previews[teacher]]["text"])
    assert (tiny.schedule_dir / "test_demo.safetensors").is_file()


@pytest.mark.server
def test_checks_catch_broken_workflows(comfy_server):
    """The checks above fail for the right reasons: each single breakage below is reported."""
    info = comfy_server.object_info()

    def ui_problems(edit) -> list[str]:
        workflow = load_ui("ld3_sd15_train")
        edit({n["type"]: n for n in workflow["nodes"]})
        return check_ui(workflow, info)

    def api_problems(edit) -> list[str]:
        graph = load_api("ld3_sd15_train")
        edit(graph)
        return check_api(graph, info)

    def drop_control(nodes):  # widgets_values shifted: the noise seed's "fixed" is gone
        nodes["RandomNoise"]["widgets_values"].remove("fixed")

    def add_control(nodes):  # the teacher's seed has no control widget (it is never randomized)
        nodes["LD3GenerateTeacher"]["widgets_values"].insert(2, "fixed")

    def too_few_samples(nodes):
        nodes["LD3GenerateTeacher"]["widgets_values"][0] = 0

    def unknown_type(nodes):
        nodes["LD3TrainSigmas"]["type"] = "LD3NoSuchNode"

    assert ui_problems(drop_control)
    assert ui_problems(add_control)
    assert any("outside" in p for p in ui_problems(too_few_samples))
    assert any("unknown node type" in p for p in ui_problems(unknown_type))
    assert not ui_problems(lambda nodes: None)

    train = one_node(load_api("ld3_sd15_train"), "LD3TrainSigmas")
    ckpt = one_node(load_api("ld3_sd15_train"), "CheckpointLoaderSimple")

    def model_into_teacher(graph):
        graph[train]["inputs"]["teacher"] = [ckpt, 0]

    def unknown_loss(graph):
        graph[train]["inputs"]["loss"] = "mse"

    def renamed_input(graph):
        graph[train]["inputs"]["epochs"] = graph[train]["inputs"].pop("epochs_phase1")

    assert any("MODEL output linked to a LD3_TEACHER" in p for p in api_problems(model_into_teacher))
    assert any("'mse' is not one of" in p for p in api_problems(unknown_loss))
    problems = api_problems(renamed_input)
    assert any("unknown input 'epochs'" in p for p in problems)
    assert any("'epochs_phase1' is missing" in p for p in problems)
