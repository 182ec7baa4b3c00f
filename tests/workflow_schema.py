"""Check workflow files (UI and API format) against a live server's /object_info.

The UI format stores a node's widget values as a list (``widgets_values``) in the order the frontend
creates widgets: the node's required then optional inputs (``input_order``) that are widgets, where
an INT with ``control_after_generate`` (or, when unset, named "seed"/"noise_seed": the frontend's
legacy rule, useIntWidget in frontend 1.32.9) is followed by its "control after generate" combo.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Node types that only the frontend knows (never sent to the server).
FRONTEND_ONLY = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
LEGACY_SEED_NAMES = ("seed", "noise_seed")
# Model-file dropdowns: the value names the user's file, which a test server does not have.
FILE_INPUTS = frozenset(
    {
        ("CheckpointLoaderSimple", "ckpt_name"),
        ("UNETLoader", "unet_name"),
        ("DualCLIPLoader", "clip_name1"),
        ("DualCLIPLoader", "clip_name2"),
        ("VAELoader", "vae_name"),
        ("LD3LoadSigmas", "schedule_file"),
        ("LD3LoadTeacher", "teacher_file"),
    }
)
MODEL_FILE_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".gguf")
# Widgets a frontend extension adds (not in /object_info): not saved in widgets_values, but
# graphToPrompt sends their value and the server ignores it.
FRONTEND_WIDGETS = {("PreviewAny", "preview"): ""}


@dataclass(frozen=True)
class Widget:
    """One widget of a node as the frontend makes it: its input name, type and options."""

    name: str
    type: str  # INT, FLOAT, STRING, BOOLEAN, COMBO or "CONTROL" (control_after_generate)
    options: dict
    choices: tuple = ()


def input_specs(info: dict) -> list[tuple[str, object, dict]]:
    """(name, type, options) of a node type's inputs, required then optional, in the server's order."""
    specs = []
    order = info.get("input_order") or {}
    for section in ("required", "optional"):
        inputs = info.get("input", {}).get(section, {}) or {}
        for name in order.get(section) or list(inputs):
            spec = inputs[name]
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            specs.append((name, spec[0], options))
    return specs


def widgets(info: dict) -> list[Widget]:
    """The widgets the frontend creates for a node type, in widgets_values order."""
    out = []
    for name, kind, options in input_specs(info):
        if options.get("forceInput"):
            continue
        if isinstance(kind, list):  # a legacy combo: the options list is the type
            out.append(Widget(name, "COMBO", options, tuple(kind)))
        elif kind in WIDGET_TYPES:
            choices = tuple(options.get("options", ())) if kind == "COMBO" else ()
            out.append(Widget(name, kind, options, choices))
        else:
            continue
        control = options.get("control_after_generate")
        if control is None and kind == "INT":
            control = name in LEGACY_SEED_NAMES
        if control:
            out.append(Widget("control_after_generate", "CONTROL", {}, CONTROL_VALUES))
    return out


def check_value(node_type: str, widget: Widget, value) -> str | None:
    """Why `value` is not valid for `widget`, or None if it is."""
    where = f"{node_type}.{widget.name}"
    if widget.type == "INT":
        if not isinstance(value, int) or isinstance(value, bool):
            return f"{where}: {value!r} is not an integer"
        low, high = widget.options.get("min"), widget.options.get("max")
        if (low is not None and value < low) or (high is not None and value > high):
            return f"{where}: {value} is outside [{low}, {high}]"
    elif widget.type == "FLOAT":
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            return f"{where}: {value!r} is not a finite number"
        low, high = widget.options.get("min"), widget.options.get("max")
        if (low is not None and value < low) or (high is not None and value > high):
            return f"{where}: {value} is outside [{low}, {high}]"
    elif widget.type == "BOOLEAN":
        if not isinstance(value, bool):
            return f"{where}: {value!r} is not a boolean"
    elif widget.type == "STRING":
        if not isinstance(value, str):
            return f"{where}: {value!r} is not a string"
    elif (node_type, widget.name) in FILE_INPUTS:
        if not isinstance(value, str) or not value.endswith(MODEL_FILE_SUFFIXES):
            return f"{where}: {value!r} is not a model file name"
    elif value not in widget.choices:  # COMBO, CONTROL
        return f"{where}: {value!r} is not one of {list(widget.choices)}"
    return None


def _input_type(kind) -> str:
    return "COMBO" if isinstance(kind, list) else str(kind)


def _types_match(output_type: str, input_type: str) -> bool:
    if "*" in (output_type, input_type):
        return True
    return bool(set(output_type.split(",")) & set(input_type.split(",")))


def check_api(graph: dict, object_info: dict) -> list[str]:
    """Problems of an API-format graph: unknown types/inputs, missing inputs, bad links and values."""
    problems = []
    for node_id, node in graph.items():
        node_type = node.get("class_type")
        info = object_info.get(node_type)
        if info is None:
            problems.append(f"node {node_id}: unknown node type {node_type!r}")
            continue
        specs = {name: (kind, options) for name, kind, options in input_specs(info)}
        required = info.get("input", {}).get("required", {}) or {}
        inputs = node.get("inputs", {})
        problems += [
            f"node {node_id} ({node_type}): unknown input {name!r}"
            for name in inputs
            if name not in specs and (node_type, name) not in FRONTEND_WIDGETS
        ]
        problems += [
            f"node {node_id} ({node_type}): required input {name!r} is missing"
            for name in required
            if name not in inputs
        ]
        by_name = {w.name: w for w in widgets(info)}
        for name, value in inputs.items():
            if name not in specs:
                continue
            kind, _ = specs[name]
            if isinstance(value, list):  # a link: [source node id, output index]
                problems += _check_api_link(graph, object_info, node_id, name, _input_type(kind), value)
            elif name in by_name:
                problem = check_value(node_type, by_name[name], value)
                if problem:
                    problems.append(f"node {node_id}: {problem}")
            else:
                problems.append(f"node {node_id} ({node_type}): {name!r} takes a link, got {value!r}")
    return problems


def _check_api_link(graph, object_info, node_id, name, input_type, link) -> list[str]:
    if len(link) != 2 or str(link[0]) not in graph or not isinstance(link[1], int):
        return [f"node {node_id}.{name}: bad link {link!r}"]
    source = graph[str(link[0])]
    outputs = object_info.get(source["class_type"], {}).get("output", [])
    if not 0 <= link[1] < len(outputs):
        return [f"node {node_id}.{name}: {source['class_type']} has no output {link[1]}"]
    output_type = _input_type(outputs[link[1]])
    if not _types_match(output_type, input_type):
        return [f"node {node_id}.{name}: {output_type} output linked to a {input_type} input"]
    return []


def check_ui(workflow: dict, object_info: dict) -> list[str]:
    """Problems of a UI-format workflow: unknown types, widget values that do not fit, bad links."""
    problems = []
    nodes = {node["id"]: node for node in workflow.get("nodes", [])}
    for node in nodes.values():
        node_type = node.get("type")
        if node_type in FRONTEND_ONLY:
            continue
        info = object_info.get(node_type)
        if info is None:
            problems.append(f"node {node['id']}: unknown node type {node_type!r}")
            continue
        expected = widgets(info)
        values = node.get("widgets_values") or []
        if isinstance(values, dict):  # some frontend nodes save a dict; none of ours do
            problems.append(f"node {node['id']} ({node_type}): widgets_values is a dict")
            continue
        if len(values) != len(expected):
            problems.append(
                f"node {node['id']} ({node_type}): {len(values)} widget values for widgets "
                f"{[w.name for w in expected]}"
            )
            continue
        for widget, value in zip(expected, values):
            problem = check_value(node_type, widget, value)
            if problem:
                problems.append(f"node {node['id']}: {problem}")
        specs = {name: kind for name, kind, _ in input_specs(info)}
        for slot in node.get("inputs", []):
            if slot["name"] not in specs:
                problems.append(f"node {node['id']} ({node_type}): unknown input {slot['name']!r}")
        names = info.get("output_name") or info.get("output", [])
        for index, slot in enumerate(node.get("outputs", [])):
            if index >= len(info.get("output", [])):
                problems.append(f"node {node['id']} ({node_type}): extra output {slot.get('name')!r}")
            elif slot.get("name") != names[index] or slot.get("type") != _input_type(info["output"][index]):
                problems.append(f"node {node['id']} ({node_type}): output {index} is {slot} on the server")
    for link in workflow.get("links", []):
        link_id, origin, origin_slot, target, target_slot, link_type = link
        if origin not in nodes or target not in nodes:
            problems.append(f"link {link_id}: unknown node")
            continue
        out_slot = nodes[origin]["outputs"][origin_slot]
        in_slot = nodes[target]["inputs"][target_slot]
        if link_id not in (out_slot.get("links") or []) or in_slot.get("link") != link_id:
            problems.append(f"link {link_id}: not recorded on both of its slots")
        # The frontend records the output's type, or "*" when linking into an any-type input.
        if not _types_match(out_slot["type"], in_slot["type"]) or link_type not in (out_slot["type"], "*"):
            problems.append(f"link {link_id}: {out_slot['type']} -> {in_slot['type']} ({link_type})")
    return problems
