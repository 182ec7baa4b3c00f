"""Nodes that reshape SIGMAS schedules; the numerics live in ld3_core.resample."""

import torch
from comfy_api.latest import io

from ..ld3_core.resample import resample_log_linear


class LD3LogLinearResample(io.ComfyNode):
    """Resample a SIGMAS schedule to another step count, log-linearly in the step index."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LD3LogLinearResample",
            display_name="LD3 Resample Sigmas",
            category="LD3",
            description=(
                "Resamples a SIGMAS schedule to another number of steps: the positive sigmas are "
                "interpolated linearly in log(sigma) over the step index, the first and last sigma "
                "are kept, and a trailing 0 stays at the end. Use it to start a learned or hand-made "
                "schedule from one with a different step count."
            ),
            inputs=[
                io.Sigmas.Input(
                    "sigmas",
                    tooltip="The schedule to resample: strictly decreasing noise levels, usually ending in 0.",
                ),
                io.Int.Input(
                    "steps",
                    default=8,
                    min=1,
                    max=1000,
                    tooltip="Number of steps of the resampled schedule (it has steps + 1 sigmas).",
                ),
            ],
            outputs=[io.Sigmas.Output()],
        )

    @classmethod
    def execute(cls, sigmas: torch.Tensor, steps: int) -> io.NodeOutput:
        return io.NodeOutput(resample_log_linear(sigmas, steps))
