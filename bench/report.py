"""BENCHMARKS.md and the plots, written from bench/results/*.json (re-run alone: python bench/report.py)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import env, report_quality

TARGET_ITERATION = 1.3
TARGET_TEACHER = 1.05
TARGET_MEMORY = 1.15


def _load(name: str):
    path = env.RESULTS_DIR / name
    return json.loads(path.read_text()) if path.is_file() else None


def _fmt(x: float, digits: int = 3) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:.{digits}g}" if abs(x) < 1e-2 or abs(x) >= 1e3 else f"{x:.{digits}f}"


def _save_png(image_tensor, path: Path) -> None:
    from PIL import Image

    array = (image_tensor[0].clamp(0, 1) * 255).round().byte().numpy()
    Image.fromarray(array).save(path)


def _plots(cells, cost) -> list[str]:
    from ld3_core.plot import line_plot

    written = []
    for model in sorted({c["model"] for c in cells}):
        # ld3 / best built-in by NFE, one line per sampler, with the optimum where there is one.
        series = {}
        for c in cells:
            if c["model"] == model and "ld3" in c:
                series.setdefault(f"ld3 {c['sampler']}", []).append((c["nfe"], c["ld3"]["ratio"]))
                if "full" in c:
                    series.setdefault(f"optimum {c['sampler']}", []).append((c["nfe"], c["full"]))
        if series:
            nfes = [n for points in series.values() for n, _ in points]
            series["parity 1x"] = [(min(nfes), 1.0), (max(nfes), 1.0)]
            image = line_plot(
                series, f"{model}: ratio to the best built-in (held-out RMSE)", "NFE", "ratio", log_y=True
            )
            path = env.RESULTS_DIR / f"ratio_{model}.png"
            _save_png(image, path)
            written.append(path.name)
    if cost and cost.get("memory"):
        series = {}
        for m in cost["memory"]:
            label = f"{m['model']} {m['loss']}" + ("" if m["checkpoint"] else " (no checkpoint)")
            series.setdefault(label, []).append((m["nfe"], m["peak_bytes"] / 2**20))
        image = line_plot(series, "Peak memory of one iteration (CPU)", "NFE", "MiB", log_y=True)
        _save_png(image, env.RESULTS_DIR / "memory_cpu.png")
        written.append("memory_cpu.png")
    return written


def cpu_iteration_ratios(it: dict) -> dict:
    """Ratios of one cost.json iteration record in plain-denoiser-call units (bench/iteration.py)."""
    from bench.iteration import iteration_ratios

    trainer_s = it.get("trainer_iteration_s")
    if trainer_s is None:  # older records kept the trainer's time in stock-sampler units only
        trainer_s = it["trainer_iteration_over_unit"] * it["nfe"] * it["plain_call_s"]
    return iteration_ratios(it["parts_s"], it["nfe"], it.get("loss_forward_nograd_s", 0.0), trainer_s)


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def render(run_info: dict | None = None) -> str:
    records = _load("quality.json") or []
    cost = _load("cost.json")
    gpu = _load("gpu.json")
    run_info = run_info or _load("run.json") or {}
    cells = report_quality.cells(records, _load("oracle.json") or [])
    plots = _plots(cells, cost) if cells or cost else []
    lines = ["# Benchmarks", ""]
    lines += [
        "Produced by `.venv/bin/python bench/run.py` (CPU suite; writes this file, `bench/results/*.json` and",
        "the plots) and `bench/gpu.py` (on a GPU; `bench/results/gpu.json`). `python bench/report.py` re-renders",
        "this file from the JSON. Every figure is a ratio of two measurements taken side by side in one run;",
        "absolute times are quoted only from the GPU. `bench/compare_configs.py` trains several trainer settings",
        "side by side on these models (how the data sizes below were chosen; its docstring has the command).",
        "",
    ]
    if run_info:
        lines += [
            f"CPU run: {run_info.get('date', '?')}, {run_info.get('wall_s', 0):.0f} s wall, "
            f"{run_info.get('workers', '?')} worker processes x 1 torch thread, "
            f"{run_info.get('cpus', '?')} CPUs, load average at start {run_info.get('loadavg_start', '?')} "
            f"and end {run_info.get('loadavg_end', '?')} (the machine is shared; timings on it are noisy), "
            f"torch {run_info.get('torch', '?')}, ComfyUI {run_info.get('comfyui', '?')}, "
            f"python {run_info.get('python', '?')}. Mode: {run_info.get('mode', 'full')}.",
            "",
        ]

    # ---- summary of targets ----
    lines += ["## Targets", "", "| target | measured | verdict |", "|---|---|---|"]
    lines += report_quality.summary(cells)
    if cost:
        for it in cost["iterations"]:
            r = cpu_iteration_ratios(it)
            lines.append(
                f"| iteration <= {TARGET_ITERATION} x floor (CPU): {it['model']} {it['loss']} NFE {it['nfe']} "
                f"| instrumented {_fmt(r['iteration_over_floor'])} x, trainer {_fmt(r['trainer_over_floor'])} x "
                f"| {_met(r['iteration_over_floor'] <= TARGET_ITERATION)} |"
            )
        for t in cost["teacher"]:
            lines.append(
                f"| teacher <= {TARGET_TEACHER} x stock: {t['model']} | {_fmt(t['teacher_over_stock'])} x "
                f"| {_met(t['teacher_over_stock'] <= TARGET_TEACHER)} |"
            )
        for model in sorted({m["model"] for m in cost["memory"]}):
            rows = [m for m in cost["memory"] if m["model"] == model and m["checkpoint"]]
            top = max(rows, key=lambda m: m["nfe"])
            lines.append(
                f"| memory NFE {top['nfe']} <= {TARGET_MEMORY} x NFE 4 (CPU): {model} | {_fmt(top['over_nfe4'])} x "
                f"| {_met(top['over_nfe4'] <= TARGET_MEMORY)} |"
            )
    if gpu:
        for item in gpu.get("targets", []):
            lines.append(f"| {item['target']} | {item['measured']} | {_met(item['ok'])} |")
        if (env.RESULTS_DIR / "gpu_addenda.md").is_file():
            lines += [
                "",
                "GPU rows: from the last GPU run; the GPU section's addenda say what changed since.",
            ]
    else:
        lines.append(
            "| GPU recipe (SD1.5 within 2 x floor) | no GPU results in bench/results/gpu.json | not measured |"
        )
    lines.append("")

    # ---- quality ----
    if cells:
        lines += ["## Quality", "", *report_quality.NOTES, ""]
        lines += report_quality.tables(cells)
        for name in sorted(p for p in plots if p.startswith("ratio_")):
            lines += [f"![{name}](bench/results/{name})", ""]
        lines += report_quality.before_after(cells, _load("tiny_before.json") or [])
        lines += _builtin_table(records)

    # ---- cost ----
    if cost:
        lines += ["## Cost (CPU)", "", *COST_NOTES, ""]
        lines += [
            "| model | loss | NFE | stock sampler per NFE (calls) | iteration / (NFE x call) | floor "
            "| iteration / floor | trainer / floor | forward | recompute | backward | VAE + LPIPS | optimiser |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for it in cost["iterations"]:
            r = cpu_iteration_ratios(it)
            p = r["parts_per_unit"]
            lines.append(
                f"| {it['model']} | {it['loss']} | {it['nfe']} | {_fmt(it['plain_call_s'] / r['denoiser_call_s'])} "
                f"| {_fmt(r['iteration_over_unit'])} | {_fmt(r['floor_over_unit'])} | **{_fmt(r['iteration_over_floor'])}** "
                f"| {_fmt(r['trainer_over_floor'])} | {_fmt(p['forward'])} | {_fmt(p['recompute'])} "
                f"| {_fmt(p['backward'])} | {_fmt(p['vae_lpips'])} | {_fmt(p['optimiser'])} |"
            )
        lines += [
            "",
            "Parts are in units of NFE x one plain denoiser call. 'stock sampler per NFE' = ComfyUI's stock",
            "sampling over the same NFE and batch, per step, in the same unit (sampler + CFG + setup overheads).",
            "",
        ]
        lines += [
            "Teacher generation: `generate_teacher` against ComfyUI's KSampler path (`comfy.sample.sample`)",
            "on the same noise and batches; the fastest of 11 interleaved runs each (a run takes 0.1-0.4 s).",
            "",
            "| teacher generation | samples x steps | generate_teacher / KSampler path |",
            "|---|---|---|",
        ]
        for t in cost["teacher"]:
            lines.append(
                f"| {t['model']} | {t['count']} x {t['steps']} (batch {t['batch']}) | {_fmt(t['teacher_over_stock'])} |"
            )
        if cost.get("weight_grads"):
            lines += [
                "",
                "Frozen weights against weights that require grad: the median of 5 iterations in each mode, one",
                "mode after the other in one process. Before `weights_as_constants` froze them, a model built",
                "outside inference mode (every benchmark model here and on the GPU) had each backward also",
                "compute and keep a gradient per weight; models ComfyUI loads under inference mode were already",
                "frozen by the clone.",
                "",
                "| model | loss | NFE | weights MiB | iteration time, frozen / requiring grad | peak memory, frozen / requiring grad |",
                "|---|---|---|---|---|---|",
            ]
            for w in cost["weight_grads"]:
                lines.append(
                    f"| {w['model']} | {w['loss']} | {w['nfe']} | {w['weights_bytes'] / 2**20:.2f} "
                    f"| {_fmt(w['time_ratio'])} | {_fmt(w['peak_ratio'])} |"
                )
        lines += [
            "",
            "## Memory (CPU)",
            "",
            *MEMORY_NOTES,
            "",
            "| model | loss | checkpointed | NFE | peak MiB | / NFE 4 |",
            "|---|---|---|---|---|---|",
        ]
        for m in cost["memory"]:
            lines.append(
                f"| {m['model']} | {m['loss']} | {'yes' if m['checkpoint'] else 'no'} | {m['nfe']} "
                f"| {m['peak_bytes'] / 2**20:.2f} | {_fmt(m['over_nfe4'])} |"
            )
        lines.append("")
        if "memory_cpu.png" in plots:
            lines += ["![memory](bench/results/memory_cpu.png)", ""]

    # ---- side-by-side studies (hand-written: bench/compare_configs.py runs that decided a default) ----
    studies = env.RESULTS_DIR / "side_by_side.md"
    if studies.is_file():
        lines += ["## Side-by-side studies", "", studies.read_text().rstrip(), ""]

    # ---- GPU ----
    lines += ["## GPU", ""]
    if gpu:
        lines += gpu.get("markdown", [])
        addenda = env.BENCH_DIR / "results" / "gpu_addenda.md"
        if addenda.is_file():
            lines += ["", addenda.read_text().rstrip()]
    else:
        lines += [
            "No GPU results (bench/results/gpu.json is missing): run `python bench/gpu.py` on a CUDA machine."
        ]
    lines += ["", "## What was reduced to fit the budget", "", *REDUCTIONS, ""]
    return "\n".join(lines) + "\n"


def _builtin_table(records) -> list[str]:
    """Compact: every built-in's error at NFE 4 and 6 with dpmpp_2m, per model."""
    lines = ["### Every built-in schedule (dpmpp_2m; held-out RMSE, mean over seeds)", ""]
    models = sorted({r["model"] for r in records})
    methods = sorted({r["method"] for r in records if r["kind"] != "learned"})
    lines += ["| model | NFE | " + " | ".join(methods) + " |", "|" + "---|" * (2 + len(methods))]
    for model in models:
        for nfe in (4, 6):
            got = {
                r["method"]: r["error_mean"]
                for r in records
                if r["model"] == model
                and r["nfe"] == nfe
                and r["sampler"] == "dpmpp_2m"
                and r["kind"] != "learned"
            }
            if got:
                lines.append(
                    f"| {model} | {nfe} | " + " | ".join(_fmt(got.get(m, math.nan)) for m in methods) + " |"
                )
    lines += [
        "",
        "n/a: the scheduler gives another step count than asked for (ddim_uniform at some NFE) "
        "or its table does not fit the model (AYS / GITS start at SD's sigma_max, OptimalSteps at flow's 1.0).",
        "",
    ]
    return lines


COST_NOTES = [
    "One phase-2 iteration (step logits, decoupled offsets and x'_T all learning) run by",
    "`bench/iteration.py` with the trainer's own pieces, timed part by part. One plain denoiser call = the",
    "no-grad denoiser call of that iteration's checkpointed forward (ComfyUI's APPLY_MODEL, timed inside",
    "LD3's checkpoint wrapper), so numerator and denominator come from the same process and path.",
    "Floor = 3.2 plain calls per NFE (forward + recompute + input-only backward), plus 3.2 x a no-grad VAE",
    "decode + LPIPS for the LPIPS loss. The trainer column times `api.learn_schedule` itself (median gap",
    "between its iteration callbacks in phase 2). One torch thread; the CPU is shared with other jobs,",
    "so single figures can be off by tens of per cent (compare the two tiny-sd15-eps rows: same model and",
    "batch, different stock-sampler column; two runs gave 1.19 / 1.46 and 1.25 / 1.25 for their iteration /",
    "floor). On the mixtures a denoiser call is ~1 ms, so fixed",
    "Python costs per sampling call (guider set-up, model-management checks, autograd bookkeeping) dominate.",
]
MEMORY_NOTES = [
    "Peak of live CPU tensor bytes allocated during one iteration (torch profiler's allocation events),",
    "batch 1. The tiny models' activations per call are small, so the part that grows with NFE (the x_t",
    "chain and the solver's own saved tensors, a few latent-sized tensors per step) weighs more here than",
    "on real models; see the GPU section for real sizes.",
]
REDUCTIONS = [
    "- Teacher pairs: 50 everywhere but the tiny models (16: 8 train / 8 validation, batch 2), LD3 Generate",
    "  Teacher's default. Held-out: 512 noises (mixtures), 128 (trained network), 8 (tiny models).",
    "- Mixtures: 4x16x16 (EPS, SD1.5 sigmas) and 16x8x8 (Flux sampling), 1024 dimensions each; every",
    "  sampler of the grid at NFE 4, 6 and 8. Trained network: euler, dpmpp_2m and uni_pc at NFE 4 and 6.",
    "- Tiny models (~30 ms a call on this CPU): the paper's four solvers at NFE 4 and 6 on each; LPIPS",
    "  for dpmpp_2m on tiny-sd15-eps. Latents 4x8x8",
    "  (SD1.5, CFG 3) and 16x16x16 (Flux, guidance 3.5). Their reference is their teacher, not a converged",
    "  solve.",
    "- The oracle: 60 Adam + 30 L-BFGS iterations from each start, for all three sigmas with the first step",
    "  free (started 2 % and 10 % below sigma_max) and with it pinned at sigma_max (bench/oracle.py; each row",
    "  records its search); a local search, so a learned schedule can beat it (marked * in the tables).",
    "- CPU memory is measured at batch 1; the run uses 2 worker processes with one torch thread each.",
]


def write(run_info: dict | None = None) -> Path:
    path = env.PACK_ROOT / "BENCHMARKS.md"
    path.write_text(render(run_info))
    return path


if __name__ == "__main__":
    env.bootstrap()
    print(write())
