"""Standard optimisation test problems as ground truth for emulated instruments.

The functions themselves come from BoTorch (``botorch.test_functions``); this module names their
inputs (``x1`` ... ``xd``), gives their bounds as a search space, and evaluates them noiselessly on
batches. Constraints follow BoTorch's convention: a slack ``c >= 0`` means feasible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from botorch.test_functions.synthetic import Branin, ConstrainedHartmann, Hartmann, SyntheticTestFunction

from sdl.experiment import DesignPoint
from sdl.space import ParameterRange, SearchSpace


@dataclass(frozen=True)
class TestProblem:
    """A named noiseless problem: ``evaluate`` maps points to measurements (objective ``y``, slacks ``c*``)."""

    __test__ = False  # not a pytest class

    name: str
    function: SyntheticTestFunction
    direction: Literal["minimize", "maximize"] = "minimize"

    @property
    def parameter_names(self) -> list[str]:
        return [f"x{i + 1}" for i in range(self.function.dim)]

    @property
    def measurement_names(self) -> list[str]:
        return ["y"] + [f"c{i + 1}" for i in range(getattr(self.function, "num_constraints", 0))]

    @property
    def space(self) -> SearchSpace:
        bounds = self.function.bounds.tolist()
        return SearchSpace(
            parameters={n: ParameterRange(low=lo, high=hi) for n, lo, hi in zip(self.parameter_names, *bounds)}
        )

    @property
    def optimal_value(self) -> float:
        return float(self.function.optimal_value)

    def to_array(self, points: list[DesignPoint]) -> np.ndarray:
        missing = [n for n in self.parameter_names if any(n not in p.parameters for p in points)]
        if missing:
            raise ValueError(f"{self.name} needs parameters {self.parameter_names}; missing {sorted(set(missing))}")
        return np.array([[p.parameters[n] for n in self.parameter_names] for p in points], dtype=float)

    def evaluate(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Noiseless values for rows of ``x`` (n x dim)."""
        x = np.atleast_2d(np.asarray(x, dtype=float))
        if x.shape[1] != self.function.dim:
            raise ValueError(f"{self.name} takes {self.function.dim} inputs per row, got {x.shape[1]}")
        with torch.no_grad():
            xt = torch.as_tensor(x, dtype=torch.double)
            values = {"y": self.function.evaluate_true(xt).numpy()}
            if hasattr(self.function, "evaluate_slack_true"):
                slack = self.function.evaluate_slack_true(xt).numpy().reshape(len(x), -1)
                values.update({f"c{i + 1}": slack[:, i] for i in range(slack.shape[1])})
        return values

    def is_feasible(self, values: dict[str, np.ndarray]) -> np.ndarray:
        feasible = np.ones_like(values["y"], dtype=bool)
        for name, slack in values.items():
            if name.startswith("c"):
                feasible &= slack >= 0.0
        return feasible


PROBLEMS = {
    "branin": lambda: TestProblem("branin", Branin()),
    "hartmann6": lambda: TestProblem("hartmann6", Hartmann(dim=6)),
    # Hartmann-6 inside the unit ball ||x||_2 <= 1 (Letham et al. 2019): the optimum moves inward.
    "hartmann6_constrained": lambda: TestProblem("hartmann6_constrained", ConstrainedHartmann(dim=6)),
}


def get_problem(name: str) -> TestProblem:
    try:
        factory = PROBLEMS[name]
    except KeyError:
        raise ValueError(f"unknown test problem {name!r}; available: {', '.join(sorted(PROBLEMS))}") from None
    return factory()
