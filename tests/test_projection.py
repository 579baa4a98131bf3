"""Simplex and capped-simplex projection: exact against a generic solver, constraints held, gradients right."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from sdl.surrogates.projection import CappedSimplexProjection, project_capped_simplex, project_simplex


def reference_projection(y: np.ndarray, low: np.ndarray, high: np.ndarray, total: float) -> np.ndarray:
    """argmin ||x - y||^2 s.t. bounds and sum by a generic constrained solver (SLSQP)."""
    n = len(y)
    start = np.clip(np.full(n, total / n), low, high)
    result = minimize(lambda v: ((v - y) ** 2).sum(), start, jac=lambda v: 2 * (v - y), method="SLSQP",
                      bounds=list(zip(low, high)),
                      constraints=[{"type": "eq", "fun": lambda v: v.sum() - total, "jac": lambda v: np.ones(n)}],
                      options={"ftol": 1e-15, "maxiter": 1000})
    assert result.success, result.message
    return result.x


@pytest.mark.parametrize("method", ["sort", "bisect"])
def test_capped_simplex_matches_a_generic_solver(method):
    rng = np.random.default_rng(0)
    for _ in range(40):
        n = int(rng.integers(2, 9))
        low = rng.uniform(0, 0.1, n)
        high = low + rng.uniform(0.05, 0.8, n)
        total = float(rng.uniform(low.sum() + 1e-3, min(high.sum(), 1.5) - 1e-3)) if high.sum() > low.sum() + 2e-3 else low.sum()
        y = rng.normal(0, 0.5, n)
        ours = project_capped_simplex(torch.tensor(y)[None], torch.tensor(low), torch.tensor(high), total, method=method)
        assert np.allclose(ours[0].numpy(), reference_projection(y, low, high, total), atol=1e-6)


def test_simplex_matches_a_generic_solver_and_scales():
    rng = np.random.default_rng(1)
    y = rng.normal(0, 1, (20, 5))
    ours = project_simplex(torch.tensor(y), total=2.0).numpy()
    for i in range(20):
        assert np.allclose(ours[i], reference_projection(y[i], np.zeros(5), np.full(5, 2.0), 2.0), atol=1e-6)
    # points already on the simplex stay where they are
    on = torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    assert torch.allclose(project_simplex(on), on)


def test_every_float32_output_meets_the_constraints_without_renormalising():
    torch.manual_seed(0)
    y = torch.randn(100_000, 8) * 0.7
    low = torch.tensor([0.45, 0.02, 0.0, 0.0, 0.0, 0.0, 0.01, 0.0])
    high = torch.tensor([0.98, 0.145, 0.185, 0.185, 0.1, 0.05, 0.2, 0.3])
    x = project_capped_simplex(y, low, high, 1.0)
    assert x.dtype == torch.float32
    assert torch.all(x >= low) and torch.all(x <= high)  # exactly: bounds are clipped values
    assert (x.double().sum(-1) - 1.0).abs().max() <= 1e-6
    # a two-phase field: pixels in [0, 1], mean = the prescribed volume fraction, by bisection
    field = torch.rand(32, 64 * 64) * 2 - 0.5
    fraction = torch.rand(32) * 0.8 + 0.1
    out = project_capped_simplex(field, 0.0, 1.0, fraction * field.shape[-1])
    assert (out.double().mean(-1) - fraction.double()).abs().max() <= 1e-6
    assert out.min() >= 0 and out.max() <= 1


def test_gradients_are_right_through_the_active_set():
    torch.manual_seed(1)
    low = torch.tensor([0.0, 0.05, 0.0, 0.1, 0.0], dtype=torch.float64)
    high = torch.tensor([0.6, 0.3, 0.5, 0.5, 0.4], dtype=torch.float64)
    y = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: project_capped_simplex(v, low, high, 1.0), (y,))
    total = torch.tensor([0.9, 1.0, 1.1, 1.2], dtype=torch.float64, requires_grad=True)
    bounds = (low.clone().requires_grad_(), high.clone().requires_grad_())
    assert torch.autograd.gradcheck(lambda v, t, lo, hi: project_capped_simplex(v, lo, hi, t), (y, total, *bounds))
    field = torch.rand(2, 300, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: project_capped_simplex(v, 0.0, 1.0, 90.0, method="bisect"), (field,))
    # the sum is fixed, so the gradient of the sum of outputs is zero
    y2 = torch.randn(3, 6, requires_grad=True)
    project_simplex(y2).sum().backward()
    assert torch.allclose(y2.grad, torch.zeros_like(y2.grad), atol=1e-6)


def test_bad_input_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="empty set"):
        project_capped_simplex(torch.zeros(1, 3), 0.5, 1.0, 1.0)
    with pytest.raises(ValueError, match="empty set"):
        project_capped_simplex(torch.zeros(1, 3), 0.0, 0.2, 1.0)
    with pytest.raises(ValueError, match="lower bound"):
        project_capped_simplex(torch.zeros(1, 2), torch.tensor([0.5, 0.0]), torch.tensor([0.4, 1.0]), 0.5)
    with pytest.raises(TypeError, match="floating-point"):
        project_simplex(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="method"):
        project_capped_simplex(torch.zeros(1, 3), 0.0, 1.0, 1.0, method="newton")


def test_layer_keeps_its_bounds_on_the_input_device_and_dtype():
    layer = CappedSimplexProjection([0.45, 0.02, 0.0, 0.0], [0.98, 0.145, 0.185, 0.185])
    out = layer(torch.randn(7, 4, dtype=torch.float64))
    assert out.dtype == torch.float64 and torch.allclose(out.sum(-1), torch.ones(7, dtype=torch.float64))
    assert torch.all(out[:, 1] <= 0.145)


@pytest.mark.parametrize("method", ["sort", "bisect"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_component_with_equal_bounds_is_counted_once(method, dtype):
    """Issue 18: lo == hi made a fixed component both active-low and active-high in the differentiable
    recomputation of tau; 1,771 of 10,000 feasible rows came back outside the bounds."""
    generator = torch.Generator().manual_seed(0)
    low = torch.tensor([0.2, 0.0, 0.0, 0.1], dtype=dtype)
    high = torch.tensor([0.2, 0.6, 0.6, 0.5], dtype=dtype)
    y = torch.rand(10_000, 4, generator=generator, dtype=torch.float64).to(dtype)
    y = project_capped_simplex(y, low, high, 1.0, method=method)  # feasible rows, the case that failed
    y.requires_grad_(True)
    x = project_capped_simplex(y, low, high, 1.0, method=method)
    tolerance = 1e-6 if dtype == torch.float32 else 1e-12
    assert torch.all(x >= low - tolerance) and torch.all(x <= high + tolerance)
    assert torch.allclose(x.sum(-1), torch.ones((), dtype=dtype), atol=1e-5 if dtype == torch.float32 else 1e-12)
    assert torch.allclose(x, y, atol=tolerance)  # a feasible point is its own projection
    x.sum().backward()
    assert torch.all(torch.isfinite(y.grad))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_infinite_inputs_are_refused(bad):
    y = torch.tensor([[0.2, bad, 0.3]])
    with pytest.raises(ValueError, match="y holds NaN or infinite values"):
        project_capped_simplex(y, 0.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="high holds NaN or infinite values"):
        project_capped_simplex(torch.zeros(1, 3), 0.0, torch.tensor([1.0, bad, 1.0]), 1.0)
    with pytest.raises(ValueError, match="total holds NaN or infinite values"):
        project_capped_simplex(torch.zeros(1, 3), 0.0, 1.0, bad)


def _kkt_gap(x: np.ndarray, y: np.ndarray, low: np.ndarray, high: np.ndarray, eps: float) -> float:
    """How far x is from optimal for min ||x - y|| on {low <= x <= high, sum x = total}: with g = y - x,
    optimality (KKT) is max g over components below their upper bound <= min g over those above their
    lower bound (then a tau lies between). Returns max(0, that max - that min)."""
    g = y - x
    below_high, above_low = x < high - eps, x > low + eps
    if not below_high.any() or not above_low.any():
        return 0.0
    return max(0.0, float(g[below_high].max() - g[above_low].min()))


@st.composite
def _projection_cases(draw):
    """Random and degenerate rows: equal bounds, tied inputs, already feasible points, totals at the ends
    of the feasible range (a single feasible point)."""
    n = draw(st.integers(1, 8))
    value = st.floats(-2.0, 2.0, allow_nan=False)
    low = np.array([draw(st.sampled_from([0.0, 0.05, 0.1, draw(st.floats(0.0, 0.3))])) for _ in range(n)])
    width = np.array([draw(st.sampled_from([0.0, 0.2, 1.0, draw(st.floats(0.0, 0.7))])) for _ in range(n)])
    high = low + width
    share = draw(st.sampled_from([0.0, 1.0, draw(st.floats(0.0, 1.0))]))
    total = low.sum() + share * (high.sum() - low.sum())
    kind = draw(st.sampled_from(["random", "ties", "feasible"]))
    if kind == "random":
        y = np.array([draw(value) for _ in range(n)])
    elif kind == "ties":
        y = np.array([draw(st.sampled_from([0.0, 0.25, 0.5])) for _ in range(n)])
    else:  # a feasible point: low + share of each width, then the remaining total spread evenly
        y = low + share * width
    return y, low, high, total


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", ["sort", "bisect"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_projection_cases())
def test_the_projection_is_exact_on_random_and_degenerate_rows(case, method, dtype):
    """Property-based, against two independent references: the KKT conditions and SLSQP's solution."""
    y, low, high, total = case
    x = project_capped_simplex(torch.tensor(y, dtype=dtype), torch.tensor(low, dtype=dtype),
                               torch.tensor(high, dtype=dtype), float(total), method=method).double().numpy()
    tolerance = 2e-6 if dtype == torch.float32 else 1e-10
    y64, low, high = (torch.tensor(v, dtype=dtype).double().numpy() for v in (y, low, high))  # as it saw them
    assert np.all(x >= low - tolerance) and np.all(x <= high + tolerance)
    assert abs(x.sum() - total) <= tolerance * max(1, len(x))
    assert _kkt_gap(x, y64, low, high, eps=10 * tolerance) <= 100 * tolerance
    reference = minimize(lambda v: 0.5 * np.sum((v - y64) ** 2), np.clip(np.full_like(y64, total / len(y64)), low, high),
                         jac=lambda v: v - y64, bounds=list(zip(low, high)), method="SLSQP",
                         constraints=[{"type": "eq", "fun": lambda v: v.sum() - total, "jac": lambda v: np.ones_like(v)}],
                         options={"ftol": 1e-14, "maxiter": 500})
    if reference.success:  # ours is never worse than the generic solver's
        assert 0.5 * np.sum((x - y64) ** 2) <= reference.fun + 1e-6
