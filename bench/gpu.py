"""GPU benchmark: the paper's recipe end to end on SD1.5- and Flux-architecture models, against FLOP floors.

    python bench/gpu.py --part sd15 --out DIR     # SD1.5 UNet (random, fp16, 512x512, CFG), VAE + LPIPS
    python bench/gpu.py --part flux --out DIR     # Flux-dev width (random, bf16, 1024x1024), L2
    python bench/gpu.py --merge DIR...            # -> bench/results/gpu.json (read by bench/report.py)
    python bench/gpu.py --part sd15 --smoke       # tiny models, a few samples: checks the code on any device

Both parts run through the pack's public API exactly as the nodes do (``generate_teacher`` then
``learn_schedule``), time it, and compare with a floor = the FLOPs that work must do / the card's bf16
matrix rate measured in the same run. Weights are random (no checkpoints can be downloaded), so the
figures are about speed and memory, not image quality.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import env
from bench.cost import FLOOR_PER_NFE
from bench.iteration import iteration_ratios

# comfy/model_detection.py's SD15 UNet config (dtype set separately).
SD15_UNET = {
    "use_checkpoint": False,
    "image_size": 32,
    "out_channels": 4,
    "use_spatial_transformer": True,
    "legacy": False,
    "adm_in_channels": None,
    "in_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "channel_mult": [1, 2, 4, 4],
    "transformer_depth_middle": 1,
    "use_linear_in_transformer": False,
    "context_dim": 768,
    "num_heads": 8,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}
# Flux-dev (comfy/model_detection.py for a flux-dev checkpoint).
FLUX_DEV = {
    "image_model": "flux",
    "in_channels": 16,
    "out_channels": 16,
    "patch_size": 2,
    "vec_in_dim": 768,
    "context_in_dim": 4096,
    "hidden_size": 3072,
    "mlp_ratio": 4.0,
    "num_heads": 24,
    "depth": 19,
    "depth_single_blocks": 38,
    "axes_dim": [16, 56, 56],
    "theta": 10000,
    "qkv_bias": True,
    "guidance_embed": True,
}
# FLOPs per forward (from the issue): SD1.5 UNet at a 64x64 latent, batch 1; SD VAE decode at 512^2;
# Flux-dev at 1024^2 (4096 image + 512 text tokens), all 19 + 38 blocks.
SD15_UNET_TFLOP = 0.80
SD_VAE_DECODE_TFLOP = 2.5
FLUX_TFLOP = 74.4
SD15_FLOOR_RANGE = (14.0, 21.0)  # the floor for the SD1.5 recipe on an H100, seconds


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matmul_rate(dtype_name: str = "bfloat16", n: int = 8192, repeats: int = 10) -> float:
    """Measured dense matmul rate of this card in TFLOP/s (random data, median of timed products)."""
    import torch

    if not torch.cuda.is_available():
        return math.nan
    dtype = getattr(torch, dtype_name)
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del a, b
    return 2 * n**3 / statistics.median(times) / 1e12


def _init_(module, seed: int) -> None:
    """Fan-in scaled normal weights, unit norm scales, zero biases; drawn on the weights' device."""
    import torch

    gen = None
    with torch.no_grad():
        for name, param in module.named_parameters():
            if gen is None or gen.device != param.device:
                gen = torch.Generator(device=param.device).manual_seed(seed)
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "bias":
                param.zero_()
            elif param.ndim <= 1:
                param.fill_(1.0)
            else:
                noise = torch.randn(param.shape, generator=gen, device=param.device, dtype=torch.float32)
                param.copy_(noise / math.sqrt(param[0].numel()))


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_sd15(smoke: bool):
    """SD1.5-architecture UNet (real config unless smoke), fp16 on a GPU, random weights; its random VAE."""
    import comfy.model_patcher
    import comfy.sd
    import comfy.supported_models
    import torch
    from comfy.ldm.models.autoencoder import AutoencoderKL

    dev = _device()
    if smoke:
        from tiny_models import TINY_SD15_UNET

        unet = dict(TINY_SD15_UNET)
    else:
        unet = dict(SD15_UNET)
    config = comfy.supported_models.SD15(unet)
    if smoke:
        config.unet_config["num_heads"] = 2
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    config.set_inference_dtype(dtype, None)
    model = config.get_model({}, device=dev)
    _init_(model.diffusion_model, 0)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=dev, offload_device=torch.device("cpu"))
    ddconfig = {
        "double_z": True,
        "z_channels": 4,
        "resolution": 256,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 32 if smoke else 128,
        "ch_mult": [1, 1, 1, 1] if smoke else [1, 2, 4, 4],
        "num_res_blocks": 1 if smoke else 2,
        "attn_resolutions": [],
        "dropout": 0.0,
    }
    params = {"embed_dim": 4, "ddconfig": ddconfig}
    vae_module = AutoencoderKL(**params)
    _init_(vae_module, 3)
    vae = comfy.sd.VAE(sd=vae_module.state_dict(), config={"params": params} if smoke else None)
    return patcher, vae


def build_flux(smoke: bool, depth_scale: float = 1.0):
    """Flux-dev-width DiT (random, bf16 on a GPU); depth reduced by depth_scale if memory needs it."""
    import comfy.model_patcher
    import comfy.supported_models
    import torch

    dev = _device()
    if smoke:
        from tiny_models import TINY_FLUX_DIT

        dit = dict(TINY_FLUX_DIT)
    else:
        dit = dict(FLUX_DEV)
        dit["depth"] = max(1, round(dit["depth"] * depth_scale))
        dit["depth_single_blocks"] = max(1, round(dit["depth_single_blocks"] * depth_scale))
    config = comfy.supported_models.Flux(dit)
    config.set_inference_dtype(torch.bfloat16 if dev.type == "cuda" else torch.float32, None)
    model = config.get_model({}, device=dev)
    _init_(model.diffusion_model, 2)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=dev, offload_device=torch.device("cpu"))
    return patcher, dit


def _conds(kind: str, prompts: int, smoke: bool, cfg: float):
    import torch

    from ld3_core.comfyui.adapter import Conditioning

    gen = torch.Generator().manual_seed(11)
    if kind == "sd15":
        width = 32 if smoke else 768
        negative = [[torch.randn((1, 77, width), generator=gen), {}]]
        return [
            Conditioning([[torch.randn((1, 77, width), generator=gen), {}]], negative, cfg)
            for _ in range(prompts)
        ]
    tokens, width, pooled = (16, 32, 32) if smoke else (512, 4096, 768)
    out = []
    for _ in range(prompts):
        extra = {"pooled_output": torch.randn((1, pooled), generator=gen), "guidance": 3.5}
        cond = [[torch.randn((1, tokens, width), generator=gen), extra]]
        out.append(Conditioning(cond, cond, cfg))
    return out


def _memory():
    import torch

    if not torch.cuda.is_available():
        return {}
    return {
        "max_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
        "max_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
    }


def _reset_peak():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def run_part(
    part: str,
    smoke: bool,
    out_dir: Path,
    samples: int,
    epochs: tuple[int, int],
    nfe: int,
    base: dict,
    depth_scale: float = 1.0,
) -> dict:
    """One model: plain call, iteration split, memory by NFE, teacher vs stock, then the recipe."""
    import comfy.model_management
    import comfy.sample
    import torch

    from bench.iteration import InstrumentedIteration, median_parts, time_call
    from ld3_core import api
    from ld3_core.comfyui.adapter import sample_stock
    from ld3_core.losses import make_loss
    from ld3_core.teacher import generate_teacher, schedule_sigmas, start_noise
    from ld3_core.trainer import TrainConfig

    result: dict = {**base, "part": part, "smoke": smoke}
    out_path = out_dir / f"gpu_{part}.json"

    def save():
        out_path.write_text(json.dumps(result, indent=1))

    dev = _device()
    started = time.perf_counter()
    if part == "sd15":
        patcher, vae = build_sd15(smoke)
        shape = (4, 8, 8) if smoke else (4, 64, 64)
        conds = _conds("sd15", 5, smoke, 7.5)
        scheduler, loss_kind = "karras", "lpips"
        call_tflop = 2 * SD15_UNET_TFLOP  # CFG: conditional + unconditional in one batch of 2
        loss_tflop = SD_VAE_DECODE_TFLOP
        result["model"] = "SD1.5 UNet (comfy SD15 config), fp16, 512x512 (64x64 latent), CFG 7.5 (batch 2)"
    else:
        patcher, dit = build_flux(smoke, depth_scale)
        vae = None
        shape = (16, 8, 8) if smoke else (16, 128, 128)
        conds = _conds("flux", 2, smoke, 1.0)
        scheduler, loss_kind = "simple", "l2"
        depth_fraction = (dit["depth"] * 2 + dit["depth_single_blocks"]) / (19 * 2 + 38)
        call_tflop = FLUX_TFLOP * depth_fraction
        loss_tflop = 0.0
        result["model"] = (
            f"Flux-dev width (hidden 3072, 24 heads), {dit['depth']} double + {dit['depth_single_blocks']} "
            "single blocks, bf16, 1024x1024 (128x128 latent), guidance 3.5, no CFG"
        )
    result["call_tflop"] = call_tflop
    comfy.model_management.load_models_gpu([patcher])
    result["build_s"] = time.perf_counter() - started
    result["weights_gib"] = patcher.model_size() / 2**30
    _log(f"{part}: built in {result['build_s']:.1f} s, weights {result['weights_gib']:.2f} GiB")
    lpips_path = str(env.LPIPS_WEIGHTS)
    loss = make_loss(loss_kind, vae=vae, lpips_weights=lpips_path, device=dev)
    cond = conds[0]

    # 1. One plain denoiser call: the stock sampler over NFE steps, batch 1, divided by NFE.
    sigmas = schedule_sigmas(patcher, scheduler, nfe, "dpmpp_2m")
    noise = start_noise(shape, 5, 1)
    plain = time_call(lambda: sample_stock(patcher, cond, "dpmpp_2m", sigmas, noise), 3, dev) / nfe
    result["plain_call_s"] = plain
    _log(f"{part}: plain call {plain * 1e3:.1f} ms")
    save()

    # 2. Instrumented iterations (time split) at the recipe's NFE.
    targets = sample_stock(
        patcher, cond, "dpmpp_2m", schedule_sigmas(patcher, scheduler, 10, "dpmpp_2m"), noise
    )
    targets = targets.float().cpu()
    loss_nograd = 0.0
    if loss_kind == "lpips":
        prepared = loss.prepare(targets)
        with torch.no_grad():
            loss_nograd = time_call(lambda: loss(targets + 0.1, prepared), 3, dev)
    it = InstrumentedIteration(patcher, cond, "dpmpp_2m", sigmas, noise, targets, loss, device=dev)
    it.run()
    parts = median_parts([it.run() for _ in range(3)])
    result["iteration"] = {
        "nfe": nfe,
        "parts_s": parts,
        "loss_forward_nograd_s": loss_nograd,
        **iteration_ratios(parts, nfe, loss_nograd),
    }
    del it
    _log(
        f"{part}: iteration {parts['total']:.3f} s = {result['iteration']['iteration_over_floor']:.2f} x its floor"
    )
    save()

    # 3. Peak memory of one iteration by NFE.
    memory = []
    for n in (4, 6, 8, 10):
        comfy.model_management.soft_empty_cache()
        sig_n = schedule_sigmas(patcher, scheduler, n, "dpmpp_2m")
        it = InstrumentedIteration(patcher, cond, "dpmpp_2m", sig_n, noise, targets, loss, device=dev)
        it.run()
        _reset_peak()
        base = torch.cuda.memory_allocated() / 2**30 if dev.type == "cuda" else 0.0
        it.run()
        memory.append({"nfe": n, "base_gib": base, **_memory()})
        del it
    for m in memory:
        m["over_nfe4"] = m.get("max_allocated_gib", math.nan) / memory[0].get("max_allocated_gib", math.nan)
    result["memory"] = memory
    _log(f"{part}: memory {[round(m.get('max_allocated_gib', 0), 2) for m in memory]} GiB")
    save()

    # 4. Teacher generation against ComfyUI's KSampler path (comfy.sample.sample), same batches.
    count, batch = (4, 2) if part == "flux" else (8, 4)
    t_noise = start_noise(shape, 0, count)

    def ours():
        generate_teacher(patcher, [cond], shape, count, 0, "dpmpp_2m", scheduler, 10, batch)

    def stock():
        for i in range(0, count, batch):
            chunk = t_noise[i : i + batch]
            comfy.sample.sample(
                patcher,
                chunk,
                10,
                cond.cfg,
                "dpmpp_2m",
                scheduler,
                cond.positive,
                cond.negative,
                torch.zeros_like(chunk),
                disable_pbar=True,
                seed=0,
            )

    ours(), stock()
    t_ours, t_stock = [], []
    for _ in range(2):
        for fn, sink in ((ours, t_ours), (stock, t_stock)):
            _sync()
            t0 = time.perf_counter()
            fn()
            _sync()
            sink.append(time.perf_counter() - t0)
    result["teacher_vs_stock"] = {
        "count": count,
        "steps": 10,
        "batch": batch,
        "teacher_s": min(t_ours),
        "stock_s": min(t_stock),
        "ratio": min(t_ours) / min(t_stock),
    }
    _log(f"{part}: teacher / stock = {result['teacher_vs_stock']['ratio']:.3f}")
    save()

    # 5. The recipe end to end: teacher (10 NFE), then learn_schedule (phase 1 + phase 2).
    comfy.model_management.soft_empty_cache()
    _reset_peak()
    t0 = time.perf_counter()
    teacher = generate_teacher(
        patcher, conds, shape, samples, 0, "dpmpp_2m", scheduler, 10, batch_size=4 if part == "sd15" else 2
    )
    _sync()
    teacher_s = time.perf_counter() - t0
    stamps = []

    def on_progress(p):
        stamps.append((time.perf_counter(), p.epoch, p.train_loss is not None))

    config = TrainConfig(steps=nfe, batch_size=1, epochs_phase1=epochs[0], epochs_phase2=epochs[1])
    t1 = time.perf_counter()
    learned = api.learn_schedule(patcher, teacher, conds, "dpmpp_2m", config, loss, on_progress=on_progress)
    _sync()
    train_s = time.perf_counter() - t1
    n_train, n_val = len(teacher.train_indices), len(teacher.validation_indices)
    first = stamps[0][0] if stamps else t1
    # candidates + loss.prepare happen before the first iteration finishes; approximate with one iteration.
    iteration_gaps = [b[0] - a[0] for a, b in zip(stamps, stamps[1:]) if a[2] and b[2] and a[1] == b[1]]
    iteration_s = statistics.median(iteration_gaps) if iteration_gaps else math.nan
    n_cand = len(learned.candidate_losses)
    epochs_total = epochs[0] + epochs[1]
    iters = epochs_total * n_train
    # FLOPs the recipe must do (TFLOP): teacher; the loss's one-off decode of the teacher endpoints;
    # candidate evaluation and the per-epoch hard validation (no grad: 1 forward); training iterations
    # (forward, recompute and input-only backward: 3.2 forwards); VAE decode + LPIPS inside each.
    tflop = {
        "teacher": samples * 10 * call_tflop,
        "prepare_targets": samples * loss_tflop,
        "candidates": n_cand * n_val * (nfe * call_tflop + loss_tflop),
        "training": iters * FLOOR_PER_NFE * (nfe * call_tflop + loss_tflop),
        "validation": epochs_total * n_val * (nfe * call_tflop + loss_tflop),
    }
    total_tflop = sum(tflop.values())
    total_s = teacher_s + train_s
    result["recipe"] = {
        "samples": samples,
        "train": n_train,
        "validation": n_val,
        "epochs": list(epochs),
        "nfe": nfe,
        "teacher_nfe": 10,
        "batch_size": 1,
        "candidates": n_cand,
        "initial_scheduler": learned.initial_scheduler,
        "teacher_s": teacher_s,
        "learn_s": train_s,
        "total_s": total_s,
        "before_first_iteration_s": first - t1,
        "median_iteration_s": iteration_s,
        "tflop": tflop,
        "total_tflop": total_tflop,
        "validation_curve": learned.validation_curve,
        "best_validation_loss": learned.best_validation_loss,
        "initial_validation_loss": learned.initial_validation_loss,
        **_memory(),
    }
    result["recipe_tflop"] = total_tflop
    _log(
        f"{part}: recipe {total_s:.1f} s ({teacher_s:.1f} teacher + {train_s:.1f} learn), {total_tflop:.0f} TFLOP"
    )
    save()
    return result


def environment() -> dict:
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "comfyui": (env.COMFYUI_DIR / "comfyui_version.py").read_text().split('"')[1],
    }
    try:
        info["nvidia_smi"] = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                "--format=csv,noheader",
            ],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def _call_tflop(part: dict) -> float:
    if "call_tflop" in part:
        return part["call_tflop"]
    if part["part"] == "sd15":
        return 2 * SD15_UNET_TFLOP
    match = re.search(r"(\d+) double \+ (\d+) single", part.get("model", ""))
    double, single = (int(match.group(1)), int(match.group(2))) if match else (19, 38)
    return FLUX_TFLOP * (2 * double + single) / (2 * 19 + 38)


def summarise(parts: list[dict], commands: list[str], notes: list[str]) -> dict:
    """Merge the parts into gpu.json: figures, floors, targets and the markdown BENCHMARKS.md shows."""
    out = {"parts": parts, "commands": commands, "markdown": [], "targets": []}
    md = out["markdown"]
    if parts:
        e = parts[0].get("environment", {})
        md += [
            f"Device: {e.get('device')} ({e.get('nvidia_smi', 'driver not recorded')}); torch {e.get('torch')} "
            f"(CUDA {e.get('cuda')}), ComfyUI {e.get('comfyui')}, python {e.get('python')}. Random weights.",
            "",
        ]
    md += [
        "| model | bf16 matmul TFLOP/s | plain denoiser call | call / its FLOP floor | stock sampler per NFE (calls) "
        "| iteration / (NFE x call) | iteration / floor | teacher / stock |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in parts:
        if "iteration" not in p:
            continue
        rate = p.get("bf16_tflops", math.nan)
        it = p["iteration"]
        r = iteration_ratios(it["parts_s"], it["nfe"], it.get("loss_forward_nograd_s", 0.0))
        it.update({"ratios": r})
        call = r["denoiser_call_s"]
        call_floor = _call_tflop(p) / rate
        p["plain_call_over_flop_floor"] = call / call_floor
        md.append(
            f"| {p['part']} | {rate:.0f} | {call * 1e3:.1f} ms | {call / call_floor:.1f} ({call_floor * 1e3:.1f} ms) "
            f"| {p['plain_call_s'] / call:.2f} | {r['iteration_over_unit']:.2f} | **{r['iteration_over_floor']:.2f}** "
            f"| {p['teacher_vs_stock']['ratio']:.3f} |"
        )
        out["targets"].append(
            {
                "target": f"GPU iteration <= 1.3 x floor: {p['part']} NFE {it['nfe']}",
                "measured": f"{r['iteration_over_floor']:.2f} x",
                "ok": r["iteration_over_floor"] <= 1.3,
            }
        )
        out["targets"].append(
            {
                "target": f"GPU teacher <= 1.05 x stock: {p['part']}",
                "measured": f"{p['teacher_vs_stock']['ratio']:.3f} x",
                "ok": p["teacher_vs_stock"]["ratio"] <= 1.05,
            }
        )
    md += [
        "",
        "Plain denoiser call = the no-grad call inside the iteration's checkpointed forward (ComfyUI's",
        "APPLY_MODEL); floor = 3.2 such calls per NFE (+ 3.2 x no-grad VAE decode + LPIPS for SD1.5).",
        "",
        "Iteration parts (seconds, median of 3 instrumented iterations, batch 1):",
        "",
    ]
    for p in parts:
        if "iteration" in p:
            parts_s = p["iteration"]["parts_s"]
            md.append(
                f"- {p['part']} NFE {p['iteration']['nfe']}: "
                + ", ".join(f"{k} {v:.3f}" for k, v in parts_s.items() if not k.startswith("calls"))
            )
    md += [
        "",
        "Peak memory of one iteration (`torch.cuda.max_memory_allocated`, batch 1); 'before' = allocated",
        "just before the iteration (weights and everything else resident):",
        "",
        "| model | weights GiB | before GiB | peak GiB NFE 4 / 6 / 8 / 10 | NFE 10 / NFE 4 | per-call activations GiB |",
        "|---|---|---|---|---|---|",
    ]
    for p in parts:
        mem = p.get("memory", [])
        if not mem:
            continue
        peaks = " / ".join(f"{m.get('max_allocated_gib', math.nan):.2f}" for m in mem)
        md.append(
            f"| {p['part']} | {p.get('weights_gib', math.nan):.2f} | {mem[0]['base_gib']:.2f} | {peaks} "
            f"| {mem[-1]['over_nfe4']:.4f} | {mem[-1]['max_allocated_gib'] - mem[-1]['base_gib']:.2f} |"
        )
        out["targets"].append(
            {
                "target": f"GPU memory NFE 10 <= 1.15 x NFE 4: {p['part']}",
                "measured": f"{mem[-1]['over_nfe4']:.4f} x ({peaks} GiB)",
                "ok": mem[-1]["over_nfe4"] <= 1.15,
            }
        )
    md += [
        "",
        "The recipe end to end (`generate_teacher` + `api.learn_schedule`, batch 1, as the nodes run it):",
        "",
        "| model | samples (train / val) | epochs | NFE | wall s: teacher + learn | before 1st iteration s "
        "| median iteration s | TFLOP | floor s | wall / floor | peak GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in parts:
        r = p.get("recipe")
        if not r:
            continue
        floor = r["total_tflop"] / p.get("bf16_tflops", math.nan)
        r["floor_s"], r["wall_over_floor"] = floor, r["total_s"] / floor
        md.append(
            f"| {p['part']} | {r['samples']} ({r['train']} / {r['validation']}) | {r['epochs'][0]} + {r['epochs'][1]} "
            f"| {r['nfe']} | {r['total_s']:.1f} = {r['teacher_s']:.1f} + {r['learn_s']:.1f} "
            f"| {r['before_first_iteration_s']:.1f} | {r['median_iteration_s']:.3f} | {r['total_tflop']:.0f} "
            f"| {floor:.1f} | **{r['total_s'] / floor:.1f}** | {r.get('max_allocated_gib', math.nan):.1f} |"
        )
        if p["part"] == "sd15":
            out["targets"].append(
                {
                    "target": "GPU SD1.5 recipe within 2 x its floor",
                    "measured": f"{r['total_s']:.0f} s against a floor of {floor:.1f} s "
                    f"(issue: {SD15_FLOOR_RANGE[0]:.0f}-{SD15_FLOOR_RANGE[1]:.0f} s): {r['total_s'] / floor:.1f} x",
                    "ok": r["total_s"] <= 2 * floor,
                }
            )
    md += [""]
    for p in parts:
        md.append(f"- {p['part']}: {p.get('model', '')}; weights {p.get('weights_gib', math.nan):.1f} GiB.")
    md += [
        "",
        "Floor = the work's FLOPs (" + _floor_words() + ") / the bf16 matmul rate measured in the same run.",
        "",
    ]
    md += notes
    md += ["", "Commands (on the device, from the repository root):", ""] + [f"    {c}" for c in commands]
    return out


def _floor_words() -> str:
    return (
        f"SD1.5 UNet {SD15_UNET_TFLOP} TFLOP per forward and sample, x2 for CFG; SD VAE decode "
        f"{SD_VAE_DECODE_TFLOP} TFLOP at 512^2; Flux-dev {FLUX_TFLOP} TFLOP per forward at 1024^2; "
        f"teacher 10 NFE; candidates and the hard validation as the trainer runs them (no grad); training "
        f"at {FLOOR_PER_NFE} forwards per NFE. GPU runs before the soft-validation pass was dropped counted it "
        f"at {FLOOR_PER_NFE} forwards per NFE too"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("sd15", "flux"))
    parser.add_argument("--out", type=Path, default=env.BENCH_DIR / "out")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--samples", type=int, help="teacher pairs (half validation)")
    parser.add_argument("--epochs", type=int, nargs=2, help="phase 1, phase 2 epochs")
    parser.add_argument("--depth-scale", type=float, default=1.0, help="Flux: fraction of its blocks kept")
    parser.add_argument("--merge", type=Path, nargs="*", help="merge gpu_*.json from these folders")
    parser.add_argument("--notes", type=Path, help="markdown lines added to the GPU section (with --merge)")
    parser.add_argument("--commands", type=Path, help="the exact device commands, one a line (with --merge)")
    args = parser.parse_args(argv)

    if args.merge is not None:
        parts = [
            json.loads(path.read_text())
            for folder in args.merge
            for path in sorted(folder.glob("gpu_*.json"))
        ]
        commands = (
            args.commands.read_text().splitlines() if args.commands else [p.get("command", "") for p in parts]
        )
        notes = args.notes.read_text().splitlines() if args.notes else []
        merged = summarise(parts, commands, notes)
        env.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        (env.RESULTS_DIR / "gpu.json").write_text(json.dumps(merged, indent=1))
        print("\n".join(merged["markdown"]))
        return 0

    import torch

    # On a CPU (smoke runs) one thread: several threads on a busy machine are many times slower.
    env.bootstrap(cpu=not torch.cuda.is_available(), threads=None if torch.cuda.is_available() else 1)
    args.out.mkdir(parents=True, exist_ok=True)
    defaults = {"sd15": (50, (2, 3), 6), "flux": (8, (1, 1), 8)}
    samples, epochs, nfe = defaults[args.part]
    samples = args.samples or (6 if args.smoke else samples)
    epochs = tuple(args.epochs or ((1, 1) if args.smoke else epochs))
    rate = matmul_rate() if not args.smoke else math.nan
    _log(f"bf16 matmul {rate:.0f} TFLOP/s")
    base = {"environment": environment(), "bf16_tflops": rate}
    base["command"] = " ".join(["python", "bench/gpu.py", *(argv if argv is not None else sys.argv[1:])])
    result = run_part(args.part, args.smoke, args.out, samples, epochs, nfe, base, args.depth_scale)
    result["recipe"]["floor_s"] = result["recipe_tflop"] / rate if rate == rate else math.nan
    (args.out / f"gpu_{args.part}.json").write_text(json.dumps(result, indent=1))
    _log(f"wrote {args.out / f'gpu_{args.part}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
