"""BENCHMARKS.md and the plots, written from bench/results/*.json (re-run alone: python bench/report.py)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import env

PAPER_SAMPLERS = ("dpmpp_2m", "uni_pc", "ipndm", "euler")
MAIN = "ld3 soft+decoupled"
TARGET_QUALITY = 0.7
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


def quality_cells(records: list[dict]) -> list[dict]:
    """Per (model, sampler, nfe): the best built-in (by mean and by median) and every learned variant."""
    cells: dict[tuple, dict] = {}
    for r in records:
        cell = cells.setdefault((r["model"], r["sampler"], r["nfe"]), {"builtin": {}, "learned": {}})
        cell["builtin" if r["kind"] != "learned" else "learned"][r["method"]] = r
    out = []
    for (model, sampler, nfe), cell in sorted(cells.items()):
        finite = {k: v for k, v in cell["builtin"].items() if math.isfinite(v["error_mean"])}
        if not finite or not cell["learned"]:
            continue
        best_name = min(finite, key=lambda k: finite[k]["error_mean"])
        best = finite[best_name]
        best_median_name = min(finite, key=lambda k: finite[k]["error_median_mean"])
        row = {
            "model": model,
            "sampler": sampler,
            "nfe": nfe,
            "nfe_used": best["nfe_used"],
            "best_builtin": best_name,
            "best_error": best["error_mean"],
            "best_sd": best["error_sd"],
            "best_flips": best.get("flip_rate_mean"),
            "best_median_builtin": best_median_name,
            "best_median": finite[best_median_name]["error_median_mean"],
            "learned": {},
        }
        for name, rec in cell["learned"].items():
            init_names = [n for n in rec.get("initial_schedulers") or [] if n]
            init_stock = [cell["builtin"][n]["error_mean"] for n in init_names if n in cell["builtin"]]
            row["learned"][name] = {
                "error": rec["error_mean"],
                "sd": rec["error_sd"],
                "ratio": rec["error_mean"] / best["error_mean"],
                "median_ratio": rec["error_median_mean"] / row["best_median"],
                "flips": rec.get("flip_rate_mean"),
                "init": init_names,
                "init_stock": sum(init_stock) / len(init_stock) if init_stock else math.nan,
                "init_patched": rec.get("init_patched_error_mean", math.nan),
                "per_seed_ratio": [e / best["error_mean"] for e in rec.get("per_seed", [])],
                "per_seed_init_ratio": [e / best["error_mean"] for e in rec.get("per_seed_init_patched", [])],
                "train_s": rec.get("train_s_mean"),
                "failures": rec.get("failures"),
            }
        out.append(row)
    return out


def _plots(records, cells, cost) -> list[str]:
    from ld3_core.plot import line_plot

    written = []
    models = sorted({c["model"] for c in cells})
    for model in models:
        model_cells = [c for c in cells if c["model"] == model]
        # Learned / best built-in by NFE, one line per sampler.
        series = {}
        for c in model_cells:
            if MAIN in c["learned"]:
                series.setdefault(c["sampler"], []).append((c["nfe"], c["learned"][MAIN]["ratio"]))
        if series:
            nfes = [n for points in series.values() for n, _ in points]
            series[f"target {TARGET_QUALITY}x"] = [(min(nfes), TARGET_QUALITY), (max(nfes), TARGET_QUALITY)]
            series["parity 1x"] = [(min(nfes), 1.0), (max(nfes), 1.0)]
            image = line_plot(
                series, f"{model}: LD3 / best built-in (held-out RMSE)", "NFE", "ratio", log_y=True
            )
            path = env.RESULTS_DIR / f"ratio_{model}.png"
            _save_png(image, path)
            written.append(path.name)
        # dpmpp_2m error by NFE: LD3, the best built-in and a few named schedules.
        series = {}
        for r in records:
            if r["model"] != model or r["sampler"] != "dpmpp_2m" or not math.isfinite(r["error_mean"]):
                continue
            if r["method"] in (
                MAIN,
                "karras",
                "exponential",
                "kl_optimal",
                "simple",
                "ays_sd1",
                "gits",
                "optimal_steps_flux",
            ):
                series.setdefault(r["method"], []).append((r["nfe"], r["error_mean"]))
        best = [(c["nfe"], c["best_error"]) for c in model_cells if c["sampler"] == "dpmpp_2m"]
        if best and len(best) > 1:
            series["best built-in"] = best
            image = line_plot(series, f"{model}, dpmpp_2m: held-out RMSE", "NFE", "RMSE", log_y=True)
            path = env.RESULTS_DIR / f"error_{model}_dpmpp_2m.png"
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
    cells = quality_cells(records)
    plots = _plots(records, cells, cost) if cells or cost else []
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
    paper = [
        c for c in cells if c["sampler"] in PAPER_SAMPLERS and 4 <= c["nfe"] <= 6 and MAIN in c["learned"]
    ]
    mix = [c for c in paper if c["model"].startswith("mix-")]
    tiny = [c for c in paper if not c["model"].startswith("mix-")]
    for label, group in (("mixtures", mix), ("tiny models", tiny)):
        if group:
            ratios = sorted(c["learned"][MAIN]["ratio"] for c in group)
            ok = sum(r <= TARGET_QUALITY for r in ratios)
            lines.append(
                f"| quality, {label}: LD3 (soft+decoupled) <= {TARGET_QUALITY} x best built-in, paper solvers, NFE 4-6 "
                f"| {ok}/{len(ratios)} cells; median ratio {_fmt(ratios[len(ratios) // 2])}, worst {_fmt(ratios[-1])} "
                f"| {_met(ok == len(ratios))} |"
            )
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
        lines += ["## Quality", "", *QUALITY_NOTES, ""]
        lines += _findings(cells)
        for model in sorted({c["model"] for c in cells}):
            model_cells = [c for c in cells if c["model"] == model]
            others = sorted({v for c in model_cells for v in c["learned"] if v != MAIN}, key=_variant_order)
            mixture = model.startswith("mix-")
            lines += [f"### {model}", ""]
            header = [
                "sampler",
                "NFE",
                "best built-in (mean RMSE)",
                "LD3 soft+decoupled",
                "ratio",
                "per seed",
                "median ratio",
            ]
            header += ["mode flips: best -> LD3"] if mixture else []
            header += ["LD3 init: stock -> patched", *[f"{v} (ratio)" for v in others]]
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            for c in sorted(model_cells, key=lambda c: (c["nfe"], c["sampler"])):
                main = c["learned"].get(MAIN)
                nfe = f"{c['nfe']}" + (f" ({c['nfe_used']} used)" if c["nfe_used"] != c["nfe"] else "")
                cols = [c["sampler"], nfe, f"{c['best_builtin']} {_fmt(c['best_error'])}"]
                if main:
                    cols += [
                        f"{_fmt(main['error'])} ± {_fmt(main['sd'], 2)}",
                        f"**{main['ratio']:.2f}**",
                        " / ".join(f"{x:.2f}" for x in main["per_seed_ratio"]),
                        f"{main['median_ratio']:.2f}",
                    ]
                    if mixture:
                        cols.append(f"{_pct(c['best_flips'])} -> {_pct(main['flips'])}")
                    init = "/".join(sorted(set(main["init"]))) or "?"
                    cols.append(f"{init}: {_fmt(main['init_stock'])} -> {_fmt(main['init_patched'])}")
                else:
                    cols += ["", "", "", ""] + ([""] if mixture else []) + [""]
                for v in others:
                    lv = c["learned"].get(v)
                    cols.append(f"{_fmt(lv['error'])} ({lv['ratio']:.2f})" if lv else "")
                lines.append("| " + " | ".join(cols) + " |")
            lines.append("")
            for name in (f"ratio_{model}.png", f"error_{model}_dpmpp_2m.png"):
                if name in plots:
                    lines += [f"![{name}](bench/results/{name})", ""]
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


def _pct(x) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.1f}%"


def _findings(cells) -> list[str]:
    """Counts that summarise the quality tables, per seed as well as over seeds."""
    main = [c for c in cells if MAIN in c["learned"]]
    if not main:
        return []
    lines = ["Summary of the main variant (LD3 soft+decoupled); a training = one cell and one seed:", ""]
    for label, group in (
        ("mixtures", [c for c in main if c["model"].startswith("mix-")]),
        ("tiny models", [c for c in main if not c["model"].startswith("mix-")]),
    ):
        if not group:
            continue
        ratios = [c["learned"][MAIN]["ratio"] for c in group]
        med = [c["learned"][MAIN]["median_ratio"] for c in group]
        seeds = [
            (r, i)
            for c in group
            for r, i in zip(c["learned"][MAIN]["per_seed_ratio"], c["learned"][MAIN]["per_seed_init_ratio"])
        ]
        bad_init = [(r, i) for r, i in seeds if i > 2]
        good = sorted(r for r, i in seeds if i <= 2)
        lines.append(
            f"- {label}: {len(group)} cells. Mean over seeds: LD3 beats the best built-in in "
            f"{sum(r < 1 for r in ratios)}, reaches <= {TARGET_QUALITY}x in {sum(r <= TARGET_QUALITY for r in ratios)} "
            f"(by median per-sample RMSE: {sum(r < 1 for r in med)} and {sum(r <= TARGET_QUALITY for r in med)}). "
            f"Per training ({len(seeds)}): beats the best built-in in {sum(r < 1 for r, _ in seeds)}, "
            f"<= {TARGET_QUALITY}x in {sum(r <= TARGET_QUALITY for r, _ in seeds)}."
        )
        if seeds:
            median_good = good[len(good) // 2] if good else math.nan
            lines.append(
                f"  In {len(bad_init)} trainings the trainer started from a schedule more than 2x worse than the "
                f"best built-in on the held-out set (its validation loss preferred it); {sum(r > 1 for r, _ in bad_init)} "
                f"of them end worse than the best built-in. The other {len(good)} trainings: median ratio "
                f"{_fmt(median_good)}, {sum(r <= TARGET_QUALITY for r in good)} at <= {TARGET_QUALITY}x."
            )
    lines.append("")
    return lines


def _same(learned: dict) -> bool:
    a, b = learned["error"], learned["init_patched"]
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= 1e-6 * max(abs(b), 1e-12)


def _variant_order(name: str) -> tuple:
    order = ["ld3 soft+decoupled", "ld3 soft", "ld3 hard", "ld3 soft+decoupled lpips"]
    return (order.index(name) if name in order else len(order), name)


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


QUALITY_NOTES = [
    "Error: RMSE per held-out sample between the stock-sampled endpoint and the reference, averaged over",
    "the held-out set (one fixed set per model: 128 noises on mixtures, 8 on tiny models, so every method is",
    "compared on the same samples), then mean ± sd over three seeds. A seed changes the teacher pairs the",
    "schedule is learned from (and the trainer's shuffling), so built-ins have sd 0.",
    "Reference: mixtures (exact Gaussian-mixture denoisers from `ld3_core/mixture.py`, 8 components) use the",
    "exact endpoint, a 500-step dpmpp_2m solve (karras for EPS, simple for flow; it differs from a 1000-step",
    "solve by ~6e-5 RMSE, far under every error below); the tiny models use their teacher (dpmpp_2m,",
    "20 steps). Learned schedules are sampled the way users get them: ComfyUI's stock sampler on the",
    "LD3-patched MODEL (`api.sample_with_schedule`); built-ins with the stock sampler on the plain MODEL.",
    "ratio = LD3 / best built-in in the same cell (mean RMSE); median ratio = the same with the median",
    "per-sample RMSE (each side's best). Built-ins: every ComfyUI scheduler that gives the asked step count,",
    "plus ComfyUI's AYS (SD1, SDXL), GITS and OptimalSteps (FLUX, Wan, Chroma) nodes where their tables fit",
    "the model (start within 1% of its sigma_max): the same set the trainer picks its starting schedule from.",
    "Mode flips (mixtures): the share of held-out samples whose endpoint lies nearest another component's",
    "mean than the exact endpoint does. A flip costs ~1 RMSE against ~0.01-0.1 otherwise, so a few flips",
    "decide the mean RMSE; the median shows the typical sample.",
    "LD3 init: stock -> patched = the schedule the trainer started from, with the stock sampler and through",
    "the LD3 patch: on SD1.x-type models the patch evaluates the network at the exact sigma (ComfyUI rounds",
    "to its 1000-step grid), which alone changes the error; the learned schedule's own gain is LD3 / patched.",
    "Variants: `soft+decoupled` = the paper's recipe; `soft` = no decoupled model times; `hard` = no r-ball",
    "(gamma 0), decoupled times kept; `lpips` = LPIPS through a random tiny SD VAE. Heun spends two calls a",
    "step except the last: its NFE column gives the budget and the calls used (NFE 5 and 6 both give 3 steps).",
    "Reading the tables: the trainer picks its initial schedule and its best epoch by the L2 validation",
    "loss (per-sample RMSE, so a flip weighs ~10x a typical sample; when it was the squared error, ~100x,",
    "a single flipping validation sample could make every training of a seed end 4-50x worse). A schedule",
    "that is better for most samples can still flip a few held-out samples that no training or validation",
    "sample resembled: then 'median ratio' is well under 1 while 'ratio' is over 1.",
]
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
    "- Teacher pairs: mixtures 100 (50 train / 50 validation, as the paper), batch 4 (paper: 2; side by side",
    "  on 16 cells x 3 seeds the mean ratio was 0.960 at batch 4 and 0.964 at batch 2); tiny models 16 (8 / 8),",
    "  batch 2 (paper, SD: 25 / 25, batch 1); epochs 2 + 3. Held-out: 128 noises (mixtures), 8 (tiny models).",
    "- mix-eps-4x16x16: all six samplers at NFE 4-6, the ablations (soft, hard) for dpmpp_2m and uni_pc at",
    "  NFE 4 and 6; NFE 8 and 10 for dpmpp_2m and uni_pc. mix-eps-4x32x32 and mix-flow-16x16x16: the paper's",
    "  four solvers (dpmpp_2m, uni_pc, ipndm, euler) at NFE 4-6, dpmpp_2m at NFE 8 and 10; main variant only.",
    "- Tiny models (~30 ms a call on this CPU): the paper's four solvers at NFE 4 and 6 on each, and",
    "  dpmpp_2m at NFE 5, 8 and 10 on tiny-sd15-eps; LPIPS for dpmpp_2m on tiny-sd15-eps. Latents 4x8x8",
    "  (SD1.5, CFG 3) and 16x16x16 (Flux, guidance 3.5). Their teacher is 20 dpmpp_2m steps, not a",
    "  converged solve.",
    "- LPIPS only on tiny-sd15-eps (the one model given a VAE, random weights); none on the mixtures.",
    "- CPU memory is measured at batch 1; the run uses 2 worker processes with one torch thread each.",
]


def write(run_info: dict | None = None) -> Path:
    path = env.PACK_ROOT / "BENCHMARKS.md"
    path.write_text(render(run_info))
    return path


if __name__ == "__main__":
    env.bootstrap()
    print(write())
