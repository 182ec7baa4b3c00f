"""How often the verdict's 95 % range holds the ratio a user gets on new noises.

Stage 1 (``--dump``, minutes per run): for each cell and seed, train with the benchmark's teacher pairs
and recipe as the suite does, then solve ``--noises`` fresh noises (a stream beside the verdict's own) with the
learned schedule, the best built-in and the teacher; store each noise's RMSE to the teacher for both
schedules and how far the two part. Stage 2 (default): treat those noises as the population, draw the
verdict's check from them many times as the trainer does (a pool; the noises of it where the schedules
part most, all of them; a random draw from the rest) and count how often
``ld3_core.verdict.ratio_range`` holds the population's ratio; also the spread of the check's ratio.

    .venv/bin/python bench/verdict_range.py --dump --model mix-flux-16x8x8 --cells ipndm:8 heun:6 heun:8 euler:8
    .venv/bin/python bench/verdict_range.py --dump --model mix-eps-4x16x16 --cells uni_pc:6 ipndm:8 dpmpp_2m:6 \
        --file bench/out/verdict_pool_eps.pt
    .venv/bin/python bench/verdict_range.py --file bench/out/verdict_pool.pt bench/out/verdict_pool_eps.pt
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DUMP = Path(__file__).resolve().parent / "out" / "verdict_pool.pt"


def dump(model: str, cells: list[str], noises: int, path: Path) -> None:
    from bench import env

    env.bootstrap(threads=1)
    from bench import models, quality
    from ld3_core import api
    from ld3_core.comfyui.adapter import DifferentiableSampler
    from ld3_core.losses import make_loss
    from ld3_core.trainer import CHECK_STREAM, _stream

    quality.quiet()
    bm = quality._model(model)
    held = quality._data(model, None)
    rows = []
    for seed in (0, 1, 2):
        teacher = quality._teacher(model, seed)
        reference = api.teacher_reference(bm.patcher, teacher, [bm.cond])
        for cell in cells:
            sampler, nfe = cell.split(":")
            config = quality.train_config(model, models.steps_for_nfe(sampler, int(nfe)), "ld3", seed=seed)
            result = api.learn_schedule(bm.patcher, teacher, [bm.cond], sampler, config, make_loss("l2"))
            noise = torch.randn(
                (noises, *teacher.noise.shape[1:]), generator=_stream(config, CHECK_STREAM + 1)
            )
            student = DifferentiableSampler(bm.patcher, sampler)
            batch = quality.eval_batch(bm)
            with torch.no_grad():
                parts = [
                    (
                        student(noise[i : i + batch], bm.cond, result.schedule).float(),
                        student(noise[i : i + batch], bm.cond, result.initial_schedule).float(),
                        reference(noise[i : i + batch], 0).float(),
                    )
                    for i in range(0, noises, batch)
                ]
            learned, builtin, target = (torch.cat(p) for p in zip(*parts))

            def rmse(a, b):
                return (a - b).pow(2).flatten(1).mean(1).sqrt()

            held_learned = quality._heldout(bm, sampler, result.schedule, held["noise"], held["ref"])["error"]
            held_builtin = quality._heldout(bm, sampler, result.initial_schedule, held["noise"], held["ref"])
            base = len(teacher.noise)
            rows.append(
                {
                    "model": model,
                    "sampler": sampler,
                    "nfe": int(nfe),
                    "seed": seed,
                    "L": rmse(learned, target),
                    "B": rmse(builtin, target),
                    "d": rmse(learned, builtin),
                    "pairs": max(2, round(config.check_pairs * base)),
                    "pool": math.ceil(config.mining_pool * base),
                    "extreme": config.check_extreme,
                    "verdict": result.verdict.ratio,
                    "held": held_learned / held_builtin["error"],
                }
            )
            print(f"{sampler} {nfe} seed {seed}: done", flush=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(rows, path)


def simulate(paths: list[Path], draws: int, stretch: float | None) -> None:
    from ld3_core import verdict
    from ld3_core.trainer import draw_check
    from ld3_core.verdict import ratio_range

    if stretch is not None:
        verdict.UPPER_STRETCH = stretch

    rows = [row for path in paths for row in torch.load(path, weights_only=False)]
    covered_all = []
    print(
        "| run | ratio on all noises | check's ratio: log bias, sd | range holds it | range below the truth "
        "| median range / ratio |"
    )
    print("|---|---|---|---|---|---|")
    for row in rows:
        learned, builtin, apart = row["L"].double(), row["B"].double(), row["d"].double()
        pairs, pool = row["pairs"], row["pool"]
        truth = float(learned.mean() / builtin.mean())
        generator = torch.Generator().manual_seed(0)
        covered, below, logs, spans = 0, 0, [], []
        for _ in range(draws):
            drawn = torch.randperm(len(apart), generator=generator)[:pool]
            picked, weights, census = draw_check(apart[drawn], pairs, row["extreme"], generator)
            chosen = drawn[picked]
            low, high = ratio_range(learned[chosen], builtin[chosen], weights, pool, census)
            ratio = float((weights * learned[chosen]).sum() / (weights * builtin[chosen]).sum())
            covered += low <= truth <= high
            below += high < truth
            logs.append(math.log(ratio / truth))
            spans.append((low / ratio, high / ratio))
        logs_t = torch.tensor(logs)
        covered_all.append(covered / draws)
        print(
            f"| {row['model']} {row['sampler']} {row['nfe']} seed {row['seed']} | {truth:.3f} | "
            f"{float(logs_t.mean()):+.2f}, {float(logs_t.std()):.2f} | {covered / draws:.0%} | {below / draws:.0%} | "
            f"{_median([a for a, _ in spans]):.2f}-{_median([b for _, b in spans]):.2f} |"
        )
    print(
        f"range holds the ratio in {min(covered_all):.0%}-{max(covered_all):.0%} of the checks (mean {sum(covered_all) / len(covered_all):.0%})"
    )


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dump", action="store_true", help="train and solve the fresh noises first")
    parser.add_argument("--model", default="mix-flux-16x8x8")
    parser.add_argument("--cells", nargs="*", default=["ipndm:8", "heun:6", "heun:8", "euler:8"])
    parser.add_argument("--noises", type=int, default=1200)
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument(
        "--stretch", type=float, help="the range's reach above, in log (default: the verdict's)"
    )
    parser.add_argument(
        "--file", type=Path, nargs="+", default=[DUMP], help="dumps (--dump writes the first)"
    )
    args = parser.parse_args()
    if args.dump:
        dump(args.model, args.cells, args.noises, args.file[0])
    simulate(args.file, args.draws, args.stretch)


if __name__ == "__main__":
    main()
