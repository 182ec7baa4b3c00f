"""The LD3 schedule file: a safetensors file with the learned sigmas and a JSON description.

Version 2 holds the three per-step sigmas of a ``Schedule`` (step, model and scale sigmas). Version 1
files (step_sigmas + eval_sigmas: the network's time only) still load: their scale sigmas are the step
sigmas, which is exactly how version 1 sampled.
"""

import json
import math
import os
import platform
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import safetensors
import torch
from safetensors.torch import load as _safetensors_load
from safetensors.torch import save as _safetensors_save

from .errors import LD3InputError
from .schedule import Schedule

FORMAT = "ld3-schedule"
FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)
TENSORS = ("step_sigmas", "model_sigmas", "scale_sigmas")
_V1_TENSORS = ("step_sigmas", "eval_sigmas")
METADATA_KEY = "ld3"
SUFFIX = ".safetensors"
TRAIN_STATUSES = ("completed", "interrupted")
MAX_NAME_LENGTH = 100
# A schedule is a few hundred bytes of tensors plus a few KB of JSON; anything far larger is the wrong file.
MAX_FILE_BYTES = 16 * 1024 * 1024
_INPUT = "schedule_file"
_FIX = "Choose a schedule file saved by the LD3 training node, or train a new one"
_TOP_KEYS = ("format", "format_version", "sampler", "steps", "cfg", "latent_shape", "model", "loss", "train")
_METADATA_KEYS = frozenset(_TOP_KEYS + ("versions",))
# written since format version 2 (teacher_noises: since 2026-12-04, noise_keys of the teacher's samples)
# (starts: since 2026-12-05, the built-ins training started from)
_TRAIN_OPTIONAL = frozenset(("recipe", "verdict", "mined_pairs", "teacher_noises", "starts"))
_TRAIN_KEYS = frozenset(
    (
        "validation_curve",
        "best_validation_loss",
        "initial_scheduler",
        "initial_validation_loss",
        "epochs_done",
        "status",
    )
)
_WINDOWS_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL"] + [f"COM{i}" for i in range(1, 10)] + [f"LPT{i}" for i in range(1, 10)]
)


class _Invalid(Exception):
    """Internal: one problem with a schedule's contents, turned into the caller's error type."""


@dataclass(frozen=True, eq=False)
class ScheduleRecord:
    """One learned schedule: step, model and scale sigmas (see ``schedule.py``) and what they were learned for."""

    step_sigmas: torch.Tensor  # float32 [N+1], strictly decreasing, ends at 0
    model_sigmas: torch.Tensor  # float32 [N], the time the network is told at each step
    scale_sigmas: torch.Tensor  # float32 [N], the sigma its input and output are scaled with
    sampler: str
    cfg: float
    latent_shape: tuple[int, ...]
    model: dict  # identity: str -> JSON scalar (model class, model_sampling, sigma range, fingerprint)
    loss: str
    # validation_curve, best_validation_loss, initial_scheduler, initial_validation_loss, epochs_done, status
    train: dict
    versions: dict = field(default_factory=lambda: default_versions())  # str -> str

    def __post_init__(self):
        # Own private float32 copies (the file's dtype) so the frozen record cannot change under us;
        # the checks run after the cast, which could merge two nearly equal sigmas.
        for name in TENSORS:
            value = getattr(self, name)
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                object.__setattr__(self, name, value.detach().to("cpu", torch.float32).clone())
        try:
            _check_tensors(self.step_sigmas, self.model_sigmas, self.scale_sigmas)
            meta = _check_metadata(self._metadata_unchecked(), len(self.step_sigmas) - 1)
        except _Invalid as exc:
            raise ValueError(f"invalid ScheduleRecord: {exc}") from None
        object.__setattr__(self, "cfg", float(meta["cfg"]))
        object.__setattr__(self, "latent_shape", tuple(meta["latent_shape"]))
        for name in ("model", "train", "versions"):
            object.__setattr__(self, name, meta[name])

    @property
    def schedule(self) -> Schedule:
        return Schedule(self.step_sigmas, self.model_sigmas, self.scale_sigmas)

    @property
    def steps(self) -> int:
        """Number of solver steps N (len(step_sigmas) - 1)."""
        return len(self.step_sigmas) - 1

    def metadata(self) -> dict:
        """The JSON object stored under the "ld3" metadata key."""
        return json.loads(json.dumps(self._metadata_unchecked(), allow_nan=False))

    def _metadata_unchecked(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "sampler": self.sampler,
            "steps": len(self.step_sigmas) - 1 if isinstance(self.step_sigmas, torch.Tensor) else None,
            "cfg": self.cfg,
            "latent_shape": list(self.latent_shape) if isinstance(self.latent_shape, (list, tuple)) else None,
            "model": self.model,
            "loss": self.loss,
            "train": self.train,
            "versions": self.versions,
        }


def default_versions() -> dict:
    """Versions worth recording next to a schedule (callers add ComfyUI's and the pack's)."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "safetensors": getattr(safetensors, "__version__", "unknown"),
    }


def save_schedule(path: str | os.PathLike, record: ScheduleRecord) -> None:
    """Write `record` to `path` atomically: a complete new file or the old file untouched."""
    if not isinstance(record, ScheduleRecord):
        raise TypeError(f"save_schedule needs a ScheduleRecord, got {type(record).__name__}")
    path = Path(path)
    tensors = {name: getattr(record, name).contiguous() for name in TENSORS}
    data = _safetensors_save(tensors, metadata={METADATA_KEY: json.dumps(record.metadata(), allow_nan=False)})
    atomic_write(path, data)


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` as a complete new file or not at all: temp file, flush + fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Interrupts included: a half-written temp file must never be left behind.
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(path.parent)


def load_schedule(path: str | os.PathLike) -> ScheduleRecord:
    """Read and validate a schedule file; never unpickles, refuses anything malformed."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise _Invalid(f"'{path.name}' is {size} bytes, far larger than any LD3 schedule")
        data = path.read_bytes()
    except FileNotFoundError:
        raise LD3InputError(_INPUT, f"no file at '{path}'", _FIX) from None
    except IsADirectoryError:
        raise LD3InputError(_INPUT, f"'{path}' is a folder, not a schedule file", _FIX) from None
    except _Invalid as exc:
        raise LD3InputError(_INPUT, str(exc), _FIX) from None
    return parse_schedule_bytes(data, name=path.name)


def parse_schedule_bytes(data: bytes, name: str = "schedule") -> ScheduleRecord:
    """Parse the bytes of a schedule file (see load_schedule)."""
    try:
        header = _read_header(data)
        if {"noise", "targets"} <= set(header):
            raise _Invalid("it is a teacher file (from LD3 Generate Teacher): load it with LD3 Load Teacher")
        raw_meta = _metadata_json(header)
        tensors = _decode_tensors(data, header)
        expected = _V1_TENSORS if _version(raw_meta) == 1 else TENSORS
        if set(tensors) != set(expected):
            raise _Invalid(f"holds tensors {sorted(tensors)}, expected exactly {', '.join(expected)}")
        if "eval_sigmas" in tensors:  # version 1: the network's time only, scaled with the step sigma
            tensors = {
                "step_sigmas": tensors["step_sigmas"],
                "model_sigmas": tensors["eval_sigmas"],
                "scale_sigmas": tensors["step_sigmas"][:-1].clone(),
            }
        _check_tensors(*(tensors[key] for key in TENSORS))
        meta = _check_metadata(raw_meta, len(tensors["step_sigmas"]) - 1)
    except _Invalid as exc:
        raise LD3InputError(_INPUT, f"'{name}' is not a valid LD3 schedule: {exc}", _FIX) from None
    return ScheduleRecord(
        **{key: tensors[key] for key in TENSORS},
        sampler=meta["sampler"],
        cfg=meta["cfg"],
        latent_shape=tuple(meta["latent_shape"]),
        model=meta["model"],
        loss=meta["loss"],
        train=meta["train"],
        versions=meta["versions"],
    )


def validate_schedule_name(
    name: str, input_name: str = "schedule_name", folder: str = "the LD3 models folder (models/ld3)"
) -> str:
    """Check a user-chosen file name (saved in ``folder``) and return it ending in .safetensors."""
    fix = "Use a plain file name such as 'sd15_euler_6steps' (letters, digits, '-', '_', '.')"
    if not isinstance(name, str) or not name.strip():
        raise LD3InputError(input_name, "the name is empty", fix)
    problem = None
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        problem = "the name contains control characters"
    elif "/" in name or "\\" in name:
        problem = f"'{name}' contains a path separator; the file is saved in {folder}"
    elif ":" in name:
        problem = f"'{name}' contains ':' (a drive letter or stream name on Windows)"
    elif ".." in name or name.startswith("."):
        problem = f"'{name}' starts with '.' or contains '..'"
    elif os.path.isabs(name):
        problem = f"'{name}' is an absolute path"
    elif len(name) > MAX_NAME_LENGTH:
        problem = f"the name is {len(name)} characters long, the limit is {MAX_NAME_LENGTH}"
    elif name != name.strip() or name.endswith("."):
        problem = f"'{name}' begins or ends with a space or ends with '.'"
    elif name.split(".")[0].upper() in _WINDOWS_RESERVED:
        problem = f"'{name}' is a reserved device name on Windows"
    if problem is not None:
        raise LD3InputError(input_name, problem, fix)
    return name if name.lower().endswith(SUFFIX) else name + SUFFIX


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable on POSIX; Windows cannot open directories, and that is fine.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_header(data: bytes) -> dict:
    if len(data) < 8:
        raise _Invalid(f"the file is {len(data)} bytes long, too short for a safetensors header (truncated?)")
    (header_len,) = struct.unpack("<Q", data[:8])
    # Checked before parsing: a bogus length (e.g. a pickle's first bytes) must not be trusted.
    if header_len > len(data) - 8:
        raise _Invalid(
            f"the header claims {header_len} bytes but only {len(data) - 8} follow: "
            "truncated, or not a safetensors file (a .pt/.ckpt pickle?)"
        )
    try:
        header = json.loads(data[8 : 8 + header_len].decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _Invalid("the header is not JSON: not a safetensors file (a .pt/.ckpt pickle?)") from None
    if not isinstance(header, dict):
        raise _Invalid("the header is not a JSON object: not a safetensors file")
    return header


def _decode_tensors(data: bytes, header: dict) -> dict:
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(info, dict) or info.get("dtype") != "F32":
            dtype = info.get("dtype") if isinstance(info, dict) else None
            raise _Invalid(f"tensor '{key}' has dtype {dtype!r}, expected F32 (float32)")
    return _load_tensors(data)


def _load_tensors(data: bytes) -> dict:
    """The tensors of safetensors bytes (no code runs: safetensors never unpickles)."""
    try:
        return _safetensors_load(bytes(data))
    except (safetensors.SafetensorError, ValueError, RuntimeError, OverflowError, TypeError) as exc:
        raise _Invalid(f"the safetensors data is corrupt or truncated ({str(exc)[:200]})") from None


def _metadata_json(header: dict) -> object:
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict) or METADATA_KEY not in metadata:
        raise _Invalid(f"the safetensors metadata has no '{METADATA_KEY}' entry")
    if set(metadata) != {METADATA_KEY}:
        extra = sorted(k for k in metadata if k != METADATA_KEY)
        raise _Invalid(f"the safetensors metadata has unexpected keys {extra}")
    text = metadata[METADATA_KEY]
    if not isinstance(text, str):
        raise _Invalid(f"the '{METADATA_KEY}' metadata is not a string")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise _Invalid(f"the '{METADATA_KEY}' metadata is not valid JSON") from None


def _reject_constant(name: str):
    raise ValueError(f"non-finite constant {name}")


def _version(meta: object) -> object:
    return meta.get("format_version") if isinstance(meta, dict) else None


def _check_tensors(step_sigmas, model_sigmas, scale_sigmas) -> None:
    named = (("step_sigmas", step_sigmas), ("model_sigmas", model_sigmas), ("scale_sigmas", scale_sigmas))
    for key, tensor in named:
        if not isinstance(tensor, torch.Tensor):
            raise _Invalid(f"{key} is a {type(tensor).__name__}, expected a tensor")
        if tensor.dtype != torch.float32:
            raise _Invalid(f"{key} has dtype {tensor.dtype}, expected torch.float32")
        if tensor.ndim != 1:
            raise _Invalid(f"{key} has shape {list(tensor.shape)}, expected one dimension")
        if not bool(torch.isfinite(tensor).all()):
            raise _Invalid(f"{key} contains NaN or infinite values")
    steps = len(step_sigmas) - 1
    if steps < 1:
        raise _Invalid(f"step_sigmas has {len(step_sigmas)} values, at least 2 are needed (one step)")
    for key, tensor in named[1:]:
        if len(tensor) != steps:
            raise _Invalid(f"{key} has {len(tensor)} values, expected {steps} (one per step)")
    if float(step_sigmas[-1]) != 0.0 or float(step_sigmas[0]) <= 0.0:
        raise _Invalid("step_sigmas must start above 0 and end at exactly 0")
    if not bool((step_sigmas[1:] < step_sigmas[:-1]).all()):
        raise _Invalid("step_sigmas are not strictly decreasing")
    for key, tensor in named[1:]:
        if not bool((tensor > 0).all()):
            raise _Invalid(f"{key} must all be positive")


def _check_metadata(meta: object, steps: int) -> dict:
    if not isinstance(meta, dict):
        raise _Invalid(f"the '{METADATA_KEY}' metadata is not a JSON object")
    missing = sorted(_METADATA_KEYS - set(meta))
    extra = sorted(set(meta) - _METADATA_KEYS)
    if missing or extra:
        raise _Invalid(f"metadata keys missing {missing}, unexpected {extra}")
    if meta["format"] != FORMAT:
        raise _Invalid(f"format is {meta['format']!r}, expected {FORMAT!r}")
    if not _is_int(meta["format_version"]) or meta["format_version"] not in READ_VERSIONS:
        raise _Invalid(
            f"format_version is {meta['format_version']!r}; this LD3 version reads versions "
            f"{', '.join(map(str, READ_VERSIONS))}"
        )
    for key in ("sampler", "loss"):
        if not isinstance(meta[key], str) or not meta[key]:
            raise _Invalid(f"'{key}' must be a non-empty string, got {meta[key]!r}")
    if not _is_int(meta["steps"]):
        raise _Invalid(f"metadata 'steps' must be an integer (here {steps}), got {meta['steps']!r}")
    if meta["steps"] != steps:
        raise _Invalid(f"metadata says {meta['steps']} steps but step_sigmas has {steps}")
    if not _is_finite_number(meta["cfg"]):
        raise _Invalid(f"'cfg' must be a finite number, got {meta['cfg']!r}")
    shape = meta["latent_shape"]
    if not isinstance(shape, list) or not shape or not all(_is_int(d) and d > 0 for d in shape):
        raise _Invalid(f"'latent_shape' must be a list of positive integers, got {shape!r}")
    model = meta["model"]
    if not isinstance(model, dict) or not all(
        isinstance(v, (str, bool, type(None))) or _is_finite_number(v) for v in model.values()
    ):
        raise _Invalid("'model' must be an object of strings, numbers, booleans or null")
    versions = meta["versions"]
    if not isinstance(versions, dict) or not all(isinstance(v, str) for v in versions.values()):
        raise _Invalid("'versions' must be an object of strings")
    train = _check_train(meta["train"])
    out = {key: meta[key] for key in _TOP_KEYS}
    # A JSON round trip gives independent plain copies (and proves the record can be written).
    copied = json.loads(json.dumps({"model": model, "train": train, "versions": versions}, allow_nan=False))
    out.update(copied, cfg=float(meta["cfg"]), latent_shape=list(shape))
    return out


def _check_train(train: object) -> dict:
    if not isinstance(train, dict):
        raise _Invalid("'train' must be an object")
    missing = sorted(_TRAIN_KEYS - set(train))
    extra = sorted(set(train) - _TRAIN_KEYS - _TRAIN_OPTIONAL)
    if missing or extra:
        raise _Invalid(f"'train' keys missing {missing}, unexpected {extra}")
    curve = train["validation_curve"]
    if not isinstance(curve, list) or not all(_is_finite_number(v) for v in curve):
        raise _Invalid("'train.validation_curve' must be a list of finite numbers")
    for key in ("best_validation_loss", "initial_validation_loss"):
        if not _is_finite_number(train[key]):
            raise _Invalid(f"'train.{key}' must be a finite number, got {train[key]!r}")
    if not isinstance(train["initial_scheduler"], str):
        raise _Invalid("'train.initial_scheduler' must be a string")
    if not _is_int(train["epochs_done"]) or train["epochs_done"] < 0:
        raise _Invalid(f"'train.epochs_done' must be a non-negative integer, got {train['epochs_done']!r}")
    if "mined_pairs" in train and (not _is_int(train["mined_pairs"]) or train["mined_pairs"] < 0):
        raise _Invalid(f"'train.mined_pairs' must be a non-negative integer, got {train['mined_pairs']!r}")
    if "recipe" in train and not isinstance(train["recipe"], str):
        raise _Invalid("'train.recipe' must be a string")
    for name in ("teacher_noises", "starts"):
        keys = train.get(name, [])
        if not isinstance(keys, list) or not all(isinstance(k, str) and len(k) <= 64 for k in keys):
            raise _Invalid(f"'train.{name}' must be a list of short strings")
    verdict = train.get("verdict", {})
    if not isinstance(verdict, dict) or not all(
        isinstance(v, (str, bool, type(None))) or _is_finite_number(v) for v in verdict.values()
    ):
        raise _Invalid("'train.verdict' must be an object of strings, numbers, booleans or null")
    if train["status"] not in TRAIN_STATUSES:
        raise _Invalid(f"'train.status' must be one of {list(TRAIN_STATUSES)}, got {train['status']!r}")
    return train


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class ScheduleSaver:
    """on_best callback: writes the best schedule so far (atomically), "completed" once training ends."""

    def __init__(
        self,
        path,
        identity: dict,
        cfg: float,
        latent_shape,
        sampler: str,
        loss: str,
        recipe: str,
        versions: dict,
        teacher_noises: list[str] | None = None,
    ):
        self.path = path
        self.teacher_noises = list(teacher_noises or [])
        self.identity = identity
        self.cfg = cfg
        self.latent_shape = tuple(latent_shape)
        self.sampler = sampler
        self.loss = loss
        self.recipe = recipe
        self.versions = versions

    def __call__(self, result) -> None:  # a TrainResult
        if not result.beats_incumbent:  # the schedule saved under this name is better: keep it
            return
        schedule = result.output_schedule if result.completed else result.schedule
        train = {
            "validation_curve": list(result.validation_curve),
            "best_validation_loss": float(result.best_validation_loss),
            "initial_scheduler": result.initial_scheduler,
            "initial_validation_loss": float(result.initial_validation_loss),
            "epochs_done": int(result.epochs_done),
            "mined_pairs": int(result.mined_pairs),
            "status": "completed" if result.completed else "interrupted",
            "recipe": self.recipe,
            "teacher_noises": self.teacher_noises,
            "starts": list(result.starts),
        }
        if result.verdict is not None:
            train["verdict"] = result.verdict.as_dict()
        record = ScheduleRecord(
            *schedule.tensors(),
            sampler=self.sampler,
            cfg=self.cfg,
            latent_shape=self.latent_shape,
            model=self.identity,
            loss=self.loss,
            train=train,
            versions=self.versions,
        )
        save_schedule(self.path, record)
