"""The teacher: ``auto`` picks an accurate reference scheduler, noisy samplers are refused, and the
teacher measures its own error (stored in its file, reported in plain words, repeated for training).

Exact Gaussian-mixture models give the true ODE endpoint (a 500-step solve, as in the benchmark), so
"accurate" is measured, not assumed.
"""

import comfy.model_base
import comfy.patcher_extension
import comfy.samplers
import pytest
import tiny_models
import torch

from ld3_core.api import builtin_schedules, learn_schedule
from ld3_core.comfyui.adapter import Conditioning, sample_stock
from ld3_core.comfyui.mixture_model import mixture_conditioning, mixture_model_patcher
from ld3_core.comfyui.model_patch import patch_model
from ld3_core.comfyui.scheduler import register_ld3_scheduler
from ld3_core.comfyui.solvers import is_stochastic
from ld3_core.errors import LD3InputError
from ld3_core.losses import make_loss
from ld3_core.mixture import make_clustered_mixture, make_mixture
from ld3_core.schedule import Schedule
from ld3_core.teacher import (
    AUTO,
    DIFFUSION_REFERENCE_SCHEDULER,
    FLOW_REFERENCE_SCHEDULER,
    generate_teacher,
    resolve_scheduler,
    schedule_sigmas,
    start_noise,
    teacher_schedulers,
)
from ld3_core.teacher_check import (
    ERROR_SHARE,
    generate_checked_teacher,
    self_check_work,
    self_error_warning,
    teacher_error_warning,
    teacher_report,
)
from ld3_core.teacher_file import parse_teacher_bytes, teacher_file_bytes
from ld3_core.trainer import TrainConfig

EXPECTED = {
    "eps": DIFFUSION_REFERENCE_SCHEDULER,
    "flow": FLOW_REFERENCE_SCHEDULER,
    "flux": FLOW_REFERENCE_SCHEDULER,
}
SMALL = (4, 8, 8)


def mixture_model(kind: str, shape=SMALL, seed: int = 0):
    model = mixture_model_patcher(make_mixture(shape, components=8, seed=seed, dtype=torch.float32), kind)
    return model, Conditioning(*mixture_conditioning(), 1.0)


def per_sample_rmse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.double() - b.double()).pow(2).flatten(1).mean(1).sqrt()


def count_model_calls(model) -> tuple[object, list]:
    """A clone of ``model`` that records every denoiser call (a real ComfyUI APPLY_MODEL wrapper)."""
    calls = []

    def wrapper(executor, *args, **kwargs):
        calls.append(1)
        return executor(*args, **kwargs)

    counted = model.clone()
    counted.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "test_count", wrapper)
    return counted, calls


# -- auto ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["eps", "flow"])
def test_auto_resolves_by_the_models_sampling_type(kind):
    model, cond = mixture_model(kind)
    teacher = generate_teacher(model, [cond], SMALL, count=2, seed=0, steps=3)
    assert teacher.info["scheduler"] == EXPECTED[kind] and teacher.info["scheduler_requested"] == AUTO
    # The resolution reads the model's sampling type, so an LD3-patched MODEL resolves the same way.
    assert resolve_scheduler(patch_model(model), AUTO) == EXPECTED[kind]
    assert resolve_scheduler(model, "normal") == "normal"


def test_auto_on_comfyui_model_types(tiny_sd15, tiny_sd15_v, tiny_flux):
    assert resolve_scheduler(tiny_sd15, AUTO) == DIFFUSION_REFERENCE_SCHEDULER  # EPS, discrete
    assert resolve_scheduler(tiny_sd15_v, AUTO) == DIFFUSION_REFERENCE_SCHEDULER  # V prediction
    assert resolve_scheduler(tiny_flux, AUTO) == FLOW_REFERENCE_SCHEDULER  # CONST, ModelSamplingFlux
    edm = tiny_models.build_tiny_sd15(comfy.model_base.ModelType.EDM, seed=4)  # continuous EDM
    assert resolve_scheduler(edm, AUTO) == DIFFUSION_REFERENCE_SCHEDULER


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["eps", "flow", "flux"])
def test_the_auto_teacher_is_close_to_the_exact_endpoint(kind):
    """Issue 17's acceptance: LD3 Generate Teacher's default teacher (uni_pc, auto, 20 steps) has an error to
    the exact endpoint of at most 10 % of the best built-in's error at NFE 4 (dpmpp_2m and euler), on an
    EPS mixture, a flow mixture with SD3's sampling and the benchmark's with Flux's. The old default
    (dpmpp_2m, karras) is far off on the flow mixtures."""
    shape = (4, 16, 16) if kind == "eps" else (16, 16, 16) if kind == "flow" else (16, 8, 8)
    if kind == "flux":
        mixture = make_clustered_mixture(shape, seed=2, spread=0.05, stds=(0.3, 0.6), dtype=torch.float32)
        model, cond = mixture_model_patcher(mixture, "flux"), Conditioning(*mixture_conditioning(), 1.0)
    else:
        model, cond = mixture_model(kind, shape, seed=2 if kind == "flow" else 0)
    teacher = generate_checked_teacher(model, [cond], shape, count=8, seed=100)  # every default
    assert teacher.info["scheduler_requested"] == AUTO and teacher.info["scheduler"] == EXPECTED[kind]
    assert teacher.info["sampler"] == "uni_pc"
    exact_sigmas = schedule_sigmas(model, "karras" if kind == "eps" else "simple", 500, "dpmpp_2m")
    exact = sample_stock(model, cond, "dpmpp_2m", exact_sigmas, teacher.noise)
    teacher_error = float(per_sample_rmse(teacher.targets, exact).mean())
    best_nfe4 = min(
        float(per_sample_rmse(sample_stock(model, cond, sampler, sigmas, teacher.noise), exact).mean())
        for sampler in ("dpmpp_2m", "euler")
        for sigmas in builtin_schedules(model, 4, sampler).values()
    )
    assert teacher_error <= 0.1 * best_nfe4, (teacher_error, best_nfe4)
    if kind != "eps":
        old = generate_teacher(
            model, [cond], shape, count=8, seed=100, sampler="dpmpp_2m", scheduler="karras"
        )
        assert float(per_sample_rmse(old.targets, exact).mean()) > 0.5 * best_nfe4


# -- refusals -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", [s for s in comfy.samplers.SAMPLER_NAMES if is_stochastic(s)])
def test_stochastic_samplers_are_refused_before_sampling(sampler):
    model, cond = mixture_model("eps")
    counted, calls = count_model_calls(model)
    with pytest.raises(LD3InputError) as excinfo:
        generate_checked_teacher(counted, [cond], SMALL, count=4, seed=0, sampler=sampler, steps=4)
    assert excinfo.value.input_name == "sampler_name" and "stochastic" in excinfo.value.problem
    assert "deterministic sampler" in excinfo.value.fix
    assert calls == []


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["eps", "flow"])
def test_the_stochastic_predicate_is_what_the_samplers_do(kind):
    """Every ComfyUI sampler run twice from the same noise with two seeds: only the samplers the
    predicate calls stochastic give different results (so the list of names cannot drift)."""
    model, cond = mixture_model(kind, (2, 4, 4))
    noise = start_noise((2, 4, 4), 0, 2)
    for sampler in comfy.samplers.SAMPLER_NAMES:
        # 10 steps: sa_solver adds noise only between 20 % and 80 % of the schedule.
        sigmas = schedule_sigmas(model, "simple", 10, sampler)
        a = sample_stock(model, cond, sampler, sigmas, noise, seed=1)
        b = sample_stock(model, cond, sampler, sigmas, noise, seed=2)
        assert (not torch.equal(a, b)) == is_stochastic(sampler), sampler


@pytest.mark.parametrize("sampler", ["dpm_fast", "dpm_adaptive", "lms", "heun"])
def test_deterministic_samplers_ld3_cannot_train_still_teach(sampler):
    model, cond = mixture_model("flow")
    teacher = generate_teacher(model, [cond], SMALL, count=2, seed=0, sampler=sampler, steps=6)
    assert teacher.info["sampler"] == sampler and torch.isfinite(teacher.targets).all()


def test_learned_and_unknown_schedulers_are_refused():
    register_ld3_scheduler()
    assert "ld3" in comfy.samplers.SCHEDULER_NAMES and "ld3" not in teacher_schedulers()
    assert teacher_schedulers()[0] == AUTO
    model, cond = mixture_model("eps")
    counted, calls = count_model_calls(model)
    with pytest.raises(LD3InputError) as excinfo:
        generate_teacher(counted, [cond], SMALL, count=2, seed=0, scheduler="ld3")
    assert excinfo.value.input_name == "scheduler" and "learned" in excinfo.value.problem
    with pytest.raises(LD3InputError, match="unknown scheduler 'nope'"):
        generate_teacher(counted, [cond], SMALL, count=2, seed=0, scheduler="nope")
    assert calls == []


# -- the self-check -----------------------------------------------------------------------------------


def test_self_check_measures_against_a_re_solve_at_twice_the_steps():
    model, cond = mixture_model("flow")
    steps, count = 6, 6
    updates = []
    teacher = generate_checked_teacher(
        model,
        [cond],
        SMALL,
        count,
        seed=3,
        steps=steps,
        batch_size=4,
        progress=lambda d, t: updates.append((d, t)),
    )
    check = teacher.info["self_error"]
    assert (
        check["check_steps"] == 5 * steps
        and check["samples"] == 2
        and set(check["few_step_rmse"]) == {"4", "8"}
    )

    # The numbers are what direct solves give: the reference (5x the steps), the teacher's own error
    # against it and the few-step errors.
    def solve(scheduler, n):
        sigmas = schedule_sigmas(model, scheduler, n, "uni_pc")
        return sample_stock(model, cond, "uni_pc", sigmas, teacher.noise[:2], seed=3)

    resolve = solve(teacher.info["scheduler"], 5 * steps)
    assert check["rmse"] == pytest.approx(
        float(per_sample_rmse(teacher.targets[:2], resolve).mean()), rel=1e-6
    )
    four = solve(teacher.info["scheduler"], 4)
    assert check["few_step_rmse"]["4"] == pytest.approx(
        float(per_sample_rmse(four, resolve).mean()), rel=1e-6
    )
    # One progress bar over the checks and the sampling, in sample-steps, ending full.
    total = count * steps + self_check_work(count, 1, steps)
    assert total == count * steps + 2 * (5 * steps + 12)
    assert all(t == total for _, t in updates) and updates[-1][0] == total
    assert [d for d, _ in updates] == sorted(d for d, _ in updates)
    assert any(d > count * steps for d, _ in updates[:-1])  # the check reports progress of its own


def test_cancel_is_honoured_during_the_self_check():
    model, cond = mixture_model("eps")
    counted, calls = count_model_calls(model)

    class Cancelled(Exception):
        pass

    def progress(done, total):
        if done > 4 * 5:  # past the teacher's own sampling (4 samples x 5 steps)
            raise Cancelled

    with pytest.raises(Cancelled):
        generate_checked_teacher(counted, [cond], SMALL, count=4, seed=0, steps=5, progress=progress)
    # The teacher's batch (5 steps), then one step of the reference solve (25 steps): progress is
    # reported after every sampler step, so Cancel is honoured within a step, whatever the batch.
    assert len(calls) == 5 + 1


@pytest.mark.slow
def test_the_report_says_when_to_use_more_teacher_steps():
    """Graded by the check's own numbers (these cases measured ratios of 0.77, 0.33 and 0.02 to the
    8-step error): too few steps for any few-step schedule, fine for 4 but not 8, and fine."""
    model, cond = mixture_model("eps", (4, 16, 16))
    bad = generate_checked_teacher(
        model, [cond], (4, 16, 16), count=4, seed=100, scheduler="simple", steps=10
    )
    report = teacher_report(bad.info)
    assert "WARNING: steps: the teacher's own error" in report, report
    assert "too far off for 4-step schedules too" in report
    assert "Use more teacher steps: generate the teacher again with 'steps' at 20 or more" in report
    assert "or with the scheduler 'auto'" in report
    assert self_error_warning(bad.info) in report

    for_four = generate_checked_teacher(model, [cond], (4, 16, 16), count=4, seed=0, steps=10)
    warning = self_error_warning(for_four.info)
    assert "a schedule of 8 steps trained on it would learn the teacher's error" in warning, warning
    assert "fine for 4-step schedules" in warning and "'auto'" not in warning  # auto was used

    flow, flow_cond = mixture_model("flow", (16, 16, 16), seed=2)
    good = generate_checked_teacher(flow, [flow_cond], (16, 16, 16), count=4, seed=100, steps=30)
    report = teacher_report(good.info)
    assert "WARNING" not in report and "OK: the teacher's error is" in report, report
    assert f"scheduler {good.info['scheduler']} (chosen by auto)" in report
    assert f"scheduler {FLOW_REFERENCE_SCHEDULER} (chosen by auto)" in report
    check = good.info["self_error"]
    assert check["rmse"] < ERROR_SHARE * check["few_step_rmse"]["8"]
    assert all(line.isprintable() for line in report.splitlines())


def test_self_error_survives_the_teacher_file_and_old_files_load():
    model, cond = mixture_model("eps")
    teacher = generate_checked_teacher(model, [cond], SMALL, count=4, seed=0, steps=5)
    loaded = parse_teacher_bytes(teacher_file_bytes(teacher, {}))
    assert loaded.info["self_error"] == teacher.info["self_error"]
    assert teacher_report(loaded.info) == teacher_report(teacher.info)
    old_info = {k: v for k, v in teacher.info.items() if k not in ("self_error", "scheduler_requested")}
    old = parse_teacher_bytes(teacher_file_bytes(type(teacher)(*_tensors(teacher), old_info), {}))
    assert "self_error" not in old.info
    assert teacher_error_warning(old.info, 0.001, 4) is None
    assert "not measured" in teacher_report(old.info)


def _tensors(teacher):
    return teacher.noise, teacher.targets, teacher.prompt_index, teacher.is_validation


def test_the_self_check_solves_one_batch_of_the_first_prompt():
    model, cond = mixture_model("eps")
    other = Conditioning(*mixture_conditioning(), 2.0)
    counted, calls = count_model_calls(model)
    teacher = generate_checked_teacher(
        counted,
        [cond, other],
        SMALL,
        count=10,
        seed=0,
        sampler="dpmpp_2m",
        scheduler="karras",
        steps=4,
        batch_size=4,
    )
    assert teacher.info["self_error"]["samples"] == 2
    # CFG 1 for the first prompt, 2 (cond + uncond: still one call) for the second. The teacher: 5
    # samples per prompt in batches of 4 -> 4 sampler calls of 4 steps; the check (its first prompt's
    # first 2 noises, one batch): the reference at 20, then 4 and 8 steps.
    assert len(calls) == 4 * 4 + 20 + 4 + 8
    resolve = sample_stock(
        model, cond, "dpmpp_2m", schedule_sigmas(model, "karras", 20, "dpmpp_2m"), teacher.noise[[0, 2]]
    )
    expected = per_sample_rmse(teacher.targets[[0, 2]], resolve).mean()
    assert teacher.info["self_error"]["rmse"] == pytest.approx(float(expected), rel=1e-6)


# -- the warning LD3 Train Sigmas repeats --------------------------------------------------------------


def test_teacher_error_warning_for_training():
    info = {
        "steps": 20,
        "scheduler_requested": AUTO,
        "self_error": {"rmse": 0.03, "check_steps": 40, "samples": 4, "few_step_rmse": {"4": 0.3, "8": 0.1}},
    }
    assert teacher_error_warning(info, builtin_rmse=0.2, student_steps=4) is None  # 15 %
    warning = teacher_error_warning(info, builtin_rmse=0.1, student_steps=6)  # 30 %
    assert warning.startswith(
        "teacher: the teacher's own error (RMSE 0.03, measured against a 40-step re-solve)"
    )
    assert "30 % of the best built-in schedule's error at 6 steps (0.1)" in warning
    assert "Use more teacher steps: generate the teacher again with 'steps' at 40 or more" in warning
    assert "'auto'" not in warning  # it already used auto
    assert "'auto'" in teacher_error_warning({**info, "scheduler_requested": "karras"}, 0.1, 6)
    assert teacher_error_warning({k: v for k, v in info.items() if k != "self_error"}, 0.001, 4) is None


def test_training_repeats_the_teacher_warning_with_the_students_own_numbers():
    """A 3-step teacher is far off: learn_schedule says so in the result's report (LD3 Train Sigmas')."""
    model, cond = mixture_model("eps")
    teacher = generate_checked_teacher(
        model, [cond], SMALL, count=8, seed=0, sampler="dpmpp_2m", scheduler="simple", steps=3
    )
    # No hard-example mining: its report line would stand beside the warning (test_trainer covers it).
    config = TrainConfig.preset("ld3", 2, epochs_phase2=1, mining_rounds=0)
    result = learn_schedule(model, teacher, [cond], "euler", config, make_loss("l2"))
    warning = teacher_error_warning(teacher.info, result.initial_validation_loss, 2)
    assert warning and result.warnings == [warning]
    assert "best built-in schedule's error at 2 steps" in warning
    # Right under the verdict line it qualifies.
    assert result.report("euler", 2).splitlines()[1] == f"WARNING: {warning}"
    # A good teacher adds nothing.
    good = generate_checked_teacher(model, [cond], SMALL, count=8, seed=0, steps=20)
    quiet = learn_schedule(model, good, [cond], "euler", config, make_loss("l2"))
    assert quiet.warnings == []


def test_compare_says_when_it_scores_a_schedule_on_noises_it_was_trained_on():
    """Sample i of a teacher uses seed + i: a teacher one seed later repeats nearly all of its noises."""
    from ld3_core.compare import compare_schedules
    from ld3_core.teacher import noise_keys

    model, cond = mixture_model("eps")
    teacher = generate_teacher(
        model, [cond], SMALL, 8, seed=0, sampler="dpmpp_2m", scheduler="karras", steps=8
    )
    schedule = builtin_schedules(model, 3, "euler")["karras"]
    plain = Schedule.plain(schedule)
    trained = patch_model(model, plain, "euler", noise_keys(teacher.noise))

    _, report = compare_schedules(trained, teacher, [cond], "euler", {"sigmas": schedule}, False)
    assert "Note: 4 of these 4 samples are noises the MODEL's schedule was trained or chosen on" in report
    # Seed 1: its validation samples (1, 3, 5, 7 -> seeds 2, 4, 6, 8) are seed 0's noises 2, 4, 6.
    nearby = generate_teacher(
        model, [cond], SMALL, 8, seed=1, sampler="dpmpp_2m", scheduler="karras", steps=8
    )
    _, report = compare_schedules(trained, nearby, [cond], "euler", {"sigmas": schedule}, False)
    assert "Note: 3 of these 4 samples" in report
    # Seeds beyond seed + sample_count: nothing shared, no note; nor for a MODEL trained on nothing known.
    fresh = generate_teacher(model, [cond], SMALL, 8, seed=8, sampler="dpmpp_2m", scheduler="karras", steps=8)
    _, report = compare_schedules(trained, fresh, [cond], "euler", {"sigmas": schedule}, False)
    assert "Note:" not in report
    _, report = compare_schedules(
        patch_model(model, plain, "euler"), teacher, [cond], "euler", {"sigmas": schedule}, False
    )
    assert "Note:" not in report
