"""LD3's parameterisation of a schedule (paper Sec. 3.1-3.3, extended); torch only.

Step sigmas come from ``step_logits`` by a cumulative softmax between fixed endpoints: sigma_max and the
trailing 0 are constants (their gradients would be NaN through log 0). The softmax lives in
``sigma ** (1 / rho)`` space (Karras et al.'s warp, rho = 7), where the usual schedules have gaps of
similar size, so a logit step means about the same everywhere; the map is monotone by construction.

What the network is told at each step (``schedule.py``) is an offset in log-sigma from the step sigma,
per step, with one of three freedoms:

- ``steps``: none (m = u = s);
- ``window``: the paper's decoupled time: m only (u = s), clipped to half the neighbouring log-gaps,
  the first step pinned;
- ``full``: m and u both free inside the model's sigma range, the first step included. Validation,
  not a window, decides how far they move.
"""

from __future__ import annotations

import math

import torch

from .schedule import Schedule

RHO = 7.0
SIGMA_FLOOR = 1e-20  # interior sigmas stay >= sigma_max * SIGMA_FLOOR (never exactly 0)


def sigmas_from_logits(step_logits: torch.Tensor, sigma_max: float, rho: float = RHO) -> torch.Tensor:
    """tau'(i) = sum_{n >= i} softmax(xi)[n] (paper Eq. 6), mapped to [0, sigma_max]: N logits -> N+1 sigmas."""
    fractions = torch.softmax(step_logits, dim=0)
    remaining = fractions.flip(0).cumsum(0).flip(0)  # remaining[i] = sum_{n >= i} fractions[n]
    u_max = float(sigma_max) ** (1.0 / rho)
    # remaining[1] can round above 1 when softmax(xi)[0] underflows; clamp so sigma_1 <= sigma_max.
    # The floor keeps interior sigmas positive (sigma^7 underflows to 0 for extreme logits, and the
    # samplers divide by sigma); it lies far below any schedule of up to 100 uniform rho-steps.
    floor = float(sigma_max) * SIGMA_FLOOR
    interior = ((u_max * remaining[1:]) ** rho).clamp(min=floor, max=float(sigma_max))
    first = step_logits.new_full((1,), float(sigma_max))
    last = step_logits.new_zeros(1)
    return torch.cat([first, interior, last])


def logits_from_sigmas(step_sigmas: torch.Tensor, rho: float = RHO) -> torch.Tensor:
    """Inverse of ``sigmas_from_logits`` for a decreasing schedule ending in 0 (up to a constant)."""
    u = step_sigmas.double().clamp_min(0) ** (1.0 / rho)
    gaps = (u[:-1] - u[1:]).clamp_min(1e-12 * float(u[0]))
    return (gaps / gaps.sum()).log().to(step_sigmas.dtype)


def offset_window(step_sigmas: torch.Tensor) -> torch.Tensor:
    """Half the smaller neighbouring log-gap of each evaluated sigma; 0 at sigma_max (kept fixed)."""
    # Clamped: extreme logits can underflow an interior sigma to 0 (log 0 would make every window NaN).
    log_sigma = step_sigmas[:-1].detach().clamp_min(torch.finfo(step_sigmas.dtype).tiny).log()
    gaps = log_sigma[:-1] - log_sigma[1:]  # between evaluated sigmas; the last step goes to 0
    left = torch.cat([gaps.new_zeros(1), gaps])
    right = torch.cat([gaps, gaps.new_full((1,), float("inf"))])
    window = 0.5 * torch.minimum(left, right)
    window[0] = 0.0
    return window


def eval_sigmas_from_offsets(step_sigmas: torch.Tensor, eval_offsets: torch.Tensor) -> torch.Tensor:
    """Network sigmas t_i^c = t_i * exp(xi^c_i), xi^c clipped to the window (paper Sec. 3.3)."""
    window = offset_window(step_sigmas)
    clipped = torch.maximum(torch.minimum(eval_offsets, window), -window)
    return step_sigmas[:-1] * clipped.exp()


FREEDOMS = ("full", "window", "steps")


class ScheduleParameters:
    """The free parameters of a schedule: step logits and, per step, log(m / s) and log(u / s)."""

    def __init__(
        self,
        start: torch.Tensor | Schedule,
        freedom: str = "full",
        sigma_range: tuple[float, float] | None = None,
        first_offset: float = 0.0,
        pin_first: bool = False,
    ):
        """Start at ``start`` (step sigmas [N+1], or a whole schedule); ``first_offset`` nudges m_0 and u_0.

        ``sigma_range`` (lowest, highest sigma the model knows) bounds m and u under ``full``. At the top
        of a flow model's range the gradient vanishes, so m_0 and u_0 start just below it (log units).
        """
        if freedom not in FREEDOMS:
            raise ValueError(f"freedom must be one of {FREEDOMS}, got {freedom!r}")
        if not isinstance(start, Schedule):
            start = Schedule.plain(start)
        step_sigmas = start.step_sigmas.detach().float()
        self.freedom = freedom
        self.pin_first = pin_first
        self.first_offset = first_offset
        self.sigma_max = float(step_sigmas[0])
        low, high = sigma_range if sigma_range is not None else (float(step_sigmas[-2]), self.sigma_max)
        self.log_range = (math.log(low), math.log(high))
        self.step_logits = logits_from_sigmas(step_sigmas).clone().requires_grad_(True)
        log_s = step_sigmas[:-1].log()
        model_offsets = start.model_sigmas.detach().float().log() - log_s
        scale_offsets = start.scale_sigmas.detach().float().log() - log_s
        if freedom == "full" and pin_first:
            model_offsets[0] = scale_offsets[0] = 0.0
        elif freedom == "full":
            model_offsets[0] += first_offset
            scale_offsets[0] += first_offset
        else:
            scale_offsets.zero_()
            if freedom == "steps":
                model_offsets.zero_()
        self.model_offsets = model_offsets.clone().requires_grad_(True)
        self.scale_offsets = scale_offsets.clone().requires_grad_(freedom == "full")
        self.project()

    @torch.no_grad()
    def tell_the_step_sigmas(self) -> None:
        """What the network is told back to the step sigmas (m = u = s; under ``full`` the first step
        nudged by ``first_offset`` unless pinned), inside the model's range: the start of training every
        sigma after the step sigmas alone."""
        self.model_offsets.zero_()
        self.scale_offsets.zero_()
        if self.freedom == "full" and not self.pin_first:
            self.model_offsets[0] = self.scale_offsets[0] = self.first_offset
        self.project()

    def offset_parameters(self) -> list[torch.Tensor]:
        """The parameters of what the network is told (none for ``steps``)."""
        return {"full": [self.model_offsets, self.scale_offsets], "window": [self.model_offsets]}.get(
            self.freedom, []
        )

    def schedule(self, decoupled: bool = True) -> Schedule:
        """The schedule now (differentiable); ``decoupled=False`` gives the plain one (phase 1)."""
        step_sigmas = sigmas_from_logits(self.step_logits, self.sigma_max)
        if not decoupled or self.freedom == "steps":
            return Schedule.plain(step_sigmas)
        if self.freedom == "window":
            model_sigmas = eval_sigmas_from_offsets(step_sigmas, self.model_offsets)
            return Schedule(step_sigmas, model_sigmas, step_sigmas[:-1])
        low, high = self.log_range
        log_s = step_sigmas[:-1].log()
        model_sigmas = (log_s + self.model_offsets).clamp(low, high).exp()
        scale_sigmas = (log_s + self.scale_offsets).clamp(low, high).exp()
        return Schedule(step_sigmas, model_sigmas, scale_sigmas)

    def state(self) -> tuple[torch.Tensor, ...]:
        """A copy of the parameters' values (``load_state`` puts them back)."""
        return tuple(p.detach().clone() for p in (self.step_logits, self.model_offsets, self.scale_offsets))

    @torch.no_grad()
    def load_state(self, state: tuple[torch.Tensor, ...]) -> None:
        for p, value in zip((self.step_logits, self.model_offsets, self.scale_offsets), state):
            p.copy_(value)

    @torch.no_grad()
    def project(self) -> None:
        """Keep m and u inside the model's sigma range (projected gradient steps; ``full`` only)."""
        if self.freedom != "full":
            return
        low, high = self.log_range
        log_s = sigmas_from_logits(self.step_logits, self.sigma_max)[:-1].log()
        for offsets in (self.model_offsets, self.scale_offsets):
            offsets.copy_(torch.maximum(torch.minimum(offsets, high - log_s), low - log_s))
            if self.pin_first:
                offsets[0] = 0.0


def ball_radius(gamma: float, dims: int, nfe: int) -> float:
    """r = gamma * d / NFE^2 (paper App. B.1)."""
    return gamma * dims / nfe**2


def project_to_ball(x_prime: torch.Tensor, x: torch.Tensor, radius: float) -> torch.Tensor:
    """Algorithm 1 line 6: project each sample of x' onto the L2 ball of the given radius around x."""
    delta = x_prime - x
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-30)
    scale = (radius / norms).clamp(max=1.0).view(-1, *([1] * (x.dim() - 1)))
    return x + delta * scale
