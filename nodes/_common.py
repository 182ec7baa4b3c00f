"""Glue shared by the LD3 nodes: registration, progress + cancel, the LD3_TEACHER value and file writing."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import comfy.model_management
import comfy.utils
import folder_paths
from comfy_api.latest import io, ui

from ..ld3_core import __version__
from ..ld3_core.comfy_ui import as_markdown, set_node_text_sink, show_on_node
from ..ld3_core.comfyui.adapter import Conditioning
from ..ld3_core.comfyui.requirements import check_at_load
from ..ld3_core.comfyui.scheduler import register_ld3_scheduler
from ..ld3_core.errors import LD3InputError
from ..ld3_core.schedule_file import default_versions
from ..ld3_core.teacher import TeacherData

SCHEDULE_FOLDER = "ld3"  # models/ld3: learned schedule files
LPIPS_FOLDER = "lpips"  # models/lpips: alexnet.safetensors for the LPIPS loss, if present
LPIPS_WEIGHTS = "alexnet.safetensors"
TEACHER_SUBFOLDER = "ld3"  # output/ld3: teacher data written by LD3 Generate Teacher
PACK_ROOT = Path(__file__).resolve().parents[1]

# The custom io type that carries teacher data from LD3 Generate Teacher to training and comparison.
Teacher = io.Custom("LD3_TEACHER")


@dataclass(frozen=True)
class TeacherBundle:
    """What an LD3_TEACHER socket carries: the teacher data and the conditionings it was made with."""

    data: TeacherData
    conditionings: tuple[Conditioning, ...]

    @property
    def cfg(self) -> float:
        return float(self.conditionings[0].cfg)


def advanced(spec):
    """Mark a widget input as advanced: current frontends fold such inputs into a collapsed 'Advanced
    Inputs' section of the node (``options.advanced`` in /object_info; ComfyUI PR #11939, frontend PR
    #8146/#8147); older ones ignore the key. Set through ``extra_dict``, which every schema version's
    ``Input.as_dict`` merges (0.3.75's typed inputs take no ``advanced`` argument)."""
    spec.extra_dict["advanced"] = True
    return spec


def data_seed(tooltip: str) -> io.Int.Input:
    """A ``seed`` widget for a seed that defines the model or the data: the frontend must not randomize it
    after each run (a second Run would build another model or data and overwrite schedules)."""
    return io.Int.Input(
        "seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False, tooltip=tooltip
    )


def refuse_if_incompatible() -> None:
    """Nodes that sample, train or patch a MODEL refuse, with the line logged at load, on a ComfyUI that
    lacks an internal the pack relies on (they stay listed, so a saved workflow still opens)."""
    if _INCOMPATIBLE:
        raise RuntimeError(_INCOMPATIBLE)


def report_output(*outputs, report: str) -> io.NodeOutput:
    """A node's outputs ending with its report: shown on the node itself (the frontend's node text), and as
    the STRING output and ui text in Markdown paragraphs (what PreviewAny renders and /history keeps)."""
    show_on_node(report)
    text = as_markdown(report)
    return io.NodeOutput(*outputs, text, ui=ui.PreviewText(text))


def _show_on_executing_node(text: str) -> bool:
    """ComfyUI's progress text on the node being executed (the frontend shows it on the node)."""
    from comfy_execution.utils import get_executing_context
    from server import PromptServer

    context = get_executing_context()
    server = getattr(PromptServer, "instance", None)
    if context is None or server is None:
        return False
    server.send_progress_text(text, context.node_id)
    return True


# The line logged at load when this ComfyUI lacks an internal the pack relies on (None: nothing lacks).
_INCOMPATIBLE: str | None = None


def register_pack() -> None:
    """Register the ``ld3`` KSampler scheduler and the ``ld3`` / ``lpips`` model folders (idempotent); log
    one line if this ComfyUI lacks an internal the pack relies on (then ``refuse_if_incompatible``)."""
    global _INCOMPATIBLE
    _INCOMPATIBLE = check_at_load()
    set_node_text_sink(_show_on_executing_node)
    register_ld3_scheduler()
    for name in (SCHEDULE_FOLDER, LPIPS_FOLDER):
        folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, name))
        folder_paths.folder_names_and_paths[name][1].add(".safetensors")


def schedule_dir() -> Path:
    """Where LD3 Train Sigmas saves: the first ``ld3`` models folder (models/ld3 unless configured)."""
    return Path(folder_paths.get_folder_paths(SCHEDULE_FOLDER)[0])


def lpips_weights_path() -> str | None:
    """models/lpips/alexnet.safetensors if it exists (offline LPIPS), else None (torchvision's cache)."""
    return folder_paths.get_full_path(LPIPS_FOLDER, LPIPS_WEIGHTS)


def versions() -> dict:
    """Software versions recorded in schedule files: Python, torch, safetensors, ComfyUI, this pack."""
    out = default_versions()
    try:
        import comfyui_version

        out["comfyui_version"] = str(comfyui_version.__version__)
    except ImportError:  # ComfyUI run as a library from elsewhere: the version is simply not recorded
        pass
    out["ld3"] = __version__
    return out


class NodeProgress:
    """Progress callback for a node: drives ComfyUI's progress bar and honours Cancel (/interrupt)."""

    def __init__(self, total: int):
        self.bar = comfy.utils.ProgressBar(max(1, int(total)))

    def __call__(self, done: int, total: int | None = None) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        self.bar.update_absolute(int(done), None if total is None else max(1, int(total)))

    def check(self) -> None:
        """Raise ComfyUI's interruption exception if the user pressed Cancel."""
        comfy.model_management.throw_exception_if_processing_interrupted()


def teacher_dir() -> Path:
    """Where LD3 Generate Teacher saves and LD3 Load Teacher reads: output/ld3."""
    return Path(folder_paths.get_output_directory()) / TEACHER_SUBFOLDER


def teacher_files() -> list[str]:
    """Teacher files in output/ld3, newest first (the one just generated is the default)."""
    try:
        entries = [e for e in os.scandir(teacher_dir()) if e.is_file() and e.name.endswith(".safetensors")]
    except FileNotFoundError:
        return []
    return [e.name for e in sorted(entries, key=lambda e: (-e.stat().st_mtime, e.name))]


def file_choice_error(
    input_name: str, value: str | None, folder: str, available: list[str], made_by: str
) -> LD3InputError | None:
    """None when ``value`` is one of the files a dropdown offers, else the error that says what to do.

    ComfyUI's own check would only say "Value not in list", which leaves the user stuck when the list is
    empty (nothing saved yet) or the workflow came from someone else's machine.
    """
    if value is None or value in available:  # None: a linked input, checked when the node runs
        return None
    held = f"it has {len(available)} other file(s)" if available else "it has none yet"
    return LD3InputError(
        input_name,
        f"there is no file '{value}' in {folder} ({held})",
        f"Run {made_by} to make one, or copy the file there and refresh the node list (press R); "
        "a shared workflow needs its author's file",
    )


def link_type_error(node_class, input_types: dict | None) -> LD3InputError | None:
    """A validate_inputs that takes ``input_types`` turns off ComfyUI's own check that each link carries
    the input's type; this is that check, with ComfyUI's rule (comfy_execution.validation)."""
    from comfy_execution.validation import validate_node_input  # ComfyUI 0.3.x and 0.38 alike

    declared = node_class.INPUT_TYPES()
    expected = {**declared.get("required", {}), **declared.get("optional", {})}
    for name, received in (input_types or {}).items():
        wanted = expected.get(name, (None,))[0]
        if isinstance(wanted, list):  # a combo's options
            wanted = "COMBO"
        if wanted is not None and not validate_node_input(received, wanted):
            return LD3InputError(
                name,
                f"the link carries {received}, this input takes {wanted}",
                f"Connect an output of type {wanted} to '{name}'",
            )
    return None


def student_steps(prompt: dict | None, node_id: str | None) -> dict[str, int]:
    """The ``steps`` widget of each LD3 Train Sigmas node that the queued prompt (ComfyUI's hidden
    PROMPT) feeds from output 0 of node ``node_id``: known to LD3 Generate Teacher before it samples, while
    ComfyUI's queue-time validation shows a node no other node's widgets. A linked ``steps`` is skipped."""
    found = {}
    for other_id, node in (prompt or {}).items():
        if not isinstance(node, dict) or node.get("class_type") != "LD3TrainSigmas":
            continue
        inputs = node.get("inputs") or {}
        link, steps = inputs.get("teacher"), inputs.get("steps")
        if isinstance(link, list) and [str(x) for x in link] == [str(node_id), "0"] and type(steps) is int:
            found[str(other_id)] = steps
    return found


def validation_answer(error: LD3InputError | None) -> bool | str:
    """What a node's validate_inputs returns: True, or the message ComfyUI shows under the input's name."""
    return True if error is None else f"{error.problem}. {error.fix}"
