"""Text for the user in ComfyUI's frontend, from inside a running prompt.

ComfyUI's progress text (``PromptServer.send_progress_text(text, node_id)``, the websocket's binary TEXT
event; in ComfyUI 0.3.75 and 0.38.1) is what frontend 1.32.9 shows on a node, under its widgets, with
line breaks kept. A node's ``ui`` text output, by contrast, is only shown by core preview nodes
(PreviewAny renders it as Markdown); it stays in /history for API users.

The core does not talk to the server: the nodes layer registers how to show text on the node being
executed (``set_node_text_sink``, done when the pack loads). Without it (tests, scripts) text only goes
to the log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

_sink: Callable[[str], bool] | None = None


def set_node_text_sink(sink: Callable[[str], bool] | None) -> None:
    """How to show text on the node being executed (returns whether it was shown)."""
    global _sink
    _sink = sink


def show_on_node(text: str) -> bool:
    """Show ``text`` on the node being executed; False when nothing could show it."""
    return bool(_sink is not None and _sink(text))


def notify_user(text: str) -> None:
    """A warning: in the log, and on the node being executed (e.g. KSampler sampling an LD3 MODEL)."""
    logging.warning(text)
    show_on_node(text)


def as_markdown(text: str) -> str:
    """Plain report lines as Markdown paragraphs, so PreviewAny (which renders Markdown) keeps them apart."""
    return "\n\n".join(line for line in text.splitlines() if line.strip())
