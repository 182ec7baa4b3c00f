"""Build workflows/*.json, workflows/api/*.json and the thumbnails by driving the real ComfyUI frontend.

Each graph is made in the frontend itself (LiteGraph.createNode, widget values, connect), then written
the way the frontend's Workflow > Export / Export (API) menu writes files: app.graphToPrompt()'s
workflow (with the current view in extra.ds) and output, as JSON with two-space indents. The
thumbnail is a screenshot of the written file loaded back with app.loadGraphData, resized small
(.png, and .jpg: the template browser asks for <name>.jpg).

Layout: bands of columns (Band); every node that shows something after a run (image and text previews,
the LD3 nodes' report on the node) is given room for it, so a run does not grow it over its neighbours
(scripts/screenshots.py runs each workflow in the frontend and reports overlapping or grown nodes).

Usage: .venv/bin/python scripts/build_workflows.py [--url http://127.0.0.1:8188] [--only NAME ...]
Without --url it starts the development ComfyUI (scripts/setup.sh) on a free port and stops it after.
Needs Debian's chromium (/usr/bin/chromium) and the playwright Python package.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMFYUI_DIR = ROOT / ".comfyui" / "ComfyUI"

sys.path.append(str(ROOT / "scripts"))  # also when tests load this file by path; last, to shadow nothing
import comfy_launch  # noqa: E402
import recipe  # noqa: E402

WORKFLOWS = ROOT / "workflows"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1600, "height": 900}
THUMBNAIL_WIDTH = 640

# Model file names as the usual downloads call them (the user picks theirs in the dropdown).
SD15_CHECKPOINT = "v1-5-pruned-emaonly-fp16.safetensors"
FLUX_UNET = "flux1-dev.safetensors"
FLUX_CLIP_L = "clip_l.safetensors"
FLUX_T5 = "t5xxl_fp16.safetensors"
FLUX_VAE = "ae.safetensors"
SD15_SAMPLER, SD15_STEPS = "dpmpp_2m", 6
FLUX_SAMPLER, FLUX_STEPS = "euler", 6
SD15_SCHEDULE = f"ld3_sd15_{SD15_SAMPLER}_{SD15_STEPS}steps"
SD15_TEACHER = "ld3_sd15_teacher"  # LD3 Generate Teacher saves output/ld3/<name>_<counter>.safetensors
SD15_RETRAIN_STEPS = 4
SD15_RETRAIN_SCHEDULE = f"ld3_sd15_{SD15_SAMPLER}_{SD15_RETRAIN_STEPS}steps"
FLUX_SCHEDULE = f"ld3_flux_{FLUX_SAMPLER}_{FLUX_STEPS}steps"
SEED = 42
SD15_POSITIVE = "a photograph of a lighthouse on a rocky coast at sunset, dramatic clouds, detailed"
SD15_POSITIVE_2 = "a cozy reading corner with a green armchair and a tall bookshelf, warm light"
SD15_NEGATIVE = "blurry, low quality, watermark, text"
FLUX_POSITIVE = "a red fox sitting in fresh snow in a birch forest, morning light, photograph"


@dataclass
class Node:
    """One node to create: its key in this spec, type, title and widget values by widget name.

    size: at least this (the frontend's minimum otherwise); grow: added to the frontend's minimum size.
    A node that shows output after a run is given room for it here, so it need not grow over its
    neighbours: the preview nodes (images, text) and the LD3 nodes that show their report on the node.
    """

    key: str
    type: str
    widgets: dict = field(default_factory=dict)
    title: str | None = None
    size: tuple[int, int] | None = None
    grow: tuple[int, int] | None = None


@dataclass
class Band:
    """Columns of node keys, left to right, each stacked top to bottom; the band starts below everything
    laid out before it, at the left edge of node `under` (or at x = 0)."""

    columns: list[list[str]]
    under: str | None = None


@dataclass
class Workflow:
    """A graph to build: nodes, links (src key, output name, dst key, input name), layout and groups."""

    name: str
    nodes: list[Node]
    links: list[tuple[str, str, str, str]]
    columns: list[list[str]]  # the first band: node keys, left to right, each column stacked
    groups: list[tuple[str, list[str]]] = field(default_factory=list)  # (title, node keys)
    bands: list[Band] = field(default_factory=list)  # more bands, each below the ones before

    def spec(self) -> dict:
        return {
            "nodes": [
                {
                    "key": n.key,
                    "type": n.type,
                    "widgets": n.widgets,
                    "title": n.title,
                    "size": n.size,
                    "grow": n.grow,
                }
                for n in self.nodes
            ],
            "links": self.links,
            "bands": [{"columns": self.columns, "under": None}]
            + [{"columns": b.columns, "under": b.under} for b in self.bands],
            "groups": self.groups,
        }


# Room for what a run shows (canvas units). The training plot is 1000 x 1120 px: shown at 0.72 of its
# size its 12 pt text stays readable. Node text (LD3 Generate Teacher, Train Sigmas, Load Sigmas report
# on the node itself) gets a few lines under the widgets.
PLOT_PREVIEW = (720, 850)
NODE_TEXT = (110, 150)  # added width and height
SAMPLE_PREVIEW = (300, 340)
COMPARE_PREVIEW = (720, 850)  # LD3 Compare Sigmas' table + per-sample plot, 1000 px wide


def _note(key: str, text: str) -> Node:
    """The workflow's explanation, tall enough for all of it at a 14 px text size (Settings > Appearance;
    10 px by default): ~45 monospace characters a line at 400 wide (40 counted: words wrap), ~17 px a line."""
    lines = sum(max(1, math.ceil(len(paragraph) / 40)) for paragraph in text.split("\n"))
    return Node(key, "Note", {"text": text}, title="About this workflow", size=(400, 50 + 17 * lines))


def _decode_save(prefix: str, latent_key: str, vae_src: tuple[str, str], tag: str):
    """VAEDecode + SaveImage for one sampler output; returns (nodes, links)."""
    nodes = [
        Node(f"decode_{tag}", "VAEDecode"),
        Node(f"save_{tag}", "SaveImage", {"filename_prefix": prefix}, size=SAMPLE_PREVIEW),
    ]
    links = [
        (latent_key, _first_output(latent_key), f"decode_{tag}", "samples"),
        (*vae_src, f"decode_{tag}", "vae"),
        (f"decode_{tag}", "IMAGE", f"save_{tag}", "images"),
    ]
    return nodes, links


def _first_output(key: str) -> str:
    # SamplerCustomAdvanced names its outputs "output"/"denoised_output"; KSamplers have "LATENT".
    return "output" if key.startswith("custom") else "LATENT"


def _train_sigmas(sampler: str, steps: int, schedule_name: str) -> Node:
    """LD3 Train Sigmas with the default ld3 recipe and LPIPS through the VAE."""
    return Node(
        "train",
        "LD3TrainSigmas",
        {
            "sampler_name": sampler,
            "steps": steps,
            "loss": "lpips",
            **recipe.TRAIN_RECIPE,
            "schedule_name": schedule_name,
        },
        grow=NODE_TEXT,
    )


def _plot() -> Node:
    """Preview Image for LD3 Train Sigmas' plot (loss and schedules), large enough to read."""
    return Node("plot", "PreviewImage", title="Training plot", size=PLOT_PREVIEW)


def _verdict() -> Node:
    """Preview as Text for LD3 Train Sigmas' report: the verdict against the best built-in."""
    return Node("verdict", "PreviewAny", title="LD3 verdict", size=(460, 300))


def _sd15_ksampler_ld3(steps: int) -> Node:
    """The stock KSampler on the LD3-patched MODEL, scheduler 'ld3'."""
    return Node(
        "ks",
        "KSampler",
        {
            "seed": SEED,
            "steps": steps,
            "cfg": 7.0,
            "sampler_name": SD15_SAMPLER,
            "scheduler": "ld3",
            "denoise": 1.0,
        },
        title="KSampler, scheduler ld3",
    )


def sd15_train() -> Workflow:
    nodes = [
        _note(
            "note",
            "LD3 for SD1.x: learn a 6-step dpmpp_2m schedule for this checkpoint, then sample with it.\n\n"
            "1. LD3 Generate Teacher samples the model with 20 steps (50 samples, both prompts in turn).\n"
            "2. LD3 Train Sigmas learns, per step, the step sigma, the time the network is told and the "
            "sigma its input and output are scaled with, against the teacher with LPIPS on decoded "
            "images, and saves the best one to models/ld3/"
            f"{SD15_SCHEDULE}.safetensors while it trains (Cancel keeps the best so far). Its verdict "
            "(learned vs the best built-in on held-out teacher samples) shows in 'LD3 verdict'; if the "
            "learned schedule is not significantly better, the outputs carry that built-in.\n"
            "3. Sample with the patched MODEL: SamplerCustomAdvanced with the learned SIGMAS, or the "
            "'ld3' scheduler in a stock KSampler (the SIGMAS alone are only the step sigmas); the last "
            "KSampler is the default karras schedule at the same 6 steps, for comparison.\n\n"
            "Later runs: ld3_sd15_use_saved.json loads the saved schedule without training. "
            "The teacher's CFG must be the CFG you sample with.",
        ),
        Node("ckpt", "CheckpointLoaderSimple", {"ckpt_name": SD15_CHECKPOINT}),
        Node("latent", "EmptyLatentImage", {"width": 512, "height": 512, "batch_size": 1}),
        Node("pos", "CLIPTextEncode", {"text": SD15_POSITIVE}, title="Prompt 1", size=(400, 140)),
        Node("pos2", "CLIPTextEncode", {"text": SD15_POSITIVE_2}, title="Prompt 2", size=(400, 140)),
        Node("neg", "CLIPTextEncode", {"text": SD15_NEGATIVE}, title="Negative", size=(400, 110)),
        Node(
            "teacher",
            "LD3GenerateTeacher",
            {
                "sample_count": 50,
                "seed": 0,
                "cfg": 7.0,
                "sampler_name": "uni_pc",
                "scheduler": "auto",
                "steps": 20,
                "batch_size": 4,
                "name": SD15_TEACHER,
            },
            grow=NODE_TEXT,
        ),
        _train_sigmas(SD15_SAMPLER, SD15_STEPS, SD15_SCHEDULE),
        _plot(),
        _verdict(),
        Node("noise", "RandomNoise", {"noise_seed": SEED}),
        Node("guider", "CFGGuider", {"cfg": 7.0}),
        Node("select", "KSamplerSelect", {"sampler_name": SD15_SAMPLER}),
        Node("custom", "SamplerCustomAdvanced", title="Sample with the learned SIGMAS"),
        Node(
            "ks_ld3",
            "KSamplerAdvanced",
            _ksampler_advanced(SD15_SAMPLER, "ld3", SD15_STEPS),
            title="KSampler (Advanced), scheduler ld3",
        ),
        Node(
            "ks_default",
            "KSamplerAdvanced",
            _ksampler_advanced(SD15_SAMPLER, "karras", SD15_STEPS),
            title="KSampler (Advanced), default karras (comparison)",
        ),
    ]
    links = [
        ("ckpt", "CLIP", "pos", "clip"),
        ("ckpt", "CLIP", "pos2", "clip"),
        ("ckpt", "CLIP", "neg", "clip"),
        ("ckpt", "MODEL", "teacher", "model"),
        ("pos", "CONDITIONING", "teacher", "positive"),
        ("pos2", "CONDITIONING", "teacher", "positive_2"),
        ("neg", "CONDITIONING", "teacher", "negative"),
        ("latent", "LATENT", "teacher", "latent"),
        ("ckpt", "MODEL", "train", "model"),
        ("teacher", "teacher", "train", "teacher"),
        ("ckpt", "VAE", "train", "vae"),
        ("train", "plot", "plot", "images"),
        ("train", "report", "verdict", "source"),
        ("train", "model", "guider", "model"),
        ("pos", "CONDITIONING", "guider", "positive"),
        ("neg", "CONDITIONING", "guider", "negative"),
        ("noise", "NOISE", "custom", "noise"),
        ("guider", "GUIDER", "custom", "guider"),
        ("select", "SAMPLER", "custom", "sampler"),
        ("train", "sigmas", "custom", "sigmas"),
        ("latent", "LATENT", "custom", "latent_image"),
        ("train", "model", "ks_ld3", "model"),
        ("ckpt", "MODEL", "ks_default", "model"),
    ]
    for key in ("ks_ld3", "ks_default"):
        links += [
            ("pos", "CONDITIONING", key, "positive"),
            ("neg", "CONDITIONING", key, "negative"),
            ("latent", "LATENT", key, "latent_image"),
        ]
    for key, prefix in (
        ("custom", "ld3/sd15_learned_sigmas"),
        ("ks_ld3", "ld3/sd15_ksampler_ld3"),
        ("ks_default", "ld3/sd15_default_karras"),
    ):
        more_nodes, more_links = _decode_save(prefix, key, ("ckpt", "VAE"), key)
        nodes += more_nodes
        links += more_links
    columns = [
        ["note", "ckpt", "latent"],
        ["pos", "pos2", "neg"],
        ["teacher"],
        ["train", "verdict"],
        ["plot"],
    ]
    sample = Band(
        [
            ["noise", "guider", "select", "custom"],
            ["ks_ld3", "ks_default"],
            ["decode_custom", "decode_ks_ld3", "decode_ks_default"],
            ["save_custom"],
            ["save_ks_ld3"],
            ["save_ks_default"],
        ],
        under="pos",
    )
    groups = [
        ("1. Learn the schedule (once)", ["teacher", "train", "plot", "verdict"]),
        ("2. Sample with it", ["noise", "guider", "select", "custom", "ks_ld3"]),
    ]
    return Workflow("ld3_sd15_train", nodes, links, columns, groups, [sample])


def _ksampler_advanced(sampler: str, scheduler: str, steps: int, cfg: float = 7.0) -> dict:
    return {
        "add_noise": "enable",
        "noise_seed": SEED,
        "steps": steps,
        "cfg": cfg,
        "sampler_name": sampler,
        "scheduler": scheduler,
        "start_at_step": 0,
        "end_at_step": 10000,
        "return_with_leftover_noise": "disable",
    }


def _flux_loaders() -> tuple[list[Node], list[tuple[str, str, str, str]]]:
    nodes = [
        Node("unet", "UNETLoader", {"unet_name": FLUX_UNET, "weight_dtype": "default"}),
        Node(
            "clip",
            "DualCLIPLoader",
            {"clip_name1": FLUX_CLIP_L, "clip_name2": FLUX_T5, "type": "flux", "device": "default"},
        ),
        Node("vae", "VAELoader", {"vae_name": FLUX_VAE}),
        Node(
            "shift",
            "ModelSamplingFlux",
            {"max_shift": 1.15, "base_shift": 0.5, "width": 1024, "height": 1024},
        ),
        Node("latent", "EmptySD3LatentImage", {"width": 1024, "height": 1024, "batch_size": 1}),
        Node("pos", "CLIPTextEncode", {"text": FLUX_POSITIVE}, title="Prompt", size=(400, 140)),
        Node("guidance", "FluxGuidance", {"guidance": 3.5}),
    ]
    links = [
        ("unet", "MODEL", "shift", "model"),
        ("clip", "CLIP", "pos", "clip"),
        ("pos", "CONDITIONING", "guidance", "conditioning"),
    ]
    return nodes, links


def flux_train() -> Workflow:
    nodes, links = _flux_loaders()
    nodes = [
        _note(
            "note",
            f"LD3 for Flux-dev: learn a {FLUX_STEPS}-step {FLUX_SAMPLER} schedule, then sample with it.\n\n"
            "Flux-dev is guidance-distilled: the guidance comes from FluxGuidance, so the teacher runs at "
            "CFG 1.0 (one model call per step) and the negative is only a placeholder.\n"
            "ModelSamplingFlux's width/height must match the latent: a schedule is learned for one "
            "resolution (shift).\n"
            "LD3 Train Sigmas saves the best schedule so far to models/ld3/"
            f"{FLUX_SCHEDULE}.safetensors; ld3_flux_use_saved.json loads it later.\n"
            "The lower SamplerCustomAdvanced uses the default simple schedule at the same steps.",
        ),
        *nodes,
        Node("neg", "ConditioningZeroOut", title="Negative (unused at CFG 1)"),
        Node(
            "teacher",
            "LD3GenerateTeacher",
            {
                "sample_count": 50,
                "seed": 0,
                "cfg": 1.0,
                "sampler_name": "uni_pc",
                "scheduler": "auto",
                "steps": 20,
                "batch_size": 2,
                "name": "ld3_flux_teacher",
            },
            grow=NODE_TEXT,
        ),
        _train_sigmas(FLUX_SAMPLER, FLUX_STEPS, FLUX_SCHEDULE),
        _plot(),
        _verdict(),
        Node("noise", "RandomNoise", {"noise_seed": SEED}),
        Node("select", "KSamplerSelect", {"sampler_name": FLUX_SAMPLER}),
        Node("guider", "BasicGuider", title="BasicGuider (learned schedule)"),
        Node("custom", "SamplerCustomAdvanced", title="Sample with the learned SIGMAS"),
        Node("guider_default", "BasicGuider", title="BasicGuider (default)"),
        Node(
            "sched_default",
            "BasicScheduler",
            {"scheduler": "simple", "steps": FLUX_STEPS, "denoise": 1.0},
            title="BasicScheduler, default simple (comparison)",
        ),
        Node("custom_default", "SamplerCustomAdvanced", title="Default schedule (comparison)"),
    ]
    links += [
        ("pos", "CONDITIONING", "neg", "conditioning"),
        ("shift", "MODEL", "teacher", "model"),
        ("guidance", "CONDITIONING", "teacher", "positive"),
        ("neg", "CONDITIONING", "teacher", "negative"),
        ("latent", "LATENT", "teacher", "latent"),
        ("shift", "MODEL", "train", "model"),
        ("teacher", "teacher", "train", "teacher"),
        ("vae", "VAE", "train", "vae"),
        ("train", "plot", "plot", "images"),
        ("train", "report", "verdict", "source"),
        ("train", "model", "guider", "model"),
        ("guidance", "CONDITIONING", "guider", "conditioning"),
        ("noise", "NOISE", "custom", "noise"),
        ("guider", "GUIDER", "custom", "guider"),
        ("select", "SAMPLER", "custom", "sampler"),
        ("train", "sigmas", "custom", "sigmas"),
        ("latent", "LATENT", "custom", "latent_image"),
        ("shift", "MODEL", "guider_default", "model"),
        ("guidance", "CONDITIONING", "guider_default", "conditioning"),
        ("shift", "MODEL", "sched_default", "model"),
        ("noise", "NOISE", "custom_default", "noise"),
        ("guider_default", "GUIDER", "custom_default", "guider"),
        ("select", "SAMPLER", "custom_default", "sampler"),
        ("sched_default", "SIGMAS", "custom_default", "sigmas"),
        ("latent", "LATENT", "custom_default", "latent_image"),
    ]
    for key, prefix in (("custom", "ld3/flux_learned_sigmas"), ("custom_default", "ld3/flux_default_simple")):
        more_nodes, more_links = _decode_save(prefix, key, ("vae", "VAE"), key)
        nodes += more_nodes
        links += more_links
    columns = [
        ["note", "unet", "clip", "vae"],
        ["shift", "latent", "pos", "guidance", "neg"],
        ["teacher"],
        ["train", "verdict"],
        ["plot"],
    ]
    sample = Band(
        [
            ["noise", "select", "guider", "custom"],
            ["guider_default", "sched_default", "custom_default"],
            ["decode_custom", "decode_custom_default"],
            ["save_custom"],
            ["save_custom_default"],
        ],
        under="shift",
    )
    groups = [
        ("1. Learn the schedule (once)", ["teacher", "train", "plot", "verdict"]),
        ("2. Sample with it", ["noise", "select", "guider", "custom"]),
    ]
    return Workflow("ld3_flux_train", nodes, links, columns, groups, [sample])


def sd15_use_saved() -> Workflow:
    nodes = [
        _note(
            "note",
            "Sample SD1.x with a schedule learned earlier by ld3_sd15_train.json.\n\n"
            "LD3 Load Sigmas reads models/ld3/<file> and patches the MODEL with the learned per-step "
            "network times and scaling; the stock KSampler then uses it through the 'ld3' scheduler. Keep the sampler, steps "
            "and CFG the schedule was learned for (another step count is resampled, with a warning).",
        ),
        Node("ckpt", "CheckpointLoaderSimple", {"ckpt_name": SD15_CHECKPOINT}),
        Node(
            "load",
            "LD3LoadSigmas",
            {"schedule_file": f"{SD15_SCHEDULE}.safetensors", "sampler_name": SD15_SAMPLER, "steps": 0},
            grow=NODE_TEXT,
        ),
        Node("latent", "EmptyLatentImage", {"width": 512, "height": 512, "batch_size": 1}),
        Node("pos", "CLIPTextEncode", {"text": SD15_POSITIVE}, title="Prompt", size=(400, 140)),
        Node("neg", "CLIPTextEncode", {"text": SD15_NEGATIVE}, title="Negative", size=(400, 110)),
        _sd15_ksampler_ld3(SD15_STEPS),
    ]
    links = [
        ("ckpt", "MODEL", "load", "model"),
        ("ckpt", "CLIP", "pos", "clip"),
        ("ckpt", "CLIP", "neg", "clip"),
        ("load", "model", "ks", "model"),
        ("pos", "CONDITIONING", "ks", "positive"),
        ("neg", "CONDITIONING", "ks", "negative"),
        ("latent", "LATENT", "ks", "latent_image"),
    ]
    more_nodes, more_links = _decode_save("ld3/sd15_ld3", "ks", ("ckpt", "VAE"), "ks")
    columns = [["note", "ckpt", "load"], ["pos", "neg", "latent"], ["ks"], ["decode_ks", "save_ks"]]
    return Workflow("ld3_sd15_use_saved", nodes + more_nodes, links + more_links, columns)


def sd15_retrain() -> Workflow:
    nodes = [
        _note(
            "note",
            "Learn another SD1.x schedule from the teacher that ld3_sd15_train.json saved, without "
            "sampling the teacher again: here 4 steps instead of 6.\n\n"
            f"LD3 Load Teacher reads output/ld3/{SD15_TEACHER}_00001.safetensors (pick yours in the list). "
            "Connect the same checkpoint and the same prompts, in the same order, as when it was generated: "
            "the prompts are checked against the file, the model when training starts. The teacher's CFG "
            "comes from the file. LD3 Train Sigmas then saves models/ld3/"
            f"{SD15_RETRAIN_SCHEDULE}.safetensors; the KSampler samples with it through the 'ld3' scheduler.",
        ),
        Node("ckpt", "CheckpointLoaderSimple", {"ckpt_name": SD15_CHECKPOINT}),
        Node("latent", "EmptyLatentImage", {"width": 512, "height": 512, "batch_size": 1}),
        Node("pos", "CLIPTextEncode", {"text": SD15_POSITIVE}, title="Prompt 1", size=(400, 140)),
        Node("pos2", "CLIPTextEncode", {"text": SD15_POSITIVE_2}, title="Prompt 2", size=(400, 140)),
        Node("neg", "CLIPTextEncode", {"text": SD15_NEGATIVE}, title="Negative", size=(400, 110)),
        Node("teacher", "LD3LoadTeacher", {"teacher_file": f"{SD15_TEACHER}_00001.safetensors"}),
        _train_sigmas(SD15_SAMPLER, SD15_RETRAIN_STEPS, SD15_RETRAIN_SCHEDULE),
        _plot(),
        _verdict(),
        _sd15_ksampler_ld3(SD15_RETRAIN_STEPS),
    ]
    links = [
        ("ckpt", "CLIP", "pos", "clip"),
        ("ckpt", "CLIP", "pos2", "clip"),
        ("ckpt", "CLIP", "neg", "clip"),
        ("pos", "CONDITIONING", "teacher", "positive"),
        ("pos2", "CONDITIONING", "teacher", "positive_2"),
        ("neg", "CONDITIONING", "teacher", "negative"),
        ("ckpt", "MODEL", "train", "model"),
        ("teacher", "teacher", "train", "teacher"),
        ("ckpt", "VAE", "train", "vae"),
        ("train", "plot", "plot", "images"),
        ("train", "report", "verdict", "source"),
        ("train", "model", "ks", "model"),
        ("pos", "CONDITIONING", "ks", "positive"),
        ("neg", "CONDITIONING", "ks", "negative"),
        ("latent", "LATENT", "ks", "latent_image"),
    ]
    more_nodes, more_links = _decode_save("ld3/sd15_retrained_ld3", "ks", ("ckpt", "VAE"), "ks")
    columns = [
        ["note", "ckpt", "latent"],
        ["pos", "pos2", "neg"],
        ["teacher", "train", "verdict"],
        ["plot"],
        ["ks", "decode_ks", "save_ks"],
    ]
    groups = [("Learn a 4-step schedule from the saved teacher", ["teacher", "train", "plot", "verdict"])]
    return Workflow("ld3_sd15_retrain", nodes + more_nodes, links + more_links, columns, groups)


def flux_use_saved() -> Workflow:
    nodes, links = _flux_loaders()
    nodes = [
        _note(
            "note",
            "Sample Flux-dev with a schedule learned earlier by ld3_flux_train.json.\n\n"
            "LD3 Load Sigmas patches the MODEL with the learned per-step network times and scaling and "
            "outputs the learned SIGMAS for SamplerCustomAdvanced (use both: the SIGMAS alone are only the "
            "step sigmas). Keep the sampler, steps and resolution (ModelSamplingFlux "
            "width/height) the schedule was learned for.",
        ),
        *nodes,
        Node(
            "load",
            "LD3LoadSigmas",
            {"schedule_file": f"{FLUX_SCHEDULE}.safetensors", "sampler_name": FLUX_SAMPLER, "steps": 0},
            grow=NODE_TEXT,
        ),
        Node("noise", "RandomNoise", {"noise_seed": SEED}),
        Node("select", "KSamplerSelect", {"sampler_name": FLUX_SAMPLER}),
        Node("guider", "BasicGuider"),
        Node("custom", "SamplerCustomAdvanced"),
    ]
    links += [
        ("shift", "MODEL", "load", "model"),
        ("load", "model", "guider", "model"),
        ("guidance", "CONDITIONING", "guider", "conditioning"),
        ("noise", "NOISE", "custom", "noise"),
        ("guider", "GUIDER", "custom", "guider"),
        ("select", "SAMPLER", "custom", "sampler"),
        ("load", "sigmas", "custom", "sigmas"),
        ("latent", "LATENT", "custom", "latent_image"),
    ]
    more_nodes, more_links = _decode_save("ld3/flux_ld3", "custom", ("vae", "VAE"), "custom")
    columns = [
        ["note", "unet", "clip", "vae"],
        ["shift", "load", "latent", "pos", "guidance"],
        ["noise", "select", "guider", "custom"],
        ["decode_custom", "save_custom"],
    ]
    return Workflow("ld3_flux_use_saved", nodes + more_nodes, links + more_links, columns)


def demo() -> Workflow:
    nodes = [
        _note(
            "note",
            "The zero-download LD3 demo: runs on a CPU in a few minutes.\n\n"
            "LD3 Demo Model is an exact Gaussian-mixture 'diffusion model' (SD1.x-style eps, or flow), so "
            "every error you see is the sampler's own ODE error. The teacher runs uni_pc at 20 steps and "
            "reports its own error; LD3 Train Sigmas learns a 6-step dpmpp_2m schedule (l2 loss: there "
            "is no VAE) and gives its verdict; LD3 Compare Sigmas then measures it against every built-in "
            "scheduler on noises the training never saw: a second teacher (seed 100000, 40 steps; sample i "
            "uses seed + i) whose 50 validation samples it scores (report: lower RMSE is better).",
        ),
        Node("model", "LD3DemoModel", {"kind": "eps", "width": 16, "height": 16, "seed": 0}),
        Node(
            "teacher",
            "LD3GenerateTeacher",
            {
                "sample_count": 50,
                "seed": 0,
                "cfg": 1.0,
                "sampler_name": "uni_pc",
                "scheduler": "auto",
                "steps": 20,
                "batch_size": 8,
                "name": "ld3_demo_teacher",
            },
            grow=NODE_TEXT,
        ),
        Node(
            "heldout",
            "LD3GenerateTeacher",
            {
                "sample_count": 100,
                "seed": 100_000,
                "cfg": 1.0,
                "sampler_name": "uni_pc",
                "scheduler": "auto",
                "steps": 40,
                "batch_size": 8,
                "name": "ld3_demo_heldout",
            },
            title="Held-out teacher (other noises, for Compare)",
            grow=NODE_TEXT,
        ),
        Node(
            "train",
            "LD3TrainSigmas",
            {
                "sampler_name": "dpmpp_2m",
                "steps": 6,
                "loss": "l2",
                **recipe.TRAIN_RECIPE,
                "schedule_name": "ld3_demo_dpmpp_2m_6steps",
            },
            grow=NODE_TEXT,
        ),
        _plot(),
        Node(
            "compare",
            "LD3CompareSigmas",
            {"sampler_name": "dpmpp_2m", "include_builtin": True},
        ),
        Node("save_compare", "SaveImage", {"filename_prefix": "ld3/demo_compare"}, size=COMPARE_PREVIEW),
        Node("report", "PreviewAny", title="Report (RMSE to the teacher)", size=(600, 360)),
        Node("teacher_report", "PreviewAny", title="Teacher check", size=(460, 260)),
        _verdict(),
    ]
    links = [
        ("model", "model", "teacher", "model"),
        ("model", "positive", "teacher", "positive"),
        ("model", "negative", "teacher", "negative"),
        ("model", "latent", "teacher", "latent"),
        ("model", "model", "train", "model"),
        ("teacher", "teacher", "train", "teacher"),
        ("train", "plot", "plot", "images"),
        ("train", "report", "verdict", "source"),
        ("model", "model", "heldout", "model"),
        ("model", "positive", "heldout", "positive"),
        ("model", "negative", "heldout", "negative"),
        ("model", "latent", "heldout", "latent"),
        ("train", "model", "compare", "model"),
        ("heldout", "teacher", "compare", "teacher"),
        ("train", "sigmas", "compare", "sigmas"),
        ("compare", "image", "save_compare", "images"),
        ("compare", "report", "report", "source"),
        ("teacher", "report", "teacher_report", "source"),
    ]
    columns = [
        ["note", "model"],
        ["teacher", "teacher_report"],
        ["train", "verdict"],
        ["heldout", "compare", "report"],
    ]
    outputs = Band([["plot"], ["save_compare"]], under="teacher")
    return Workflow("ld3_demo", nodes, links, columns, bands=[outputs])


ALL = (sd15_train, flux_train, sd15_use_saved, sd15_retrain, flux_use_saved, demo)

# Runs in the page: build the graph from the spec with the frontend's own LiteGraph, lay it out.
BUILD_JS = """
async (spec) => {
  const graph = app.graph;
  graph.clear();
  const made = {};
  for (const s of spec.nodes) {
    const node = LiteGraph.createNode(s.type);
    if (!node) throw new Error(`unknown node type ${s.type}`);
    if (s.title) node.title = s.title;
    graph.add(node);
    for (const w of node.widgets || []) {
      if (w.name === "control_after_generate") w.value = "fixed";  // reproducible seeds
    }
    for (const [name, value] of Object.entries(s.widgets || {})) {
      const w = (node.widgets || []).find((w) => w.name === name);
      if (!w) throw new Error(`${s.type} has no widget ${name}`);
      w.value = value;
    }
    const min = node.computeSize();
    if (s.size) node.setSize([Math.max(s.size[0], min[0]), Math.max(s.size[1], min[1])]);
    else if (s.grow) node.setSize([min[0] + s.grow[0], min[1] + s.grow[1]]);
    else node.setSize(min);
    made[s.key] = node;
  }
  for (const [src, out, dst, inp] of spec.links) {
    const a = made[src], b = made[dst];
    const o = a.findOutputSlot(out), i = b.findInputSlot(inp);
    if (o < 0) throw new Error(`${a.type} has no output ${out}`);
    if (i < 0) throw new Error(`${b.type} has no input ${inp}`);
    if (!a.connect(o, b, i)) throw new Error(`cannot connect ${src}.${out} -> ${dst}.${inp}`);
  }
  const title = LiteGraph.NODE_TITLE_HEIGHT;
  let top = 0, bottom = 0;
  for (const band of spec.bands) {
    let x = band.under ? made[band.under].pos[0] : 0;
    for (const column of band.columns) {
      let y = top, width = 0;
      for (const key of column) {
        const node = made[key];
        node.pos = [x, y + title];
        y += node.size[1] + title + 40;
        width = Math.max(width, node.size[0]);
      }
      bottom = Math.max(bottom, y);
      x += width + 70;
    }
    top = bottom + 90;  // room for a group's title above the next band
  }
  for (const [name, keys] of spec.groups) {
    const group = new LiteGraph.LGraphGroup(name);
    const pad = 15;
    const nodes = keys.map((k) => made[k]);
    const x0 = Math.min(...nodes.map((n) => n.pos[0])) - pad;
    const y0 = Math.min(...nodes.map((n) => n.pos[1] - title)) - pad - 45;
    const x1 = Math.max(...nodes.map((n) => n.pos[0] + n.size[0])) + pad;
    const y1 = Math.max(...nodes.map((n) => n.pos[1] + n.size[1])) + pad;
    group.pos = [x0, y0];
    group.size = [x1 - x0, y1 - y0];
    graph.add(group);
  }
  graph.setDirtyCanvas(true, true);
  const broken = graph.nodes.filter((n) => n.has_errors).map((n) => n.type);
  if (broken.length) throw new Error(`nodes with errors: ${broken}`);
}
"""

# What Workflow > Export (UI) and Export (API) write in frontend 1.32.9 (exportWorkflow).
EXPORT_JS = """
async () => {
  const prompt = await app.graphToPrompt();
  const { offset, scale } = app.canvas.ds;
  prompt.workflow.extra ??= {};
  prompt.workflow.extra.ds = { scale, offset: [offset[0], offset[1]] };
  // The file text itself: JSON.stringify drops undefined fields, which a Python round trip would keep.
  return { workflow: JSON.stringify(prompt.workflow, null, 2), api: JSON.stringify(prompt.output, null, 2) };
}
"""

# The graph's bounds in canvas units, title bars and groups included: a statement that defines x0, y0,
# x1, y1 at the top of a page function (FIT_JS here, BOUNDS_JS and PLACE_JS in scripts/screenshots.py).
GRAPH_BOUNDS_JS = """
  const items = [...app.graph.nodes, ...(app.graph.groups || [])];
  const title = LiteGraph.NODE_TITLE_HEIGHT;
  const x0 = Math.min(...items.map((n) => n.pos[0])), y0 = Math.min(...items.map((n) => n.pos[1] - title));
  const x1 = Math.max(...items.map((n) => n.pos[0] + n.size[0]));
  const y1 = Math.max(...items.map((n) => n.pos[1] + n.size[1]));
"""

# Fit the whole graph in the viewport (used for the thumbnail and for the saved view).
FIT_JS = (
    "() => {"
    + GRAPH_BOUNDS_JS
    + """
  app.canvas.ds.fitToBounds([x0 - 20, y0 - 20, x1 - x0 + 40, y1 - y0 + 40], { zoom: 0.98 });
  app.canvas.show_info = false;
  app.graph.setDirtyCanvas(true, true);
  // The graph's box on the page, for cropping the screenshot.
  const [cx0, cy0] = app.canvas.ds.convertOffsetToCanvas([x0 - 20, y0 - 20]);
  const [cx1, cy1] = app.canvas.ds.convertOffsetToCanvas([x1 + 20, y1 + 20]);
  const rect = app.canvas.canvas.getBoundingClientRect();
  return { x: Math.max(0, rect.left + cx0), y: Math.max(0, rect.top + cy0), width: cx1 - cx0, height: cy1 - cy0 };
}
"""
)

# Everything but the canvas and its DOM widgets: menus, tabs, side bar, minimap, toasts.
HIDE_CHROME_CSS = (
    ".splitter-overlay-root, .p-toast, .comfyui-body-top, .comfyui-body-bottom { display: none !important; }"
)


def start_comfyui(workdir: Path, extra_args=()) -> tuple[subprocess.Popen, str]:
    """The development ComfyUI on a free port, with throwaway output/input/temp/user folders."""
    port = comfy_launch.free_port()
    dirs = comfy_launch.prepare_folders(workdir)
    python = str(ROOT / ".venv" / "bin" / "python")
    command = comfy_launch.comfyui_command(python, COMFYUI_DIR, port, dirs, extra_args)
    log = open(workdir / "comfyui.log", "wb")  # stays open as long as the server runs
    process = subprocess.Popen(command, cwd=COMFYUI_DIR, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    failed = comfy_launch.wait_until_up(url, process, 120)
    if failed:
        comfy_launch.stop(process)
        raise SystemExit(f"{failed}; see {workdir / 'comfyui.log'}")
    return process, url


def thumbnail(png: bytes, out_dir: Path, name: str) -> None:
    """Resize a screenshot to THUMBNAIL_WIDTH and save it as <name>.png and <name>.jpg."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    height = round(image.height * THUMBNAIL_WIDTH / image.width)
    image = image.resize((THUMBNAIL_WIDTH, height), Image.LANCZOS)
    image.save(out_dir / f"{name}.png", optimize=True)
    image.save(out_dir / f"{name}.jpg", quality=85, optimize=True)


def _clip(box: dict) -> dict:
    x, y = max(0, box["x"]), max(0, box["y"])
    width = min(box["width"], VIEWPORT["width"] - x)
    height = min(box["height"], VIEWPORT["height"] - y)
    return {"x": x, "y": y, "width": width, "height": height}


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def build(url: str, workflows, out_dir: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(url + "/", wait_until="domcontentloaded")
            page.wait_for_function("() => window.app?.graph?.nodes?.length > 0", timeout=120_000)
            page.wait_for_timeout(1000)
            for make in workflows:
                workflow = make()
                page.evaluate(BUILD_JS, workflow.spec())
                page.evaluate(FIT_JS)  # the saved view shows the whole graph
                result = page.evaluate(EXPORT_JS)
                write_text(out_dir / f"{workflow.name}.json", result["workflow"])
                write_text(out_dir / "api" / f"{workflow.name}.json", result["api"])
                ui, api = json.loads(result["workflow"]), json.loads(result["api"])
                # The thumbnail shows the saved file as the frontend loads it.
                page.evaluate("async (wf) => { await app.loadGraphData(wf); }", ui)
                box = page.evaluate(FIT_JS)
                page.add_style_tag(content=HIDE_CHROME_CSS)
                page.wait_for_timeout(800)
                thumbnail(page.screenshot(clip=_clip(box)), out_dir, workflow.name)
                print(f"build_workflows: {workflow.name}: {len(ui['nodes'])} nodes, {len(api)} in API form")
        finally:
            browser.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running ComfyUI with this pack (default: start one)")
    parser.add_argument("--only", nargs="*", help="workflow names to build (default: all)")
    parser.add_argument("--out", type=Path, default=WORKFLOWS, help="output folder (default: workflows/)")
    args = parser.parse_args(argv)
    chosen = [make for make in ALL if not args.only or make().name in args.only]
    if args.url:
        build(args.url.rstrip("/"), chosen, args.out)
        return 0
    with tempfile.TemporaryDirectory(prefix="ld3_build_workflows_") as tmp:
        process, url = start_comfyui(Path(tmp))
        try:
            build(url, chosen, args.out)
        finally:
            comfy_launch.stop(process)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
