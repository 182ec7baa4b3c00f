"""Side by side: learned-schedule quality under several trainer settings, on the benchmark's models.

For deciding whether a change to the recipe helps: every setting is trained on the same teacher pairs
(per model and seed) and scored on the same held-out noises against the best built-in schedule of the
cell, exactly as ``bench/quality.py`` scores the suite.

    .venv/bin/python bench/compare_configs.py --models mix-eps-4x16x16 mix-flux-16x8x8 \\
        --samplers dpmpp_2m uni_pc euler ipndm --nfe 4 6 \\
        --config 'ld3={}' --config 'paper={"recipe": "paper"}' --config 'batch1={"batch_size": 1}'

A setting is NAME=JSON: "recipe" (a TrainConfig preset, default ld3), ``TrainConfig`` fields
(batch_size, lr_steps, epochs_phase2, soft_gamma, ...) and optionally "samples", to train on the first N
teacher pairs only (training and validation alternate, so half of them validate), and "mining_steps": the
steps of the teacher that hard-example mining asks for new pairs (default: the teacher's own; "exact": the
model's reference solve). Where
bench/results/oracle.json has the cell, the share of the achievable gain is printed too. --samples and --heldout change the data sizes (default: the
suite's); the data is cached under bench/out/cache by size.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import env, quality  # noqa: E402


def _init(sizes: dict) -> None:
    env.bootstrap(threads=1)
    quality.quiet()
    quality.override_budget(**sizes)


def _prepare(job):
    if not quality._cache_file(*job).is_file():  # a suite run may be reading it: never rewrite it
        quality.prepare_job(job)


def _run(job: tuple[str, int, list[str], list[int], dict]) -> list[dict]:
    from bench import models
    from ld3_core import api
    from ld3_core.losses import make_loss
    from ld3_core.schedule import Schedule
    from ld3_core.teacher import TeacherData
    from ld3_core.trainer import LD3TrainingError

    name, seed, samplers, nfes, settings = job
    bm = quality._model(name)
    teacher = quality._teacher(name, seed)
    heldout = quality._data(name, None)
    noise, ref = heldout["noise"], heldout["ref"]
    rows = []
    for sampler in samplers:
        for nfe in nfes:
            steps = models.steps_for_nfe(sampler, nfe)
            builtins = [
                quality._heldout(bm, sampler, Schedule.plain(sigmas), noise, ref)["error"]
                for sigmas in api.candidate_schedules(bm.patcher, steps, sampler).values()
            ]
            best = min(builtins)
            for label, setting in settings.items():
                fields = dict(setting)
                n = fields.pop("samples", None)
                recipe = fields.pop("recipe", "ld3")
                info = _mining_teacher(bm, teacher.info, fields.pop("mining_steps", None))
                data = TeacherData(
                    **{
                        k: getattr(teacher, k)[:n] if n else getattr(teacher, k)
                        for k in ("noise", "targets", "prompt_index", "is_validation")
                    },
                    info=info,
                )
                config = quality.train_config(name, steps, recipe, **{"seed": seed, **fields})
                started = time.perf_counter()
                row = {"model": name, "sampler": sampler, "nfe": nfe, "seed": seed, "setting": label}
                try:
                    result = api.learn_schedule(bm.patcher, data, [bm.cond], sampler, config, make_loss("l2"))
                except LD3TrainingError as exc:  # counted as a failure of the setting, the rest goes on
                    print(f"{label} {name} {sampler} NFE {nfe} seed {seed}: failed: {exc}", flush=True)
                    rows.append(
                        {**row, "ratio": None, "failed": str(exc), "seconds": time.perf_counter() - started}
                    )
                    continue
                seconds = time.perf_counter() - started
                stats = quality._heldout(bm, sampler, result.output_schedule, noise, ref)
                rows.append(
                    {
                        **row,
                        "ratio": stats["error"] / best,
                        "flip_rate": stats.get("flip_rate"),
                        "validation_curve": result.validation_curve,
                        "seconds": seconds,
                        "iterations": len(result.train_curve),
                    }
                )
    return rows


def _mining_teacher(bm, info: dict, steps) -> dict:
    """The teacher that hard-example mining asks for new pairs: as recorded (None), with ``steps`` steps,
    or "exact": the model's reference solve (the exact endpoint on a mixture)."""
    if steps is None:
        return info
    if steps == "exact":
        return {
            **info,
            "sampler": bm.reference_sampler,
            "scheduler": bm.reference_scheduler,
            "steps": bm.reference_steps,
        }
    return {**info, "steps": int(steps)}


def summarise(rows: list[dict], labels: list[str], oracle_path: Path | None = None) -> str:
    from bench.oracle import searched_optimum, share

    oracle_path = oracle_path or env.RESULTS_DIR / "oracle.json"
    optima = {}
    if oracle_path.is_file():
        optima = {
            (r["model"], r["sampler"], r["nfe"]): searched_optimum(r)
            for r in json.loads(oracle_path.read_text())
        }
    cells: dict[tuple, dict[str, list[float]]] = {}
    seconds: dict[str, list[float]] = {}
    failed: dict[str, int] = {}
    for row in rows:
        if row["ratio"] is None:
            failed[row["setting"]] = failed.get(row["setting"], 0) + 1
            continue
        key = (row["model"], row["sampler"], row["nfe"])
        cells.setdefault(key, {}).setdefault(row["setting"], []).append(row["ratio"])
        seconds.setdefault(row["setting"], []).append(row["seconds"])
    lines = [
        "ratio = held-out mean RMSE / best built-in's, mean over seeds [share of the oracle's gain]",
        "cell | optimum | " + " | ".join(labels),
    ]
    means: dict[str, list[float]] = {label: [] for label in labels}
    shares: dict[str, list[float]] = {label: [] for label in labels}
    for key in sorted(cells):
        optimum = optima.get(key)
        texts = []
        for label in labels:
            if label not in cells[key]:  # every run of this setting failed here: not in its means
                texts.append("failed")
                continue
            value = statistics.mean(cells[key][label])
            means[label].append(value)
            text = f"{value:.3f}"
            if optimum is not None:
                shares[label].append(share(value, optimum))
                text += f" [{shares[label][-1]:.0%}]"
            texts.append(text)
        opt = f"{optimum:.3f}" if optimum is not None else "-"
        lines.append(f"{key[0]} {key[1]} NFE {key[2]} | {opt} | " + " | ".join(texts))
    for label in labels:
        v = means[label]
        if not v:
            lines.append(f"{label}: every run failed ({failed.get(label, 0)})")
            continue
        text = (
            f"{label}: mean {statistics.mean(v):.3f}, median {statistics.median(v):.3f}, worst {max(v):.3f}, "
            f"beats the best built-in in {sum(x < 1 for x in v)}/{len(v)}; "
            f"mean training time {statistics.mean(seconds.get(label, [math.nan])):.1f} s; cells {len(v)}"
        )
        if shares[label]:
            s = shares[label]
            text += f"; share: mean {statistics.mean(s):.0%}, min {min(s):.0%}, >= 80% in {sum(x >= 0.8 for x in s)}/{len(s)}"
        if failed.get(label):
            text += f"; FAILED runs (not in the means): {failed[label]}"
        lines.append(text)
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--samplers", nargs="+", default=["dpmpp_2m"])
    parser.add_argument("--nfe", nargs="+", type=int, default=[4, 6])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--config", action="append", required=True, help="NAME=JSON (see the module doc)")
    parser.add_argument("--samples", type=int, help="teacher pairs per seed (default: the suite's)")
    parser.add_argument("--heldout", type=int, help="held-out noises per model (default: the suite's)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the per-seed rows as JSON")
    parser.add_argument(
        "--oracle",
        type=Path,
        help="the optima for the shares (default bench/results/oracle.json; with --heldout, an oracle.py "
        "--heldout run on the same noises)",
    )
    args = parser.parse_args(argv)

    settings = {}
    for item in args.config:
        label, _, text = item.partition("=")
        try:
            settings[label] = json.loads(text or "{}")
        except json.JSONDecodeError as exc:
            parser.error(f"--config {item!r}: the part after '=' is not JSON ({exc})")
    sizes = {k: v for k, v in (("samples", args.samples), ("heldout", args.heldout)) if v}
    started = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(args.workers, initializer=_init, initargs=(sizes,)) as pool:
        pool.map(_prepare, quality.data_jobs(args.models, args.seeds), chunksize=1)
        # One job per (model, seed, sampler, NFE): many workers stay busy.
        jobs = [
            (m, s, [x], [n], settings)
            for m in args.models
            for s in args.seeds
            for x in args.samplers
            for n in args.nfe
        ]
        jobs.sort(key=lambda job: -job[3][0])  # the longest (most steps) first
        rows = []
        for job_rows in pool.imap_unordered(_run, jobs, chunksize=1):
            rows += job_rows
            if args.out:  # after every job: a run cut short keeps what it measured
                args.out.write_text(json.dumps(rows, indent=1))
    print(summarise(rows, list(settings), args.oracle))
    print(f"{time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
