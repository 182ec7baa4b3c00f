"""The oracle: the best schedule any method could find for a cell, and how much of its gain LD3 captures.

For one model + sampler + step count, the schedule is optimised directly against the reference endpoint
(the exact ODE solution for a mixture) on the held-out noises themselves, full batch: Adam with a cosine
learning rate, then L-BFGS, from several starts (each three times for all three sigmas: the first step
free from two starts below sigma_max, and pinned at it), keeping the best. Two freedoms:

- ``steps``: the step sigmas only (what any SIGMAS-only method can reach);
- ``full``: the step sigmas and, per step, the network's time m and the scaling sigma u (what the pack's
  ``ld3`` recipe learns).

It is in-sample by construction (the issue's definition of "achievable"), so it also reports the same
schedules on a second, disjoint set of noises: the part of the in-sample gain that is only fitted to
the 512 noises it was optimised on shows up there. And it runs the same search on those other noises
and scores the result on the held-out ones (``transfer``): the best a method could reach that trains
on 512 noises with the exact endpoint as its target (ten times the pack's default teacher pairs, and no
teacher error), but, like every method, never sees the noises it is scored on. Captured share =
(1 - learned ratio) / (1 - optimum ratio), ratios to the best built-in on the same noises.

    .venv/bin/python bench/oracle.py     # every exact-mixture cell -> bench/results/oracle.json
    .venv/bin/python bench/oracle.py --models mix-eps-4x16x16 --samplers euler --nfe 4
    .venv/bin/python bench/oracle.py --transfer-only   # only the transfer optimum, into the known rows
    .venv/bin/python bench/oracle.py --heldout 2048 --no-transfer --out bench/out/oracle2048.json \
        --models mix-eps-4x16x16 --samplers uni_pc --nfe 6   # the optimum on 4x the noises
    .venv/bin/python bench/oracle.py --models mix-flux-16x8x8 --no-transfer \
        --starts bench/results/oracle.json    # search again from the known optima (never ends higher)

(``bench/run.py --oracle`` runs it after the quality cells, with their learned schedules as starts.)
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import env

ADAM_ITERATIONS = 60
LBFGS_ITERATIONS = 30
# Where the free first step's network time and scaling sigma start (log units below sigma_max): just
# below the top, and where the trainer starts a flow model's (``TrainConfig.first_offset``, 0.905): from
# near the top alone the search missed basins the trainer's start found (Flux dpmpp_2m NFE 8: 0.33x the
# best built-in where the search had 0.57x; bench/results/side_by_side.md).
FIRST_OFFSETS = (-0.02, -0.1)
# How the all-three search runs (recorded in each row; rows of an earlier search keep theirs, and rows of
# the earliest say nothing).
SEARCH = (
    "from each start with the first step free (started 2 % and 10 % below sigma_max), and again with it "
    "pinned at sigma_max"
)
# The search before FIRST_OFFSETS had its second offset (the first step free from 2 % below the top only).
SEARCH_ONE_OFFSET = "from each start with the first step free, and again with it pinned at sigma_max"
# A row kept from two searches, the one-offset search and the earlier one (first step free only),
# whichever found the lower error; "full_ratio_current_search" holds what the former alone found.
SEARCH_BOTH = f"the better of two searches: {SEARCH_ONE_OFFSET}; and the earlier one (first step free only)"
# What a run that does not search the transfer optimum again keeps of the file's row.
TRANSFER_FIELDS = ("transfer_ratio", "transfer_schedule", "transfer_seconds")


def _rmse(out, ref):
    return (out - ref).pow(2).flatten(1).mean(1).sqrt()


def optimise(student, cond, noise, ref, starts, freedom, sigma_range, pin_first=False, first_offset=0.0):
    """Best (schedule, in-sample mean RMSE) over the starts: Adam (cosine lr), then L-BFGS; full batch.
    ``pin_first``: the first step's network time and scaling sigma stay at sigma_max ("full"); else
    they start ``first_offset`` below it."""
    import torch

    from ld3_core.parameterisation import ScheduleParameters

    best = (math.inf, None)
    for start in starts:
        nudge = first_offset if freedom == "full" else 0.0
        params = ScheduleParameters(start, freedom, sigma_range, nudge, pin_first=pin_first)
        trained = [params.step_logits, *params.offset_parameters()]

        def objective(params=params):
            return _rmse(student(noise, cond, params.schedule()), ref).mean()

        adam = torch.optim.Adam(trained, lr=0.03)
        decay = torch.optim.lr_scheduler.CosineAnnealingLR(adam, ADAM_ITERATIONS, eta_min=0.001)
        good = params.state()  # the last parameters with a finite loss
        for _ in range(ADAM_ITERATIONS):
            try:
                loss = objective()
            except IndexError:  # a NaN time indexes the sigma table
                loss = torch.tensor(math.nan)
            if not math.isfinite(loss.item()):  # stepped where the solver breaks down: go back, stop
                params.load_state(good)
                break
            good = params.state()
            if loss.item() < best[0]:
                best = (loss.item(), params.schedule().detach())
            adam.zero_grad()
            loss.backward()
            adam.step()
            decay.step()
            params.project()
        lbfgs = torch.optim.LBFGS(
            trained, lr=1, max_iter=LBFGS_ITERATIONS, history_size=20, line_search_fn="strong_wolfe"
        )

        def closure(params=params, lbfgs=lbfgs):
            lbfgs.zero_grad()
            loss = objective(params)
            loss.backward()
            return loss

        before = params.state()
        try:
            lbfgs.step(closure)
        except (RuntimeError, IndexError):  # a line search that stepped into NaN (a NaN time indexes
            params.load_state(before)  # the sigma table): keep what Adam found
        if not all(bool(torch.isfinite(p).all()) for p in trained):
            params.load_state(before)
        params.project()
        with torch.no_grad():
            try:
                loss = float(objective())
            except IndexError:
                loss = math.nan
        if math.isfinite(loss) and loss < best[0]:
            best = (loss, params.schedule().detach())
    return best[1], best[0]


def oracle_cell(
    bm,
    sampler: str,
    steps: int,
    noise,
    ref,
    other_noise,
    other_ref,
    learned=(),
    parts=("in-sample", "transfer"),
) -> dict:
    """The optima for one cell, with the best built-in: in-sample (both freedoms, also scored on the
    other noises) and transfer (all three sigmas fitted on the other noises, scored on the held-out)."""
    import torch

    from ld3_core import api
    from ld3_core.comfyui.adapter import DifferentiableSampler
    from ld3_core.schedule import Schedule

    def error(schedule, x, y):
        with torch.no_grad():
            return float(_rmse(api.sample_with_schedule(bm.patcher, bm.cond, sampler, schedule, x), y).mean())

    builtins = {
        name: Schedule.plain(sigmas)
        for name, sigmas in api.candidate_schedules(bm.patcher, steps, sampler).items()
    }
    builtin_errors = {name: error(s, noise, ref) for name, s in builtins.items()}
    best_name = min(builtin_errors, key=builtin_errors.get)
    ms = bm.patcher.get_model_object("model_sampling")
    sigma_range = (float(ms.sigma_min), float(ms.sigma_max))
    student = DifferentiableSampler(bm.patcher, sampler, checkpoint=False)

    def search(x, y, start, learned=()):
        with torch.enable_grad():
            steps_only, _ = optimise(student, bm.cond, x, y, [start], "steps", sigma_range)
            # From the step-sigma optimum (the first time moved a little), and from the best schedule any
            # learned run of the benchmark found (so the optimum is never worse than what a method reached).
            starts = [steps_only, *learned]
            full, free_loss = min(
                (
                    optimise(student, bm.cond, x, y, starts, "full", sigma_range, first_offset=offset)
                    for offset in FIRST_OFFSETS
                ),
                key=lambda found: found[1],
            )
            # The same starts with the first step held at sigma_max (a subset of the full freedom): the
            # search falls into another basin, often a better one (EPS uni_pc NFE 8: 0.16x the best
            # built-in against 0.31x with the first step free; bench/results/side_by_side.md).
            pinned, pinned_loss = optimise(
                student, bm.cond, x, y, starts, "full", sigma_range, pin_first=True
            )
            if pinned_loss < free_loss:
                full = pinned
        # The full freedom contains the step sigmas alone and every start (the search nudges a start's
        # first step, so it can end above the start itself): the best of them all.
        full = min([full, steps_only, *learned], key=lambda schedule: error(schedule, x, y))
        return steps_only, full

    base, base_other = builtin_errors[best_name], error(builtins[best_name], other_noise, other_ref)
    row = {"builtin": best_name, "builtin_error": base, "steps": steps, "search": SEARCH}
    started = time.perf_counter()
    if "in-sample" in parts:
        steps_only, full = search(noise, ref, builtins[best_name], learned)
        row["seconds"] = time.perf_counter() - started
        for label, schedule in (("steps_only", steps_only), ("full", full)):
            row[f"{label}_ratio"] = error(schedule, noise, ref) / base
            row[f"{label}_ratio_other"] = error(schedule, other_noise, other_ref) / base_other
            row[f"{label}_schedule"] = [t.tolist() for t in schedule.tensors()]
    if "transfer" in parts:
        # Nothing from the held-out noises: the start is the best built-in on the other noises, and no
        # learned schedule (those were chosen by their held-out error).
        other_best = min(builtins, key=lambda name: error(builtins[name], other_noise, other_ref))
        started = time.perf_counter()
        _, transfer = search(other_noise, other_ref, builtins[other_best])
        row["transfer_seconds"] = time.perf_counter() - started
        row["transfer_ratio"] = error(transfer, noise, ref) / base
        row["transfer_schedule"] = [t.tolist() for t in transfer.tensors()]
    return row


def searched_optimum(row: dict) -> float:
    """A cell's optimum ratio from its oracle row: the all-three freedom contains the step sigmas alone, so
    the better of the two searches."""
    return min(row["full_ratio"], row["steps_only_ratio"])


def share(learned_ratio: float, optimum_ratio: float) -> float:
    """The share of the achievable gain a learned schedule captures (1 = all of it)."""
    gain = 1.0 - optimum_ratio
    return (1.0 - learned_ratio) / gain if gain > 0 else math.nan


def learned_starts(rows: list[dict], name: str, sampler: str, nfe: int) -> list:
    """The learned schedule of a benchmark run with the lowest held-out error in this cell, if any."""
    import torch

    from ld3_core.schedule import Schedule

    learned = [
        r
        for r in rows
        if (r["model"], r["sampler"], r["nfe"]) == (name, sampler, nfe)
        and r.get("schedule")
        and "learned_error" in r
    ]
    if not learned:
        return []
    best = min(learned, key=lambda r: r["learned_error"])
    return [Schedule(*(torch.tensor(t) for t in best["schedule"]))]


def _optima_as_starts(path: Path) -> dict:
    """Per cell, the all-three-sigmas optimum of an oracle file as a starting schedule."""
    import torch

    from ld3_core.schedule import Schedule

    starts = {}
    for row in json.loads(path.read_text()):
        cell = (row["model"], row["sampler"], row["nfe"])
        if row.get("full_schedule"):
            starts[cell] = [Schedule(*(torch.tensor(t) for t in row["full_schedule"]))]
    return starts


def _cell_job(job) -> dict:
    env.bootstrap(threads=1)
    from bench import models, quality

    quality.quiet()
    name, sampler, nfe, starts, known, parts, sizes = job
    quality.override_budget(**sizes)
    bm = quality._model(name)
    held = quality._data(name, None)
    other = quality._data(name, "other")
    steps = models.steps_for_nfe(sampler, nfe)
    parts = ("transfer",) if known else parts
    row = oracle_cell(
        bm, sampler, steps, held["noise"], held["ref"], other["noise"], other["ref"], starts, parts
    )
    row = {"model": name, "sampler": sampler, "nfe": nfe, **(known or {}), **row}
    transfer = f", fitted on the other noises {row['transfer_ratio']:.3f}" if "transfer_ratio" in row else ""
    print(
        f"{name} {sampler} NFE {nfe}: steps-only {row['steps_only_ratio']:.3f}, full {row['full_ratio']:.3f} "
        f"(other noises {row['full_ratio_other']:.3f}){transfer}",
        flush=True,
    )
    return row


def run(
    cells,
    pool,
    learned_rows=(),
    out: Path | None = None,
    log=print,
    transfer_only=False,
    transfer=True,
    sizes: dict | None = None,
    extra_starts: dict | None = None,
) -> list[dict]:
    """Compute the oracle for (model, sampler, nfe) cells in ``pool``; merge into ``out`` as they finish.

    ``transfer_only``: keep the in-sample optima ``out`` has and add the transfer optimum to them;
    ``transfer=False``: the in-sample optima only (half the time); ``sizes``: other data sizes
    (``quality.override_budget``); ``extra_starts``: more starting schedules per cell."""
    parts = ("in-sample", "transfer") if transfer else ("in-sample",)
    out = out or env.RESULTS_DIR / "oracle.json"
    rows = json.loads(out.read_text()) if out.is_file() else []
    cells = set(cells)
    previous = {(r["model"], r["sampler"], r["nfe"]): r for r in rows}
    known = previous if transfer_only else {}
    rows = [r for r in rows if (r["model"], r["sampler"], r["nfe"]) not in cells]
    jobs = [
        (
            *cell,
            learned_starts(list(learned_rows), *cell) + (extra_starts or {}).get(cell, []),
            known.get(cell),
            parts,
            sizes or {},
        )
        for cell in sorted(cells, key=lambda c: -c[2])
    ]
    log(f"oracle: {len(jobs)} cells")
    for row in pool.imap_unordered(_cell_job, jobs, chunksize=1):
        if not transfer:  # the transfer optimum was not searched again: the file's stays
            old = previous.get((row["model"], row["sampler"], row["nfe"]), {})
            row = {**{k: old[k] for k in TRANSFER_FIELDS if k in old}, **row}
        rows.append(row)
        rows.sort(key=lambda r: (r["model"], r["sampler"], r["nfe"]))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=1))
    return rows


def main(argv=None) -> int:
    from bench import quality

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(quality.EXACT_MODELS))
    parser.add_argument("--samplers", nargs="*", default=list(quality.ALL_SAMPLERS))
    parser.add_argument("--nfe", nargs="*", type=int, default=list(quality.ORACLE_NFE))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=str(env.RESULTS_DIR / "oracle.json"))
    parser.add_argument("--missing", action="store_true", help="only the cells the output file lacks")
    parser.add_argument(
        "--transfer-only",
        action="store_true",
        help="keep the in-sample optima the output file has; add the optimum fitted on the other noises",
    )
    parser.add_argument(
        "--heldout",
        type=int,
        help="held-out (and other) noises per model (default: the suite's 512); with --out elsewhere, to see "
        "how much of the in-sample optimum is fitted to its noises",
    )
    parser.add_argument(
        "--starts",
        type=Path,
        help="an oracle JSON (e.g. the 512-noise bench/results/oracle.json) whose optima join the starts",
    )
    parser.add_argument(
        "--no-transfer",
        action="store_true",
        help="the in-sample optima only (not the one fitted on other noises)",
    )
    args = parser.parse_args(argv)
    if args.heldout and Path(args.out).resolve() == (env.RESULTS_DIR / "oracle.json").resolve():
        parser.error(
            "--heldout: give --out another file; bench/results/oracle.json is the suite's (512 noises)"
        )
    rows_path = env.BENCH_DIR / "out" / "quality_rows.json"
    learned = json.loads(rows_path.read_text()) if rows_path.is_file() else []
    cells = [(m, s, n) for m in args.models for s in args.samplers for n in args.nfe]
    if args.missing and Path(args.out).is_file():
        known = {(r["model"], r["sampler"], r["nfe"]) for r in json.loads(Path(args.out).read_text())}
        cells = [cell for cell in cells if cell not in known]
    env.bootstrap(threads=1)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(args.workers) as pool:
        run(
            cells,
            pool,
            learned,
            Path(args.out),
            transfer_only=args.transfer_only,
            transfer=not args.no_transfer,
            sizes={"heldout": args.heldout} if args.heldout else {},
            extra_starts=_optima_as_starts(args.starts) if args.starts else None,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
