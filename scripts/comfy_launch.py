"""How this repo starts a headless ComfyUI: one command line and one wait, for the tests and the builder.

The server runs on the CPU, on 127.0.0.1 and a free port, with its output, input, temp and user folders
under one throwaway directory and the database in memory; the models folders stay ComfyUI's own unless
``extra_args`` adds others.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

FOLDERS = ("output", "input", "temp", "user")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare_folders(base: Path) -> dict[str, Path]:
    """base/output, input, temp and user; the user is a returning one (no templates dialog or tours)."""
    dirs = {name: base / name for name in FOLDERS}
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    settings = dirs["user"] / "default" / "comfy.settings.json"
    if not settings.exists():
        settings.parent.mkdir(parents=True, exist_ok=True)
        settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))
    return dirs


def comfyui_command(
    python: str, comfyui_dir: Path, port: int, dirs: dict[str, Path], extra_args: Sequence[str] = ()
) -> list[str]:
    return [
        python,
        str(comfyui_dir / "main.py"),
        "--cpu",
        "--listen",
        "127.0.0.1",
        "--port",
        str(port),
        "--disable-auto-launch",
        "--disable-api-nodes",
        *extra_args,
        *(
            arg
            for name in ("output", "input", "temp", "user")
            for arg in (f"--{name}-directory", str(dirs[name]))
        ),
        "--database-url",
        "sqlite:///:memory:",
    ]


def wait_until_up(url: str, process: subprocess.Popen, timeout_s: float) -> str | None:
    """None once /system_stats answers; otherwise why not (the process exited, or the time ran out)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            return f"ComfyUI exited with {process.returncode} at start"
        try:
            urllib.request.urlopen(url + "/system_stats", timeout=5).close()
            return None
        except OSError:  # URLError, refused connections and timeouts all derive from it
            if time.monotonic() > deadline:
                return f"ComfyUI did not answer in {timeout_s:.0f} s"
            time.sleep(0.25)


def stop(process: subprocess.Popen) -> None:
    """Terminate, then kill if it does not exit within 15 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def extra_model_paths(base: Path, custom_nodes: Path, label: str) -> list[str]:
    """Point ComfyUI at base/models/{checkpoints,vae,ld3} and a custom-nodes folder; its arguments for that.

    Writes base/extra_model_paths.yaml (JSON is YAML). ``is_default`` puts these folders first, so the
    schedules LD3 Train Sigmas saves land in base/models/ld3; base_path joins each relative entry, an
    absolute one (custom_nodes) stays as it is. ``--fp32-text-enc``: ComfyUI runs text encoders in fp16
    on the CPU by default, several times slower there than fp32.
    """
    entries = {
        "base_path": str(base),
        "is_default": True,
        "checkpoints": "models/checkpoints",
        "vae": "models/vae",
        "ld3": "models/ld3",
        "custom_nodes": str(custom_nodes),
    }
    config = base / "extra_model_paths.yaml"
    config.write_text(json.dumps({label: entries}, indent=1))
    return ["--fp32-text-enc", "--extra-model-paths-config", str(config)]
