"""Drive the LD3 demo on a running ComfyUI: queue the demo graph, wait, print learned vs built-in errors.

Usage: python scripts/demo.py --url http://127.0.0.1:8188 --output-dir <ComfyUI output directory>
(scripts/demo.sh starts a headless ComfyUI and calls this). Standard library only.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))  # also when tests load this file by path
from recipe import TRAIN_RECIPE  # noqa: E402

NFES = (4, 6, 8)
SAMPLER = "dpmpp_2m"


HELDOUT_SEED = 100_000  # LD3 Generate Teacher's sample i uses seed + i: far from the training teacher's
HELDOUT_SAMPLES = 100  # its validation half (50 noises) is what Compare Sigmas scores
HELDOUT_STEPS = 40


def demo_graph(nfes=NFES, samples: int = 50, teacher_steps: int = 20, prefix: str = "ld3_demo") -> dict:
    """API-format graph: demo model -> teacher -> one LD3 Train Sigmas per NFE, and LD3 Compare Sigmas on
    a second teacher of other noises (so the comparison is on noises the training never saw)."""
    graph = {
        "model": {
            "class_type": "LD3DemoModel",
            "inputs": {"kind": "eps", "width": 16, "height": 16, "seed": 0},
        },
        "teacher": {
            "class_type": "LD3GenerateTeacher",
            "inputs": {
                "model": ["model", 0],
                "positive": ["model", 1],
                "negative": ["model", 2],
                "latent": ["model", 3],
                "sample_count": samples,
                "seed": 0,
                "cfg": 1.0,  # the mixture ignores its conditioning: one model call per step
                "sampler_name": "uni_pc",  # LD3 Generate Teacher's default
                "scheduler": "auto",
                "steps": teacher_steps,
                "batch_size": 8,
                "name": f"{prefix}_teacher",
            },
        },
    }
    heldout = copy.deepcopy(graph["teacher"])
    heldout["inputs"].update(
        sample_count=HELDOUT_SAMPLES, seed=HELDOUT_SEED, steps=HELDOUT_STEPS, name=f"{prefix}_heldout"
    )
    graph["heldout"] = heldout
    for nfe in nfes:
        graph[f"train{nfe}"] = {
            "class_type": "LD3TrainSigmas",
            "inputs": {
                "model": ["model", 0],
                "teacher": ["teacher", 0],
                "sampler_name": SAMPLER,
                "steps": nfe,
                "loss": "l2",
                **TRAIN_RECIPE,
                "schedule_name": f"{prefix}_{SAMPLER}_nfe{nfe}",
            },
        }
        graph[f"compare{nfe}"] = {
            "class_type": "LD3CompareSigmas",
            "inputs": {
                "model": [f"train{nfe}", 1],
                "teacher": ["heldout", 0],
                "sampler_name": SAMPLER,
                "sigmas": [f"train{nfe}", 0],
                "include_builtin": True,
            },
        }
        graph[f"save_train{nfe}"] = {
            "class_type": "SaveImage",
            "inputs": {"images": [f"train{nfe}", 2], "filename_prefix": f"ld3/{prefix}_training_nfe{nfe}"},
        }
        graph[f"save_compare{nfe}"] = {
            "class_type": "SaveImage",
            "inputs": {"images": [f"compare{nfe}", 0], "filename_prefix": f"ld3/{prefix}_compare_nfe{nfe}"},
        }
        graph[f"report{nfe}"] = {"class_type": "PreviewAny", "inputs": {"source": [f"compare{nfe}", 1]}}
        graph[f"verdict{nfe}"] = {"class_type": "PreviewAny", "inputs": {"source": [f"train{nfe}", 3]}}
    return graph


def parse_report(text: str) -> list[dict]:
    """Rows of LD3 Compare Sigmas' text report as dicts (schedule, steps, rmse_mean, rmse_sd, vs_best_builtin)."""
    table = text.split("```")[1]  # the report's table is its one code block; notes may follow it
    lines = [line for line in table.splitlines() if line.strip()]
    header = lines[0].split()
    return [dict(zip(header, line.split())) for line in lines[1:]]


def summary_line(nfe: int, rows: list[dict]) -> str:
    """'NFE n: learned x vs best built-in (name) y: z times lower' from a parsed report."""
    learned = next(r for r in rows if r["schedule"].endswith("(ld3)"))
    builtins = [
        r for r in rows if r["schedule"] not in ("sigmas", "sigmas(ld3)") and r["vs_best_builtin"] != "-"
    ]
    best = min(builtins, key=lambda r: float(r["rmse_mean"]))
    ratio = float(best["rmse_mean"]) / float(learned["rmse_mean"])
    return (
        f"NFE {nfe}: LD3 learned RMSE {float(learned['rmse_mean']):.4f} vs best built-in "
        f"({best['schedule']}) {float(best['rmse_mean']):.4f}: {ratio:.2f}x lower"
    )


def _request(url: str, payload: dict | None = None, timeout: float = 30.0):
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        raise SystemExit(f"demo: {url} answered {exc.code}: {exc.read().decode(errors='replace')}") from None


def run(url: str, output_dir: Path, timeout: float) -> int:
    graph = demo_graph()
    prompt_id = _request(f"{url}/prompt", {"prompt": graph})["prompt_id"]
    print(
        f"demo: queued prompt {prompt_id} ({len(graph)} nodes); training at NFE {', '.join(map(str, NFES))}"
    )
    start = time.monotonic()
    last_note = start
    while True:
        history = _request(f"{url}/history/{prompt_id}")
        entry = history.get(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None:
            break
        if time.monotonic() - start > timeout:
            print(f"demo: no result after {timeout:.0f} s", file=sys.stderr)
            return 1
        if time.monotonic() - last_note > 30:
            last_note = time.monotonic()
            print(f"demo: still running ({time.monotonic() - start:.0f} s)")
        time.sleep(0.5)
    status = entry["status"]
    if status.get("status_str") != "success":
        print(
            f"demo: the prompt failed:\n{json.dumps(status.get('messages', []), indent=1)}", file=sys.stderr
        )
        return 1
    print(f"demo: finished in {time.monotonic() - start:.0f} s\n")
    outputs = entry["outputs"]
    summaries = []
    for nfe in NFES:
        verdict = outputs[f"verdict{nfe}"]["text"][0].split("\n\n")
        text = outputs[f"report{nfe}"]["text"][0]
        print(f"--- NFE {nfe} ---\nLD3 Train Sigmas: {verdict[0]}\n{verdict[-1]}\n\n{text}\n")
        summaries.append(summary_line(nfe, parse_report(text)))
    print(
        f"Error on {HELDOUT_SAMPLES // 2} noises the training never saw, against a {HELDOUT_STEPS}-step "
        "uni_pc solve of each, lower is better:"
    )
    for line in summaries:
        print(f"  {line}")
    print("\nSchedules (in ComfyUI's models/ld3/, for LD3 Load Sigmas):")
    for nfe in NFES:
        print(f"  {graph[f'train{nfe}']['inputs']['schedule_name']}.safetensors")
    print("\nPlots:")
    for key in sorted(k for k in outputs if k.startswith("save_")):
        for image in outputs[key].get("images", []):
            print(f"  {output_dir / image.get('subfolder', '') / image['filename']}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="ComfyUI base URL, e.g. http://127.0.0.1:8188")
    parser.add_argument("--output-dir", required=True, type=Path, help="ComfyUI's --output-directory")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the result")
    args = parser.parse_args()
    return run(args.url.rstrip("/"), args.output_dir.resolve(), args.timeout)


if __name__ == "__main__":
    sys.exit(main())
