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

# Learned variants: what each one changes from the paper's recipe (TrainConfig defaults).
VARIANTS: dict[str, dict] = {
    "ld3 soft+decoupled": {"soft_gamma": 0.001, "decoupled": True, "loss": "l2"},
    "ld3 soft": {"soft_gamma": 0.001, "decoupled": False, "loss": "l2"},
    "ld3 hard": {"soft_gamma": 0.0, "decoupled": True, "loss": "l2"},
    "ld3 soft+decoupled lpips": {"soft_gamma": 0.001, "decoupled": True, "loss": "lpips"},
}
ALL_SAMPLERS = ("euler", "heun", "dpmpp_2m", "uni_pc", "ipndm", "deis")
PAPER_SAMPLERS = ("dpmpp_2m", "uni_pc", "ipndm", "euler")
MAIN = ("ld3 soft+decoupled",)
ABLATIONS = ("ld3 soft+decoupled", "ld3 soft", "ld3 hard")
HELDOUT_SEED = 900_000  # one fixed held-out set per model, disjoint from the teacher seeds below


@dataclass(frozen=True)
class Cell:
    sampler: str
    nfe: int
    variants: tuple[str, ...]


@dataclass(frozen=True)
class Budget:
    """Per-model data sizes (reduced from the paper's 50/50 to fit the CPU budget)."""

    samples: int  # teacher pairs, half training / half validation
    heldout: int
    batch_size: int


def grid(model: str) -> list[Cell]:
    """The cells measured for one model (the CPU budget decides how many; see BENCHMARKS.md)."""
    if model == "mix-eps-4x16x16":
        cells = []
        for nfe in (4, 5, 6):
            for sampler in ALL_SAMPLERS:
                ablate = sampler in ("dpmpp_2m", "uni_pc") and nfe in (4, 6)
                cells.append(Cell(sampler, nfe, ABLATIONS if ablate else MAIN))
        return cells + [Cell(s, nfe, MAIN) for nfe in (8, 10) for s in ("dpmpp_2m", "uni_pc")]
    if model in ("mix-eps-4x32x32", "mix-flow-16x16x16"):
        cells = [Cell(s, nfe, MAIN) for nfe in (4, 5, 6) for s in PAPER_SAMPLERS]
        return cells + [Cell("dpmpp_2m", nfe, MAIN) for nfe in (8, 10)]
    if model.startswith("tiny-"):  # the paper's four solvers at NFE 4 and 6; a dpmpp_2m NFE sweep on SD1.5
        lpips = ("ld3 soft+decoupled lpips",) if model == "tiny-sd15-eps" else ()
        cells = [
            Cell(s, nfe, MAIN + (lpips if s == "dpmpp_2m" else ())) for nfe in (4, 6) for s in PAPER_SAMPLERS
        ]
        if model == "tiny-sd15-eps":
            cells += [Cell("dpmpp_2m", nfe, MAIN) for nfe in (5, 8, 10)]
        return cells
    if model == "digits-edm":  # a trained network (bench/digits.py): the paper's four solvers at NFE 4 and 6
        return [Cell(s, nfe, MAIN) for nfe in (4, 6) for s in PAPER_SAMPLERS]
    raise KeyError(model)


_BUDGET_OVERRIDE: dict = {}


def override_budget(**sizes: int) -> None:
    """Other data sizes for this process (bench/compare_configs.py); the cache files carry the sizes."""
    _BUDGET_OVERRIDE.update(sizes)


def budget(model: str) -> Budget:
    return replace(_default_budget(model), **_BUDGET_OVERRIDE)


def _default_budget(model: str) -> Budget:
    if model.startswith("mix-"):
        # The paper's 50 / 50 pairs (the data is cheap). 128 held-out noises: a mode flip costs ~10x a
        # typical sample's error, so with 32 one flip moved a cell's mean by tens of per cent. Batch 4,
        # not the paper's 2, halves the training time; side by side (16 cells x 3 seeds) the mean ratio
        # to the best built-in was 0.960 at batch 4 and 0.964 at batch 2 (1.086 with 24 / 24 pairs).
        return Budget(samples=100, heldout=128, batch_size=4)
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


def train_config(name: str, steps: int, **fields):
    """The trainer's settings for a bench model: the paper's recipe with the bench's batch sizes."""
    from ld3_core.trainer import TrainConfig

    sizes = {"batch_size": budget(name).batch_size, "eval_batch_size": eval_batch(_model(name))}
    return TrainConfig(steps=steps, **{**sizes, **fields})


def _reference(bm, noise: torch.Tensor) -> torch.Tensor:
    """The reference endpoint for unit noise: the exact 500-step solve or the teacher."""
    from ld3_core.comfy_adapter import sample_stock
    from ld3_core.teacher import schedule_sigmas

    sigmas = schedule_sigmas(bm.patcher, bm.teacher_scheduler, bm.teacher_steps, "dpmpp_2m")
    batch = eval_batch(bm)
    outs = [
        sample_stock(bm.patcher, bm.cond, "dpmpp_2m", sigmas, noise[i : i + batch]).float().cpu()
        for i in range(0, len(noise), batch)
    ]
    return torch.cat(outs)


def _cache_file(name: str, seed: int | None):
    from bench import env

    size = budget(name)
    tag = f"heldout{size.heldout}" if seed is None else f"seed{seed}_{size.samples}"
    return env.BENCH_DIR / "out" / "cache" / f"{name}_{tag}.pt"


def _make(name: str, seed: int | None) -> dict:
    """Teacher pairs for a seed, or (seed None) the model's held-out noises and references."""
    from ld3_core.teacher import generate_teacher, start_noise

    bm, size = _model(name), budget(name)
    started = time.perf_counter()
    if seed is None:
        noise = start_noise(bm.latent_shape, HELDOUT_SEED, size.heldout)
        out = {"noise": noise, "ref": _reference(bm, noise)}
    elif bm.exact:
        noise = start_noise(bm.latent_shape, 1000 * seed, size.samples)
        out = {
            "noise": noise,
            "targets": _reference(bm, noise),
            "prompt_index": torch.zeros(size.samples, dtype=torch.long),
            "is_validation": torch.arange(size.samples) % 2 == 1,  # the split generate_teacher makes
        }
    else:
        teacher = generate_teacher(
            bm.patcher,
            [bm.cond],
            bm.latent_shape,
            size.samples,
            1000 * seed,
            sampler="dpmpp_2m",
            scheduler=bm.teacher_scheduler,
            steps=bm.teacher_steps,
            batch_size=4,
        )
        out = {k: getattr(teacher, k) for k in ("noise", "targets", "prompt_index", "is_validation")}
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
    from ld3_core.teacher import TeacherData

    data = _data(name, seed)
    # info stays empty: the data was made with this very model (same builder, same seed).
    fields = {k: data[k] for k in ("noise", "targets", "prompt_index", "is_validation")}
    return TeacherData(**fields, info={})


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


def _heldout(bm, sampler, step_sigmas, eval_sigmas, noise, ref, learned: bool) -> dict:
    from ld3_core import api
    from ld3_core.comfy_adapter import sample_stock

    outs, batch = [], eval_batch(bm)
    for i in range(0, len(noise), batch):
        chunk = noise[i : i + batch]
        if learned:  # what a user gets: the stock sampler on the LD3-patched model
            outs.append(
                api.sample_with_schedule(bm.patcher, bm.cond, sampler, step_sigmas, eval_sigmas, chunk)
            )
        else:
            outs.append(sample_stock(bm.patcher, bm.cond, sampler, step_sigmas, chunk))
    return _stats(bm, torch.cat(outs), ref)


def run_job(job: tuple[str, int, list[Cell]]) -> list[dict]:
    """Measure every cell of one (model, seed); returns one row per (cell, method)."""
    from bench import env

    env.bootstrap(threads=1)
    quiet()
    from bench import models
    from ld3_core import api
    from ld3_core.losses import make_loss

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
            stats = _heldout(bm, cell.sampler, sigmas, None, noise, ref, False)
            rows.append({**base, "method": method, "kind": kind, **stats, "sigmas": sigmas.tolist()})
        for variant in cell.variants:
            spec = VARIANTS[variant]
            config = train_config(
                name, steps, soft_gamma=spec["soft_gamma"], decoupled=spec["decoupled"], seed=seed
            )
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
            stats = _heldout(bm, cell.sampler, result.step_sigmas, result.eval_sigmas, noise, ref, True)
            # The starting schedule through the same LD3 patch (continuous time): separates what the
            # learned schedule gains from what the patch's un-rounded timesteps alone change.
            init_sigmas = schedules[result.initial_scheduler][0]
            init_patched = _heldout(bm, cell.sampler, init_sigmas, None, noise, ref, True)
            stats["init_patched_error"] = init_patched["error"]
            stats["init_patched_error_median"] = init_patched["error_median"]
            rows.append(
                {
                    **base,
                    "method": variant,
                    "kind": "learned",
                    **stats,
                    "train_s": train_s,
                    "initial_scheduler": result.initial_scheduler,
                    "initial_validation_loss": result.initial_validation_loss,
                    "best_validation_loss": result.best_validation_loss,
                    "validation_curve": result.validation_curve,
                    "sigmas": result.step_sigmas.tolist(),
                    "eval_sigmas": result.eval_sigmas.tolist(),
                    "config": asdict(config),
                    "loss": spec["loss"],
                }
            )
    return rows


def data_jobs(model_names, seeds) -> list[tuple[str, int | None]]:
    return [(name, None) for name in model_names] + [(name, s) for name in model_names for s in seeds]


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
            record["init_patched_error_mean"] = mean_sd("init_patched_error")[0]
            record["per_seed_init_patched"] = [r.get("init_patched_error", math.nan) for r in group]
            record["init_patched_error_median_mean"] = mean_sd("init_patched_error_median")[0]
            record["train_s_mean"] = sum(r.get("train_s", 0.0) for r in group) / len(group)
            record["initial_schedulers"] = [r.get("initial_scheduler") for r in group]
            failures = [r["failed"] for r in group if "failed" in r]
            if failures:
                record["failures"] = failures
        records.append(record)
    return records
