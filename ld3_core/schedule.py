"""A learned schedule: per step, the solver's sigma and what the network is told there (torch only).

Step i of a few-step solve carries three sigmas:

- ``step_sigmas`` s_i (N+1 values, s_0 = sigma_max, s_N = 0): where the solver steps; the SIGMAS a
  sampler is given;
- ``model_sigmas`` m_i (N): the time the network is told (its timestep input is ``timestep(m_i)``);
- ``scale_sigmas`` u_i (N): the sigma ComfyUI scales the network's input and output with
  (``calculate_input`` / ``calculate_denoised``). For an EPS model the denoised value is
  x - u * eps(x / sqrt(u^2 + 1), t(m)); for a flow model x - u * v(x, t(m)).

m = u = s is the plain schedule (what any built-in scheduler gives). u = m means "call the network at m"
(the official LD3 code's decoupled times); u = s with m free is the shifted-timestep idea (Li et al. 2023)
that LD3's paper cites. Letting both move is what the direct optimisation against exact ODE endpoints
found to carry most of the achievable gain (README, "How well it works").

A sigma the sampler passes between two steps (Heun's, DPM-2's or UniPC's extra evaluations) is mapped
by interpolating log(m / s) and log(u / s) linearly in log s between the steps, constant outside them,
so every step sigma maps exactly to its own (m_i, u_i).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Schedule:
    """Step sigmas [N+1] and, per step, the network's sigma m and the scaling sigma u ([N] each)."""

    step_sigmas: torch.Tensor
    model_sigmas: torch.Tensor
    scale_sigmas: torch.Tensor

    @classmethod
    def plain(cls, step_sigmas: torch.Tensor) -> Schedule:
        """The schedule a built-in scheduler gives: the network is told the step sigma itself."""
        return cls(step_sigmas, step_sigmas[:-1], step_sigmas[:-1])

    @property
    def steps(self) -> int:
        return self.step_sigmas.numel() - 1

    @property
    def is_plain(self) -> bool:
        """True when the network is told the step sigmas (no per-step model or scale sigma)."""
        s = self.step_sigmas[:-1]
        return bool(torch.equal(self.model_sigmas, s) and torch.equal(self.scale_sigmas, s))

    def detach(self) -> Schedule:
        """A float32 CPU copy without autograd history (what files, patches and results hold)."""
        return Schedule(*(t.detach().float().cpu().clone() for t in self.tensors()))

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.step_sigmas, self.model_sigmas, self.scale_sigmas

    def knots(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(s_0..s_{N-1}, m, u): the points the sigma map passes through exactly."""
        return self.step_sigmas[:-1], self.model_sigmas, self.scale_sigmas


def map_sigma(sigma: torch.Tensor, knot_sigmas: torch.Tensor, knot_values: torch.Tensor) -> torch.Tensor:
    """The sigma that ``sigma`` stands for: log(value / sigma) interpolated linearly in log sigma."""
    knot_log = knot_sigmas.to(sigma.device, sigma.dtype).log().flip(0)  # increasing
    knot_offset = knot_values.to(sigma.device, sigma.dtype).log().flip(0) - knot_log
    log_sigma = sigma.log()
    if knot_log.numel() == 1:
        return (log_sigma + knot_offset[0]).exp()
    idx = torch.searchsorted(knot_log.detach(), log_sigma.detach().reshape(-1)).reshape(log_sigma.shape)
    idx = idx.clamp(1, knot_log.numel() - 1)
    low, high = knot_log[idx - 1], knot_log[idx]
    w = ((log_sigma - low) / (high - low)).clamp(0, 1)
    offset = knot_offset[idx - 1] + w * (knot_offset[idx] - knot_offset[idx - 1])
    return (log_sigma + offset).exp()
