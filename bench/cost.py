"""Cost and memory on the CPU: iteration time against its floor, teacher against stock, peak memory by NFE.

Everything is a ratio of two figures measured side by side in this one process:
- iteration / (NFE x one plain denoiser call), split into forward, recompute, backward, VAE + LPIPS and
  optimiser; the floor is forward + recompute + input-only backward = 3.2 plain calls per NFE (plus
  3.2 x a no-grad VAE decode + LPIPS where the loss is LPIPS);
- the real trainer's iteration (``api.learn_schedule``, timed through its progress callback);
- ``generate_teacher`` against ComfyUI's KSampler path (``comfy.sample.sample``) on the same batches;
- peak allocated memory of one iteration at NFE 4, 6, 8, 10 (torch profiler, CPU allocations);
- an iteration with frozen weights (what LD3 does) against one whose weights require grad (what it did
  before ``weights_as_constants`` froze them: every backward also made a gradient per weight).
"""

from __future__ import annotations

import statistics
import time

import torch

FLOOR_PER_NFE = 3.2  # forward + recompute + input-only backward, in plain forwards


def _cell(name: str, sampler: str, nfe: int, loss_kind: str, batch: int) -> dict:
    """The keys that name a measurement's cell."""
    return {"model": name, "sampler": sampler, "nfe": nfe, "loss": loss_kind, "batch": batch}


COST_CASES = (
    # model, sampler, NFE, loss, batch
    ("tiny-sd15-eps", "dpmpp_2m", 6, "lpips", 2),
    ("tiny-sd15-eps", "dpmpp_2m", 6, "l2", 2),
    ("tiny-flux", "dpmpp_2m", 8, "l2", 2),
    ("mix-eps-4x16x16", "dpmpp_2m", 6, "l2", 2),
)
# model, sampler, loss, also without checkpointing (Flux cannot: its in-place residuals need the
# adapter's clone-on-save hook, which only the checkpointed path installs)
MEMORY_CASES = (("tiny-sd15-eps", "dpmpp_2m", "lpips", True), ("tiny-flux", "dpmpp_2m", "l2", False))
MEMORY_NFES = (4, 6, 8, 10)


def _loss(bm, kind: str):
    from bench import env
    from ld3_core.losses import make_loss

    return make_loss(kind, vae=bm.vae, lpips_weights=str(env.LPIPS_WEIGHTS))


def _init_sigmas(bm, sampler: str, steps: int) -> torch.Tensor:
    from ld3_core.teacher import schedule_sigmas

    return schedule_sigmas(bm.patcher, "karras" if bm.family == "sd1" else "simple", steps, sampler)


def _setup(bm, sampler: str, loss_kind: str, batch: int):
    """Loss object, unit noise and teacher endpoints (20 steps) for the cost and memory cases."""
    from ld3_core.comfyui.adapter import sample_stock
    from ld3_core.teacher import start_noise

    noise = start_noise(bm.latent_shape, 7, batch)
    targets = sample_stock(bm.patcher, bm.cond, sampler, _init_sigmas(bm, sampler, 20), noise).float().cpu()
    return _loss(bm, loss_kind), noise, targets


def _iteration(bm, sampler, nfe, setup, checkpoint=True):
    from bench.iteration import InstrumentedIteration

    loss, noise, targets = setup
    sigmas = _init_sigmas(bm, sampler, nfe)
    it = InstrumentedIteration(
        bm.patcher, bm.cond, sampler, sigmas, noise, targets, loss, checkpoint=checkpoint
    )
    return it, sigmas


def iteration_cost(name, sampler, nfe, loss_kind, batch, repeats=5) -> dict:
    """Time split of one iteration over NFE x one plain call, and the trainer's own iteration."""
    from bench import models
    from bench.iteration import median_parts, time_call
    from ld3_core import api
    from ld3_core.comfyui.adapter import sample_stock
    from ld3_core.teacher import TeacherData
    from ld3_core.trainer import TrainConfig

    bm = models.build(name)
    setup = _setup(bm, sampler, loss_kind, batch)
    loss, noise, targets = setup
    it, sigmas = _iteration(bm, sampler, nfe, setup)
    plain_sampling = time_call(lambda: sample_stock(bm.patcher, bm.cond, sampler, sigmas, noise), repeats)
    plain_call = plain_sampling / nfe
    loss_floor = 0.0
    if loss_kind == "lpips":
        out = targets + 0.1 * torch.randn_like(targets)
        prepared = loss.prepare(targets)
        with torch.no_grad():
            loss_floor = time_call(lambda: loss(out, prepared), repeats)
    it.run()  # warm-up
    runs = [it.run() for _ in range(repeats)]
    parts = median_parts(runs)

    # The real trainer (phase 1 + phase 2 epochs), timed between consecutive iteration callbacks.
    count = 3 * batch * 2
    with torch.inference_mode(False):
        big_noise = torch.cat([noise] * 3 * 2)[:count] + 0.0
        big_targets = torch.cat([targets] * 3 * 2)[:count] + 0.0
    teacher = TeacherData(
        big_noise, big_targets, torch.zeros(count, dtype=torch.long), torch.arange(count) % 2 == 1, {}
    )
    stamps = []

    def on_progress(p):
        if p.train_loss is not None:
            stamps.append((p.epoch, time.perf_counter()))

    config = TrainConfig(steps=nfe, epochs_phase1=1, epochs_phase2=2, batch_size=batch)
    api.learn_schedule(bm.patcher, teacher, [bm.cond], sampler, config, loss, on_progress=on_progress)
    diffs = [b[1] - a[1] for a, b in zip(stamps, stamps[1:]) if a[0] == b[0] and a[0] >= 1]
    trainer_iteration = statistics.median(diffs) if diffs else float("nan")

    unit = nfe * plain_call
    floor = FLOOR_PER_NFE * unit + FLOOR_PER_NFE * loss_floor
    return {
        **_cell(name, sampler, nfe, loss_kind, batch),
        "plain_call_s": plain_call,
        "loss_forward_nograd_s": loss_floor,
        "parts_s": parts,
        "parts_per_unit": {
            k: v / unit
            for k, v in parts.items()
            if k.startswith(("total", "forward", "loss", "recompute", "backward", "optimiser"))
        },
        "iteration_over_unit": parts["total"] / unit,
        "floor_over_unit": floor / unit,
        "iteration_over_floor": parts["total"] / floor,
        "trainer_iteration_over_unit": trainer_iteration / unit,
        "trainer_iteration_over_floor": trainer_iteration / floor,
        "trainer_iterations_timed": len(diffs),
        "trainer_iteration_s": trainer_iteration,
        "repeats": repeats,
    }


def teacher_cost(name: str, count=8, steps=10, batch=4, repeats=11) -> dict:
    """generate_teacher against ComfyUI's KSampler path (comfy.sample.sample) doing the same batches.

    One run takes 0.1-0.4 s here, so machine noise only ever adds time: the ratio is of the fastest of
    11 interleaved runs each (with 3 runs and medians, two suite runs gave 0.92 and 1.05 for tiny-flux;
    the fastest of 11 gave 0.997-1.020 in three trials per model).
    """
    import comfy.sample

    from bench import models
    from ld3_core.teacher import generate_teacher, start_noise

    bm = models.build(name)
    scheduler = "karras" if bm.family == "sd1" else "simple"
    noise = start_noise(bm.latent_shape, 0, count)

    def ours():
        generate_teacher(
            bm.patcher, [bm.cond], bm.latent_shape, count, 0, "dpmpp_2m", scheduler, steps, batch
        )

    def stock():
        for i in range(0, count, batch):
            chunk = noise[i : i + batch]
            comfy.sample.sample(
                bm.patcher,
                chunk,
                steps,
                bm.cond.cfg,
                "dpmpp_2m",
                scheduler,
                bm.cond.positive,
                bm.cond.negative,
                torch.zeros_like(chunk),
                disable_pbar=True,
                seed=0,
            )

    ours(), stock()  # warm-up
    t_ours, t_stock = [], []
    for _ in range(repeats):  # interleaved, so drifts in machine load hit both alike
        for fn, sink in ((ours, t_ours), (stock, t_stock)):
            started = time.perf_counter()
            fn()
            sink.append(time.perf_counter() - started)
    return {
        "model": name,
        "count": count,
        "steps": steps,
        "batch": batch,
        "teacher_s_median": statistics.median(t_ours),
        "stock_s_median": statistics.median(t_stock),
        "teacher_s_min": min(t_ours),
        "stock_s_min": min(t_stock),
        "teacher_over_stock": min(t_ours) / min(t_stock),
        "repeats": repeats,
    }


def _profiled_peak(fn) -> int:
    """Peak of live CPU tensor bytes allocated during fn() (net allocations, in time order)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    items = []
    for event in prof.events():
        amount = event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        if amount:
            items.append((event.time_range.start, amount))
    items.sort()
    current = peak = 0
    for _, amount in items:
        current += amount
        peak = max(peak, current)
    return peak


def memory_by_nfe(name: str, sampler: str, loss_kind: str, contrast: bool, batch: int = 1) -> list[dict]:
    """Peak memory of one iteration at each NFE, with and without per-call checkpointing."""
    from bench import models

    bm = models.build(name)
    setup = _setup(bm, sampler, loss_kind, batch)
    rows = []
    for checkpoint in (True, False) if contrast else (True,):
        for nfe in MEMORY_NFES:
            if not checkpoint and nfe not in (MEMORY_NFES[0], MEMORY_NFES[-1]):
                continue
            it, _ = _iteration(bm, sampler, nfe, setup, checkpoint=checkpoint)
            it.run()  # warm-up: lazy buffers, optimiser state
            peak = _profiled_peak(it.run)
            rows.append(
                {
                    "model": name,
                    "sampler": sampler,
                    "loss": loss_kind,
                    "batch": batch,
                    "nfe": nfe,
                    "checkpoint": checkpoint,
                    "peak_bytes": peak,
                }
            )
    base = {r["checkpoint"]: r["peak_bytes"] for r in rows if r["nfe"] == MEMORY_NFES[0]}
    for r in rows:
        r["over_nfe4"] = r["peak_bytes"] / base[r["checkpoint"]]
    return rows


WEIGHT_GRAD_CASES = (("tiny-sd15-eps", "dpmpp_2m", 6, "lpips", 1), ("tiny-flux", "dpmpp_2m", 8, "l2", 1))


def weight_grad_contrast(name, sampler, nfe, loss_kind, batch, repeats=5) -> dict:
    """One iteration with frozen weights against one whose weights require grad, in this process."""
    from bench import models
    from ld3_core.comfyui import adapter as comfy_adapter

    bm = models.build(name)
    it, _ = _iteration(bm, sampler, nfe, _setup(bm, sampler, loss_kind, batch))
    freeze = comfy_adapter.weights_as_constants
    params = list(bm.patcher.model.parameters())
    if bm.vae is not None:
        params += list(bm.vae.first_stage_model.parameters())

    def thawed(module):  # the behaviour before the weights were frozen
        replaced = freeze(module)
        for p in params:
            p.requires_grad_(True)
        return replaced

    def run(frozen: bool) -> tuple[float, int]:
        comfy_adapter.weights_as_constants = freeze if frozen else thawed
        try:
            for p in params:
                p.grad = None
                p.requires_grad_(not frozen)
            it.run()  # warm-up in this mode
            seconds = statistics.median(it.run()["total"] for _ in range(repeats))
            for p in params:
                p.grad = None
            peak = _profiled_peak(it.run)
            return seconds, peak
        finally:
            comfy_adapter.weights_as_constants = freeze
            for p in params:
                p.grad = None
                p.requires_grad_(False)

    thawed_s, thawed_peak = run(False)
    frozen_s, frozen_peak = run(True)
    weight_bytes = sum(p.numel() * p.element_size() for p in params)
    return {
        **_cell(name, sampler, nfe, loss_kind, batch),
        "weights_bytes": weight_bytes,
        "frozen_s": frozen_s,
        "thawed_s": thawed_s,
        "time_ratio": frozen_s / thawed_s,
        "frozen_peak_bytes": frozen_peak,
        "thawed_peak_bytes": thawed_peak,
        "peak_ratio": frozen_peak / thawed_peak,
        "repeats": repeats,
    }


def run_all(log=print) -> dict:
    """The whole CPU cost + memory suite (single process; run it before the parallel quality jobs)."""
    out = {"iterations": [], "teacher": [], "memory": [], "weight_grads": []}
    for case in COST_CASES:
        log(f"cost: iteration {case}")
        out["iterations"].append(iteration_cost(*case))
    for name in ("tiny-sd15-eps", "tiny-flux"):
        log(f"cost: teacher {name}")
        out["teacher"].append(teacher_cost(name))
    for name, sampler, loss_kind, contrast in MEMORY_CASES:
        log(f"memory: {name}")
        out["memory"] += memory_by_nfe(name, sampler, loss_kind, contrast)
    for case in WEIGHT_GRAD_CASES:
        log(f"cost: frozen against gradient-requiring weights {case}")
        out["weight_grads"].append(weight_grad_contrast(*case))
    return out
