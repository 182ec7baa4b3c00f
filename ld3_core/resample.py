"""Resample a sigma schedule to another step count by log-linear interpolation (torch only)."""

import torch


def _check_sigmas(sigmas: torch.Tensor) -> None:
    """Raise ValueError unless sigmas is a finite, strictly decreasing 1-D schedule ending at >= 0."""
    if not isinstance(sigmas, torch.Tensor) or sigmas.ndim != 1:
        shape = tuple(sigmas.shape) if isinstance(sigmas, torch.Tensor) else type(sigmas).__name__
        raise ValueError(
            f"sigmas must be a 1-D tensor (a SIGMAS schedule), got {shape}: connect a scheduler's output."
        )
    if sigmas.numel() < 2:
        raise ValueError(
            f"sigmas has {sigmas.numel()} value(s), need at least 2 (one step): "
            "connect a schedule with at least one step."
        )
    if not torch.isfinite(sigmas).all():
        raise ValueError(f"sigmas contains non-finite values ({sigmas.tolist()}): connect a valid schedule.")
    if not (sigmas[1:] < sigmas[:-1]).all():
        raise ValueError(
            f"sigmas must be strictly decreasing, got {sigmas.tolist()}: "
            "connect a denoising schedule (high noise first), not a reversed or flat one."
        )
    if sigmas[-1] < 0:
        raise ValueError(f"sigmas ends below zero ({sigmas[-1].item()}): a schedule must end at 0 or above.")


def resample_log_linear(sigmas: torch.Tensor, steps: int) -> torch.Tensor:
    """Return a schedule of `steps` steps that follows `sigmas` log-linearly in the step index.

    The positive sigmas are interpolated linearly in log(sigma) over their fractional index, so the
    first and last positive sigma are kept exactly and a geometric schedule stays geometric. A
    trailing 0 in the input is kept as the output's last value. Output dtype and device follow the
    input.
    """
    _check_sigmas(sigmas)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}: set steps to 1 or more.")

    ends_at_zero = bool(sigmas[-1] == 0)
    positive = sigmas[:-1] if ends_at_zero else sigmas
    in_steps = sigmas.numel() - 1
    if steps == in_steps:
        return sigmas.clone()

    n_out = steps if ends_at_zero else steps + 1
    if positive.numel() < 2:
        raise ValueError(
            f"sigmas {sigmas.tolist()} has a single positive sigma before its trailing 0, so there is no "
            f"shape to resample to {steps} steps: connect a schedule with at least 2 steps."
        )

    # Interpolate in float64 so that resampling does not add rounding beyond the output dtype's.
    pos64 = positive.detach().to(torch.float64)
    log_pos = pos64.log()
    last = positive.numel() - 1
    where = torch.linspace(0.0, float(last), n_out, dtype=torch.float64, device=sigmas.device)
    lo = where.floor().long().clamp(max=last - 1)
    frac = where - lo.to(torch.float64)
    interpolated = torch.exp(torch.lerp(log_pos[lo], log_pos[lo + 1], frac))
    # At whole indices, take the input value itself (exp(log(x)) need not round-trip exactly).
    on_grid = frac == 0
    interpolated = torch.where(on_grid, pos64[lo], interpolated)
    interpolated[0] = pos64[0]
    if n_out > 1:
        interpolated[-1] = pos64[-1]

    out = interpolated.to(sigmas.dtype)
    if ends_at_zero:
        out = torch.cat([out, sigmas.new_zeros(1)])
    return out
