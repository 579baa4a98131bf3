"""The target phase state an alloy must reach, and a CALPHAD oracle that says whether it does.

A precipitation-hardened gamma/gamma-prime alloy is *processable* when (1) at the solution
temperature it is a single gamma (FCC) solid solution, so solutionising dissolves everything, and
(2) at the ageing temperature no brittle phase (B2, sigma, other intermetallics) is stable. The
oracle answers with real pycalphad equilibria (:meth:`PhaseEquilibria.point`), counts its calls,
and caches them on disk like the twin does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from sdl.env.calphad import BRITTLE, DEFAULT_DATABASE, PhaseEquilibria


class PhaseTarget(BaseModel):
    """What counts as the target phase state (label 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    solution_temperature_k: float = Field(default=1300.0, gt=0, description="single gamma required here")
    ageing_temperature_k: float = Field(default=1050.0, gt=0, description="no brittle phase allowed here")
    tolerance: float = Field(default=0.01, ge=0, lt=1, description="phase fraction counted as absent")

    @model_validator(mode="after")
    def _order(self) -> PhaseTarget:
        if self.ageing_temperature_k >= self.solution_temperature_k:
            raise ValueError(
                f"ageing ({self.ageing_temperature_k} K) must be below solutionising ({self.solution_temperature_k} K)"
            )
        return self

    def reached(self, at_solution: dict[str, float], at_ageing: dict[str, float]) -> bool:
        not_gamma = sum(f for c, f in at_solution.items() if c != "gamma")
        brittle = sum(at_ageing.get(c, 0.0) for c in BRITTLE)
        return not_gamma <= self.tolerance and brittle <= self.tolerance


class CalphadPhaseOracle:
    """Labels compositions (rows of free-element mole fractions) 1 where the target state is reached."""

    def __init__(self, free_elements: Sequence[str], balance: str, target: PhaseTarget | None = None, *,
                 database: str = DEFAULT_DATABASE, cache_path: str | Path | None = None) -> None:
        self.free_elements = tuple(free_elements)
        self.target = target or PhaseTarget()
        self.equilibria = PhaseEquilibria(database, elements=(*self.free_elements, balance), cache_path=cache_path)
        self.calls = 0  # compositions labelled (each one CALPHAD point at two temperatures)

    def label(self, x: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(np.asarray(x, dtype=float))
        if x.shape[1] != len(self.free_elements):
            raise ValueError(f"expected {len(self.free_elements)} columns ({self.free_elements}), got {x.shape[1]}")
        temperatures = (self.target.solution_temperature_k, self.target.ageing_temperature_k)
        labels = np.empty(len(x))
        for i, row in enumerate(x):
            fractions = self.equilibria.point(dict(zip(self.free_elements, row.tolist())), temperatures)
            labels[i] = float(self.target.reached(fractions[temperatures[0]], fractions[temperatures[1]]))
        self.calls += len(x)
        return labels

    def label_grid(self, axes: dict[str, Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
        """Labels on a full grid (batched CALPHAD, for held-out truth): returns (points n x k, labels n)."""
        temperatures = (self.target.solution_temperature_k, self.target.ageing_temperature_k)
        table = self.equilibria.grid(axes, temperatures)
        mesh = np.stack(np.meshgrid(*(np.asarray(axes[e], dtype=float) for e in self.free_elements), indexing="ij"),
                        axis=-1).reshape(-1, len(self.free_elements))
        mesh = mesh[mesh.sum(axis=1) <= 1.0]
        sol = table(mesh, temperatures[0])
        age = table(mesh, temperatures[1])
        labels = np.array([
            float(self.target.reached({c: sol[c][i] for c in sol}, {c: age[c][i] for c in age}))
            for i in range(len(mesh))
        ])
        return mesh, labels

    def close(self) -> None:
        self.equilibria.close()
