"""The CPU benchmark suite in one command: quality, cost and memory -> bench/results/*.json + BENCHMARKS.md.

    .venv/bin/python bench/run.py            # the CPU suite; the oracle from bench/results/oracle.json
    .venv/bin/python bench/run.py --oracle   # ... and the oracle computed again (about 1 hour more)
    .venv/bin/python bench/run.py --quick    # one seed, a few cells: checks the plumbing in a few minutes

Work runs in worker processes (one torch thread each): the cost + memory suite first and alone, then
teacher data, then the quality cells, longest first, then (``--oracle``, or for cells it lacks) the
oracle, started from this run's learned schedules too.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import platform
import shutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import env, quality

QUICK_MODELS = ("mix-eps-4x16x16", "tiny-flux")
ORACLE_FILE = env.RESULTS_DIR / "oracle.json"


def _cost_job(_: int) -> dict:
    env.bootstrap(threads=1)
    quality.quiet()
    from bench import cost

    return cost.run_all(log=lambda msg: print(msg, flush=True))


def _job_weight(job) -> float:
    name, _, cells = job
    per_call = {"tiny-sd15-eps": 30.0, "tiny-sd15-v": 30.0, "tiny-flux": 12.0, "digits-edm": 20.0}.get(
        name, 2.0
    )
    return per_call * sum(c.nfe * len(c.variants) for c in cells)


def _quick_grid(jobs):
    out = []
    for name, seed, cells in jobs:
        keep = [c for c in cells if c.sampler in ("dpmpp_2m", "euler") and c.nfe in (4, 6)]
        keep = [quality.Cell(c.sampler, c.nfe, c.variants[:1]) for c in keep]
        if keep:
            out.append((name, seed, keep))
    return out


def _mtime(path) -> str:
    stamp = datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.timezone.utc)
    return stamp.strftime("%Y-%m-%d %H:%M UTC")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="one seed, dpmpp_2m/euler at NFE 4 and 6, two models"
    )
    parser.add_argument("--workers", type=int, default=max(1, min(os.cpu_count() or 1, 4)))
    parser.add_argument("--skip-cost", action="store_true", help="keep bench/results/cost.json as it is")
    parser.add_argument("--models", nargs="*", help="a subset of the models (default: all)")
    parser.add_argument(
        "--oracle",
        action="store_true",
        help="compute the oracle again for every cell (else only missing ones)",
    )
    parser.add_argument(
        "--rows",
        action="store_true",
        help="reuse bench/out/quality_rows.json (the quality cells of an earlier run, e.g. one whose oracle "
        "stage failed) instead of measuring them again",
    )
    parser.add_argument(
        "--oracle-models",
        nargs="*",
        help="the models whose cells get the oracle in this run (default: every model that has one; "
        "bench/oracle.py can add the rest later)",
    )
    parser.add_argument(
        "--keep-other-models",
        action="store_true",
        help="with --models: keep the other models' results of the last run (bench/results/quality.json, "
        "as committed); BENCHMARKS.md names them and the date each was measured",
    )
    args = parser.parse_args(argv)
    if args.keep_other_models and not args.models:
        parser.error("--keep-other-models needs --models (the models this run measures again)")

    started = time.perf_counter()
    load_start = os.getloadavg()
    env.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    rows_file = env.BENCH_DIR / "out" / "quality_rows.json"
    if args.rows and not rows_file.is_file():
        parser.error(f"--rows: there is no {rows_file}")
    reused = f" (quality cells reused from {rows_file.name} of {_mtime(rows_file)})" if args.rows else ""
    # --keep-other-models: the other models' records (per cell, over seeds) and the date each model was
    # measured, from the committed results, so that one model can be measured again in a fresh clone.
    kept, measured = [], {}
    if args.keep_other_models:
        last_run = json.loads((env.RESULTS_DIR / "run.json").read_text())
        old_records = json.loads((env.RESULTS_DIR / "quality.json").read_text())
        kept = [r for r in old_records if r["model"] not in args.models]
        measured = {
            model: last_run.get("measured", {}).get(model, last_run["date"])
            for model in sorted({r["model"] for r in kept})
        }
    if not args.rows:  # the held-out sets stay for --rows: the oracle scores on them
        shutil.rmtree(env.BENCH_DIR / "out" / "cache", ignore_errors=True)
    # This run's CPU results replace the last ones (gpu*.json and its notes come from bench/gpu.py).
    stale = [*env.RESULTS_DIR.glob("*.png"), env.RESULTS_DIR / "quality.json", env.RESULTS_DIR / "run.json"]
    for path in stale + ([] if args.skip_cost else [env.RESULTS_DIR / "cost.json"]):
        path.unlink(missing_ok=True)

    from bench.models import MODELS

    names = args.models or (QUICK_MODELS if args.quick else MODELS)
    seeds = (0,) if args.quick else (0, 1, 2)
    cell_jobs = quality.jobs(names, seeds)
    if args.quick:
        cell_jobs = _quick_grid(cell_jobs)
    cell_jobs.sort(key=_job_weight, reverse=True)
    used = sorted({name for name, _, _ in cell_jobs})
    data_jobs = sorted(
        quality.data_jobs(used, seeds), key=lambda j: (j[1] is not None, j[0].startswith("tiny"))
    )

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(args.workers) as pool:
        # Cost and memory first and alone: their timings are ratios of two measurements, but a quality
        # worker on the other core still shifts them by several per cent on a 2-core machine.
        cost = None if args.skip_cost else pool.apply(_cost_job, (0,))
        print(f"cost: done at {time.perf_counter() - started:.0f} s", flush=True)
        print(f"data: {len(data_jobs)} held-out sets and teacher sets", flush=True)
        pool.map(quality.prepare_job, data_jobs if not args.rows else [], chunksize=1)
        rows = json.loads(rows_file.read_text()) if args.rows else []
        if args.rows:
            cell_jobs = []
            print(f"quality: {len(rows)} rows reused from {rows_file}", flush=True)
        print(f"quality: {len(cell_jobs)} jobs, {time.perf_counter() - started:.0f} s so far", flush=True)
        for i, job_rows in enumerate(pool.imap_unordered(quality.run_job, cell_jobs, chunksize=1)):
            rows += job_rows
            if job_rows:
                print(
                    f"  {i + 1}/{len(cell_jobs)} {job_rows[0]['model']} seed {job_rows[0]['seed']} NFE "
                    f"{job_rows[0]['nfe']} done at {time.perf_counter() - started:.0f} s",
                    flush=True,
                )
        (env.BENCH_DIR / "out").mkdir(exist_ok=True)
        rows_file.write_text(json.dumps(rows, indent=1))
        cells = {(r["model"], r["sampler"], r["nfe"]) for r in rows if r["kind"] == "learned"}
        cells &= set(quality.oracle_cells(args.oracle_models or used))
        known = json.loads(ORACLE_FILE.read_text()) if ORACLE_FILE.is_file() else []
        if not args.oracle:
            cells -= {(r["model"], r["sampler"], r["nfe"]) for r in known}
        if cells and not args.quick:
            from bench import oracle

            oracle.run(cells, pool, rows, ORACLE_FILE, log=lambda msg: print(msg, flush=True))
            print(f"oracle: done at {time.perf_counter() - started:.0f} s", flush=True)

    records = sorted(
        quality.aggregate(rows) + kept, key=lambda r: (r["model"], r["sampler"], r["nfe"], r["method"])
    )
    (env.RESULTS_DIR / "quality.json").write_text(json.dumps(records, indent=1))
    if cost is not None:
        (env.RESULTS_DIR / "cost.json").write_text(json.dumps(cost, indent=1))

    env.bootstrap()
    import torch

    comfyui_version = (env.COMFYUI_DIR / "comfyui_version.py").read_text().split('"')[1]
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if kept:
        by_date: dict[str, list[str]] = {}
        for model, date in measured.items():
            by_date.setdefault(date, []).append(model)
        reused += "".join(
            f" (the results of {', '.join(models)} are those of the run of {date}, with the code of that time)"
            for date, models in sorted(by_date.items())
        )
    measured.update({name: today for name in used})
    run_info = {
        "date": today,
        "measured": dict(sorted(measured.items())),
        "wall_s": time.perf_counter() - started,
        "workers": args.workers,
        "cpus": os.cpu_count(),
        "loadavg_start": round(load_start[0], 1),
        "loadavg_end": round(os.getloadavg()[0], 1),
        "torch": torch.__version__,
        "comfyui": comfyui_version,
        "python": platform.python_version(),
        "mode": ("quick" if args.quick else "full") + reused,
        "command": " ".join(
            [".venv/bin/python", "bench/run.py", *(argv if argv is not None else sys.argv[1:])]
        ),
    }
    (env.RESULTS_DIR / "run.json").write_text(json.dumps(run_info, indent=1))
    from bench import report

    path = report.write(run_info)
    print(f"wrote {path} in {run_info['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
