"""ComfyUI's VAE as a differentiable decoder for the LPIPS loss."""

from __future__ import annotations

import comfy.model_management
import torch

from ..errors import LD3InputError
from .adapter import weights_as_constants


class VAEDecoder:
    """ComfyUI's VAE decode (``first_stage_model.decode`` + ``process_output``) with gradients.

    ``VAE.decode`` moves results to the CPU and falls back to an inference-mode tiled decode, so the
    loss calls the first-stage model directly, checkpointed as one block to keep memory flat.
    """

    def __init__(self, vae):
        self.vae = vae
        with torch.inference_mode(False):
            comfy.model_management.load_models_gpu([vae.patcher])
            weights_as_constants(vae.first_stage_model)

    @property
    def device(self) -> torch.device:
        return self.vae.device

    def _decode(self, latent):
        vae = self.vae
        return vae.process_output(
            vae.first_stage_model.decode(latent.to(vae.vae_dtype).to(vae.device)).float()
        )

    def __call__(self, latent: torch.Tensor) -> torch.Tensor:
        """LATENT -> images [B, C, H, W] in [0, 1]; video latents give every frame as a batch item."""
        if torch.is_grad_enabled():
            pixels = torch.utils.checkpoint.checkpoint(self._decode, latent, use_reentrant=False)
        else:
            pixels = self._decode(latent)
        if pixels.ndim == 5:  # [B, C, T, H, W] -> [B*T, C, H, W]
            pixels = pixels.movedim(2, 1).flatten(0, 1)
        if pixels.ndim != 4 or pixels.shape[1] not in (1, 3):
            raise LD3InputError(
                "loss",
                f"LPIPS needs images, but this VAE decodes to shape {list(pixels.shape)}",
                "Use the L2 loss",
            )
        return pixels
