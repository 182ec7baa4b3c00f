"""ComfyUI nodes of the pack (thin glue over ld3_core); NODE_CLASSES lists every node class.

Importing this package registers the ``ld3`` KSampler scheduler and the ``ld3`` / ``lpips`` model
folders (idempotent): the nodes' dropdowns read them.
"""

from ._common import register_pack
from .compare import LD3CompareSigmas
from .demo import LD3DemoModel
from .load import LD3LoadSigmas
from .schedule_tools import LD3LogLinearResample
from .teacher import LD3GenerateTeacher, LD3LoadTeacher
from .train import LD3TrainSigmas

register_pack()

NODE_CLASSES: list = [
    LD3GenerateTeacher,
    LD3LoadTeacher,
    LD3TrainSigmas,
    LD3LoadSigmas,
    LD3CompareSigmas,
    LD3DemoModel,
    LD3LogLinearResample,
]
