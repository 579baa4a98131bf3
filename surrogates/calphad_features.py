"""CALPHAD quantities as differentiable features of composition, from the planner's *own* database.

The BO planner's hybrid surrogate (issue 19) sees, beside the composition, what thermodynamics says
about it at the campaign's heat treatment: the equilibrium gamma-prime fraction at the ageing
temperature (what precipitation strengthening grows from), the brittle-phase fraction there, and
whatever is not gamma at the solution temperature (what solutionising fails to dissolve). They come from the database the planner is
configured with (never the truth's: a lab's database is its belief, not the world), tabulated once
on a grid over the design space with :meth:`PhaseEquilibria.grid` (batched pycalphad, cached on
disk like the twin's tables), so a proposal costs no CALPHAD call at all.

Evaluation is multilinear interpolation of that table in torch, so the features are differentiable
and the acquisition optimiser can follow them. Written by hand because ``grid_sample`` covers at
most three dimensions on normalised coordinates and scipy's interpolators are not differentiable.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from sdl.env.calphad import BRITTLE, DEFAULT_DATABASE, PhaseEquilibria

FEATURES = ("gamma_prime_at_ageing", "brittle_at_ageing", "not_gamma_at_solution")


class CalphadFeatures:
    """Features (..., len(FEATURES)) of free-element mole fractions (..., k), by interpolating a table
    tabulated once from ``database`` over ``bounds`` at the two temperatures."""

    def __init__(self, free_elements: Sequence[str], balance: str, bounds: Mapping[str, tuple[float, float]], *,
                 solution_temperature_k: float, ageing_temperature_k: float, database: str = DEFAULT_DATABASE,
                 points_per_axis: int = 9, cache_path: str | Path | None = None) -> None:
        if ageing_temperature_k >= solution_temperature_k:
            raise ValueError(f"ageing ({ageing_temperature_k} K) must be below solutionising "
                             f"({solution_temperature_k} K)")
        missing = [e for e in free_elements if e not in bounds]
        if missing:
            raise ValueError(f"no bounds for {missing}")
        self.free_elements = tuple(free_elements)
        self.database = database
        axes = {e: np.linspace(bounds[e][0], bounds[e][1], points_per_axis if bounds[e][1] > bounds[e][0] else 1)
                for e in self.free_elements}
        equilibria = PhaseEquilibria(database, elements=(*self.free_elements, balance), cache_path=cache_path)
        try:
            table = equilibria.grid(axes, [ageing_temperature_k, solution_temperature_k])
        finally:
            equilibria.close()
        # table.temperatures_k is sorted: index 0 ageing, 1 solution.
        age = {c: np.nan_to_num(v[0]) for c, v in table.fractions.items()}
        sol = {c: np.nan_to_num(v[1]) for c, v in table.fractions.items()}
        values = np.stack([age["gamma_prime"], sum(age[c] for c in BRITTLE), 1.0 - sol["gamma"]])
        self.values = torch.as_tensor(np.clip(values, 0.0, 1.0), dtype=torch.double)  # (features, *axes)
        self.axes = [torch.as_tensor(a, dtype=torch.double) for a in table.axes]

    @property
    def names(self) -> tuple[str, ...]:
        return FEATURES

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Features at free-element fractions ``x`` (..., k), clamped to the tabulated box."""
        if x.shape[-1] != len(self.axes):
            raise ValueError(f"expected {len(self.axes)} columns ({self.free_elements}), got {x.shape[-1]}")
        batch = x.shape[:-1]
        flat = x.reshape(-1, len(self.axes)).to(self.values.dtype)
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
        out = torch.zeros(flat.shape[0], self.values.shape[0], dtype=self.values.dtype)
        for corner in itertools.product((0, 1), repeat=len(self.axes)):
            index, w = [], torch.ones(flat.shape[0], dtype=self.values.dtype)
            for bit, i, t, axis in zip(corner, lower, weight, self.axes):
                index.append((i + bit).clamp(max=len(axis) - 1))
                w = w * (t if bit else 1.0 - t)
            out = out + w[:, None] * self.values[(slice(None), *index)].T
        return out.reshape(*batch, self.values.shape[0])
