"""ComfyUI-LD3: learn few-step sampling schedules for your model (LD3, arXiv 2405.15506).

ComfyUI loads this file as a package under a path-derived name; nodes are registered through the
v3 API only (a NODE_CLASS_MAPPINGS here would make the loader skip comfy_entrypoint). ComfyUI has a
top-level module named `nodes`, so the pack's own nodes/ is always imported relatively.
"""

from comfy_api.latest import ComfyExtension, io

from .nodes import NODE_CLASSES

# The frontend extension (web/ld3.js): loads workflows saved with an earlier layout of the nodes' widgets.
WEB_DIRECTORY = "./web"


class LD3Extension(ComfyExtension):
    """The pack's node list, handed to ComfyUI's custom-node loader."""

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODE_CLASSES)


async def comfy_entrypoint() -> ComfyExtension:
    """Entry point ComfyUI 0.3.75 looks up (and awaits) when it loads the pack."""
    return LD3Extension()
