"""The quality part of BENCHMARKS.md: learned schedules against the built-ins and against the oracle.

Reads bench/results/quality.json (bench/quality.py), oracle.json (bench/oracle.py) and tiny_before.json
(the tiny models' figures before the per-step schedule, for the "no worse than before" check).
"""

from __future__ import annotations

import math
import statistics

from bench.oracle import SEARCH_BOTH, SEARCH_ONE_OFFSET, searched_optimum, share

RECIPES = ("ld3", "paper")
TARGET_SHARE = 0.8
BEFORE_VARIANT = "ld3 soft+decoupled"  # the old default, as bench/results/tiny_before.json names it


def _fmt(x, digits: int = 3) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:.{digits}g}" if abs(x) < 1e-2 or abs(x) >= 1e3 else f"{x:.{digits}f}"


def cells(records: list[dict], oracle: list[dict]) -> list[dict]:
    """Per (model, sampler, nfe): the best built-in, each recipe's ratio and share, and the optima."""
    optima = {(r["model"], r["sampler"], r["nfe"]): r for r in oracle}
    by_cell: dict[tuple, dict] = {}
    for r in records:
        by_cell.setdefault((r["model"], r["sampler"], r["nfe"]), {})[r["method"]] = r
    out = []
    for key, methods in sorted(by_cell.items()):
        builtins = {
            m: r for m, r in methods.items() if r["kind"] != "learned" and math.isfinite(r["error_mean"])
        }
        if not builtins:
            continue
        best_name = min(builtins, key=lambda m: builtins[m]["error_mean"])
        best = builtins[best_name]["error_mean"]
        row = {"model": key[0], "sampler": key[1], "nfe": key[2], "builtin": best_name, "best": best}
        row["nfe_used"] = builtins[best_name]["nfe_used"]
        optimum = optima.get(key)
        if optimum is not None:
            # The oracle is optimised on the same held-out noises; a learned schedule that did better
            # there (possible: the oracle is a local search) is achievable too, so it bounds the optimum.
            learned_best = min(
                (
                    e / best
                    for r in methods.values()
                    if r["kind"] == "learned"
                    for e in r.get("per_seed_learned", [])
                ),
                default=math.inf,
            )
            row["steps_only"] = optimum["steps_only_ratio"]
            searched = searched_optimum(optimum)
            row["full"] = min(searched, learned_best)
            row["full_other"] = (
                optimum["full_ratio_other"]
                if optimum["full_ratio"] <= optimum["steps_only_ratio"]
                else optimum["steps_only_ratio_other"]
            )
            row["full_from_learned"] = learned_best < searched
            row["search"] = optimum.get("search")  # None: a row of the earlier search (first step free)
            if "full_ratio_current_search" in optimum:  # SEARCH_BOTH: what today's search alone found
                row["current_search_above"] = optimum["full_ratio_current_search"] - optimum["full_ratio"]
            if "transfer_ratio" in optimum:
                # Every learned schedule is a method that never saw the held-out noises: where one did
                # better than the search fitted on the other noises (a local search from one start), it
                # is the out-of-sample bar.
                row["transfer"] = min(optimum["transfer_ratio"], learned_best)
                row["transfer_from_learned"] = learned_best < optimum["transfer_ratio"]
        for recipe in RECIPES + ("ld3 lpips",):
            r = methods.get(recipe)
            if r is None:
                continue
            per_seed = [e / best for e in r["per_seed"]]
            entry = {
                "ratio": r["error_mean"] / best,
                "per_seed": per_seed,
                "learned_ratio": r.get("learned_error_mean", math.nan) / best,
                "used": sum(bool(u) for u in r.get("use_learned", [])),
                "seeds": len(per_seed),
                "train_s": r.get("train_s_mean", math.nan),
                "iterations": r.get("iterations_mean", math.nan),
                "failures": r.get("failures", []),
            }
            if optimum is not None:
                entry["share"] = share(entry["ratio"], row["full"])
            if "transfer" in row:
                entry["share_transfer"] = share(entry["ratio"], row["transfer"])
            row[recipe] = entry
        out.append(row)
    return out


def _share_text(entry: dict | None, key: str = "share") -> str:
    if not entry or key not in entry or not math.isfinite(entry[key]):
        return ""
    text = f"{entry[key]:.0%}"
    return f"**{text}**" if entry[key] >= TARGET_SHARE else text


def summary(rows: list[dict]) -> list[str]:
    """Target lines: share of the achievable gain captured, never above 1x, per model group."""
    lines = []
    groups = {}
    for row in rows:
        group = "exact mixtures" if row["model"].startswith("mix-") else row["model"]
        groups.setdefault(group, []).append(row)
    for group, members in groups.items():
        for recipe in RECIPES:
            have = [r for r in members if recipe in r]
            if not have:
                continue
            ratios = [r[recipe]["ratio"] for r in have]
            above = sum(x > 1 + 1e-9 for x in ratios)
            text = (
                f"| {group}: `{recipe}` recipe | {len(have)} cells; ratio to the best built-in: median "
                f"{_fmt(statistics.median(ratios))}, worst {_fmt(max(ratios))}; above 1.0x in {above}"
            )
            shares = [r[recipe]["share"] for r in have if "share" in r[recipe]]
            if shares:
                text += (
                    f"; share of the achievable gain: mean {statistics.mean(shares):.0%}, min {min(shares):.0%}, "
                    f">= {TARGET_SHARE:.0%} in {sum(s >= TARGET_SHARE for s in shares)}/{len(shares)}"
                )
            transfer = [r[recipe]["share_transfer"] for r in have if "share_transfer" in r[recipe]]
            if transfer:
                text += (
                    f" (of the optimum fitted on other noises: mean {statistics.mean(transfer):.0%}, "
                    f"min {min(transfer):.0%}, >= {TARGET_SHARE:.0%} in "
                    f"{sum(s >= TARGET_SHARE for s in transfer)}/{len(transfer)})"
                )
            ok = above == 0 and (not shares or min(shares) >= TARGET_SHARE) if recipe == "ld3" else None
            verdict = "" if ok is None else ("met" if ok else "**not met**")
            lines.append(text + f" | {verdict} |")
    return lines


def tables(rows: list[dict]) -> list[str]:
    lines = []
    for model in sorted({r["model"] for r in rows}):
        members = [r for r in rows if r["model"] == model]
        with_oracle = any("full" in r for r in members)
        with_transfer = any("transfer" in r for r in members)
        lines += [f"### {model}", ""]
        earlier = [f"{r['sampler']} {r['nfe']}" for r in members if "full" in r and not r["search"]]
        if earlier:
            lines += [
                f"Optima of the earlier search ({', '.join(earlier)}): all three sigmas searched with the first",
                f"step free only (the current search may find lower ones; `bench/oracle.py --models {model}`).",
                "",
            ]
        one_offset = [f"{r['sampler']} {r['nfe']}" for r in members if r.get("search") == SEARCH_ONE_OFFSET]
        if one_offset:
            everything = len(one_offset) == sum("full" in r for r in members)
            which = "All optima" if everything else f"Optima of {', '.join(one_offset)}"
            lines += [
                f"{which}: searched with the first step free from 2 % below sigma_max",
                "only (the current search also starts it 10 % below, and may find lower ones;",
                f"`bench/oracle.py --models {model} --no-transfer --starts bench/results/oracle.json`).",
                "",
            ]
        both = [r for r in members if r.get("search") == SEARCH_BOTH]
        if both:
            names = ", ".join(f"{r['sampler']} {r['nfe']}" for r in both)
            above = max(r["current_search_above"] for r in both)
            lines += [
                f"Optima of {names}: the lower of the search above and an earlier one (first step free only,",
                "the oracle's code of 2026-12-03, which may have had a learned start too); the search above alone",
                f"ends at most {above:.3f} higher.",
                "",
            ]
        header = ["sampler", "NFE", "best built-in (RMSE)"]
        if with_oracle:
            header += ["optimum: step sigmas only", "optimum: all three (other noises)"]
        if with_transfer:
            header += ["all three, fitted on other noises"]
        header += ["ld3 (per seed)", "ld3 share"]
        if with_transfer:
            header += ["of fitted elsewhere"]
        header += ["learned used", "paper", "paper share", "ld3 s / iterations"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in sorted(members, key=lambda r: (r["nfe"], r["sampler"])):
            nfe = f"{r['nfe']}" + (f" ({r['nfe_used']} used)" if r["nfe_used"] != r["nfe"] else "")
            cols = [r["sampler"], nfe, f"{r['builtin']} {_fmt(r['best'])}"]
            if with_oracle:
                if "full" in r:
                    mark = "*" if r["full_from_learned"] else ""
                    cols += [_fmt(r["steps_only"]), f"{_fmt(r['full'])}{mark} ({_fmt(r['full_other'])})"]
                else:
                    cols += ["", ""]
            if with_transfer:
                mark = "*" if r.get("transfer_from_learned") else ""
                cols.append(f"{_fmt(r['transfer'])}{mark}" if "transfer" in r else "")
            ld3, paper = r.get("ld3"), r.get("paper")
            if ld3:
                cols += [
                    f"**{ld3['ratio']:.3f}** ({' / '.join(f'{x:.2f}' for x in ld3['per_seed'])})",
                    _share_text(ld3),
                ]
                cols += [_share_text(ld3, "share_transfer")] if with_transfer else []
                cols.append(f"{ld3['used']}/{ld3['seeds']}")
            else:
                cols += ["", "", ""] + ([""] if with_transfer else [])
            cols += [f"{paper['ratio']:.3f}" if paper else "", _share_text(paper)]
            cols.append(f"{ld3['train_s']:.1f} / {ld3['iterations']:.0f}" if ld3 else "")
            lines.append("| " + " | ".join(cols) + " |")
        lpips = [r for r in members if "ld3 lpips" in r]
        if lpips:
            lines += [
                "",
                "With the LPIPS loss (through the tiny VAE): "
                + ", ".join(f"{r['sampler']} NFE {r['nfe']} {r['ld3 lpips']['ratio']:.3f}" for r in lpips)
                + ".",
            ]
        lines.append("")
    return lines


def before_after(rows: list[dict], before: list[dict]) -> list[str]:
    """The tiny models: the default recipe now against the old default (decoupled times in half a gap)."""
    if not before:
        return []
    old: dict[tuple, dict] = {}
    for r in before:
        old.setdefault((r["model"], r["sampler"], r["nfe"]), {})[r["method"]] = r
    lines = [
        "### Tiny models: before and after",
        "",
        "Ratio to the best built-in, mean over seeds. Before: the previous default (the paper's recipe with",
        "decoupled times inside half a log-gap, dpmpp_2m karras/simple teacher), from the last suite run before",
        "this change (`bench/results/tiny_before.json`). After: the `ld3` recipe with the default teacher",
        "(uni_pc, auto). Each is measured against its own teacher, so the ratios compare, the RMSEs do not.",
        "",
        "| model | sampler | NFE | before | after (ld3) | paper preset now |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(
        (r for r in rows if r["model"].startswith("tiny-")),
        key=lambda r: (r["model"], r["nfe"], r["sampler"]),
    ):
        methods = old.get((r["model"], r["sampler"], r["nfe"]))
        if not methods or BEFORE_VARIANT not in methods:
            continue
        builtins = [
            m["error_mean"]
            for m in methods.values()
            if m["kind"] != "learned" and math.isfinite(m["error_mean"])
        ]
        then = methods[BEFORE_VARIANT]["error_mean"] / min(builtins)
        now = r.get("ld3", {}).get("ratio", math.nan)
        paper = r.get("paper", {}).get("ratio", math.nan)
        lines.append(
            f"| {r['model']} | {r['sampler']} | {r['nfe']} | {then:.3f} | {_fmt(now)} | {_fmt(paper)} |"
        )
    return lines + [""]


NOTES = [
    "Error: RMSE per held-out sample between the stock-sampled endpoint and the reference, averaged over the",
    "model's fixed held-out set (512 noises on the mixtures, 128 on the trained network, 8 on the tiny models),",
    "then averaged over three seeds. A seed draws the teacher pairs (LD3 Generate Teacher's defaults: 50",
    "samples, 25 train / 25 validation, uni_pc, scheduler auto, 20 steps) and the trainer's shuffling.",
    "Reference: the exact endpoint on the mixtures (a 500-step dpmpp_2m solve), a 500-step solve of the",
    "trained network, the teacher itself on the random tiny models. What is scored is what users get:",
    "ComfyUI's stock sampler on the MODEL LD3 Train Sigmas outputs (the learned schedule, or the best built-in",
    "where the verdict found no significant gain; 'learned used' counts the seeds where it was the learned one).",
    "The verdict judges on fresh teacher pairs solved after training (`TrainConfig.check_pairs`, since",
    "2026-12-05); the rows of tiny-sd15-eps and tiny-sd15-v were measured before, when it judged on the",
    "validation samples: the learned schedules are the same, and where the two verdicts disagree 'learned",
    "used' and the error would differ (that verdict used the learned schedule in every run of those models;",
    "measured again with it: tiny-flux, every `ld3` row the same, paper dpmpp_2m 6 0.996 -> 1.000;",
    "digits-edm, every row the same).",
    "ratio = that error / the best built-in's (every ComfyUI scheduler plus AYS, GITS and OptimalSteps where",
    "they fit the model), lower is better. Optimum = the best schedule found by direct optimisation against",
    "the reference on the held-out noises themselves (bench/oracle.py: Adam then L-BFGS, full batch, from the",
    "step-sigma optimum and from the best learned schedule, for all three sigmas with the first step free and",
    "pinned): with the step sigmas only, and with all three sigmas per step; in brackets the all-three optimum",
    "on 512 other noises it was not fitted to. * = a learned",
    "schedule of this run was better on the held-out noises than the oracle's own search, and sets the optimum.",
    "share = (1 - ratio) / (1 - optimum ratio): the part of the achievable gain captured. 'Fitted on other",
    "noises': the same search for all three sigmas run on the 512 other noises with their exact endpoints and",
    "scored on the held-out ones: what a method with ten times the default teacher pairs and no teacher error",
    "reaches when, like every method, it never sees the noises it is scored on (* = a learned schedule of this",
    "run did better and sets it); 'of fitted elsewhere' is the share of that gain. Where it sits far above the",
    "in-sample optimum, the in-sample gain is mostly fitted to the few held-out noises that land near another",
    "mode and dominate the mean.",
    "Recipes: `ld3` (the default: step sigma, network time and scaling sigma per step, Adam, best by",
    "validation) and `paper` (the paper's App. B.1: soft teacher forcing, the network's time inside half a",
    "log-gap, RMSprop/SGD, 2 + 3 epochs). Heun spends two calls a step except the last (NFE 6: 3 steps, 5 used).",
]
