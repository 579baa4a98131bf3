"""The simulator-host agent: noiseless ground truth of the simulated world, served on the bus.

Benchmarks ask it for the true value of a recommendation (simple regret); planners never do.
"""

from __future__ import annotations

from sdl.env.test_functions import get_problem
from sdl.protocol import Evaluation, EvaluateRequest
from sdl.service import Service, ServiceError, method


class SimulatorHostService(Service):
    kind = "simulator"

    def __init__(self, *, problem: str) -> None:
        self.problem = get_problem(problem)

    def details(self) -> dict:
        return {
            "problem": self.problem.name,
            "measurements": self.problem.measurement_names,
            "optimal_value": self.problem.optimal_value,
        }

    @method(EvaluateRequest)
    def evaluate(self, request: EvaluateRequest) -> Evaluation:
        try:
            x = self.problem.to_array(request.points)
        except ValueError as e:
            raise ServiceError(str(e), code="invalid_payload") from e
        values = self.problem.evaluate(x)
        return Evaluation(values=[{k: float(v[i]) for k, v in values.items()} for i in range(len(x))])
