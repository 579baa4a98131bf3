"""CALPHAD quantities as differentiable features of composition, from the planner's *own* database,
and the feasibility model built on them.

The BO planner (issue 19) can see, beside the composition, what thermodynamics says about it at the
campaign's heat treatment. The quantities come from the database the planner is configured with,
never the truth's: a lab's database is its belief, not the world. They are tabulated once, on a
grid over the design space and a ladder of temperatures, with :meth:`PhaseEquilibria.grid` (batched
pycalphad, cached on disk like the twin's tables), so a proposal costs no CALPHAD call at all.
:data:`FEATURES`:

- ``gamma_prime_at_ageing``: the equilibrium gamma-prime fraction at the ageing temperature, what
  precipitation strengthening grows from;
- ``brittle_at_ageing``: the brittle-phase fraction there;
- ``solution_margin_k``: how far, in kelvin, the solution temperature lies from the nearest
  temperature where the alloy stops being (or starts being) single gamma. It is positive when
  solutionising dissolves everything, and its size is the distance to the gamma-prime solvus;
- ``ageing_margin_k``: the same for "no brittle phase" at the ageing temperature;
- ``solvus_margin_k``: how far, in kelvin, the solution temperature lies above the gamma-prime
  solvus itself (where the last gamma-prime dissolves, :data:`SOLVUS_FRACTION`), not above the
  target state's tolerance. An alloy inside that tolerance may still keep a little gamma-prime
  through solutionising, which then coarsens at the solution temperature and is lost to hardening.

The margins are signed distances in temperature, not fractions. A fraction is flat (zero) over the
whole feasible region, so it cannot say *how* safe an alloy is. A margin can. A database that is
off by a shifted solvus is then off by a constant in the margin, which a one-parameter correction
(an offset) learns from a handful of verdicts (:class:`CalphadFeasibility`).

Evaluation is multilinear interpolation of the table in torch, so the features are differentiable
and the acquisition optimiser can follow them. Written by hand: ``grid_sample`` covers at most three
dimensions on normalised coordinates, and scipy's interpolators are not differentiable.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from sdl.env.calphad import BRITTLE, DEFAULT_DATABASE, PhaseEquilibria
from sdl.surrogates.phase_classifier import laplace_logistic_update, log_expected_logistic

FEATURES = ("gamma_prime_at_ageing", "brittle_at_ageing", "solution_margin_k", "ageing_margin_k", "solvus_margin_k")
# The gamma-prime fraction below which the solvus counts as crossed: every particle dissolved (the
# equilibrium fraction falls to zero there; a small threshold keeps the crossing off solver round-off).
SOLVUS_FRACTION = 1e-4
DEFAULT_LADDER_K = tuple(float(t) for t in range(900, 1501, 50))
# Around the campaign's own temperatures the ladder is refined: a crossing interpolated between
# ladder temperatures 50 K apart put Ni-12Al-18.5Co-18.5Cr's solution margin 20-28 K off the database's
# own (gamma-prime fraction is not linear in T near its solvus), which pushed the planner off the
# boundary where the hardest alloys are; at 10 K steps the error was under 5 K there.
FINE_STEP_K = 10.0
FINE_WINDOW_K = 60.0
DTYPE = torch.double


def temperature_margin(values: np.ndarray, temperatures_k: np.ndarray, at_k: float, tolerance: float) -> np.ndarray:
    """Signed distance (K) from ``at_k`` to the nearest temperature where ``values`` (T x points)
    crosses ``tolerance``: positive where the value at ``at_k`` is within tolerance, negative where
    not; capped at the ladder's ends. Crossings are interpolated linearly between ladder temperatures
    (refined near the temperatures that matter: :data:`FINE_STEP_K`)."""
    t = np.asarray(temperatures_k, dtype=float)
    k = int(np.argmin(np.abs(t - at_k)))
    cap = float(max(t[-1] - t[k], t[k] - t[0]))
    out = np.empty(values.shape[1])
    for p in range(values.shape[1]):
        v = values[:, p]
        inside = v[k] <= tolerance
        best = cap
        for step in (-1, 1):  # walk down, then up, to the first temperature on the other side
            j = k
            while 0 <= j + step < len(t) and (v[j + step] <= tolerance) == inside:
                j += step
            if 0 <= j + step < len(t):
                a, b = v[j] - tolerance, v[j + step] - tolerance
                crossing = t[j] + (t[j + step] - t[j]) * a / (a - b) if a != b else t[j]
                best = min(best, abs(crossing - t[k]))
        out[p] = best if inside else -best
    return out


class CalphadFeatures:
    """Features (..., len(FEATURES)) of free-element mole fractions (..., k), by interpolating a table
    tabulated once from ``database`` over ``bounds`` and a ladder of temperatures."""

    def __init__(self, free_elements: Sequence[str], balance: str, bounds: Mapping[str, tuple[float, float]], *,
                 solution_temperature_k: float, ageing_temperature_k: float | tuple[float, float],
                 database: str = DEFAULT_DATABASE, points_per_axis: int = 9, ladder_k: Sequence[float] = DEFAULT_LADDER_K,
                 tolerance: float = 0.01, cache_path: str | Path | None = None) -> None:
        designed = not isinstance(ageing_temperature_k, (int, float))
        ageing_range = tuple(map(float, ageing_temperature_k)) if designed else (float(ageing_temperature_k),) * 2
        if ageing_range[1] >= solution_temperature_k:
            raise ValueError(f"ageing ({ageing_range[1]} K) must be below solutionising ({solution_temperature_k} K)")
        missing = [e for e in free_elements if e not in bounds]
        if missing:
            raise ValueError(f"no bounds for {missing}")
        self.free_elements = tuple(free_elements)
        self.database = database
        self.solution_temperature_k = float(solution_temperature_k)
        self.ageing_temperature_k = ageing_range if designed else ageing_range[0]
        self.tolerance = tolerance
        axes = {e: np.linspace(bounds[e][0], bounds[e][1], points_per_axis if bounds[e][1] > bounds[e][0] else 1)
                for e in self.free_elements}
        # Designed ageing (joint composition and process design): the ageing temperature is one more
        # axis of the table, at the ladder's temperatures inside its range and at both ends.
        ageing_axis = sorted({*ageing_range, *(float(t) for t in ladder_k if ageing_range[0] < t < ageing_range[1])})

        def ladder_around(centre_k: float) -> list[float]:
            """The ladder a margin at ``centre_k`` is read from: the default one, refined near it."""
            fine = np.arange(centre_k - FINE_WINDOW_K, centre_k + FINE_WINDOW_K + 1e-9, FINE_STEP_K)
            return sorted({*map(float, ladder_k), float(centre_k), *map(float, fine)})

        # Each margin reads its own ladder, so a designed-ageing table at an ageing temperature holds
        # exactly what a campaign fixing it there computes (the solution margin never depends on it).
        ladders = {centre: ladder_around(centre) for centre in (self.solution_temperature_k, *ageing_axis)}
        temperatures = sorted(set().union(*ladders.values()))
        self.temperatures_k = tuple(temperatures)
        equilibria = PhaseEquilibria(database, elements=(*self.free_elements, balance), cache_path=cache_path)
        try:
            table = equilibria.grid(axes, temperatures)
        finally:
            equilibria.close()
        t = table.temperatures_k
        shape = table.fractions["gamma"].shape  # (T, *axes)
        flat = {c: np.nan_to_num(v).reshape(len(t), -1) for c, v in table.fractions.items()}
        not_gamma = 1.0 - flat["gamma"]
        brittle = sum(flat[c] for c in BRITTLE)

        def margin(values: np.ndarray, centre_k: float, at_most: float = tolerance) -> np.ndarray:
            rows = np.abs(t[:, None] - np.asarray(ladders[centre_k])[None, :]).argmin(axis=0)
            return temperature_margin(values[rows], t[rows], centre_k, at_most)

        solution_margin = margin(not_gamma, self.solution_temperature_k)
        solvus_margin = margin(flat["gamma_prime"], self.solution_temperature_k, SOLVUS_FRACTION)
        per_ageing = []
        for ageing_k in ageing_axis:
            i_age = int(np.argmin(np.abs(t - ageing_k)))
            per_ageing.append(np.stack([flat["gamma_prime"][i_age], brittle[i_age], solution_margin,
                                        margin(brittle, ageing_k), solvus_margin]))
        values = np.stack(per_ageing, axis=-1).reshape(len(FEATURES), *shape[1:], len(ageing_axis))
        self.axes = [torch.as_tensor(a, dtype=DTYPE) for a in table.axes]
        if designed:
            self.axes.append(torch.as_tensor(ageing_axis, dtype=DTYPE))
        else:
            values = values[..., 0]
        self.values = torch.as_tensor(values, dtype=DTYPE)

    @property
    def inputs(self) -> tuple[str, ...]:
        """The columns :meth:`__call__` takes: the free elements' fractions, and the ageing temperature
        (K) where it is designed."""
        return (*self.free_elements, *(("ageing_temperature_k",) if len(self.axes) > len(self.free_elements) else ()))

    @property
    def names(self) -> tuple[str, ...]:
        return FEATURES

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Features at ``x`` (..., columns :attr:`inputs`), clamped to the tabulated box."""
        if x.shape[-1] != len(self.axes):
            raise ValueError(f"expected {len(self.axes)} columns {self.inputs}, got {x.shape[-1]}")
        batch = x.shape[:-1]
        flat = x.reshape(-1, len(self.axes)).to(DTYPE)
        lower, weight = [], []
        for column, axis in zip(flat.T, self.axes):
            if len(axis) == 1:
                lower.append(torch.zeros_like(column, dtype=torch.long))
                weight.append(torch.zeros_like(column))
                continue
            clamped = column.clamp(axis[0], axis[-1])
            i = torch.searchsorted(axis, clamped.detach(), right=True).sub(1).clamp(0, len(axis) - 2)
            lower.append(i)
            weight.append((clamped - axis[i]) / (axis[i + 1] - axis[i]))
        out = torch.zeros(flat.shape[0], self.values.shape[0], dtype=DTYPE)
        for corner in itertools.product((0, 1), repeat=len(self.axes)):
            index, w = [], torch.ones(flat.shape[0], dtype=DTYPE)
            for bit, i, t, axis in zip(corner, lower, weight, self.axes):
                index.append((i + bit).clamp(max=len(axis) - 1))
                w = w * (t if bit else 1.0 - t)
            out = out + w[:, None] * self.values[(slice(None), *index)].T
        return out.reshape(*batch, self.values.shape[0])

    def margin_k(self, x: torch.Tensor) -> torch.Tensor:
        """The alloy's margin to the target phase state (K): the smaller of the two margins."""
        features = self(x)
        return torch.minimum(features[..., 2], features[..., 3])


class CalphadFeasibility:
    """P(target phase state | composition) = logistic(margin / width_k + offset), with the margin
    from the planner's own CALPHAD (:meth:`CalphadFeatures.margin_k`) and a Gaussian posterior over the
    offset, updated by Laplace with each experiment's measured verdict.

    The prior says the database is right (offset 0) and allows it to be off: the offset's sd is
    ``offset_sd_k`` (K of solvus shift). A verdict moves the offset, so it moves the boundary everywhere
    by the same temperature, as a shifted solvus would (with ``gradient_sd_k``, by a temperature that
    may also change linearly across the space). One infeasible alloy far beyond the boundary agrees
    with the database and moves nothing, where a polynomial classifier on composition would bend its
    whole boundary (the cause of issue 19's plateaus).

    The width, how blurred the boundary is, is fixed: the truth's phase state is a deterministic function
    of composition, so what a lab does not know is *where* the boundary lies, not how blurred it is
    (``width_k`` covers the table's interpolation error). Too wide a width is not the cautious choice:
    it expects failures just inside the boundary, so every success there pushes the boundary outwards
    and the planner believes alloys beyond it feasible (on twin_1325_1075, P = 0.6-0.7 at margins of
    -6 to -15 K, all of them infeasible, with a width of 12.5 K; against exact equilibria the twin's
    boundary is 1.7 K wide, twin_1325_1075's 8 K, measured by maximum likelihood). A learned slope
    also put a floor under P(feasible): its uncertainty grows the logit's variance with the margin
    squared, so an alloy 390 K beyond the boundary, measured infeasible, kept P = 0.04, and on
    twin_1350_1100 the planner re-proposed that alloy eleven times in one run."""

    def __init__(self, features: CalphadFeatures, *, width_k: float = 12.5, offset_sd_k: float = 40.0,
                 gradient_sd_k: float = 0.0) -> None:
        self.features = features
        self.width_k = width_k
        # gradient_sd_k > 0: the database's error may also vary linearly across the space, by about that
        # many kelvin from one end of each input's range to the other (a perturbed phase's Gibbs energy
        # shifts a solvus more where there is more of that phase), so verdicts can tilt the boundary.
        self.gradient = gradient_sd_k > 0
        self.low = torch.stack([a[0] for a in features.axes])
        self.span = torch.stack([(a[-1] - a[0]).clamp_min(1e-12) for a in features.axes])
        variances = [(offset_sd_k / width_k) ** 2]  # the logit is in units of the width
        if self.gradient:
            variances += [(gradient_sd_k / width_k) ** 2] * len(features.axes)
        self.mean = torch.zeros(len(variances), dtype=DTYPE)
        self.covariance = torch.diag(torch.tensor(variances, dtype=DTYPE))

    def _known(self, x_free: torch.Tensor) -> torch.Tensor:
        """The logit's fixed part: the database's margin, in units of the boundary's width."""
        return self.features.margin_k(x_free) / self.width_k

    def _phi(self, x_free: torch.Tensor) -> torch.Tensor:
        """The features of the learned part: the offset, and the centred inputs where the error may tilt."""
        columns = [torch.ones(x_free.shape[:-1], dtype=DTYPE)]
        if self.gradient:  # centred: the offset stays the shift in the middle of the space
            centred = (x_free.to(DTYPE) - self.low) / self.span - 0.5
            columns += list(centred.unbind(-1))
        return torch.stack(columns, dim=-1)

    def updated(self, x_free: torch.Tensor, labels: torch.Tensor) -> CalphadFeasibility:
        """A copy with the posterior after these verdicts (1 feasible, 0 not)."""
        other = copy.copy(self)  # shares the table; only the posterior differs
        if len(labels):
            other.mean, other.covariance = laplace_logistic_update(self._phi(x_free), labels.to(DTYPE), self.mean,
                                                                   self.covariance, known=self._known(x_free))
        return other

    def log_probability(self, x_free: torch.Tensor) -> torch.Tensor:
        """log P(feasible), differentiable in ``x_free`` (..., k)."""
        phi = self._phi(x_free)
        return log_expected_logistic(self._known(x_free) + phi @ self.mean,
                                     ((phi @ self.covariance) * phi).sum(dim=-1).clamp_min(0.0))

    def log_probability_known_shift(self, x_free: torch.Tensor) -> torch.Tensor:
        """log P(feasible) were the database's error known to be its posterior mean: what is left is the
        boundary's blur (``width_k``), which no further verdict narrows."""
        return torch.nn.functional.logsigmoid(self._known(x_free) + self._phi(x_free) @ self.mean)

    @property
    def boundary_shift_k(self) -> float:
        """Where the posterior puts the boundary relative to the database's (K; positive: the truth
        needs more margin than the database says), in the middle of the space."""
        return -float(self.mean[0]) * self.width_k
