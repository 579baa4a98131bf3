"""Euclidean projection onto the (capped) simplex, batched and differentiable, in torch.

    project_capped_simplex(y, low, high, total)  ->  argmin_x ||x - y||  s.t.  low <= x <= high, sum(x) = total
    project_simplex(y, total=1)                  ->  the same with low = 0 and no upper cap

The solution is x_i = clip(y_i - tau, low_i, high_i) for the one tau at which the sum equals
``total`` (the KKT conditions of the projection). tau is found without gradients, either exactly
from the sorted breakpoints {y_i - high_i, y_i - low_i} (``method="sort"``, O(n log n) per row; the
default up to 64 components) or by bisection (``method="bisect"``, O(n) per step, for fields of
thousands of pixels), in float64 whatever the input dtype. Then, with the active set fixed, tau is
recomputed differentiably as

    tau = (sum_{free} y_i + sum_{at low} low_i + sum_{at high} high_i - total) / |free|,

so autograd differentiates through the active set: the gradient is exact wherever the active set
does not change (almost everywhere). Outputs meet the bounds exactly (they are clipped values) and
the sum to rounding error (a few 1e-8 in float32): no renormalisation afterwards.

Written by hand because no maintained library offers a batched, differentiable capped-simplex
projection for torch on GPU (cvxpylayers solves a generic conic program per row, far slower).
"""

from __future__ import annotations

from typing import Literal

import torch

SORT_UP_TO = 64  # components; above this "auto" bisects (a field of 64 x 64 pixels has 4096)


def _as_rows(value, like: torch.Tensor, name: str) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    try:
        return torch.broadcast_to(t, like.shape)
    except RuntimeError:
        raise ValueError(f"{name} of shape {tuple(t.shape)} does not broadcast to the input's {tuple(like.shape)}") from None


def _sums(y: torch.Tensor, low: torch.Tensor, high: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    return torch.clamp(y.unsqueeze(-2) - tau.unsqueeze(-1), low.unsqueeze(-2), high.unsqueeze(-2)).sum(-1)


def _threshold_sort(y, low, high, total) -> torch.Tensor:
    """tau exactly: the sum is piecewise linear and decreasing in tau between sorted breakpoints."""
    breaks, _ = torch.sort(torch.cat([y - high, y - low], dim=-1), dim=-1)  # (..., 2n)
    sums = _sums(y, low, high, breaks)  # (..., 2n), non-increasing
    # the last breakpoint whose sum is still >= total starts the segment holding tau
    above = (sums >= total.unsqueeze(-1)).sum(-1).clamp(1, breaks.shape[-1] - 1) - 1
    left, right = breaks.gather(-1, above[..., None])[..., 0], breaks.gather(-1, above[..., None] + 1)[..., 0]
    s_left, s_right = sums.gather(-1, above[..., None])[..., 0], sums.gather(-1, above[..., None] + 1)[..., 0]
    span = s_left - s_right
    fraction = torch.where(span > 0, (s_left - total) / torch.where(span > 0, span, torch.ones_like(span)),
                           torch.zeros_like(span))
    return left + fraction.clamp(0, 1) * (right - left)


def _threshold_bisect(y, low, high, total, steps: int = 100) -> torch.Tensor:
    lo_tau = (y - high).min(-1).values
    hi_tau = (y - low).max(-1).values
    for _ in range(steps):
        mid = 0.5 * (lo_tau + hi_tau)
        too_big = torch.clamp(y - mid[..., None], low, high).sum(-1) > total
        lo_tau = torch.where(too_big, mid, lo_tau)
        hi_tau = torch.where(too_big, hi_tau, mid)
    return 0.5 * (lo_tau + hi_tau)


def project_capped_simplex(y: torch.Tensor, low=0.0, high=1.0, total=1.0, *,
                           method: Literal["auto", "sort", "bisect"] = "auto") -> torch.Tensor:
    """Project each row (last dimension) of ``y`` onto {low <= x <= high, sum(x) = total}.

    ``low``, ``high`` broadcast to ``y``; ``total`` is a scalar or one value per row. Raises
    ValueError when a row's set is empty (sum(low) > total or sum(high) < total).
    """
    if not torch.is_floating_point(y):
        raise TypeError(f"y must be a floating-point tensor, got {y.dtype}")
    if y.dim() == 0:
        raise ValueError("y needs at least one dimension (the components)")
    low_t, high_t = _as_rows(low, y, "low"), _as_rows(high, y, "high")
    total_t = torch.as_tensor(total, dtype=y.dtype, device=y.device)
    total_t = torch.broadcast_to(total_t, y.shape[:-1]) if total_t.dim() <= y.dim() - 1 else total_t
    if total_t.shape != y.shape[:-1]:
        raise ValueError(f"total of shape {tuple(total_t.shape)}: give a scalar or one per row {tuple(y.shape[:-1])}")
    with torch.no_grad():
        for name, value in (("y", y), ("low", low_t), ("high", high_t), ("total", total_t)):
            if not torch.all(torch.isfinite(value)):
                raise ValueError(f"{name} holds NaN or infinite values; the projection needs finite numbers")
        if torch.any(low_t > high_t):
            raise ValueError("every lower bound must be <= its upper bound")
        slack = 1e-6 * (total_t.abs() + 1)
        if torch.any(low_t.sum(-1) > total_t + slack) or torch.any(high_t.sum(-1) < total_t - slack):
            raise ValueError("empty set: the lower bounds sum above the total, or the upper bounds below it")
        y64, lo64, hi64, t64 = (v.detach().double() for v in (y, low_t, high_t, total_t))
        if method == "sort" or (method == "auto" and y.shape[-1] <= SORT_UP_TO):
            tau = _threshold_sort(y64, lo64, hi64, t64)
        elif method in ("bisect", "auto"):
            tau = _threshold_bisect(y64, lo64, hi64, t64)
        else:
            raise ValueError(f"method {method!r}: use 'auto', 'sort' or 'bisect'")
        shifted = y64 - tau[..., None]
        at_low = shifted <= lo64
        at_high = (shifted >= hi64) & ~at_low  # a component with equal bounds is fixed once, not twice
        free = ~(at_low | at_high)
    # tau again, differentiably, from the active set (see the module docstring); in float64 so that a
    # float32 output is each exact value rounded once, its sum within a few ulps of the total
    y_d, low_d, high_d, total_d = y.double(), low_t.double(), high_t.double(), total_t.double()
    count = free.sum(-1)
    zero = torch.zeros_like(y_d)
    fixed = torch.where(at_low, low_d, zero).sum(-1) + torch.where(at_high, high_d, zero).sum(-1)
    exact_tau = (torch.where(free, y_d, zero).sum(-1) + fixed - total_d) / count.clamp_min(1).double()
    tau_out = torch.where(count > 0, exact_tau, tau)
    return torch.where(free, y_d - tau_out[..., None], torch.where(at_low, low_d, high_d)).to(y.dtype)


def project_simplex(y: torch.Tensor, total=1.0, **kwargs) -> torch.Tensor:
    """Project each row of ``y`` onto the probability simplex scaled to ``total`` (x >= 0, sum = total)."""
    total_t = torch.as_tensor(total, dtype=y.dtype, device=y.device)
    if torch.any(total_t < 0):
        raise ValueError("the simplex total must be >= 0")
    # x <= total holds on the simplex anyway; capping there keeps every breakpoint finite.
    high = total_t[..., None] if total_t.dim() else total_t
    return project_capped_simplex(y, 0.0, high, total_t, **kwargs)


class CappedSimplexProjection(torch.nn.Module):
    """The projection as a layer with fixed bounds (e.g. a decoder's last layer: element bounds, sum 1)."""

    def __init__(self, low, high, total: float = 1.0, method: Literal["auto", "sort", "bisect"] = "auto") -> None:
        super().__init__()
        self.register_buffer("low", torch.as_tensor(low, dtype=torch.get_default_dtype()))
        self.register_buffer("high", torch.as_tensor(high, dtype=torch.get_default_dtype()))
        self.total = total
        self.method = method

    def forward(self, y: torch.Tensor, total: torch.Tensor | float | None = None) -> torch.Tensor:
        return project_capped_simplex(y, self.low.to(y.dtype), self.high.to(y.dtype),
                                      self.total if total is None else total, method=self.method)
