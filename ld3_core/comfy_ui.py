"""Text for the user in ComfyUI's frontend, from inside a running prompt.

ComfyUI's progress text (``PromptServer.send_progress_text(text, node_id)``, the websocket's binary TEXT
event; in ComfyUI 0.3.75 and 0.38.1) is what frontend 1.32.9 shows on a node, under its widgets, with
line breaks kept. A node's ``ui`` text output, by contrast, is only shown by core preview nodes
(PreviewAny renders it as Markdown); it stays in /history for API users. The node being executed comes
from ``comfy_execution.utils.get_executing_context()`` (0.3.75 and 0.38.1). Outside a prompt (tests,
scripts) the text only goes to the log.
"""

from __future__ import annotations

import logging


def show_on_node(text: str) -> bool:
    """Show ``text`` on the node being executed; False when no prompt is running (nothing shown)."""
    try:
        from comfy_execution.utils import get_executing_context
        from server import PromptServer
    except ImportError:
        return False
    context = get_executing_context()
    server = getattr(PromptServer, "instance", None)
    if context is None or server is None or not hasattr(server, "send_progress_text"):
        return False
    server.send_progress_text(text, context.node_id)
    return True


def notify_user(text: str) -> None:
    """A warning: in the log, and on the node being executed (e.g. KSampler sampling an LD3 MODEL)."""
    logging.warning(text)
    show_on_node(text)


def as_markdown(text: str) -> str:
    """Plain report lines as Markdown paragraphs, so PreviewAny (which renders Markdown) keeps them apart."""
    return "\n\n".join(line for line in text.splitlines() if line.strip())
