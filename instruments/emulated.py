"""Emulated instruments over standard test functions, for benchmarking the controller itself.

Each measures a :class:`sdl.env.test_functions.TestProblem` at the experiment's parameters with
Gaussian noise, takes ``latency_s`` of wall time, and fails with probability
``failure_probability``. Noise and faults are drawn from a generator seeded by the driver's
``seed`` and the experiment id, so a campaign is reproducible and a retry sees the same specimen.
"""

from __future__ import annotations

import hashlib
import time
from typing import ClassVar

import numpy as np
from pydantic import Field

from sdl.env.test_functions import TestProblem, get_problem
from sdl.experiment import ExperimentSpec
from sdl.instruments.base import Instrument, InstrumentFault, InstrumentParameters, InstrumentRefused


class EmulatedParameters(InstrumentParameters):
    noise_std: float = Field(default=0.0, ge=0.0, description="std of additive Gaussian noise on y")
    latency_s: float = Field(default=0.0, ge=0.0, le=3600.0, description="wall time per experiment")
    failure_probability: float = Field(default=0.0, ge=0.0, le=1.0)
    seed: int = 0


class EmulatedInstrument(Instrument):
    """Measures a named test problem. Subclasses only name the problem."""

    problem_name: ClassVar[str]
    Parameters = EmulatedParameters

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.problem: TestProblem = get_problem(self.problem_name)

    def check(self, experiment: ExperimentSpec) -> None:
        try:
            self.problem.to_array([experiment.point])
        except ValueError as e:  # parameters missing or outside the problem's domain: nothing to measure
            raise InstrumentRefused(str(e)) from None

    def measure(self, experiment: ExperimentSpec, *, attempt: int) -> dict[str, float]:
        rng = np.random.default_rng(
            [self.parameters.seed, int.from_bytes(hashlib.sha256(experiment.experiment_id.encode()).digest()[:8], "little")]
        )
        x = self.problem.to_array([experiment.point])
        if self.parameters.latency_s:
            time.sleep(self.parameters.latency_s)
        if rng.random() < self.parameters.failure_probability:
            raise InstrumentFault(f"{self.name}: emulated fault on {experiment.experiment_id} (attempt {attempt})")
        values = self.problem.evaluate(x)
        measured = {k: float(v[0]) for k, v in values.items()}
        measured["y"] += float(rng.normal(0.0, self.parameters.noise_std)) if self.parameters.noise_std else 0.0
        return measured


class Branin(EmulatedInstrument):
    """Branin-Hoo on x1 in [-5, 10], x2 in [0, 15]; minimum 0.397887 at three points."""

    name = "branin"
    problem_name = "branin"
    implemented_measurements = ("y",)


class Hartmann6(EmulatedInstrument):
    """Hartmann-6 on [0, 1]^6; minimum -3.32237."""

    name = "hartmann6"
    problem_name = "hartmann6"
    implemented_measurements = ("y",)


class ConstrainedHartmann6(EmulatedInstrument):
    """Hartmann-6 with the constraint slack c1 = 1 - ||x||_2 (feasible when c1 >= 0)."""

    name = "hartmann6_constrained"
    problem_name = "hartmann6_constrained"
    implemented_measurements = ("y", "c1")
