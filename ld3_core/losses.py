"""Training losses: LPIPS in pixel space through a differentiable VAE decode, or L2 in latent space.

A loss object is used as ``prepared = loss.prepare(teacher_latents)`` once, then
``loss(student_latents, prepared[batch]) -> per-sample loss [B]``.
"""

from __future__ import annotations

import torch
import torch.utils.checkpoint

from .comfyui.vae import VAEDecoder
from .errors import LD3InputError
from .lpips_loss import load_lpips, lpips_distance

LOSSES = ("lpips", "l2")


class L2Loss:
    """Root-mean-square distance per sample in latent space, over every non-batch dimension (any shape).

    A distance, not a squared distance, like LPIPS: a sample that lands in another mode is ~10x as far
    from its teacher as a typical one, so squared it would weigh ~100x and one such sample would decide
    the mean loss, its gradient and the best-by-validation choice. It is also the per-sample RMSE that
    LD3 Compare Sigmas and the benchmarks report.
    """

    name = "l2"
    eps = 1e-12  # keeps the gradient finite where the student lands exactly on the teacher

    def prepare(self, targets: torch.Tensor) -> torch.Tensor:
        return targets

    def __call__(self, out: torch.Tensor, prepared: torch.Tensor) -> torch.Tensor:
        diff = out.float() - prepared.to(out.device, torch.float32)
        return (diff.pow(2).flatten(1).mean(1) + self.eps).sqrt()


class LPIPSLoss:
    """LPIPS between decoded student and teacher images (paper Sec. 4: the VAE is inside the graph)."""

    name = "lpips"

    def __init__(self, vae, lpips_weights: str | None, device=None, batch_size: int = 4):
        self.decoder = VAEDecoder(vae)
        # Built outside inference mode (ComfyUI runs nodes under it): backward must save its weights.
        with torch.inference_mode(False):
            self.lpips = load_lpips(lpips_weights, device=device or self.decoder.device)
        self.batch_size = batch_size

    def prepare(self, targets: torch.Tensor) -> torch.Tensor:
        """Decode the teacher latents once (no gradients), kept on the CPU as [M, frames, C, H, W]."""
        chunks = []
        with torch.no_grad():
            for i in range(0, len(targets), self.batch_size):
                chunk = targets[i : i + self.batch_size]
                pixels = self.decoder(chunk).cpu()
                chunks.append(pixels.view(len(chunk), -1, *pixels.shape[1:]))
        return torch.cat(chunks)

    def __call__(self, out: torch.Tensor, prepared: torch.Tensor) -> torch.Tensor:
        pixels = self.decoder(out)
        reference = prepared.flatten(0, 1).to(pixels.device)
        return lpips_distance(self.lpips, pixels, reference).view(out.shape[0], -1).mean(1)


def make_loss(kind: str, vae=None, lpips_weights: str | None = None, device=None):
    """The training loss object for ``kind`` ("lpips" or "l2")."""
    if kind == "l2":
        return L2Loss()
    if kind != "lpips":
        raise LD3InputError("loss", f"unknown loss '{kind}'", f"Choose one of: {', '.join(LOSSES)}")
    if vae is None:
        raise LD3InputError(
            "vae",
            "LPIPS compares images, and this latent model needs its VAE to decode them",
            "Connect the model's VAE (e.g. from the checkpoint loader), or choose the L2 loss",
        )
    return LPIPSLoss(vae, lpips_weights, device)
