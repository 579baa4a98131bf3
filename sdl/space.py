"""The design space a campaign searches: bounded continuous parameters and a bounded composition.

A composition of k elements has k - 1 free fractions; the remaining *balance* element (as a
metallurgist writes "Ni-bal") takes what is left. Mapping the unit cube onto the free fractions'
box and rejecting points whose balance falls outside its bounds samples the bounded simplex
uniformly (the map is linear, so volumes are preserved) and keeps a quasi-random sequence's
low discrepancy on what is accepted. scipy.stats.qmc has no simplex sampler, hence this module.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sdl.experiment import KNOWN_ELEMENTS, Composition, DesignPoint

# The balance element is computed as 1 - sum(free); allow this rounding slack on its bounds.
_BOUND_SLACK = 1e-9


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ParameterRange(_Model):
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> ParameterRange:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise ValueError(f"need finite low < high, got low={self.low}, high={self.high}")
        return self


class CompositionSpace(_Model):
    """Element bounds as mole fractions, e.g. ``{Ni: [0.6, 0.9], Al: [0.0, 0.15]}``."""

    elements: dict[str, tuple[float, float]] = Field(min_length=2)
    balance: str | None = Field(default=None, description="element that takes the remainder; default: widest range")

    @field_validator("elements")
    @classmethod
    def _check_elements(cls, elements: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        unknown = sorted(set(elements) - KNOWN_ELEMENTS)
        if unknown:
            raise ValueError(f"unknown element symbol(s) {unknown}; use chemical symbols such as 'Ni', 'Al'")
        for element, (low, high) in elements.items():
            if not 0.0 <= low <= high <= 1.0:
                raise ValueError(f"bounds of {element} are [{low}, {high}]; need 0 <= low <= high <= 1")
        low_sum = sum(lo for lo, _ in elements.values())
        high_sum = sum(hi for _, hi in elements.values())
        if low_sum > 1.0 + _BOUND_SLACK or high_sum < 1.0 - _BOUND_SLACK:
            raise ValueError(
                f"no composition fits these bounds: lower bounds sum to {low_sum:g} and upper bounds to "
                f"{high_sum:g}; need sum(low) <= 1 <= sum(high)"
            )
        return elements

    @model_validator(mode="after")
    def _check_balance(self) -> CompositionSpace:
        if self.balance is not None and self.balance not in self.elements:
            raise ValueError(f"balance element {self.balance!r} is not among {sorted(self.elements)}")
        return self

    @property
    def balance_element(self) -> str:
        if self.balance is not None:
            return self.balance
        return max(self.elements, key=lambda e: (self.elements[e][1] - self.elements[e][0], e))

    @property
    def free_elements(self) -> list[str]:
        return [e for e in self.elements if e != self.balance_element]


class SearchSpace(_Model):
    parameters: dict[str, ParameterRange] = Field(default_factory=dict)
    composition: CompositionSpace | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> SearchSpace:
        if not self.parameters and self.composition is None:
            raise ValueError("the search space needs parameters, a composition, or both")
        return self

    @property
    def free_names(self) -> list[str]:
        """Names of the free coordinates, in the order of :meth:`from_unit_cube`'s columns."""
        names = list(self.parameters)
        if self.composition is not None:
            names += self.composition.free_elements
        return names

    @property
    def dimension(self) -> int:
        return len(self.free_names)

    def from_unit_cube(self, u: np.ndarray) -> tuple[list[DesignPoint], np.ndarray]:
        """Map rows of ``u`` (n x dimension, in [0, 1)) to points; also return which rows were accepted.

        Rows whose balance element falls outside its bounds are rejected (not clamped).
        """
        u = np.atleast_2d(np.asarray(u, dtype=float))
        if u.shape[1] != self.dimension:
            raise ValueError(f"expected {self.dimension} columns ({self.free_names}), got {u.shape[1]}")
        n_params = len(self.parameters)
        lows = np.array([r.low for r in self.parameters.values()])
        highs = np.array([r.high for r in self.parameters.values()])
        params = lows + u[:, :n_params] * (highs - lows)
        accepted = np.ones(len(u), dtype=bool)
        fractions = balance = None
        if self.composition is not None:
            comp = self.composition
            bounds = np.array([comp.elements[e] for e in comp.free_elements])
            fractions = bounds[:, 0] + u[:, n_params:] * (bounds[:, 1] - bounds[:, 0])
            balance = 1.0 - fractions.sum(axis=1)
            lo, hi = comp.elements[comp.balance_element]
            accepted &= (balance >= lo - _BOUND_SLACK) & (balance <= hi + _BOUND_SLACK)
        points = []
        for i in np.flatnonzero(accepted):
            composition = None
            if self.composition is not None:
                values = dict(zip(self.composition.free_elements, fractions[i].tolist()))
                values[self.composition.balance_element] = float(np.clip(balance[i], 0.0, 1.0))
                composition = Composition({e: values[e] for e in self.composition.elements})
            points.append(
                DesignPoint(parameters=dict(zip(self.parameters, params[i].tolist())), composition=composition)
            )
        return points, accepted

    def to_unit_cube(self, points: list[DesignPoint]) -> np.ndarray:
        """Inverse of :meth:`from_unit_cube` on the free coordinates (n x dimension)."""
        rows = []
        for p in points:
            row = [(p.parameters[k] - r.low) / (r.high - r.low) for k, r in self.parameters.items()]
            if self.composition is not None:
                for e in self.composition.free_elements:
                    lo, hi = self.composition.elements[e]
                    row.append((p.composition[e] - lo) / (hi - lo) if hi > lo else 0.0)
            rows.append(row)
        return np.asarray(rows, dtype=float).reshape(len(points), self.dimension)

    def check(self, point: DesignPoint) -> None:
        """Raise ValueError if ``point`` lies outside the space (names and bounds)."""
        if set(point.parameters) != set(self.parameters):
            raise ValueError(f"parameters {sorted(point.parameters)} do not match the space's {sorted(self.parameters)}")
        for name, r in self.parameters.items():
            if not r.low <= point.parameters[name] <= r.high:
                raise ValueError(f"{name}={point.parameters[name]} outside [{r.low}, {r.high}]")
        if self.composition is None:
            if point.composition is not None:
                raise ValueError("the space has no composition, but the point carries one")
            return
        if point.composition is None or set(point.composition.root) != set(self.composition.elements):
            raise ValueError(f"composition must have exactly the elements {sorted(self.composition.elements)}")
        for element, (lo, hi) in self.composition.elements.items():
            if not lo - _BOUND_SLACK <= point.composition[element] <= hi + _BOUND_SLACK:
                raise ValueError(f"{element}={point.composition[element]} outside [{lo}, {hi}]")
