"""What a user gets with the default widgets, through the real server, on exact EPS and flow models.

The graph is the demo's: LD3 Demo Model (set to be the benchmark's exact model of that kind) -> LD3 Generate Teacher (every default: 50 samples, uni_pc,
auto, 20 steps) -> LD3 Train Sigmas (every default but loss l2: the model has no VAE). A second, much
more accurate teacher (200 steps) of 256 other noises is the held-out set: LD3 Compare Sigmas runs the
learned schedule (on the MODEL Train Sigmas outputs) and every built-in on its validation half (128
noises) and reports each one's RMSE to it and the ratio to the best built-in. The teacher's noises are
the benchmark's seed 0, so the bounds come from the same cell of the benchmark (BENCHMARKS.md, `ld3`,
dpmpp_2m NFE 6, seed 0, on 512 held-out exact endpoints), with margin for the smaller held-out set.
"""

import re

import pytest
from conftest import load_script_module
from test_nodes import SCHEDULE_DIR, demo_nodes, teacher_node

pytestmark = [pytest.mark.server, pytest.mark.slow]

STEPS = 6
HELDOUT = 256
# Held-out ratio to the best built-in the default recipe must reach. The benchmark's dpmpp_2m NFE 6 cell
# (BENCHMARKS.md, 512 exact endpoints): EPS 0.25 over 3 seeds, 0.26 for seed 0 (these teacher noises);
# Flux 0.24 over 3 seeds, 0.16 for seed 0. Measured here on the 128 validation noises of the 200-step
# teacher (2026-12-05): EPS 0.15, Flux 0.33. The bounds leave room for the smaller held-out set and its
# less exact reference.
MAX_RATIO = {"eps": 0.55, "flux": 0.6}


# The demo model that is the benchmark's exact model of that kind (bench/models.py: mix-eps-4x16x16 is
# make_clustered_mixture((4, 16, 16), seed=0), mix-flux-16x8x8 is ((16, 8, 8), seed=2)).
BENCH_MODEL = {"eps": {"seed": 0, "size": 16}, "flux": {"seed": 2, "size": 8}}


def default_training_graph(kind: str, name: str) -> dict:
    graph = demo_nodes(kind=kind, **BENCH_MODEL[kind])
    teacher = teacher_node(samples=50, steps=20, name=f"{name}_teacher")
    for key in ("sampler_name", "scheduler", "batch_size"):
        del teacher["inputs"][key]  # the widget defaults
    graph["teacher"] = teacher
    graph["train"] = {
        "class_type": "LD3TrainSigmas",
        "inputs": {
            "model": ["demo", 0],
            "teacher": ["teacher", 0],
            "sampler_name": "dpmpp_2m",
            "steps": STEPS,
            "loss": "l2",
            "schedule_name": name,
        },
    }
    heldout = teacher_node(samples=HELDOUT, steps=200, name=f"{name}_heldout")
    heldout["inputs"].update(seed=100_000, sampler_name="uni_pc", scheduler="auto", batch_size=64)
    graph["heldout"] = heldout
    graph["compare"] = {
        "class_type": "LD3CompareSigmas",
        "inputs": {
            "model": ["train", 1],
            "teacher": ["heldout", 0],
            "sampler_name": "dpmpp_2m",
            "sigmas": ["train", 0],
            "include_builtin": True,
        },
    }
    graph["verdict"] = {"class_type": "PreviewAny", "inputs": {"source": ["train", 3]}}
    graph["report"] = {"class_type": "PreviewAny", "inputs": {"source": ["compare", 1]}}
    return graph


def _fill_defaults(graph: dict, info: dict) -> None:
    """Every widget a node leaves out gets its default from /object_info (as the frontend does)."""
    for node in graph.values():
        spec = info[node["class_type"]]["input"]
        for section in ("required", "optional"):
            for name, value in spec.get(section, {}).items():
                if name in node["inputs"] or not isinstance(value, list) or len(value) < 2:
                    continue
                options = value[1] if isinstance(value[1], dict) else {}
                if "default" in options:
                    node["inputs"][name] = options["default"]
                elif isinstance(value[0], list) and value[0]:
                    node["inputs"][name] = value[0][0]


@pytest.mark.parametrize("kind", ["eps", "flux"])
def test_default_widgets_beat_the_best_builtin_on_held_out_noises(comfy_server, kind):
    name = f"test_quality_{kind}"
    # A schedule saved under this name by an earlier run would be kept if better (only a better one
    # replaces it): start without it, so what is measured is this run's training.
    saved = SCHEDULE_DIR / f"{name}.safetensors"
    saved.unlink(missing_ok=True)
    try:
        _train_and_compare(comfy_server, kind, name)
    finally:  # the dev ComfyUI's models/ld3 keeps only what its user put there
        saved.unlink(missing_ok=True)


def _train_and_compare(comfy_server, kind: str, name: str) -> None:
    graph = default_training_graph(kind, name)
    info = comfy_server.object_info()
    _fill_defaults(graph, info)
    train = graph["train"]["inputs"]
    assert train["recipe"] == "ld3" and graph["teacher"]["inputs"]["sampler_name"] == "uni_pc"
    assert graph["teacher"]["inputs"]["scheduler"] == "auto"
    outputs = comfy_server.run_prompt(graph, timeout=900)["outputs"]
    verdict = outputs["verdict"]["text"][0]
    assert verdict.startswith(f"LD3 dpmpp_2m {STEPS} steps: the learned schedule has "), verdict
    report = outputs["report"]["text"][0]
    assert "Note:" not in report, report  # the held-out teacher's noises are not the training teacher's
    rows = load_script_module("demo").parse_report(report)
    learned = next(row for row in rows if row["schedule"] == "sigmas(ld3)")
    ratio = float(learned["vs_best_builtin"])
    print(f"{kind}: held-out ratio to the best built-in {ratio:.3f}; verdict: {verdict}")
    assert ratio < MAX_RATIO[kind], (ratio, verdict)
    # The verdict's ratio comes with its range on new noises, and the held-out noises (new noises) do not
    # do worse than its top. (Below its bottom is no harm, and happens: 128 held-out noises are a noisy
    # figure too; EPS here: 0.15 held out, range 0.16-0.59x; on 512 exact endpoints seed 0 is 0.26.)
    said = re.search(r"has ([0-9.]+)x \(95 % range on new noises ([0-9.]+)-([0-9.]+)x\)", verdict)
    assert said, verdict
    low, high = float(said[2]), float(said[3])
    assert low <= float(said[1]) <= high and ratio <= high, (ratio, verdict)
