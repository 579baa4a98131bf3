"""What a campaign optimises and what counts as feasible, in terms of measurements.

Shared by the campaign (stop rules), the planners (what to model), the benchmarks and the reports.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sdl.settings import Section


class ObjectiveConfig(Section):
    measurement: str = "y"
    direction: Literal["minimize", "maximize"] = "minimize"
    target: float | None = Field(default=None, description="stop once the best measured value reaches this")
    reference: float | None = Field(default=None, description="worst acceptable value (multi-objective reference point)")

    def better(self, a: float, b: float) -> bool:
        return a < b if self.direction == "minimize" else a > b

    def reached(self, value: float) -> bool:
        return self.target is not None and (value <= self.target if self.direction == "minimize" else value >= self.target)

    def best(self, values: list[float]) -> float | None:
        """The best of ``values`` in this direction; None for none."""
        if not values:
            return None
        return min(values) if self.direction == "minimize" else max(values)


class ConstraintConfig(Section):
    """A measured constraint: feasible when the sum of ``measurements`` is >= ``at_least`` and/or <= ``at_most``."""

    measurements: list[str] = Field(min_length=1)
    at_least: float | None = None
    at_most: float | None = None

    @model_validator(mode="after")
    def _one_bound(self) -> ConstraintConfig:
        if self.at_least is None and self.at_most is None:
            raise ValueError("a constraint needs at_least, at_most or both")
        return self

    def value(self, measurements: dict[str, float]) -> float | None:
        if not all(m in measurements for m in self.measurements):
            return None
        return float(sum(measurements[m] for m in self.measurements))

    def violation(self, value: float) -> float:
        low = 0.0 if self.at_least is None else max(0.0, self.at_least - value)
        high = 0.0 if self.at_most is None else max(0.0, value - self.at_most)
        return low + high

    def satisfied(self, measurements: dict[str, float]) -> bool | None:
        """True/False, or None when a measurement is missing."""
        value = self.value(measurements)
        return None if value is None else self.violation(value) == 0.0
