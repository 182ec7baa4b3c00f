"""Which scheduler should the teacher use? Every ComfyUI scheduler's error to a 500-step reference.

For each model (exact Gaussian mixtures, EPS and flow, as in the benchmark; the tiny SD1.5 EPS / V /
EDM and Flux networks), the teacher sampler (dpmpp_2m) runs every built-in scheduler at 20 and 10
steps on the same unit noises; the table is the mean per-sample RMSE to the reference endpoint. The
reference is a 500-step dpmpp_2m solve (karras for EPS / V / EDM, simple for flow, as the benchmark's
exact endpoint); ``ref_gap`` is the RMSE between two 500-step references (karras and simple), so errors
near it are not resolved. ``self_20v40`` is what the teacher's self-check would report for that
scheduler (RMSE between its 20- and 40-step solves); ``best_nfe4`` is the best built-in scheduler's
error at 4 steps (dpmpp_2m and euler), the scale LD3 works at. ld3_core/teacher.py's ``auto`` choice
quotes these numbers.

    .venv/bin/python bench/teacher_schedulers.py [--noises 16] [--models mix-flow-16x16x16 ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import env  # noqa: E402

REFERENCE_STEPS = 500
MODELS = (
    "mix-eps-4x16x16",
    "mix-flow-16x16x16",
    "mix-flow-shift3-4x16x16",
    "tiny-sd15-eps",
    "tiny-sd15-v",
    "tiny-sd15-edm",
    "tiny-flux",
)


def build(name: str):
    """(patcher, Conditioning, latent shape) of one model."""
    import comfy.model_base
    import tiny_models
    import torch

    from bench import models
    from ld3_core import mixture
    from ld3_core.comfyui import mixture_model
    from ld3_core.comfyui.adapter import Conditioning

    if name == "mix-flow-shift3-4x16x16":
        # SD3's shift: the flow mixture's network time is sigma * multiplier, so any shift keeps it exact.
        mix = mixture.make_mixture((4, 16, 16), components=8, seed=3, dtype=torch.float32)
        patcher = mixture_model.mixture_model_patcher(mix, "flow")
        patcher.model.model_sampling.set_parameters(shift=3.0, multiplier=1000)
        positive, negative = mixture_model.mixture_conditioning()
        return patcher, Conditioning(positive, negative, 1.0), (4, 16, 16)
    if name == "tiny-sd15-edm":
        patcher = tiny_models.build_tiny_sd15(comfy.model_base.ModelType.EDM, seed=4)
        positive, negative = tiny_models.sd15_conditioning(seed=0)
        return patcher, Conditioning(positive, negative, 3.0), (4, 8, 8)
    bm = models.build(name)
    return bm.patcher, bm.cond, bm.latent_shape


def measure(name: str, noises: int) -> dict:
    import comfy.samplers
    import torch

    from ld3_core.comfyui.adapter import sample_stock
    from ld3_core.teacher import schedule_sigmas, start_noise

    patcher, cond, shape = build(name)
    noise = start_noise(shape, 12345, noises)

    def solve(scheduler: str, steps: int, sampler: str = "dpmpp_2m") -> torch.Tensor:
        sigmas = schedule_sigmas(patcher, scheduler, steps, sampler)
        return sample_stock(patcher, cond, sampler, sigmas, noise).double()

    def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).pow(2).flatten(1).mean(1).sqrt().mean())

    ms = patcher.get_model_object("model_sampling")
    flow = isinstance(ms, comfy.model_sampling.CONST)
    reference = solve("simple" if flow else "karras", REFERENCE_STEPS)
    other = solve("karras" if flow else "simple", REFERENCE_STEPS)
    rows = {}
    for scheduler in comfy.samplers.SCHEDULER_NAMES:
        if scheduler == "ld3":
            continue
        try:
            at20, at40, at10 = solve(scheduler, 20), solve(scheduler, 40), solve(scheduler, 10)
        except Exception as exc:  # a scheduler that cannot serve this model
            rows[scheduler] = {"error": str(exc)}
            continue
        rows[scheduler] = {
            "rmse20": rmse(at20, reference),
            "rmse10": rmse(at10, reference),
            "self_20v40": rmse(at20, at40),
        }
    best_nfe4 = {}
    for sampler in ("dpmpp_2m", "euler"):
        errors = {}
        for scheduler in rows:
            try:
                errors[scheduler] = rmse(solve(scheduler, 4, sampler), reference)
            except Exception:
                continue
        best = min(errors, key=errors.get)
        best_nfe4[sampler] = {"scheduler": best, "rmse": errors[best]}
    return {
        "model": name,
        "model_sampling": [
            c.__name__ for c in type(ms).__mro__[1:] if c.__module__ == "comfy.model_sampling"
        ],
        "noises": noises,
        "reference": f"dpmpp_2m {'simple' if flow else 'karras'} {REFERENCE_STEPS}",
        "ref_gap": rmse(reference, other),
        "schedulers": rows,
        "best_nfe4": best_nfe4,
    }


def table(result: dict) -> str:
    lines = [
        f"### {result['model']} ({' + '.join(result['model_sampling'])}; {result['noises']} noises; "
        f"reference {result['reference']}, ref_gap {result['ref_gap']:.2g})",
        "",
        "| scheduler | RMSE 20 steps | RMSE 10 steps | self-check 20 vs 40 |",
        "|---|---|---|---|",
    ]
    rows = result["schedulers"]
    ok = {k: v for k, v in rows.items() if "rmse20" in v}
    for name in sorted(ok, key=lambda k: ok[k]["rmse20"]):
        row = ok[name]
        lines.append(f"| {name} | {row['rmse20']:.4g} | {row['rmse10']:.4g} | {row['self_20v40']:.4g} |")
    for name in sorted(set(rows) - set(ok)):
        lines.append(f"| {name} | failed: {rows[name]['error'][:60]} | | |")
    best = ", ".join(f"{s} {v['rmse']:.4g} ({v['scheduler']})" for s, v in result["best_nfe4"].items())
    lines += ["", f"Best built-in at 4 steps: {best}", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--noises", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    args = parser.parse_args(argv)
    env.bootstrap(threads=args.threads)
    import logging

    logging.disable(logging.WARNING)
    results = []
    for name in args.models:
        started = time.perf_counter()
        results.append(measure(name, args.noises))
        print(table(results[-1]), flush=True)
        print(f"({time.perf_counter() - started:.0f} s)\n", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
