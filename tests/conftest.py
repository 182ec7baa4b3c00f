"""Test bootstrap: a real ComfyUI (built by scripts/setup.sh) on the CPU, imported as a library.

ComfyUI's folder goes first on sys.path and the pack root last, so ``import nodes`` is ComfyUI's own
module while ``import ld3_core`` is ours (the pack imports its own ``nodes/`` relatively).
"""

import os
import sys
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parents[1]
COMFYUI_DIR = Path(os.environ.get("LD3_COMFYUI_DIR", PACK_ROOT / ".comfyui" / "ComfyUI")).resolve()

if not (COMFYUI_DIR / "main.py").is_file():
    raise RuntimeError(f"No ComfyUI at {COMFYUI_DIR}: run scripts/setup.sh (or set LD3_COMFYUI_DIR).")
if str(COMFYUI_DIR) not in sys.path:
    sys.path.insert(0, str(COMFYUI_DIR))
if str(PACK_ROOT) not in sys.path:
    sys.path.append(str(PACK_ROOT))

import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True  # before comfy.model_management is imported anywhere

# ---------------------------------------------------------------------------------------------------
# Fixtures. Everything below runs after the bootstrap above (ComfyUI first on sys.path, CPU only).

import asyncio  # noqa: E402
import contextlib  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402
from collections.abc import Iterator, Sequence  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import pytest  # noqa: E402
import tiny_models  # noqa: E402

PACK_DIR_NAME = "ComfyUI-LD3"  # the folder name under custom_nodes/ (scripts/setup.sh links it so)
SERVER_START_TIMEOUT_S = 120.0


def load_script_module(name: str) -> types.ModuleType:
    """A module from scripts/, by path (scripts/ is not put on sys.path beside ComfyUI's modules)."""
    module_name = f"ld3_scripts_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, PACK_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


comfy_launch = load_script_module("comfy_launch")  # the same launch as scripts/build_workflows.py


# -- the pack, imported the way ComfyUI's loader does (nodes.load_custom_node) ----------------------


def load_pack(name: str = PACK_DIR_NAME) -> types.ModuleType:
    """Import the pack root as a package from its __init__.py, as ComfyUI does (never as `nodes`)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, PACK_ROOT / "__init__.py", submodule_search_locations=[str(PACK_ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


@pytest.fixture(scope="session")
def ld3_pack() -> types.ModuleType:
    """The pack's root module, imported as ComfyUI imports a custom-node folder."""
    return load_pack()


@pytest.fixture(scope="session")
def ld3_node_classes(ld3_pack) -> list:
    """The node classes the pack's comfy_entrypoint hands to ComfyUI."""
    extension = asyncio.run(ld3_pack.comfy_entrypoint())
    return asyncio.run(extension.get_node_list())


# -- tiny models built with ComfyUI's own classes (testing/tiny_models.py) ----------------------------


@pytest.fixture(scope="session")
def tiny_sd15():
    """ModelPatcher of a tiny SD1.5-architecture UNet, EPS prediction, fp32, CPU."""
    return tiny_models.build_tiny_sd15(seed=0)


@pytest.fixture(scope="session")
def tiny_sd15_v():
    """ModelPatcher of a tiny SD1.5-architecture UNet, V prediction, fp32, CPU."""
    import comfy.model_base

    return tiny_models.build_tiny_sd15(comfy.model_base.ModelType.V_PREDICTION, seed=1)


@pytest.fixture(scope="session")
def tiny_flux():
    """ModelPatcher of a tiny Flux-dev-architecture DiT (guidance embedding), fp32, CPU."""
    return tiny_models.build_tiny_flux(seed=2)


@pytest.fixture(scope="session")
def sd15_conds() -> tuple[list, list]:
    """(positive, negative) conditioning for the tiny SD1.5 models, seeded."""
    return tiny_models.sd15_conditioning(seed=0)


@pytest.fixture(scope="session")
def flux_conds() -> tuple[list, list]:
    """(positive, negative) conditioning for the tiny Flux model (pooled output, guidance 3.5), seeded."""
    return tiny_models.flux_conditioning(seed=0)


# -- a real ComfyUI server with the pack loaded -----------------------------------------------------


def log_tail(path: Path, lines: int = 60) -> str:
    """The last lines of a log file (for failure messages)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log at {path}: {exc})"


@dataclass
class ComfyServer:
    """A running ComfyUI server: its base URL, log file and process."""

    base_url: str
    log_path: Path
    process: subprocess.Popen
    output_dir: Path
    _object_info: dict | None = field(default=None, repr=False)

    def get_json(self, path: str, timeout: float = 30.0):
        with urllib.request.urlopen(self.base_url + path, timeout=timeout) as response:
            return json.load(response)

    def post(self, path: str, payload: dict, timeout: float = 30.0) -> tuple[int, dict]:
        """POST JSON; returns (HTTP status, body), errors included (a 400 carries validation errors)."""
        request = urllib.request.Request(
            self.base_url + path,
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as exc:
            raw = exc.read().decode(errors="replace")
            try:
                return exc.code, json.loads(raw)
            except json.JSONDecodeError:  # e.g. a plain-text 500
                return exc.code, {"text": raw}

    def post_json(self, path: str, payload: dict, timeout: float = 30.0):
        status, body = self.post(path, payload, timeout)
        if status != 200:
            raise AssertionError(f"POST {path} -> {status}: {json.dumps(body)}")
        return body

    def object_info(self) -> dict:
        """GET /object_info, fetched once per session (it lists every node type)."""
        if self._object_info is None:
            self._object_info = self.get_json("/object_info")
        return self._object_info

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def queue_and_listen(self, graph: dict, on_message, timeout: float = 300.0) -> str:
        """Queue an API-format graph listening on the websocket as the frontend does, until the prompt
        ends (success, error or interrupted); its prompt id. ``on_message(session, message)`` is awaited
        for every websocket message (``session``: an aiohttp session, to call the server back)."""
        import uuid

        import aiohttp

        client_id = uuid.uuid4().hex
        ends = ("execution_success", "execution_error", "execution_interrupted")

        async def listen() -> str:
            async with aiohttp.ClientSession() as session:
                ws_url = self.base_url.replace("http", "ws", 1) + f"/ws?clientId={client_id}"
                async with session.ws_connect(ws_url) as ws:
                    async with session.post(
                        self.base_url + "/prompt", json={"prompt": graph, "client_id": client_id}
                    ) as response:
                        assert response.status == 200, await response.text()
                        prompt_id = (await response.json())["prompt_id"]
                    async for message in ws:
                        await on_message(session, message)
                        if message.type == aiohttp.WSMsgType.TEXT:
                            data = json.loads(message.data)
                            if data["type"] in ends and data["data"].get("prompt_id") == prompt_id:
                                return prompt_id

        return asyncio.run(asyncio.wait_for(listen(), timeout))

    def run_prompt_with_node_texts(
        self, graph: dict, timeout: float = 300.0
    ) -> tuple[dict, list[tuple[str, str]]]:
        """``run_prompt``, listening on the websocket as the frontend does: also returns the text messages
        nodes showed on the canvas while it ran (ComfyUI's progress text: (node id, text))."""
        import struct

        import aiohttp

        texts: list[tuple[str, str]] = []
        text_event = 3  # protocol.BinaryEventTypes.TEXT

        async def on_message(_session, message) -> None:
            if message.type == aiohttp.WSMsgType.BINARY:
                (event,) = struct.unpack(">I", message.data[:4])
                if event == text_event:
                    (length,) = struct.unpack(">I", message.data[4:8])
                    node = message.data[8 : 8 + length].decode()
                    texts.append((node, message.data[8 + length :].decode()))

        prompt_id = self.queue_and_listen(graph, on_message, timeout)
        deadline = time.monotonic() + 30
        while (history := self.get_json(f"/history/{prompt_id}")).get(prompt_id) is None:
            if time.monotonic() > deadline:  # the websocket said done before /history has the entry
                raise AssertionError(f"prompt {prompt_id} finished but is not in /history")
            time.sleep(0.05)
        entry = history[prompt_id]
        if entry["status"].get("status_str") != "success":
            raise AssertionError(
                f"prompt failed: {json.dumps(entry['status'], indent=1)}\n{log_tail(self.log_path)}"
            )
        return entry, texts

    def run_prompt(self, graph: dict, timeout: float = 300.0) -> dict:
        """Queue an API-format graph, wait for it and return its /history entry (fails on an error)."""
        prompt_id = self.post_json("/prompt", {"prompt": graph})["prompt_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"ComfyUI exited while running a prompt:\n{log_tail(self.log_path)}")
            history = self.get_json(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"].get("status_str") != "success":
                    raise AssertionError(
                        f"prompt failed: {json.dumps(entry['status'], indent=1)}\n{log_tail(self.log_path)}"
                    )
                return entry
            time.sleep(0.1)
        raise AssertionError(f"prompt {prompt_id} did not finish in {timeout} s:\n{log_tail(self.log_path)}")


@contextlib.contextmanager
def run_comfy_server(base: Path, extra_args: Sequence[str] = ()) -> Iterator[ComfyServer]:
    """Run ComfyUI's main.py on a free port with the pack loaded, until the block ends (stop by PID).

    Output, input, temp and user folders live under ``base``; the models folders stay the user's
    (ComfyUI/models) unless ``extra_args`` adds others. The sqlite database is in memory.
    """
    link = COMFYUI_DIR / "custom_nodes" / PACK_DIR_NAME
    if not link.exists() or link.resolve() != PACK_ROOT:
        pytest.fail(f"{link} does not point at this checkout ({PACK_ROOT}): run scripts/setup.sh")
    dirs = comfy_launch.prepare_folders(base)
    port = comfy_launch.free_port()
    log_path = base / "comfyui.log"
    command = comfy_launch.comfyui_command(sys.executable, COMFYUI_DIR, port, dirs, extra_args)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            command,
            cwd=COMFYUI_DIR,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    server = ComfyServer(f"http://127.0.0.1:{port}", log_path, process, dirs["output"])
    try:
        failed = comfy_launch.wait_until_up(server.base_url, process, SERVER_START_TIMEOUT_S)
        if failed:
            pytest.fail(f"{failed}; log {log_path}:\n{log_tail(log_path)}")
        yield server
    finally:
        comfy_launch.stop(process)


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory) -> Iterator[ComfyServer]:
    """The real ComfyUI server with the pack, on the user's models folders, for the whole session."""
    with run_comfy_server(tmp_path_factory.mktemp("comfy_server")) as server:
        yield server
