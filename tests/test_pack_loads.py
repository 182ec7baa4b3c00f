"""The pack loads in a real ComfyUI server, registers its nodes, and keeps its imports one-way."""

import ast
from pathlib import Path

import pytest

PACK_ROOT = Path(__file__).resolve().parents[1]
PACK_MODULE = "ComfyUI-LD3"  # ComfyUI reports python_module "custom_nodes.ComfyUI-LD3"
# ld3_core is the algorithm; these are ComfyUI's UI / server layers (and ours) that it must not reach.
FORBIDDEN_IN_CORE = {"nodes", "server", "execution", "folder_paths", "comfy_api", "comfy_extras", "main"}


def pack_node_ids(node_classes) -> set[str]:
    return {cls.GET_SCHEMA().node_id for cls in node_classes}


def test_entrypoint_lists_v3_nodes_only(ld3_pack, ld3_node_classes):
    from comfy_api.latest import io

    assert not hasattr(ld3_pack, "NODE_CLASS_MAPPINGS"), "ComfyUI would skip comfy_entrypoint"
    assert ld3_node_classes, "the pack registers no nodes"
    assert all(issubclass(cls, io.ComfyNode) for cls in ld3_node_classes)
    ids = [cls.GET_SCHEMA().node_id for cls in ld3_node_classes]
    assert len(ids) == len(set(ids)), f"duplicate node ids: {ids}"


def test_the_version_is_pyprojects():
    """Schedule files record ld3_core.__version__; the registry reads pyproject.toml: one number."""
    import tomllib

    import ld3_core

    project = tomllib.loads((PACK_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert ld3_core.__version__ == project["version"]


@pytest.mark.server
def test_server_log_shows_pack_loaded(comfy_server):
    log = comfy_server.log()
    import_lines = [line for line in log.splitlines() if PACK_MODULE in line and "seconds" in line]
    assert import_lines, f"no import-time line for {PACK_MODULE} in the server log:\n{log[-4000:]}"
    assert not any("IMPORT FAILED" in line for line in import_lines), "\n".join(import_lines)
    failures = [line for line in log.splitlines() if "Cannot import" in line and PACK_MODULE in line]
    assert not failures, "\n".join(failures)


@pytest.mark.server
def test_every_node_is_live_with_category_and_description(comfy_server, ld3_node_classes):
    info = comfy_server.object_info()
    served = {
        node_id for node_id, entry in info.items() if PACK_MODULE in str(entry.get("python_module", ""))
    }
    expected = pack_node_ids(ld3_node_classes)
    assert expected, "the pack registers no nodes"
    assert served == expected, f"served by the pack: {sorted(served)}; expected: {sorted(expected)}"
    for node_id in sorted(expected):
        entry = info[node_id]
        assert entry["category"] == "LD3", (node_id, entry["category"])
        assert entry["description"].strip(), f"{node_id} has no description"
        assert entry["display_name"].startswith("LD3 "), (node_id, entry["display_name"])
        for section in ("required", "optional"):
            for name, spec in entry["input"].get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"


@pytest.mark.server
def test_the_custom_recipe_knobs_are_advanced_inputs(comfy_server):
    """Train Sigmas' paper knobs (read only by recipe 'custom') are folded away in current frontends; the
    everyday inputs stay visible."""
    inputs = comfy_server.object_info()["LD3TrainSigmas"]["input"]
    flagged = {
        name
        for section in ("required", "optional")
        for name, spec in inputs.get(section, {}).items()
        if spec[1].get("advanced")
    }
    assert flagged == {"soft_gamma", "epochs_phase1", "epochs_phase2", "lr_steps", "batch_size"}


@pytest.mark.server
def test_resample_node_runs_in_the_executor(comfy_server):
    """OptimalStepsScheduler (FLUX, 10 steps) -> LD3 Resample Sigmas (3 steps) -> Preview as Text."""
    graph = {
        "1": {
            "class_type": "OptimalStepsScheduler",
            "inputs": {"model_type": "FLUX", "steps": 10, "denoise": 1.0},
        },
        "2": {"class_type": "LD3LogLinearResample", "inputs": {"sigmas": ["1", 0], "steps": 3}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}},
    }
    entry = comfy_server.run_prompt(graph)
    text = entry["outputs"]["3"]["text"][0]  # str(tensor): "tensor([0.9968, ...])"
    values = [float(v) for v in text.split("[", 1)[1].split("]", 1)[0].split(",")]
    # FLUX's 10-step table with its last value set to 0: positive sigmas at indices 0..9; 3 steps
    # take indices 0, 4.5 and 9, i.e. two table values and the geometric mean of 0.966 and 0.9471.
    assert values == pytest.approx([0.9968, (0.966 * 0.9471) ** 0.5, 0.2808, 0.0], abs=1e-4)


# -- import direction: nodes/ -> ld3_core/ -> comfy.*, never back ------------------------------------


def _imports(path: Path):
    """(module, level, lineno) for every import statement of a Python file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, 0, node.lineno
        elif isinstance(node, ast.ImportFrom):
            yield node.module or "", node.level, node.lineno


def _package_parts(path: Path) -> list[str]:
    return list(path.relative_to(PACK_ROOT).parent.parts)


@pytest.mark.parametrize("package", ["ld3_core", "nodes"])
def test_imports_point_one_way(package):
    files = sorted((PACK_ROOT / package).rglob("*.py"))
    assert files, f"no Python files under {package}/"
    problems = []
    for path in files:
        here = _package_parts(path)
        for module, level, lineno in _imports(path):
            where = f"{path.relative_to(PACK_ROOT)}:{lineno}"
            top = module.split(".")[0]
            if level == 0:
                if top == "ld3_core":
                    # Inside ComfyUI the pack root is not on sys.path (and an absolute `nodes` is
                    # ComfyUI's own module): the pack's modules import each other relatively.
                    problems.append(
                        f"{where}: absolute import of the pack's own `{module}`; import it relatively"
                    )
                elif package == "ld3_core" and top in FORBIDDEN_IN_CORE:
                    problems.append(f"{where}: ld3_core imports `{module}` (UI/server layer)")
                continue
            if level - 1 > len(here):
                problems.append(f"{where}: relative import leaves the pack")
                continue
            target = here[: len(here) - (level - 1)] + (module.split(".") if module else [])
            target_top = target[0] if target else ""
            if package == "ld3_core" and target_top != "ld3_core":
                problems.append(
                    f"{where}: ld3_core imports `{'.'.join(target) or '<pack root>'}` outside ld3_core"
                )
    assert not problems, "\n".join(problems)


# -- one ComfyUI boundary: ld3_core/comfyui/ (issue 14) ---------------------------------------------

COMFYUI_MODULES = {
    "comfy",
    "comfy_extras",
    "comfy_execution",
    "comfy_api",
    "comfyui_version",
    "folder_paths",
    "server",
    "execution",
    "latent_preview",
    "node_helpers",
}
BOUNDARY = PACK_ROOT / "ld3_core" / "comfyui"
# nodes/ may use ComfyUI for folder paths, the node schema, progress / cancel and the server's text channel.
NODES_MAY_IMPORT = {
    "folder_paths",
    "comfy_api.latest",
    "comfy.utils",
    "comfy.model_management",
    "comfy_execution.utils",
    "comfy_execution.validation",
    "server",
    "comfyui_version",
}


def _dynamic_imports(path: Path):
    """(what, lineno) for every ``importlib`` import and ``__import__`` call: imports by string."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "importlib" for a in node.names):
            yield "importlib", node.lineno
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "importlib":
            yield "importlib", node.lineno
        elif isinstance(node, ast.Name) and node.id == "__import__":
            yield "__import__", node.lineno


def test_comfyui_is_used_only_inside_the_boundary():
    problems = []
    for path in sorted((PACK_ROOT / "ld3_core").rglob("*.py")):
        if BOUNDARY in path.parents:
            continue
        where = path.relative_to(PACK_ROOT)
        for module, level, lineno in _imports(path):
            if level == 0 and module.split(".")[0] in COMFYUI_MODULES:
                problems.append(f"{where}:{lineno}: imports `{module}` outside ld3_core/comfyui/")
        for what, lineno in _dynamic_imports(path):
            problems.append(f"{where}:{lineno}: `{what}` (an import by string) outside ld3_core/comfyui/")
    for path in sorted((PACK_ROOT / "nodes").rglob("*.py")):
        where = path.relative_to(PACK_ROOT)
        for module, level, lineno in _imports(path):
            if level == 0 and module.split(".")[0] in COMFYUI_MODULES and module not in NODES_MAY_IMPORT:
                problems.append(f"{where}:{lineno}: nodes import `{module}`: use ld3_core/comfyui/")
        for what, lineno in _dynamic_imports(path):
            problems.append(f"{where}:{lineno}: `{what}` (an import by string) in nodes/")
    assert not problems, "\n".join(problems)


def test_the_boundary_docstring_lists_what_it_relies_on():
    import ld3_core.comfyui
    from ld3_core.comfyui.requirements import REQUIRED

    doc = ld3_core.comfyui.__doc__
    used = {
        module
        for path in BOUNDARY.rglob("*.py")
        for module, level, _ in _imports(path)
        if level == 0 and module.split(".")[0] in COMFYUI_MODULES
    }
    assert used, "the boundary imports nothing from ComfyUI: is BOUNDARY right?"
    assert [m for m in sorted(used) if m not in doc] == []
    assert [p for p in REQUIRED if p.rsplit(".", 1)[1] not in doc] == []
