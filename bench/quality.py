"""Quality: held-out error of learned schedules against ComfyUI's schedulers (and AYS/GITS/OptimalSteps).

One job is (model, seed, group of cells); a cell is (sampler, NFE, learned variants). Each seed draws
its own teacher pairs (training + validation noise); the held-out noises are one fixed set per model,
so every method is compared on the same samples (paired). The reference is the exact endpoint of a
mixture (a 500-step solve) or, for the tiny models, their teacher. Per cell we measure every built-in
schedule and learn each variant through ``ld3_core.api.learn_schedule``; learned schedules are then
sampled the way users get them (``api.sample_with_schedule``: the stock sampler on the patched MODEL).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass, replace

import torch

# Learned variants: the recipe (a TrainConfig preset, as the node's `recipe` widget) and the loss.
VARIANTS: dict[str, dict] = {
    "ld3": {"recipe": "ld3", "loss": "l2"},
    "paper": {"recipe": "paper", "loss": "l2"},
    "ld3 lpips": {"recipe": "ld3", "loss": "lpips"},
}
ALL_SAMPLERS = ("euler", "heun", "dpmpp_2m", "uni_pc", "ipndm", "deis")
PAPER_SAMPLERS = ("dpmpp_2m", "uni_pc", "ipndm", "euler")
EXACT_MODELS = ("mix-eps-4x16x16", "mix-flux-16x8x8")
ORACLE_NFE = (4, 6, 8)
DIGITS_SAMPLERS, DIGITS_NFE = ("euler", "dpmpp_2m", "uni_pc"), (4, 6)
BOTH = ("ld3", "paper")
HELDOUT_SEED = 900_000  # one fixed held-out set per model, disjoint from the teacher seeds below
OTHER_SEED = 700_000  # a second set, to see how the in-sample oracle does on noises it was not fitted to


@dataclass(frozen=True)
class Cell:
    sampler: str
    nfe: int
    variants: tuple[str, ...]


@dataclass(frozen=True)
class Budget:
    """Per-model data sizes."""

    samples: int  # teacher pairs, half training / half validation
    heldout: int
    batch_size: int | None = None  # None: the recipe's own


def oracle_models() -> tuple[str, ...]:
    """The models whose cells get an oracle (bench/oracle.py): the exact mixtures and the trained network."""
    return (*EXACT_MODELS, "digits-edm")


def oracle_cells(model_names) -> list[tuple[str, str, int]]:
    return [(m, c.sampler, c.nfe) for m in model_names if m in oracle_models() for c in grid(m)]


def grid(model: str) -> list[Cell]:
    """The cells measured for one model."""
    if model in EXACT_MODELS:  # every cell has an oracle (bench/oracle.py)
        return [Cell(s, nfe, BOTH) for nfe in ORACLE_NFE for s in ALL_SAMPLERS]
    if model == "digits-edm":  # a trained network: the oracle runs here too
        return [Cell(s, nfe, BOTH) for nfe in DIGITS_NFE for s in DIGITS_SAMPLERS]
    if model.startswith("tiny-"):  # the paper's four solvers at NFE 4 and 6
        lpips = ("ld3 lpips",) if model == "tiny-sd15-eps" else ()
        return [
            Cell(s, nfe, BOTH + (lpips if s == "dpmpp_2m" else ())) for nfe in (4, 6) for s in PAPER_SAMPLERS
        ]
    raise KeyError(model)


_BUDGET_OVERRIDE: dict = {}


def override_budget(**sizes: int) -> None:
    """Other data sizes for this process (bench/compare_configs.py); the cache files carry the sizes."""
    _BUDGET_OVERRIDE.update(sizes)


def budget(model: str) -> Budget:
    return replace(_default_budget(model), **_BUDGET_OVERRIDE)


def _default_budget(model: str) -> Budget:
    if model in EXACT_MODELS:
        # LD3 Generate Teacher's default 50 samples (25 train / 25 validation); 512 held-out noises, the
        # oracle's own, so learned and optimal schedules are scored on the same samples.
        return Budget(samples=50, heldout=512)
    if model == "digits-edm":
        return Budget(samples=50, heldout=128)
    return Budget(samples=16, heldout=8, batch_size=2)


# ---- one worker process -------------------------------------------------------------------------

_MODELS: dict = {}
_DATA: dict = {}


def quiet() -> None:
    """Keep worker output to errors: ComfyUI's model-management notes and checkpoint's input warning."""
    logging.getLogger().setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="None of the inputs have requires_grad")
    warnings.filterwarnings("ignore", category=UserWarning, module="torch.utils.checkpoint")


def _model(name: str):
    from bench import models

    if name not in _MODELS:
        _MODELS[name] = models.build(name)
    return _MODELS[name]


def eval_batch(bm) -> int:
    """Samples per call where nothing is differentiated (held-out sets, the trainer's validation).

    A mixture's denoiser call costs ~1 ms of ComfyUI's per-call Python whatever the batch, so it takes
    a whole held-out set at once; the tiny networks are compute-bound. The results do not depend on it:
    every sample is solved on its own (a suite run at 128 / 8 gave a bitwise-identical quality.json to
    one at the former 32 / 4 with the trainer's default 8).
    """
    return 128 if bm.exact else 8


def train_config(name: str, steps: int, recipe: str = "ld3", **fields):
    """The trainer's settings for a bench model: the recipe's, with the bench's evaluation batch."""
    from ld3_core.trainer import TrainConfig

    sizes = {"eval_batch_size": eval_batch(_model(name))}
    if budget(name).batch_size is not None:
        sizes["batch_size"] = budget(name).batch_size
    return TrainConfig.preset(recipe, steps, **{**sizes, **fields})


def _reference(bm, noise: torch.Tensor) -> torch.Tensor:
    """The reference endpoint for unit noise: a many-step solve (exact for mixtures) or the teacher."""
    from ld3_core.comfyui.adapter import sample_stock
    from ld3_core.teacher import schedule_sigmas

    sampler = bm.reference_sampler
    sigmas = schedule_sigmas(bm.patcher, bm.reference_scheduler, bm.reference_steps, sampler)
    batch = eval_batch(bm)
    outs = [
        sample_stock(bm.patcher, bm.cond, sampler, sigmas, noise[i : i + batch]).float().cpu()
        for i in range(0, len(noise), batch)
    ]
    return torch.cat(outs)


def _cache_file(name: str, seed: int | None):
    from bench import env

    size = budget(name)
    tag = {None: f"heldout{size.heldout}", "other": f"other{size.heldout}"}.get(
        seed, f"seed{seed}_{size.samples}"
    )
    return env.BENCH_DIR / "out" / "cache" / f"{name}_{tag}.pt"


def _make(name: str, seed) -> dict:
    """Teacher pairs for a seed, or the model's held-out noises and references (seed None or "other")."""
    from bench.models import TEACHER_STEPS
    from ld3_core.teacher import generate_teacher, start_noise

    bm, size = _model(name), budget(name)
    started = time.perf_counter()
    if seed is None or seed == "other":
        noise = start_noise(bm.latent_shape, HELDOUT_SEED if seed is None else OTHER_SEED, size.heldout)
        out = {"noise": noise, "ref": _reference(bm, noise)}
    else:
        # What a user trains on: LD3 Generate Teacher's defaults (dpmpp_2m, scheduler auto, 20 steps).
        teacher = generate_teacher(
            bm.patcher,
            [bm.cond],
            bm.latent_shape,
            size.samples,
            1000 * seed,
            steps=TEACHER_STEPS,
            batch_size=eval_batch(bm),
        )
        out = {k: getattr(teacher, k) for k in ("noise", "targets", "prompt_index", "is_validation")}
        out["teacher_scheduler"] = teacher.info["scheduler"]
    out["seconds"] = time.perf_counter() - started
    return out


def prepare_job(job: tuple[str, int | None]) -> float:
    """Make one model's held-out set or one (model, seed)'s teacher pairs, cached on disk."""
    from bench import env

    env.bootstrap(threads=1)
    quiet()
    name, seed = job
    data = _make(name, seed)
    path = _cache_file(name, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    return data["seconds"]


def _data(name: str, seed: int | None) -> dict:
    key = (name, seed)
    if key not in _DATA:
        path = _cache_file(name, seed)
        _DATA[key] = torch.load(path, weights_only=True) if path.is_file() else _make(name, seed)
    return _DATA[key]


def _teacher(name: str, seed: int):
    from bench.models import TEACHER_STEPS
    from ld3_core.teacher import TEACHER_SAMPLER, TeacherData

    data = _data(name, seed)
    # How the pairs were made (_make: LD3 Generate Teacher's defaults), so training can ask the teacher
    # for more (hard-example mining); no model identity: the data was made with this very model.
    info = {"sampler": TEACHER_SAMPLER, "scheduler": data["teacher_scheduler"], "steps": TEACHER_STEPS}
    fields = {k: data[k] for k in ("noise", "targets", "prompt_index", "is_validation")}
    return TeacherData(**fields, info={**info, "seed": 1000 * seed})


def _stats(bm, out: torch.Tensor, ref: torch.Tensor) -> dict:
    """Held-out statistics: mean / median per-sample RMSE, and (mixtures) the share of mode flips."""
    per_sample = (out.float().cpu() - ref).pow(2).flatten(1).mean(1).sqrt()
    finite = bool(torch.isfinite(per_sample).all())
    stats = {
        "error": float(per_sample.mean()) if finite else math.inf,
        "error_median": float(per_sample.median()) if finite else math.inf,
    }
    mixture = getattr(bm.patcher.model.diffusion_model, "mixture", None)
    if mixture is not None and finite:
        means = mixture.means.reshape(mixture.means.shape[0], -1).float().cpu()
        nearest = lambda x: torch.cdist(x.reshape(len(x), -1).float(), means).argmin(1)  # noqa: E731
        stats["flip_rate"] = float((nearest(out.cpu()) != nearest(ref)).float().mean())
    return stats


def _heldout(bm, sampler, schedule, noise, ref) -> dict:
    """What a user gets, on the held-out noises: the stock sampler (on the LD3-patched model if learned)."""
    from ld3_core import api
    from ld3_core.comfyui.adapter import sample_stock

    outs, batch = [], eval_batch(bm)
    for i in range(0, len(noise), batch):
        chunk = noise[i : i + batch]
        if schedule.is_plain:
            outs.append(sample_stock(bm.patcher, bm.cond, sampler, schedule.step_sigmas, chunk))
        else:
            outs.append(api.sample_with_schedule(bm.patcher, bm.cond, sampler, schedule, chunk))
    return _stats(bm, torch.cat(outs), ref)


def run_job(job: tuple[str, int, list[Cell]]) -> list[dict]:
    """Measure every cell of one (model, seed); returns one row per (cell, method)."""
    from bench import env

    env.bootstrap(threads=1)
    quiet()
    from bench import models
    from ld3_core import api
    from ld3_core.losses import make_loss
    from ld3_core.schedule import Schedule

    name, seed, cells = job
    bm = _model(name)
    teacher = _teacher(name, seed)
    heldout = _data(name, None)
    noise, ref = heldout["noise"], heldout["ref"]
    rows = []
    for cell in cells:
        steps = models.steps_for_nfe(cell.sampler, cell.nfe)
        base = {
            "model": name,
            "sampler": cell.sampler,
            "nfe": cell.nfe,
            "steps": steps,
            "seed": seed,
            "nfe_used": models.used_nfe(cell.sampler, steps),
        }
        schedules = {
            n: (s, "builtin") for n, s in api.builtin_schedules(bm.patcher, steps, cell.sampler).items()
        }
        schedules.update({n: (s, "extra") for n, s in api.extra_schedules(bm.patcher, steps).items()})
        for method, (sigmas, kind) in schedules.items():
            stats = _heldout(bm, cell.sampler, Schedule.plain(sigmas), noise, ref)
            rows.append({**base, "method": method, "kind": kind, **stats, "sigmas": sigmas.tolist()})
        for variant in cell.variants:
            spec = VARIANTS[variant]
            config = train_config(name, steps, spec["recipe"], seed=seed)
            loss = make_loss(spec["loss"], vae=bm.vae, lpips_weights=str(env.LPIPS_WEIGHTS))
            started = time.perf_counter()
            try:
                result = api.learn_schedule(bm.patcher, teacher, [bm.cond], cell.sampler, config, loss)
            except Exception as exc:  # a failed training is a result to report, not a crash of the suite
                rows.append(
                    {**base, "method": variant, "kind": "learned", "error": math.nan, "failed": repr(exc)}
                )
                continue
            train_s = time.perf_counter() - started
            # What users get (the verdict's choice), and the learned schedule itself even where the
            # verdict handed back the built-in.
            stats = _heldout(bm, cell.sampler, result.output_schedule, noise, ref)
            learned = _heldout(bm, cell.sampler, result.schedule, noise, ref)
            verdict = result.verdict.as_dict()
            rows.append(
                {
                    **base,
                    "method": variant,
                    "kind": "learned",
                    **stats,
                    "learned_error": learned["error"],
                    "learned_error_median": learned["error_median"],
                    "train_s": train_s,
                    "iterations": len(result.train_curve),
                    "epochs": result.epochs_done,
                    "initial_scheduler": result.initial_scheduler,
                    "starts": result.starts,
                    "winning_start": result.winning_start,  # the built-in whose run the schedule came from
                    "initial_validation_loss": result.initial_validation_loss,
                    "best_validation_loss": result.best_validation_loss,
                    "validation_curve": result.validation_curve,
                    "verdict": verdict,
                    "schedule": [t.tolist() for t in result.schedule.tensors()],
                    "config": asdict(api.config_for_model(config, bm.patcher)),  # as trained
                    "loss": spec["loss"],
                    "teacher_scheduler": _data(name, seed).get("teacher_scheduler"),
                }
            )
    return rows


def data_jobs(model_names, seeds) -> list[tuple[str, int | None]]:
    held = [(name, None) for name in model_names]
    other = [(name, "other") for name in model_names if name in oracle_models()]
    return held + other + [(name, s) for name in model_names for s in seeds]


def jobs(model_names, seeds=(0, 1, 2)) -> list[tuple[str, int, list[Cell]]]:
    """Split the grid into jobs: per model and seed, the cells grouped by NFE (for load balance)."""
    out = []
    for name in model_names:
        groups: dict[int, list[Cell]] = {}
        for cell in grid(name):
            groups.setdefault(cell.nfe, []).append(cell)
        for seed in seeds:
            for nfe in sorted(groups):
                out.append((name, seed, groups[nfe]))
    return out


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean and sd over seeds per (model, sampler, nfe, method)."""
    by_key: dict[tuple, list[dict]] = {}
    for row in rows:
        by_key.setdefault((row["model"], row["sampler"], row["nfe"], row["method"]), []).append(row)
    records = []
    for (model, sampler, nfe, method), group in sorted(by_key.items()):
        group.sort(key=lambda r: r["seed"])

        def mean_sd(key, group=group):
            values = torch.tensor([r.get(key, math.nan) for r in group], dtype=torch.float64)
            values = values[torch.isfinite(values)]
            if not len(values):
                return math.nan, math.nan
            return float(values.mean()), float(values.std()) if len(values) > 1 else 0.0

        error_mean, error_sd = mean_sd("error")
        record = {
            "model": model,
            "sampler": sampler,
            "nfe": nfe,
            "method": method,
            "error_mean": error_mean,
            "error_sd": error_sd,
            "seeds": [r["seed"] for r in group],
            "kind": group[0]["kind"],
            "steps": group[0]["steps"],
            "nfe_used": group[0]["nfe_used"],
            "per_seed": [r["error"] for r in group],
            "error_median_mean": mean_sd("error_median")[0],
        }
        if "flip_rate" in group[0]:
            record["flip_rate_mean"] = mean_sd("flip_rate")[0]
        if group[0]["kind"] == "learned":
            record["learned_error_mean"] = mean_sd("learned_error")[0]
            record["per_seed_learned"] = [r.get("learned_error", math.nan) for r in group]
            record["train_s_mean"] = sum(r.get("train_s", 0.0) for r in group) / len(group)
            record["iterations_mean"] = sum(r.get("iterations", 0) for r in group) / len(group)
            record["initial_schedulers"] = [r.get("initial_scheduler") for r in group]
            record["use_learned"] = [r.get("verdict", {}).get("use_learned") for r in group]
            record["validation_ratio"] = [r.get("verdict", {}).get("ratio") for r in group]
            failures = [r["failed"] for r in group if "failed" in r]
            if failures:
                record["failures"] = failures
        records.append(record)
    return records
