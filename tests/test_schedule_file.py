"""The LD3 schedule file: round trip, every refusal, atomic writes, and no unpickling ever."""

import json
import os
import pickle
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as st_save

from ld3_core import schedule_file as sf
from ld3_core.errors import LD3InputError
from ld3_core.schedule_file import ScheduleRecord, load_schedule, save_schedule, validate_schedule_name

MARKER_ENV = "LD3_TEST_PICKLE_MARKER"


def make_record(**overrides) -> ScheduleRecord:
    fields = dict(
        step_sigmas=torch.tensor([14.6, 4.0, 1.5, 0.5, 0.0]),
        model_sigmas=torch.tensor([12.1, 4.2, 1.4, 0.55]),
        scale_sigmas=torch.tensor([13.9, 4.0, 1.45, 0.5]),
        sampler="euler",
        cfg=7.5,
        latent_shape=(1, 4, 64, 64),
        model={
            "model_class": "BaseModel",
            "model_sampling": "ModelSamplingDiscrete",
            "sigma_min": 0.0292,
            "sigma_max": 14.61,
            "fingerprint": "ab12cd34",
        },
        loss="lpips",
        train={
            "validation_curve": [0.31, 0.25, 0.22],
            "best_validation_loss": 0.22,
            "initial_scheduler": "karras",
            "initial_validation_loss": 0.31,
            "epochs_done": 5,
            "status": "completed",
        },
        versions={"torch": "2.14.1", "comfyui": "0.3.75"},
    )
    fields.update(overrides)
    return ScheduleRecord(**fields)


def good_metadata() -> dict:
    return make_record().metadata()


def raw_file(tensors: dict | None = None, meta: object = None, extra_metadata: dict | None = None) -> bytes:
    """Bytes of a safetensors file with arbitrary tensors and ld3 metadata (bypassing all checks)."""
    if tensors is None:
        record = make_record()
        tensors = {name: getattr(record, name) for name in sf.TENSORS}
    metadata = {} if meta is None else {"ld3": meta if isinstance(meta, str) else json.dumps(meta)}
    metadata.update(extra_metadata or {})
    return st_save(tensors, metadata=metadata or None)


def refuses(data: bytes, tmp_path: Path, fragment: str) -> LD3InputError:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    with pytest.raises(LD3InputError) as info:
        load_schedule(path)
    err = info.value
    assert err.input_name == "schedule_file"
    assert fragment in str(err), str(err)
    assert err.fix and str(err).endswith(err.fix)
    return err


class _Marker:
    """Unpickling this object creates the file named in the environment: proof that something unpickled."""

    def __reduce__(self):
        return (open, (os.environ[MARKER_ENV], "w"))


def test_errors_message_and_fields():
    err = LD3InputError("steps", "must be at least 1, got 0", "Set steps to 1 or more")
    assert str(err) == "steps: must be at least 1, got 0. Set steps to 1 or more"
    assert (err.input_name, err.problem, err.fix) == (
        "steps",
        "must be at least 1, got 0",
        "Set steps to 1 or more",
    )
    assert isinstance(err, ValueError)
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.fix == err.fix


def test_round_trip(tmp_path):
    record = make_record()
    path = tmp_path / "a.safetensors"
    save_schedule(path, record)
    loaded = load_schedule(path)
    assert torch.equal(loaded.step_sigmas, record.step_sigmas)
    assert torch.equal(loaded.model_sigmas, record.model_sigmas)
    assert torch.equal(loaded.scale_sigmas, record.scale_sigmas)
    assert loaded.step_sigmas.dtype == torch.float32 and loaded.steps == 4
    for name in ("sampler", "cfg", "latent_shape", "model", "loss", "train", "versions"):
        assert getattr(loaded, name) == getattr(record, name), name
    assert loaded.metadata() == record.metadata()
    assert loaded.metadata()["format"] == "ld3-schedule" and loaded.metadata()["format_version"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]


def test_record_takes_private_float32_copies():
    steps = torch.tensor([3.0, 1.0, 0.0], dtype=torch.float64)
    record = make_record(
        step_sigmas=steps,
        model_sigmas=torch.tensor([3.0, 1.1]),
        scale_sigmas=torch.tensor([2.9, 1.0]),
        latent_shape=[1, 2, 3],
    )
    steps[0] = -1.0
    assert record.step_sigmas.dtype == torch.float32 and float(record.step_sigmas[0]) == 3.0
    assert record.latent_shape == (1, 2, 3) and isinstance(record.cfg, float)
    with pytest.raises(AttributeError):
        record.sampler = "heun"


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (
            dict(
                step_sigmas=torch.tensor([1.0, 2.0, 0.0]),
                model_sigmas=torch.ones(2),
                scale_sigmas=torch.ones(2),
            ),
            "strictly decreasing",
        ),
        (
            dict(
                step_sigmas=torch.tensor([2.0, 1.0, 0.1]),
                model_sigmas=torch.ones(2),
                scale_sigmas=torch.ones(2),
            ),
            "end at exactly 0",
        ),
        (dict(model_sigmas=torch.ones(3)), "one per step"),
        (dict(scale_sigmas=torch.tensor([1.0, 1.0, -1.0, 1.0])), "scale_sigmas must all be positive"),
        (dict(sampler=""), "'sampler'"),
        (dict(train={"status": "done"}), "'train' keys"),
        (dict(model={"x": [1, 2]}), "'model'"),
        (dict(cfg=float("nan")), "'cfg'"),
    ],
)
def test_record_refuses_invalid_fields(overrides, fragment):
    with pytest.raises(ValueError, match="invalid ScheduleRecord") as info:
        make_record(**overrides)
    assert fragment in str(info.value)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(LD3InputError, match="no file at"):
        load_schedule(tmp_path / "nope.safetensors")
    with pytest.raises(LD3InputError, match="is a folder"):
        load_schedule(tmp_path)


@pytest.mark.parametrize("keep", [0, 3, 8, 20, -1])
def test_truncated_file(tmp_path, keep):
    data = raw_file(meta=good_metadata())
    cut = data[:keep] if keep >= 0 else data[:-1]
    err = refuses(cut, tmp_path, "")
    assert "truncated" in str(err) or "corrupt" in str(err)


def test_pickle_and_torch_files_are_refused_without_unpickling(tmp_path, monkeypatch):
    marker = tmp_path / "unpickled.txt"
    monkeypatch.setenv(MARKER_ENV, str(marker))
    payloads = {"pickle": pickle.dumps(_Marker()), "pickle0": pickle.dumps(_Marker(), protocol=0)}
    pt = tmp_path / "payload.pt"
    torch.save({"step_sigmas": _Marker()}, pt)
    payloads["torch"] = pt.read_bytes()
    for data in payloads.values():
        refuses(data, tmp_path, "not a safetensors file")
    assert not marker.exists()


def test_oversized_file_is_not_read(tmp_path, monkeypatch):
    monkeypatch.setattr(sf, "MAX_FILE_BYTES", 100)
    refuses(raw_file(meta=good_metadata()), tmp_path, "far larger")


def test_header_that_is_not_an_object(tmp_path):
    body = b"[1, 2]"
    refuses(struct.pack("<Q", len(body)) + body, tmp_path, "not a JSON object")


def _meta_with(**changes):
    meta = good_metadata()
    for key, value in changes.items():
        if value is _DROP:
            del meta[key]
        else:
            meta[key] = value
    return meta


_DROP = object()


@pytest.mark.parametrize(
    "meta, fragment",
    [
        (None, "no 'ld3' entry"),
        ("{not json", "not valid JSON"),
        ('{"cfg": NaN}', "not valid JSON"),
        ([1, 2], "not a JSON object"),
        (_meta_with(train=_DROP), "missing ['train']"),
        (_meta_with(extra_field=1), "unexpected ['extra_field']"),
        (_meta_with(format="comfy-sigmas"), "format is"),
        (_meta_with(format_version=3), "format_version is 3"),
        (_meta_with(format_version="1"), "format_version is '1'"),
        (_meta_with(steps=5), "metadata says 5 steps but step_sigmas has 4"),
        (_meta_with(steps="4"), "metadata 'steps' must be an integer (here 4), got '4'"),
        (_meta_with(steps=True), "must be an integer (here 4), got True"),
        (_meta_with(cfg="7.5"), "'cfg'"),
        (_meta_with(sampler=3), "'sampler'"),
        (_meta_with(loss=None), "'loss'"),
        (_meta_with(latent_shape=[1, -4, 64]), "latent_shape"),
        (_meta_with(latent_shape="1x4"), "latent_shape"),
        (_meta_with(model=["BaseModel"]), "'model'"),
        (_meta_with(versions={"torch": 2}), "'versions'"),
        (_meta_with(train={**good_metadata()["train"], "status": "finished"}), "train.status"),
        (_meta_with(train={**good_metadata()["train"], "epochs_done": 1.5}), "train.epochs_done"),
        (_meta_with(train={**good_metadata()["train"], "validation_curve": [0.1, "x"]}), "validation_curve"),
        (
            _meta_with(train={**good_metadata()["train"], "best_validation_loss": None}),
            "best_validation_loss",
        ),
        (_meta_with(train={**good_metadata()["train"], "seed": 1}), "unexpected ['seed']"),
    ],
)
def test_bad_metadata(tmp_path, meta, fragment):
    refuses(raw_file(meta=meta), tmp_path, fragment)


def test_extra_safetensors_metadata_key(tmp_path):
    refuses(
        raw_file(meta=good_metadata(), extra_metadata={"other": "x"}), tmp_path, "unexpected keys ['other']"
    )


@pytest.mark.parametrize(
    "tensors, fragment",
    [
        ({"step_sigmas": torch.tensor([3.0, 2.0, 1.0, 0.5, 0.0])}, "expected exactly"),
        (
            {
                "step_sigmas": torch.tensor([3.0, 2.0, 1.0, 0.5, 0.0]),
                "model_sigmas": torch.ones(4),
                "x": torch.ones(1),
            },
            "expected exactly",
        ),
        (
            {
                "step_sigmas": torch.tensor([3.0, 2.0, 1.0, 0.5, 0.0], dtype=torch.float64),
                "model_sigmas": torch.ones(4),
            },
            "expected F32",
        ),
        (
            {
                "step_sigmas": torch.tensor([3.0, 2.0, 1.0, 0.5, 0.0]),
                "model_sigmas": torch.ones(4, dtype=torch.float16),
            },
            "expected F32",
        ),
        (
            {"step_sigmas": torch.tensor([[3.0, 2.0, 1.0, 0.5, 0.0]]), "model_sigmas": torch.ones(4)},
            "one dimension",
        ),
        (
            {"step_sigmas": torch.tensor([3.0, 2.0, 1.0, 0.5, 0.0]), "model_sigmas": torch.ones(3)},
            "one per step",
        ),
        (
            {"step_sigmas": torch.tensor([3.0, 2.0, 2.0, 0.5, 0.0]), "model_sigmas": torch.ones(4)},
            "strictly decreasing",
        ),
        (
            {"step_sigmas": torch.tensor([3.0, 2.0, 4.0, 0.5, 0.0]), "model_sigmas": torch.ones(4)},
            "strictly decreasing",
        ),
        (
            {"step_sigmas": torch.tensor([3.0, 2.0, 1.0, 0.5, 0.1]), "model_sigmas": torch.ones(4)},
            "end at exactly 0",
        ),
        (
            {"step_sigmas": torch.tensor([float("inf"), 2.0, 1.0, 0.5, 0.0]), "model_sigmas": torch.ones(4)},
            "NaN or infinite",
        ),
        (
            {"step_sigmas": torch.tensor([3.0, float("nan"), 1.0, 0.5, 0.0]), "model_sigmas": torch.ones(4)},
            "NaN or infinite",
        ),
        (
            {
                "step_sigmas": torch.tensor([3.0, 2.0, 1.0, 0.5, 0.0]),
                "model_sigmas": torch.tensor([1.0, 1, 0, 1]),
            },
            "positive",
        ),
        ({"step_sigmas": torch.tensor([0.0]), "model_sigmas": torch.ones(0)}, "at least 2"),
    ],
)
def test_bad_tensors(tmp_path, tensors, fragment):
    tensors = dict(tensors)
    if "model_sigmas" in tensors:  # every case is about one tensor; the scale sigmas are well formed
        tensors.setdefault("scale_sigmas", torch.ones(len(tensors["model_sigmas"])))
    refuses(raw_file(tensors=tensors, meta=good_metadata()), tmp_path, fragment)


def version1_file(model_sigmas=None) -> bytes:
    """A file as format version 1 wrote it: step_sigmas and eval_sigmas (the network's time only)."""
    record = make_record()
    meta = {**good_metadata(), "format_version": 1}
    meta["train"] = {k: v for k, v in meta["train"].items() if k not in ("recipe", "verdict")}
    model = record.model_sigmas if model_sigmas is None else model_sigmas
    return raw_file(tensors={"step_sigmas": record.step_sigmas, "eval_sigmas": model}, meta=meta)


def test_version_1_file_loads_with_the_step_sigmas_as_scale(tmp_path):
    path = tmp_path / "old.safetensors"
    path.write_bytes(version1_file())
    loaded = load_schedule(path)
    record = make_record()
    assert torch.equal(loaded.model_sigmas, record.model_sigmas)
    assert torch.equal(loaded.scale_sigmas, record.step_sigmas[:-1])  # how version 1 sampled
    assert loaded.metadata()["format_version"] == 2  # saved again, it is a version 2 file


def test_version_1_file_is_checked_like_any(tmp_path):
    refuses(version1_file(torch.tensor([1.0, 0.0, 1.0, 1.0])), tmp_path, "model_sigmas must all be positive")
    meta = {**good_metadata(), "format_version": 1}
    record = make_record()
    tensors = {name: getattr(record, name) for name in sf.TENSORS}
    refuses(raw_file(tensors=tensors, meta=meta), tmp_path, "expected exactly step_sigmas, eval_sigmas")


def test_failed_replace_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "s.safetensors"
    save_schedule(path, make_record(sampler="euler"))
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(sf.os, "replace", broken_replace)
    with pytest.raises(OSError, match="simulated"):
        save_schedule(path, make_record(sampler="heun"))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.safetensors"]
    monkeypatch.undo()
    assert load_schedule(path).sampler == "euler"


def test_interrupt_mid_write_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "s.safetensors"
    save_schedule(path, make_record())
    before = path.read_bytes()

    def interrupted_fsync(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(sf.os, "fsync", interrupted_fsync)
    with pytest.raises(KeyboardInterrupt):
        save_schedule(path, make_record(sampler="heun"))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.safetensors"]


def test_save_creates_parent_and_overwrites(tmp_path):
    path = tmp_path / "deep" / "er" / "s.safetensors"
    save_schedule(path, make_record(sampler="euler"))
    save_schedule(path, make_record(sampler="dpmpp_2m"))
    assert load_schedule(path).sampler == "dpmpp_2m"
    with pytest.raises(TypeError):
        save_schedule(path, {"step_sigmas": torch.ones(2)})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_random_bytes_only_raise_ld3_input_error(data):
    with pytest.raises(LD3InputError):
        sf.parse_schedule_bytes(data)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_valid_file_never_raises_anything_else(data):
    valid = bytearray(raw_file(meta=good_metadata()))
    edits = data.draw(
        st.lists(st.tuples(st.integers(0, len(valid) - 1), st.integers(0, 255)), min_size=1, max_size=6)
    )
    for index, byte in edits:
        valid[index] = byte
    cut = data.draw(st.integers(0, len(valid)))
    blob = bytes(valid[:cut])
    try:
        record = sf.parse_schedule_bytes(blob)
    except LD3InputError:
        return
    # A mutation may still be a valid schedule (a digit changed in the JSON); then it must be sane.
    assert record.steps == len(record.eval_sigmas) and float(record.step_sigmas[-1]) == 0.0


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefix=st.binary(max_size=16), protocol=st.integers(0, pickle.HIGHEST_PROTOCOL))
def test_pickle_payloads_never_unpickle(tmp_path_factory, prefix, protocol):
    marker = tmp_path_factory.mktemp("m") / "unpickled.txt"
    os.environ[MARKER_ENV] = str(marker)
    try:
        for blob in (
            pickle.dumps(_Marker(), protocol=protocol),
            prefix + pickle.dumps(_Marker(), protocol=protocol),
        ):
            with pytest.raises(LD3InputError):
                sf.parse_schedule_bytes(blob)
    finally:
        del os.environ[MARKER_ENV]
    assert not marker.exists()


@pytest.mark.parametrize(
    "name, expected",
    [
        ("sd15_euler_6", "sd15_euler_6.safetensors"),
        ("a.b-c d", "a.b-c d.safetensors"),
        ("mine.safetensors", "mine.safetensors"),
        ("MINE.SafeTensors", "MINE.SafeTensors"),
        ("x" * 100, "x" * 100 + ".safetensors"),
    ],
)
def test_schedule_names_accepted(name, expected):
    assert validate_schedule_name(name) == expected


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("", "empty"),
        ("   ", "empty"),
        (None, "empty"),
        ("a/b", "path separator"),
        ("a\\b", "path separator"),
        ("/etc/passwd", "path separator"),
        ("..", "'..'"),
        ("a..b", "'..'"),
        (".hidden", "starts with '.'"),
        ("C:evil", "drive letter"),
        ("c:x", "drive letter"),
        ("bad\x00name", "control characters"),
        ("bad\nname", "control characters"),
        ("tab\tname", "control characters"),
        ("x" * 101, "101 characters"),
        (" lead", "space"),
        ("trail.", "ends with '.'"),
        ("nul", "reserved"),
        ("COM1.safetensors", "reserved"),
    ],
)
def test_schedule_names_refused(name, fragment):
    with pytest.raises(LD3InputError) as info:
        validate_schedule_name(name)
    assert info.value.input_name == "schedule_name"
    assert fragment in str(info.value)
    assert info.value.fix.startswith("Use a plain file name")


def test_schedule_name_input_label():
    with pytest.raises(LD3InputError, match="^filename: "):
        validate_schedule_name("a/b", input_name="filename")


def test_versions_default_to_the_running_stack():
    fields = {name: getattr(make_record(), name) for name in (*sf.TENSORS, "sampler", "cfg")}
    record = ScheduleRecord(
        **fields, latent_shape=(1, 4, 8, 8), model={}, loss="l2", train=make_record().train
    )
    assert record.versions["torch"] == torch.__version__
    with pytest.raises(TypeError):
        ScheduleRecord(**fields, latent_shape=(1, 4, 8, 8), model={}, loss="l2")  # train is required


def test_a_teacher_file_loaded_as_a_schedule_says_which_node_loads_it(tmp_path):
    from ld3_core.teacher import TeacherData
    from ld3_core.teacher_file import teacher_file_bytes

    teacher = TeacherData(
        torch.zeros(2, 4),
        torch.zeros(2, 4),
        torch.zeros(2, dtype=torch.long),
        torch.tensor([False, True]),
        info={},
    )
    refuses(
        teacher_file_bytes(teacher, {}),
        tmp_path,
        "a teacher file (from LD3 Generate Teacher): load it with LD3 Load Teacher",
    )


def test_a_bad_name_says_where_the_file_goes():
    with pytest.raises(LD3InputError, match=r"saved in the LD3 teacher folder \(output/ld3\)"):
        validate_schedule_name("a/b", "name", "the LD3 teacher folder (output/ld3)")
    with pytest.raises(LD3InputError, match=r"saved in the LD3 models folder \(models/ld3\)"):
        validate_schedule_name("a/b")
