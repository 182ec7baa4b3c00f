"""The shipped UI workflows in the real ComfyUI frontend, in headless Debian chromium (Playwright).

Each workflows/*.json is loaded with app.loadGraphData, as opening the file does: no "missing nodes"
dialog, no node with errors, the widgets the frontend made are the ones tests/workflow_schema.py
predicts (so test_workflows.py reads widgets_values right), the values are the file's, and
app.graphToPrompt() gives exactly the API twin. Screenshots go to test-artifacts/browser/.
"""

import json
import os
import shutil
import urllib.request
from pathlib import Path

import pytest
from conftest import load_script_module
from workflow_files import PACK_ROOT, WORKFLOW_NAMES, load_api, load_ui
from workflow_schema import FRONTEND_ONLY, widgets

pytestmark = [pytest.mark.browser, pytest.mark.server]


_BUILD = load_script_module("build_workflows")  # the one place that knows how to launch chromium
CHROMIUM = _BUILD.CHROMIUM
CHROMIUM_FLAGS = _BUILD.CHROMIUM_FLAGS
ARTIFACTS = PACK_ROOT / "test-artifacts" / "browser"
APP_READY_MS = 120_000

NODE_STATE_JS = """
() => app.graph.nodes.map((n) => ({
  id: n.id,
  type: n.type,
  has_errors: !!n.has_errors,
  widgets: (n.widgets || []).filter((w) => w.serialize !== false).map((w) => w.name),
  values: n.serialize().widgets_values ?? [],
}))
"""
# The missing-nodes dialog's text in frontend 1.32.9 (comfyui_notes.md); any other open dialog too.
DIALOGS_JS = """
() => [...document.querySelectorAll('.p-dialog')].map((d) => d.innerText.slice(0, 300))
"""


def _chromium_or_skip() -> str:
    found = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        found = None
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium or playwright is missing on CI: scripts/setup.sh installs both")
        pytest.skip(
            "no /usr/bin/chromium or playwright here (scripts/setup.sh installs them); required on CI"
        )
    return found


@pytest.fixture(scope="module")
def frontend(comfy_server):
    """A headless chromium page with the ComfyUI frontend served by the session's server."""
    executable = _chromium_or_skip()
    from playwright.sync_api import sync_playwright

    # A returning user: no templates dialog over the canvas. (POST /settings/<id> answers no JSON.)
    request = urllib.request.Request(
        comfy_server.base_url + "/settings/Comfy.TutorialCompleted",
        data=b"true",
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(request, timeout=10).close()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 900})
            page.errors = []
            page.on("pageerror", lambda error: page.errors.append(str(error)))
            page.goto(comfy_server.base_url + "/", wait_until="domcontentloaded")
            page.wait_for_function("() => window.app?.graph?.nodes?.length > 0", timeout=APP_READY_MS)
            yield page
        finally:
            browser.close()


@pytest.mark.slow
@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_workflow_opens_in_the_frontend(frontend, comfy_server, name):
    page = frontend
    workflow = load_ui(name)
    page.errors.clear()
    page.evaluate("async (wf) => { await app.loadGraphData(wf); }", workflow)
    page.wait_for_timeout(300)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))

    dialogs = page.evaluate(DIALOGS_JS)
    assert not any("missing nodes" in text.lower() for text in dialogs), dialogs
    assert not dialogs, f"a dialog opened on loading {name}: {dialogs}"
    assert not page.errors, f"page errors while loading {name}: {page.errors}"

    state = {str(n["id"]): n for n in page.evaluate(NODE_STATE_JS)}
    assert sorted(state) == sorted(str(n["id"]) for n in workflow["nodes"])
    assert not [n["type"] for n in state.values() if n["has_errors"]]
    ld3 = sorted(n["type"] for n in state.values() if n["type"].startswith("LD3"))
    assert ld3 and ld3 == sorted(n["type"] for n in workflow["nodes"] if n["type"].startswith("LD3"))

    object_info = comfy_server.object_info()
    for node in workflow["nodes"]:
        live = state[str(node["id"])]
        assert live["type"] == node["type"]
        if node["type"] not in FRONTEND_ONLY:
            expected = [w.name for w in widgets(object_info[node["type"]])]
            assert live["widgets"] == expected, f"{node['type']}: the frontend made other widgets"
        assert live["values"] == (node.get("widgets_values") or []), f"{node['type']}: values changed"

    prompt = page.evaluate("async () => JSON.stringify((await app.graphToPrompt()).output)")
    assert json.loads(prompt) == load_api(name), "graphToPrompt differs from the API twin"


SEED_WIDGETS_JS = PACK_ROOT / "web" / "ld3.js"


def _seed_layouts() -> dict[str, tuple[int, int]]:
    """web/ld3.js's table: node type -> (index of the seed among its widget values, how many there are)."""
    import re

    text = SEED_WIDGETS_JS.read_text()
    return {m[0]: (int(m[1]), int(m[2])) for m in re.findall(r"(LD3\w+): \[(\d+), (\d+)\]", text)}


def test_the_seed_layouts_match_the_node_definitions(comfy_server):
    info = comfy_server.object_info()
    layouts = _seed_layouts()
    assert set(layouts) == {"LD3DemoModel", "LD3GenerateTeacher", "LD3TrainSigmas"}
    for node_type, (seed, count) in layouts.items():
        names = [w.name for w in widgets(info[node_type])]
        assert names.index("seed") == seed and len(names) == count, (node_type, names)


@pytest.mark.slow
def test_a_workflow_saved_with_the_old_seed_widgets_loads_its_values(frontend):
    """Workflows saved before the seeds lost their 'control after generate' widget store one more value
    after each seed; web/ld3.js drops it so every later value lands in its own widget."""
    page = frontend
    current = load_ui("ld3_demo")
    old = json.loads(json.dumps(current))
    layouts = _seed_layouts()
    for node in old["nodes"]:
        if node["type"] in layouts:
            node["widgets_values"].insert(layouts[node["type"]][0] + 1, "randomize")
    page.errors.clear()
    page.evaluate("async (wf) => { await app.loadGraphData(wf); }", old)
    page.wait_for_timeout(300)
    state = {str(n["id"]): n for n in page.evaluate(NODE_STATE_JS)}
    for node in current["nodes"]:
        assert state[str(node["id"])]["values"] == (node.get("widgets_values") or []), node["type"]
    assert not page.errors, page.errors
