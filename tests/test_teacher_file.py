"""The LD3 teacher file: round trip, every refusal, no unpickling, and the check of the prompts given."""

import json
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save as st_save

from ld3_core.errors import LD3InputError
from ld3_core.identity import conditioning_sketch
from ld3_core.schedule_file import ScheduleRecord, default_versions, save_schedule
from ld3_core.teacher import TeacherData
from ld3_core.teacher_file import METADATA_KEY, check_prompts, parse_teacher_bytes, teacher_file_bytes


def prompt(seed: int, guidance: float | None = None) -> list:
    gen = torch.Generator().manual_seed(seed)
    options = {"pooled_output": torch.randn((1, 16), generator=gen)}
    if guidance is not None:
        options["guidance"] = guidance
    return [[torch.randn((1, 77, 64), generator=gen), options]]


NEGATIVE = prompt(100)


def make_teacher(prompts=None, count=6, shape=(4, 8, 8)) -> TeacherData:
    prompts = prompts or (prompt(1),)
    gen = torch.Generator().manual_seed(0)
    info = {
        "model": {"model_class": "BaseModel", "fingerprint": "ab12cd34"},
        "latent_shape": list(shape),
        "sampler": "dpmpp_2m",
        "scheduler": "karras",
        "steps": 20,
        "seed": 0,
        "prompts": len(prompts),
        "cfg": [7.0] * len(prompts),
        "conditioning": {
            "positive": [conditioning_sketch(p) for p in prompts],
            "negative": [conditioning_sketch(NEGATIVE)] * len(prompts),
        },
    }
    return TeacherData(
        noise=torch.randn((count, *shape), generator=gen),
        targets=torch.randn((count, *shape), generator=gen),
        prompt_index=torch.arange(count) % len(prompts),
        is_validation=torch.arange(count) % 2 == 1,
        info=info,
    )


def tensors_of(teacher: TeacherData) -> dict:
    return {
        "noise": teacher.noise,
        "targets": teacher.targets,
        "prompt_index": teacher.prompt_index,
        "is_validation": teacher.is_validation,
    }


def file_bytes(tensors: dict, info: dict) -> bytes:
    return st_save({k: v.contiguous() for k, v in tensors.items()}, metadata={METADATA_KEY: json.dumps(info)})


def refused(data: bytes, *words: str) -> LD3InputError:
    with pytest.raises(LD3InputError) as excinfo:
        parse_teacher_bytes(data, name="t.safetensors")
    error = excinfo.value
    assert error.input_name == "teacher_file" and "'t.safetensors' is not a valid LD3 teacher file" in str(
        error
    )
    for word in words:
        assert word in error.problem, error.problem
    return error


def test_round_trip_keeps_tensors_and_info():
    teacher = make_teacher(prompts=(prompt(1), prompt(2)))
    loaded = parse_teacher_bytes(teacher_file_bytes(teacher, default_versions()))
    for key, value in tensors_of(teacher).items():
        assert torch.equal(getattr(loaded, key), value), key
    assert loaded.info["versions"] == default_versions()
    assert {k: v for k, v in loaded.info.items() if k != "versions"} == teacher.info
    assert loaded.train_indices == teacher.train_indices


def test_refuses_what_is_not_a_teacher_file(tmp_path):
    teacher = make_teacher()
    good = teacher_file_bytes(teacher, {})
    refused(b"", "too short")
    refused(good[: len(good) // 2], "truncated")
    refused(pickle.dumps(tensors_of(teacher)))
    schedule = tmp_path / "s.safetensors"
    save_schedule(
        schedule,
        ScheduleRecord(
            step_sigmas=torch.tensor([14.6, 1.0, 0.0]),
            model_sigmas=torch.tensor([14.6, 1.0]),
            scale_sigmas=torch.tensor([14.6, 1.0]),
            sampler="euler",
            cfg=7.0,
            latent_shape=(4, 8, 8),
            model={},
            loss="l2",
            train={
                "validation_curve": [0.2],
                "best_validation_loss": 0.2,
                "initial_scheduler": "karras",
                "initial_validation_loss": 0.3,
                "epochs_done": 1,
                "status": "completed",
            },
        ),
    )
    refused(schedule.read_bytes(), "no LD3 teacher description")
    info = {"format": "ld3-teacher", "format_version": 1, **teacher.info}
    refused(file_bytes(tensors_of(teacher), {**info, "format_version": 2}), "format version 2")
    refused(file_bytes(tensors_of(teacher), {**info, "prompts": 0}), "prompt count")
    refused(file_bytes(tensors_of(teacher), {**info, "cfg": [7.0, 7.0]}), "CFG list")
    refused(file_bytes(tensors_of(teacher), {**info, "conditioning": {"positive": [[1.0]]}}), "sketches")


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda t: t.pop("targets"), ("expected",)),
        (lambda t: t.update(targets=t["targets"][:, :2]), ("are not [M >= 2, *latent] alike",)),
        (lambda t: t.update(noise=t["noise"].double()), ("dtype",)),
        (lambda t: t.update(prompt_index=t["prompt_index"] + 1), ("outside 0..0",)),
        (lambda t: t.update(prompt_index=t["prompt_index"][:3]), ("one per sample",)),
        (lambda t: t.update(is_validation=torch.ones_like(t["is_validation"])), ("both training",)),
        (lambda t: t["targets"].__setitem__((0, 0, 0, 0), float("nan")), ("NaN",)),
    ],
)
def test_refuses_inconsistent_tensors(change, words):
    teacher = make_teacher()
    tensors = {k: v.clone() for k, v in tensors_of(teacher).items()}
    change(tensors)
    refused(file_bytes(tensors, {"format": "ld3-teacher", "format_version": 1, **teacher.info}), *words)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_are_refused_cleanly(data):
    with pytest.raises(LD3InputError):
        parse_teacher_bytes(data)


def test_the_same_prompts_pass_even_recomputed_in_lower_precision():
    teacher = make_teacher(prompts=(prompt(1), prompt(2)))
    check_prompts(teacher, [prompt(1), prompt(2)], NEGATIVE)
    half = [
        [[t.half().float(), {k: v.half().float() for k, v in o.items()}] for t, o in p]
        for p in (prompt(1), prompt(2))
    ]
    check_prompts(teacher, half, NEGATIVE)


@pytest.mark.parametrize(
    ("positives", "negative", "input_name", "words"),
    [
        ([prompt(1)], NEGATIVE, "positive_2", "made with 2 prompt(s), but 1 are connected"),
        (
            [prompt(1), prompt(2), prompt(3)],
            NEGATIVE,
            "positive_3",
            "made with 2 prompt(s), but 3 are connected",
        ),
        ([prompt(2), prompt(1)], NEGATIVE, "positive", "differs from prompt 1"),
        ([prompt(1), prompt(3)], NEGATIVE, "positive_2", "differs from prompt 2"),
        ([prompt(1), prompt(2)], prompt(101), "negative", "differs from the negative prompt"),
    ],
)
def test_other_prompts_are_refused_by_name(positives, negative, input_name, words):
    teacher = make_teacher(prompts=(prompt(1), prompt(2)))
    with pytest.raises(LD3InputError) as excinfo:
        check_prompts(teacher, positives, negative)
    assert excinfo.value.input_name == input_name and words in excinfo.value.problem


def test_flux_guidance_is_part_of_the_prompt():
    teacher = make_teacher(prompts=(prompt(1, guidance=3.5),))
    check_prompts(teacher, [prompt(1, guidance=3.5)], NEGATIVE)
    with pytest.raises(LD3InputError, match="differs from prompt 1"):
        check_prompts(teacher, [prompt(1, guidance=30.0)], NEGATIVE)


def test_a_teacher_without_sketches_checks_the_count_only():
    teacher = make_teacher()
    teacher.info.pop("conditioning")
    check_prompts(teacher, [prompt(7)], prompt(8))
    with pytest.raises(LD3InputError):
        check_prompts(teacher, [prompt(7), prompt(8)], prompt(8))


SELF_ERROR = {"rmse": 0.01, "check_steps": 40, "samples": 4, "few_step_rmse": {"4": 0.3, "8": 0.05}}


def test_the_self_check_round_trips_and_old_files_without_it_load():
    teacher = make_teacher()
    checked = TeacherData(*tensors_of(teacher).values(), info={**teacher.info, "self_error": SELF_ERROR})
    assert parse_teacher_bytes(teacher_file_bytes(checked, {})).info["self_error"] == SELF_ERROR
    assert "self_error" not in teacher.info  # make_teacher's info is what files held before the check
    assert "self_error" not in parse_teacher_bytes(teacher_file_bytes(teacher, {})).info


@pytest.mark.parametrize(
    "bad",
    [
        "0.01",
        {k: v for k, v in SELF_ERROR.items() if k != "rmse"},
        {**SELF_ERROR, "rmse": -1.0},
        {**SELF_ERROR, "check_steps": 0},
        {**SELF_ERROR, "samples": True},
        {**SELF_ERROR, "few_step_rmse": {"four": 0.3}},
        {**SELF_ERROR, "few_step_rmse": [0.3, 0.05]},
    ],
)
def test_a_malformed_self_check_is_refused(bad):
    info = {"format": "ld3-teacher", "format_version": 1, **make_teacher().info, "self_error": bad}
    refused(file_bytes(tensors_of(make_teacher()), info), "self-check")
