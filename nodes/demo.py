"""LD3 Demo Model: an exact Gaussian-mixture "diffusion model" that needs no download."""

from comfy_api.latest import io

from ..ld3_core.comfyui.mixture_model import demo_model
from ._common import data_seed, refuse_if_incompatible

# Latent channels per kind: SD1.x has 4, Flux 16 (so a flux demo has the latent shape Flux has).
DEMO_CHANNELS = {"eps": 4, "flow": 4, "flux": 16}


class LD3DemoModel(io.ComfyNode):
    """A MODEL whose denoiser is exact (a Gaussian mixture): try LD3 in a minute on a CPU."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LD3DemoModel",
            display_name="LD3 Demo Model (exact Gaussian mixture)",
            category="LD3",
            description=(
                "A zero-download demo model: the data distribution is a Gaussian mixture in a latent "
                "space of 4 channels, 16 for flux (four separated clusters of four overlapping components), so the denoiser is "
                "exact and fast, and every sampler's error is real ODE error. Outputs a MODEL (SD1.x-style eps or rectified-flow), conditioning it ignores, and an "
                "empty LATENT of its shape, ready for LD3 Generate Teacher, KSampler or SamplerCustom."
            ),
            inputs=[
                io.Combo.Input(
                    "kind",
                    options=["eps", "flow", "flux"],
                    default="eps",
                    tooltip="eps: SD1.x's discrete noise schedule with eps prediction. flow: rectified flow "
                    "(SD3's sampling). flux: rectified flow with Flux's sampling (shift 1.15) and 16 latent channels.",
                ),
                io.Int.Input(
                    "width", default=16, min=1, max=256, tooltip="Latent width of the mixture's samples."
                ),
                io.Int.Input(
                    "height", default=16, min=1, max=256, tooltip="Latent height of the mixture's samples."
                ),
                data_seed("Seed of the mixture (its means, spreads and weights)."),
            ],
            outputs=[
                io.Model.Output(
                    display_name="model", tooltip="The exact mixture denoiser as a ComfyUI MODEL."
                ),
                io.Conditioning.Output(
                    display_name="positive", tooltip="Conditioning (ignored by the model)."
                ),
                io.Conditioning.Output(
                    display_name="negative", tooltip="Conditioning (ignored by the model)."
                ),
                io.Latent.Output(display_name="latent", tooltip="An empty latent of the mixture's shape."),
            ],
        )

    @classmethod
    def execute(cls, kind: str, width: int, height: int, seed: int) -> io.NodeOutput:
        refuse_if_incompatible()
        return io.NodeOutput(*demo_model(kind, (DEMO_CHANNELS[kind], height, width), seed))
