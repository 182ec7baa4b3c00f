"""Helpers for tests that read the shipped workflows: load them, find nodes, edit inputs, read outputs."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
from PIL import Image

PACK_ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS_DIR = PACK_ROOT / "workflows"
API_DIR = WORKFLOWS_DIR / "api"
WORKFLOW_NAMES = (
    "ld3_sd15_train",
    "ld3_flux_train",
    "ld3_sd15_use_saved",
    "ld3_sd15_retrain",
    "ld3_flux_use_saved",
    "ld3_demo",
)


def load_ui(name: str) -> dict:
    return json.loads((WORKFLOWS_DIR / f"{name}.json").read_text(encoding="utf-8"))


def load_api(name: str) -> dict:
    """A fresh copy of workflows/api/<name>.json (tests edit it)."""
    return copy.deepcopy(json.loads((API_DIR / f"{name}.json").read_text(encoding="utf-8")))


def node_ids(graph: dict, class_type: str, **inputs) -> list[str]:
    """Ids of the API-format nodes of a type whose inputs have the given values."""
    return [
        node_id
        for node_id, node in graph.items()
        if node["class_type"] == class_type
        and all(node["inputs"].get(name) == value for name, value in inputs.items())
    ]


def one_node(graph: dict, class_type: str, **inputs) -> str:
    found = node_ids(graph, class_type, **inputs)
    assert len(found) == 1, f"expected one {class_type} with {inputs} in the workflow, found {found}"
    return found[0]


def set_inputs(graph: dict, class_type: str, match: dict | None = None, **values) -> None:
    """Set widget inputs on every node of a type (and matching `match`); the input must exist."""
    ids = node_ids(graph, class_type, **(match or {}))
    assert ids, f"no {class_type} with {match} in the workflow"
    for node_id in ids:
        for name, value in values.items():
            assert name in graph[node_id]["inputs"], f"{class_type} has no input {name}"
            graph[node_id]["inputs"][name] = value


def subgraph(graph: dict, *node_ids: str) -> dict:
    """The nodes `node_ids` and everything they take input from (what ComfyUI runs for those outputs)."""
    keep, todo = set(), list(node_ids)
    while todo:
        node_id = todo.pop()
        if node_id not in keep:
            keep.add(node_id)
            todo += [value[0] for value in graph[node_id]["inputs"].values() if isinstance(value, list)]
    return {node_id: node for node_id, node in graph.items() if node_id in keep}


def output_images(entry: dict, node_id: str, output_dir: Path) -> list[np.ndarray]:
    """The saved (type "output") images of one node in a /history entry, as uint8 arrays."""
    images = entry["outputs"].get(node_id, {}).get("images", [])
    assert images, f"node {node_id} produced no images: {json.dumps(entry['outputs'])[:500]}"
    arrays = []
    for image in images:
        assert image["type"] == "output", image
        path = output_dir / image["subfolder"] / image["filename"]
        arrays.append(np.asarray(Image.open(path).convert("RGB")))
    return arrays


def max_pixel_difference(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape, (a.shape, b.shape)
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())
