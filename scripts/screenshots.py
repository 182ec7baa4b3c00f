"""Screenshots of the demo and the SD1.x / Flux workflows after a run, in the real ComfyUI frontend.

Each workflows/<name>.json is opened in the frontend in headless chromium (app.loadGraphData, as opening
the file does), queued from the frontend (app.queuePrompt, what the Run button calls), and once the
server's /history says the prompt succeeded and the frontend shows its outputs, the whole graph is
captured: docs/screenshots/<name>.png, with a caption strip saying what ran. The captions also go to
docs/screenshots/README.md.

No downloads. The server gets a temporary models folder holding tiny random-weight models that
testing/tiny_checkpoints.py writes, under the file names the workflows use: an SD1.x checkpoint that
CheckpointLoaderSimple detects (checkpoints/v1-5-pruned-emaonly-fp16.safetensors) and a 16-channel
TAESD-format VAE (vae/ae.safetensors). A Flux that UNETLoader detects and DualCLIPLoader's T5-XXL cannot
be made tiny, so in the Flux workflows the frontend swaps, visibly and with a title saying so, UNETLoader
for "LD3TestTinyFluxModel" and DualCLIPLoader + CLIPTextEncode for "LD3TestTinyFluxText"
(tests/comfy_custom_nodes, the same stand-ins as tests/test_pipeline_flux.py). Random weights sample
noise: the screenshots show the graphs, reports and plots after a run, not image quality.

The demo runs as shipped. The SD1.x and Flux workflows run with the sizes in CPU_SIZES (smaller images,
fewer teacher samples and epochs), set in the frontend before queueing so the screenshot shows the
values that ran; --as-shipped runs them as shipped (not tried: the server runs on the CPU, and LPIPS
training on 512 / 1024 px images for 40 epochs is many times slower than these sizes).
Workflows that need a file another one writes (use_saved, retrain) run after it, in the same server.

Usage: .venv/bin/python scripts/screenshots.py [--only NAME ...] [--out docs/screenshots] [--as-shipped]
Needs what scripts/build_workflows.py needs (Debian's chromium, playwright) and the development ComfyUI.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))  # also when tests load this file by path
import build_workflows as bw  # noqa: E402

ROOT = bw.ROOT
TESTS = ROOT / "tests"
OUT = ROOT / "docs" / "screenshots"
MODEL_CACHE = ROOT / ".cache" / "test-models"  # shared with tests/tiny_server.py
# The canvas zoom of the screenshot: node text ~11 px, the training plot (shown at 0.72) ~10 px.
SCALE = 0.8
MAX_BYTES = 600_000
# Frontend settings of the screenshot server's user: a returning user (no templates dialog), and the
# Settings > Appearance text size of text widgets (PreviewAny's reports, prompts, notes) up from 10 px.
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.TextareaWidget.FontSize": 14}
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"

# Run order: a workflow that reads a file another one writes comes after it.
ORDER = (
    "ld3_demo",
    "ld3_sd15_train",
    "ld3_sd15_use_saved",
    "ld3_sd15_retrain",
    "ld3_flux_train",
    "ld3_flux_use_saved",
)
NEEDS = {
    "ld3_sd15_use_saved": "ld3_sd15_train",
    "ld3_sd15_retrain": "ld3_sd15_train",
    "ld3_flux_use_saved": "ld3_flux_train",
}
TIMEOUT_S = 3600

# Widget values set before queueing, per workflow: node type -> {widget: value}. At these sizes the whole
# run takes 15-20 min on 2 CPU cores; the shipped ones (512 / 1024 px images, 50 teacher samples, LPIPS on
# them for 40 epochs) would take many times longer, even with the tiny models.
_SD15 = {"EmptyLatentImage": {"width": 64, "height": 64}}
_FLUX = {
    "EmptySD3LatentImage": {"width": 64, "height": 64},
    "ModelSamplingFlux": {"width": 64, "height": 64},  # the shift follows the size
}
_TEACHER = {"LD3GenerateTeacher": {"sample_count": 20}}
_TRAIN = {"LD3TrainSigmas": {"epochs_phase2": 10}}
CPU_SIZES = {
    "ld3_sd15_train": {**_SD15, **_TEACHER, **_TRAIN},
    "ld3_sd15_use_saved": _SD15,
    "ld3_sd15_retrain": {**_SD15, **_TRAIN},
    "ld3_flux_train": {**_FLUX, **_TEACHER, **_TRAIN},
    "ld3_flux_use_saved": _FLUX,
}
FLUX_STAND_INS = ("ld3_flux_train", "ld3_flux_use_saved")

# Set widget values on every node of a type; fails on a missing type or widget.
SET_WIDGETS_JS = """
(edits) => {
  for (const [type, values] of Object.entries(edits)) {
    const nodes = app.graph.nodes.filter((n) => n.type === type);
    if (!nodes.length) throw new Error(`no ${type} in the graph`);
    for (const node of nodes) {
      for (const [name, value] of Object.entries(values)) {
        const w = (node.widgets || []).find((w) => w.name === name);
        if (!w) throw new Error(`${type} has no widget ${name}`);
        w.value = value;
        w.callback?.(value);
      }
    }
  }
  app.graph.setDirtyCanvas(true, true);
}
"""

# The Flux stand-ins: a node of the new type in the old one's place, same size, its outputs rewired.
SWAP_FLUX_JS = """
() => {
  const graph = app.graph;
  function replace(old, type, title, widgets) {
    const node = LiteGraph.createNode(type);
    node.title = title;
    graph.add(node);
    for (const w of node.widgets) if (w.name === "control_after_generate") w.value = "fixed";
    for (const [name, value] of Object.entries(widgets)) node.widgets.find((w) => w.name === name).value = value;
    node.pos = [...old.pos];
    const min = node.computeSize();
    node.setSize([Math.max(old.size[0], min[0], 330), Math.max(old.size[1], min[1])]);
    node.color = "#553";
    node.bgcolor = "#664";
    for (const [slot, output] of (old.outputs || []).entries()) {
      for (const id of [...(output.links || [])]) {
        const link = graph.links.get ? graph.links.get(id) : graph.links[id];
        const target = graph.getNodeById(link.target_id);
        node.connect(0, target, link.target_slot);
      }
    }
    graph.remove(old);
    return node;
  }
  const unet = graph.nodes.find((n) => n.type === "UNETLoader");
  replace(unet, "LD3TestTinyFluxModel", "UNETLoader stand-in: tiny random Flux", { seed: 2 });
  for (const text of graph.nodes.filter((n) => n.type === "CLIPTextEncode")) {
    const value = text.widgets.find((w) => w.name === "text").value;
    replace(text, "LD3TestTinyFluxText", "CLIPTextEncode stand-in (random)", { text: value });
  }
  const clip = graph.nodes.find((n) => n.type === "DualCLIPLoader");
  graph.remove(clip);
  graph.setDirtyCanvas(true, true);
  const broken = graph.nodes.filter((n) => n.has_errors).map((n) => n.type);
  if (broken.length) throw new Error(`nodes with errors: ${broken}`);
}
"""

# True once every image output the frontend got has loaded and every text preview has its text.
OUTPUTS_SHOWN_JS = """
() => app.graph.nodes.every((n) => !n.imgs || n.imgs.every((img) => img.complete && img.naturalWidth > 0))
"""

# Nodes whose boxes (title included) overlap after the run, and nodes that grew in the run.
LAYOUT_JS = """
(before) => {
  const title = LiteGraph.NODE_TITLE_HEIGHT;
  const box = (n) => [n.pos[0], n.pos[1] - title, n.pos[0] + n.size[0], n.pos[1] + n.size[1]];
  const name = (n) => `${n.title} (${n.id})`;
  const nodes = app.graph.nodes, overlaps = [], grew = [];
  for (let i = 0; i < nodes.length; i++) {
    const a = box(nodes[i]);
    for (let j = i + 1; j < nodes.length; j++) {
      const b = box(nodes[j]);
      if (a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3]) overlaps.push(`${name(nodes[i])} / ${name(nodes[j])}`);
    }
    const size = before[nodes[i].id];
    if (size && (nodes[i].size[0] > size[0] + 1 || nodes[i].size[1] > size[1] + 1)) {
      grew.push(`${name(nodes[i])} ${size.map(Math.round)} -> ${[...nodes[i].size].map(Math.round)}`);
    }
  }
  return { overlaps, grew };
}
"""
SIZES_JS = "() => Object.fromEntries(app.graph.nodes.map((n) => [n.id, [...n.size]]))"

# The graph's bounds in canvas units.
BOUNDS_JS = "() => {" + bw.GRAPH_BOUNDS_JS + "  return [x0, y0, x1 - x0, y1 - y0];\n}"

# Draw the graph at a fixed zoom with its top left corner at the page's; the box to capture.
PLACE_JS = (
    "([scale, margin]) => {"
    + bw.GRAPH_BOUNDS_JS
    + """  const rect = app.canvas.canvas.getBoundingClientRect();
  app.canvas.ds.scale = scale;
  app.canvas.ds.offset = [margin / scale - x0 - rect.left / scale, margin / scale - y0 - rect.top / scale];
  app.canvas.show_info = false;
  app.graph.setDirtyCanvas(true, true);
  app.canvas.draw(true, true);
  return { x: 0, y: 0, width: Math.ceil((x1 - x0) * scale + 2 * margin), height: Math.ceil((y1 - y0) * scale + 2 * margin) };
}
"""
)


def caption(name: str, sizes: dict | None) -> str:
    """What the screenshot shows: which models ran and which widget values differ from the file."""
    parts = [f"workflows/{name}.json after a run in the ComfyUI frontend (CPU)."]
    if name == "ld3_demo":
        parts.append("As shipped: LD3 Demo Model, an exact Gaussian mixture; no downloads.")
    elif name.startswith("ld3_sd15"):
        parts.append(
            "Model: a tiny SD1.x checkpoint with random weights, written by scripts/screenshots.py "
            "(testing/tiny_checkpoints.py) under the workflow's file name; its images are noise."
        )
    else:
        parts.append(
            "Model: a tiny random-weight Flux and random text conditioning (test stand-ins, in yellow, for "
            "UNETLoader and DualCLIPLoader + CLIPTextEncode) and a tiny random VAE, made by "
            "scripts/screenshots.py; its images are noise."
        )
    if sizes:
        changed = "; ".join(
            f"{node} " + ", ".join(f"{k}={v}" for k, v in values.items()) for node, values in sizes.items()
        )
        parts.append(f"Changed for the CPU: {changed}.")
    return " ".join(parts)


# -- the server and its models --------------------------------------------------------------------


def prepare_models(base: Path) -> list[str]:
    """Tiny models under the workflows' file names in base/models; ComfyUI's extra arguments for them."""
    comfyui = str(bw.COMFYUI_DIR)
    if comfyui not in sys.path:
        sys.path.insert(0, comfyui)
    sys.path.append(str(ROOT / "testing"))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import tiny_checkpoints

    def cached(name, write):
        return tiny_checkpoints.cached(name, write, MODEL_CACHE, bw.COMFYUI_DIR)

    models = base / "models"
    links = {
        models / "checkpoints" / bw.SD15_CHECKPOINT: cached(
            "ld3_test_tiny_sd15.safetensors", tiny_checkpoints.write_sd15_checkpoint
        ),
        models / "vae" / bw.FLUX_VAE: cached(
            "ld3_test_tiny_taef1.safetensors", tiny_checkpoints.write_taesd_vae
        ),
    }
    for link, target in links.items():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)
    (models / "ld3").mkdir()  # first ld3 folder: the schedules trained here stay here
    return bw.comfy_launch.extra_model_paths(base, TESTS / "comfy_custom_nodes", "ld3_screenshots")


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def wait_for_new_prompt(url: str, known: set, process, timeout_s: float) -> dict:
    """The /history entry of the one prompt not in `known`, once it has completed."""
    start = last = time.monotonic()
    while True:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"ComfyUI exited with {process.returncode}")
        queue = get_json(f"{url}/queue")  # before /history: a prompt leaves the queue into the history
        idle = not queue["queue_running"] and not queue["queue_pending"]
        history = get_json(f"{url}/history")
        new = [entry for key, entry in history.items() if key not in known]
        if new and new[0].get("status", {}).get("completed") is not None:
            return new[0]
        now = time.monotonic()
        if idle and not new and now - start > 10:
            raise SystemExit(
                "nothing was queued: the server refused the prompt (the frontend's error dialog says why)"
            )
        if now - start > timeout_s:
            raise SystemExit(f"no result after {timeout_s:.0f} s")
        if now - last > 60:
            last = now
            print(f"screenshots:   running ({now - start:.0f} s)")
        time.sleep(1.0)


def failure(entry: dict) -> str:
    status = entry.get("status", {})
    for kind, data in status.get("messages", []):
        if kind == "execution_error":
            return f"{data.get('node_type')} failed: {data.get('exception_type')}: {data.get('exception_message')}"
    return f"status {status.get('status_str')!r}"


# -- the picture ----------------------------------------------------------------------------------


def finish(png: bytes, text: str, path: Path) -> int:
    """Add the caption strip, save an optimised PNG; its size in bytes."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.open(io.BytesIO(png)).convert("RGB")
    font = ImageFont.truetype(FONT, 17)
    draw = ImageDraw.Draw(image)
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if draw.textlength(trial, font=font) > image.width - 32 and line:
            lines.append(line)
            line = word
        else:
            line = trial
    lines.append(line)
    strip = 16 + 24 * len(lines)
    out = Image.new("RGB", (image.width, image.height + strip), (24, 24, 24))
    out.paste(image, (0, 0))
    draw = ImageDraw.Draw(out)
    for i, text_line in enumerate(lines):
        draw.text((16, image.height + 8 + 24 * i), text_line, font=font, fill=(230, 230, 230))
    path.parent.mkdir(parents=True, exist_ok=True)
    out.save(path, optimize=True)
    if path.stat().st_size > MAX_BYTES:  # a palette keeps text and plots sharp at a fraction of the size
        out.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            path, optimize=True
        )
    return path.stat().st_size


def shoot(
    url: str, names: list[str], save: set[str], out_dir: Path, as_shipped: bool, process=None
) -> list[str]:
    """Run and capture each workflow; what went wrong with the layouts (overlapping or grown nodes)."""
    from playwright.sync_api import sync_playwright

    captions, problems = {}, []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=bw.CHROMIUM, args=bw.CHROMIUM_FLAGS, headless=True
        )
        try:
            page = browser.new_page(viewport=bw.VIEWPORT)
            page.goto(url + "/", wait_until="domcontentloaded")
            page.wait_for_function("() => window.app?.graph?.nodes?.length > 0", timeout=120_000)
            page.add_style_tag(content=bw.HIDE_CHROME_CSS)
            page.wait_for_timeout(1000)
            for name in names:
                workflow = json.loads((bw.WORKFLOWS / f"{name}.json").read_text(encoding="utf-8"))
                page.evaluate("async (wf) => { await app.loadGraphData(wf); }", workflow)
                sizes = None if as_shipped else CPU_SIZES.get(name)
                if sizes:
                    page.evaluate(SET_WIDGETS_JS, sizes)
                if name in FLUX_STAND_INS:
                    page.evaluate(SWAP_FLUX_JS)
                before = page.evaluate(SIZES_JS)
                known = set(get_json(f"{url}/history"))
                start = time.monotonic()
                page.evaluate("async () => { await app.queuePrompt(0, 1); }")
                print(f"screenshots: {name}: queued")
                entry = wait_for_new_prompt(url, known, process, TIMEOUT_S)
                seconds = time.monotonic() - start
                if entry["status"].get("status_str") != "success":
                    raise SystemExit(f"screenshots: {name}: {failure(entry)}")
                page.wait_for_function(OUTPUTS_SHOWN_JS, timeout=30_000)
                page.wait_for_timeout(1500)
                layout = page.evaluate(LAYOUT_JS, before)
                for what, items in layout.items():
                    for item in items:
                        print(
                            f"screenshots: {name}: layout: {what[:-1] if what == 'overlaps' else what}: {item}"
                        )
                        problems.append(f"{name}: {what}: {item}")
                if name not in save:
                    print(f"screenshots: {name}: ran in {seconds:.0f} s (needed by another; not saved)")
                    continue
                x, y, width, height = page.evaluate(BOUNDS_JS)
                margin = 24
                page.set_viewport_size(
                    {
                        "width": int(width * SCALE) + 2 * margin + 2,
                        "height": int(height * SCALE) + 2 * margin + 2,
                    }
                )
                page.wait_for_timeout(500)
                box = page.evaluate(PLACE_JS, [SCALE, margin])
                page.wait_for_timeout(1500)
                text = caption(name, sizes)
                captions[name] = text
                size = finish(page.screenshot(clip=box), text, out_dir / f"{name}.png")
                if size > MAX_BYTES:
                    problems.append(f"{name}: {size // 1000} kB, more than {MAX_BYTES // 1000} kB")
                page.set_viewport_size(bw.VIEWPORT)
                print(
                    f"screenshots: {name}: ran in {seconds:.0f} s; {out_dir / (name + '.png')} ({size // 1000} kB)"
                )
        finally:
            browser.close()
    write_index(out_dir, captions)
    return problems


def write_index(out_dir: Path, captions: dict) -> None:
    """docs/screenshots/README.md: every screenshot with its caption (kept for the ones not rerun)."""
    index = out_dir / "README.md"
    known = {}
    if index.exists():
        for block in index.read_text(encoding="utf-8").split("\n## ")[1:]:
            title, _, body = block.partition("\n")
            known[title.strip()] = body.strip().split("\n\n")[0]
    known.update(captions)
    lines = [
        "# Screenshots after a run",
        "",
        "Made by `scripts/screenshots.py` (`.venv/bin/python scripts/screenshots.py`), which opens each",
        "workflow in the real ComfyUI frontend (headless chromium), queues it there and captures the whole",
        f"graph once it has run, at {SCALE:g}x zoom, with the text widgets' size setting (Settings >",
        f"Appearance) at {SETTINGS['Comfy.TextareaWidget.FontSize']} px instead of the default 10.",
        "The SD1.x and Flux models are tiny random-weight test models made by the script, so their",
        "sampled images are noise and their verdicts are about those models; what the screenshots show is",
        "the layout after a run, the reports and the plots. The caption under each image says what ran.",
        "",
    ]
    for name in ORDER:
        if name in known:
            lines += [f"## {name}", "", known[name], "", f"![{name}]({name}.png)", ""]
    index.write_text("\n".join(lines), encoding="utf-8")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=ORDER, help="workflows to capture (default: all)")
    parser.add_argument("--out", type=Path, default=OUT, help="output folder (default: docs/screenshots/)")
    parser.add_argument(
        "--as-shipped", action="store_true", help="run the SD1.x/Flux workflows at their shipped sizes"
    )
    args = parser.parse_args(argv)
    save = set(args.only or ORDER)
    needed = save | {NEEDS[name] for name in save if name in NEEDS}
    names = [name for name in ORDER if name in needed]
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ld3_screenshots_") as tmp:
        extra = prepare_models(Path(tmp))
        settings = Path(tmp) / "user" / "default" / "comfy.settings.json"
        settings.parent.mkdir(parents=True)
        settings.write_text(json.dumps(SETTINGS))
        process, url = bw.start_comfyui(Path(tmp), extra)
        try:
            problems = shoot(url, names, save, args.out, args.as_shipped, process)
        except BaseException:
            print((Path(tmp) / "comfyui.log").read_text(errors="replace")[-3000:], file=sys.stderr)
            raise
        finally:
            bw.comfy_launch.stop(process)
    print(f"screenshots: done in {time.monotonic() - start:.0f} s")
    if problems:
        print(
            "screenshots: problems (overlapping or grown nodes, large files):\n  " + "\n  ".join(problems),
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # progress lines show up at once in a log file too
    sys.exit(main())
