"""A second real ComfyUI server for the pipeline tests, with tiny model files in a temporary models folder.

Loaded as a pytest plugin (``pytest_plugins = ["tiny_server"]`` in the test modules that use it), so
its session fixture is one server however many modules ask for it. conftest.py's ``comfy_server``
serves the user's models folders; this one adds, through ``--extra-model-paths-config``:

- ``checkpoints``: an SD1.x checkpoint that CheckpointLoaderSimple detects (testing/tiny_checkpoints.py),
- ``vae``: a 16-channel TAESD-format VAE for VAELoader (the Flux workflow's VAE),
- ``ld3``: first in the list, so LD3 Train Sigmas saves its schedules in the temporary folder,
- ``custom_nodes``: tests/comfy_custom_nodes (test-only tiny-Flux MODEL and text nodes).

``--fp32-text-enc``: ComfyUI runs text encoders in fp16 on the CPU by default, which is several times
slower there than fp32 for the full-size CLIP-L of the checkpoint.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import tiny_checkpoints
from conftest import COMFYUI_DIR, PACK_ROOT, ComfyServer, comfy_launch, log_tail, run_comfy_server

TESTS_DIR = Path(__file__).resolve().parent
TEST_CUSTOM_NODES = TESTS_DIR / "comfy_custom_nodes"
SD15_CHECKPOINT = "ld3_test_tiny_sd15.safetensors"
FLUX_VAE = "ld3_test_tiny_taef1.safetensors"
# The random checkpoint is the same every time: cached (tiny_checkpoints.cached), not rewritten.
MODEL_CACHE = PACK_ROOT / ".cache" / "test-models"


@dataclass
class TinyModelsServer:
    """A running ComfyUI whose extra model folders hold the tiny test models."""

    server: ComfyServer
    models_dir: Path
    sd15_checkpoint: str  # a ckpt_name for CheckpointLoaderSimple
    flux_vae: str  # a vae_name for VAELoader

    @property
    def schedule_dir(self) -> Path:
        """Where LD3 Train Sigmas saves (the first ``ld3`` models folder)."""
        return self.models_dir / "ld3"

    def queue(self, graph: dict) -> str:
        """POST /prompt; fails if any node does not validate (ComfyUI would still run the valid rest)."""
        response = self.server.post_json("/prompt", {"prompt": graph})
        assert not response.get("node_errors"), (
            f"invalid prompt: {json.dumps(response['node_errors'])[:2000]}"
        )
        return response["prompt_id"]

    def interrupt(self) -> None:
        """POST /interrupt (stops the running prompt; answers no JSON)."""
        request = urllib.request.Request(self.server.base_url + "/interrupt", data=b"{}", method="POST")
        urllib.request.urlopen(request, timeout=10).close()

    def wait(self, prompt_id: str, timeout: float = 300.0) -> dict:
        """Wait for a queued prompt to finish (successfully or not) and return its /history entry."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server.process.poll() is not None:
                raise AssertionError(f"ComfyUI exited:\n{log_tail(self.server.log_path)}")
            history = self.server.get_json(f"/history/{prompt_id}")
            entry = history.get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                return entry
            time.sleep(0.1)
        raise AssertionError(
            f"prompt {prompt_id} did not finish in {timeout} s:\n{log_tail(self.server.log_path)}"
        )

    def run(self, graph: dict, timeout: float = 300.0) -> dict:
        """Queue a graph and return its /history entry; on failure, raise with the node's error and traceback."""
        entry = self.wait(self.queue(graph), timeout)
        if entry["status"].get("status_str") != "success":
            raise AssertionError(describe_failure(entry))
        return entry

    def describe_failure(self, entry: dict) -> str:
        return describe_failure(entry)


def describe_failure(entry: dict) -> str:
    """A /history entry's outcome in a few lines: status, and the failing node's error and traceback."""
    status = entry.get("status", {})
    errors = [data for kind, data in status.get("messages", []) if kind == "execution_error"]
    if not errors:
        kinds = [kind for kind, _ in status.get("messages", [])]
        return f"prompt status {status.get('status_str')!r}, messages {kinds}"
    error = errors[0]
    return (
        f"{error.get('node_type')} (node {error.get('node_id')}) failed: "
        f"{error.get('exception_type')}: {error.get('exception_message')}\n"
        + "".join(error.get("traceback", []))
    )


def _cached(name: str, write) -> Path:
    """`write(path)` once per version of tiny_checkpoints.py and ComfyUI; the cached file's path."""
    return tiny_checkpoints.cached(name, write, MODEL_CACHE, COMFYUI_DIR)


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)


@pytest.fixture(scope="session")
def tiny_models_server(tmp_path_factory) -> TinyModelsServer:
    """ComfyUI with the pack, the tiny SD1.x checkpoint, a tiny Flux VAE and the test-only nodes."""
    base = tmp_path_factory.mktemp("tiny_models_server")
    models = base / "models"
    _link(
        _cached(SD15_CHECKPOINT, tiny_checkpoints.write_sd15_checkpoint),
        models / "checkpoints" / SD15_CHECKPOINT,
    )
    tiny_checkpoints.write_taesd_vae(models / "vae" / FLUX_VAE, latent_channels=16)
    (models / "ld3").mkdir()
    extra = comfy_launch.extra_model_paths(base, TEST_CUSTOM_NODES, "ld3_tests")
    with run_comfy_server(base, extra) as server:
        info = server.object_info()
        for node_type in ("LD3TrainSigmas", "LD3TestTinyFluxModel", "LD3TestTinyFluxText"):
            if node_type not in info:
                pytest.fail(
                    f"{node_type} did not load in the tiny-models server:\n{log_tail(server.log_path)}"
                )
        yield TinyModelsServer(server, models, SD15_CHECKPOINT, FLUX_VAE)
