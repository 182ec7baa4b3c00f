"""The LD3 teacher file: teacher pairs (safetensors) with a JSON description, and a check of prompts.

LD3 Generate Teacher writes one (output/ld3/<name>_<counter>.safetensors); LD3 Load Teacher reads it
back, so the expensive teacher samples survive a failed or cancelled training and serve more trainings
(another sampler or step count). The file holds no conditioning: the loader is given the prompts again
and compares each with a sketch of the one the teacher was made with (``conditioning_sketch``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save as _safetensors_save

from .errors import LD3InputError
from .identity import SKETCH_SIZE, conditioning_sketch, sketch_difference
from .schedule_file import _Invalid, _is_finite_number, _load_tensors, _read_header
from .teacher import TeacherData

FORMAT = "ld3-teacher"
FORMAT_VERSION = 1
METADATA_KEY = "ld3_teacher"
# Same prompt re-encoded (other device or precision) differs by ~1e-3 relative; another prompt by >10%.
SKETCH_TOLERANCE = 0.03
_TENSORS = {
    "noise": (torch.float32,),
    "targets": (torch.float32,),
    "prompt_index": (torch.int64,),
    "is_validation": (torch.bool,),
}
_INPUT = "teacher_file"
_FIX = "Choose a file saved by LD3 Generate Teacher (output/ld3/), or generate the teacher again"


def teacher_file_bytes(teacher: TeacherData, versions: dict) -> bytes:
    """The file's bytes: the four tensors and the teacher's info (+ format and software versions)."""
    tensors = {
        "noise": teacher.noise.float().contiguous(),
        "targets": teacher.targets.float().contiguous(),
        "prompt_index": teacher.prompt_index.long().contiguous(),
        "is_validation": teacher.is_validation.bool().contiguous(),
    }
    info = {"format": FORMAT, "format_version": FORMAT_VERSION, "versions": versions, **teacher.info}
    return _safetensors_save(tensors, metadata={METADATA_KEY: json.dumps(info, allow_nan=False)})


def parse_teacher_bytes(data: bytes, name: str = "teacher") -> TeacherData:
    """Read and validate a teacher file's bytes; never unpickles, refuses anything malformed."""
    try:
        header = _read_header(data)
        tensors = _load_tensors(data)
        info = _info(header)
        teacher = _check_tensors(tensors, info)
    except _Invalid as exc:
        raise LD3InputError(_INPUT, f"'{name}' is not a valid LD3 teacher file: {exc}", _FIX) from None
    return teacher


def check_prompts(teacher: TeacherData, positives: Sequence[list], negative: list) -> None:
    """The prompts given to LD3 Load Teacher must be the ones the teacher was made with, in order."""
    made = int(teacher.info.get("prompts", 1))
    if len(positives) != made:
        raise LD3InputError(
            "positive" if len(positives) < 1 else f"positive_{min(len(positives), made) + 1}",
            f"the teacher was made with {made} prompt(s), but {len(positives)} are connected",
            "Connect the same prompts, in the same order, as at LD3 Generate Teacher "
            "(positive, then positive_2, ...)",
        )
    sketches = teacher.info.get("conditioning")
    if not sketches:  # a teacher file from before the sketches were recorded: nothing to compare
        return
    for i, (given, stored) in enumerate(zip(positives, sketches["positive"], strict=True)):
        name = "positive" if i == 0 else f"positive_{i + 1}"
        if sketch_difference(stored, conditioning_sketch(given)) > SKETCH_TOLERANCE:
            raise LD3InputError(
                name,
                f"differs from prompt {i + 1} the teacher was made with",
                "Connect the same text encoder and prompt as at LD3 Generate Teacher, or generate a new "
                "teacher for this prompt",
            )
    given_negative = conditioning_sketch(negative)
    if any(sketch_difference(stored, given_negative) > SKETCH_TOLERANCE for stored in sketches["negative"]):
        raise LD3InputError(
            "negative",
            "differs from the negative prompt the teacher was made with",
            "Connect the same negative conditioning as at LD3 Generate Teacher",
        )


def _info(header: dict) -> dict:
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict) or METADATA_KEY not in metadata:
        raise _Invalid(
            "it has no LD3 teacher description (a schedule, checkpoint or other safetensors file?)"
        )
    try:
        info = json.loads(metadata[METADATA_KEY])
    except (TypeError, ValueError, RecursionError):
        raise _Invalid("its description is not JSON") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise _Invalid(f"its format is not '{FORMAT}'")
    if info.get("format_version") != FORMAT_VERSION:
        raise _Invalid(
            f"format version {info.get('format_version')!r} is not {FORMAT_VERSION} (made by another LD3 version)"
        )
    prompts = info.get("prompts")
    if not isinstance(prompts, int) or isinstance(prompts, bool) or not 1 <= prompts <= 64:
        raise _Invalid(f"its prompt count {prompts!r} is not a number from 1 to 64")
    cfg = info.get("cfg")
    if not isinstance(cfg, list) or len(cfg) != prompts or not all(_is_finite_number(c) for c in cfg):
        raise _Invalid("its CFG list does not match its prompt count")
    sketches = info.get("conditioning")
    if sketches is not None and not _sketches_ok(sketches, prompts):
        raise _Invalid("its prompt sketches are malformed")
    # Teachers from before the self-check have no "self_error"; they load as they are.
    check = info.get("self_error")
    if check is not None and not _self_error_ok(check):
        raise _Invalid("its self-check (self_error) is malformed")
    return {k: v for k, v in info.items() if k not in ("format", "format_version")}


def _check_tensors(tensors: dict, info: dict) -> TeacherData:
    if set(tensors) != set(_TENSORS):
        raise _Invalid(f"holds tensors {sorted(tensors)}, expected {sorted(_TENSORS)}")
    for key, dtypes in _TENSORS.items():
        if tensors[key].dtype not in dtypes:
            raise _Invalid(f"tensor '{key}' has dtype {tensors[key].dtype}, expected {dtypes[0]}")
    noise, targets = tensors["noise"], tensors["targets"]
    prompt_index, is_validation = tensors["prompt_index"], tensors["is_validation"]
    count = noise.shape[0] if noise.ndim >= 2 else 0
    if count < 2 or targets.shape != noise.shape:
        raise _Invalid(
            f"noise {tuple(noise.shape)} and targets {tuple(targets.shape)} are not [M >= 2, *latent] alike"
        )
    if prompt_index.shape != (count,) or is_validation.shape != (count,):
        raise _Invalid(f"prompt_index and is_validation must have {count} entries, one per sample")
    if int(prompt_index.min()) < 0 or int(prompt_index.max()) >= info["prompts"]:
        raise _Invalid(f"prompt_index holds a prompt outside 0..{info['prompts'] - 1}")
    if bool(is_validation.all()) or not bool(is_validation.any()):
        raise _Invalid("it needs both training and validation samples")
    if not bool(torch.isfinite(noise).all() and torch.isfinite(targets).all()):
        raise _Invalid("its noise or targets hold NaN or Inf")
    shape = info.get("latent_shape")
    if shape is not None and list(shape) != list(noise.shape[1:]):
        raise _Invalid(f"its latent shape {shape} does not match its tensors {list(noise.shape[1:])}")
    return TeacherData(noise, targets, prompt_index, is_validation, info)


def _sketches_ok(sketches: object, prompts: int) -> bool:
    if not isinstance(sketches, dict) or set(sketches) != {"positive", "negative"}:
        return False
    return all(
        isinstance(sketches[key], list)
        and len(sketches[key]) == prompts
        and all(_is_vector(v) for v in sketches[key])
        for key in ("positive", "negative")
    )


def _self_error_ok(check: object) -> bool:
    """``{"rmse", "check_steps", "samples", "few_step_rmse": {"<steps>": rmse}}`` with sane values."""
    if not isinstance(check, dict) or not {"rmse", "check_steps", "samples", "few_step_rmse"} <= set(check):
        return False
    few = check["few_step_rmse"]
    auto = check.get("auto_rmse", {})  # what ``auto`` measured of each scheduler it chose from
    return (
        isinstance(auto, dict)
        and all(isinstance(k, str) and _is_finite_number(v) and v >= 0 for k, v in auto.items())
        and _is_finite_number(check["rmse"])
        and check["rmse"] >= 0
        and all(_is_count(check[key]) for key in ("check_steps", "samples"))
        and isinstance(few, dict)
        and all(k.isdigit() and _is_finite_number(v) and v >= 0 for k, v in few.items())
    )


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_vector(value: object) -> bool:
    return isinstance(value, list) and len(value) == SKETCH_SIZE and all(_is_finite_number(v) for v in value)


def next_numbered_path(directory: str | os.PathLike, stem: str, suffix: str = ".safetensors") -> Path:
    """``<directory>/<stem>_<counter>.safetensors`` with the counter one past the highest existing one."""
    directory = Path(directory)
    pattern = re.compile(re.escape(stem) + r"_(\d+)" + re.escape(suffix) + "$")
    used = [int(m.group(1)) for p in _listdir(directory) if (m := pattern.match(p))]
    return directory / f"{stem}_{max(used, default=0) + 1:05d}{suffix}"


def _listdir(directory: Path) -> list[str]:
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []
