"""ComfyUI nodes of the pack (thin glue over ld3_core); NODE_CLASSES lists every node class."""

from .schedule_tools import LD3LogLinearResample

NODE_CLASSES: list = [
    LD3LogLinearResample,
]
