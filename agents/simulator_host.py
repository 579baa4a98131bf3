"""The test-function simulator agent (``simulator.test_function``): noiseless ground truth of a
benchmark problem, served on the bus.

It provides the ``truth`` capability: benchmarks ask it for the true value of a recommendation
(simple regret); planners never do.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from sdl.agents.base import Agent, AgentContext
from sdl.agents.capabilities import EvaluateRequest, Evaluation
from sdl.bus import ServiceError, method
from sdl.env.test_functions import PROBLEMS, get_problem
from sdl.settings import Section
from sdl.wire import ErrorCode


class TestFunctionSettings(Section):
    __test__ = False  # not a pytest class

    problem: str = Field(description=f"one of {', '.join(sorted(PROBLEMS))}")

    @field_validator("problem")
    @classmethod
    def _known(cls, name: str) -> str:
        get_problem(name)  # ValueError listing the problems there are
        return name


class TestFunctionSimulator(Agent):
    __test__ = False

    role = "simulator"
    Settings = TestFunctionSettings
    provides = frozenset({"truth"})

    @classmethod
    def check(cls, settings: TestFunctionSettings, context: AgentContext) -> None:
        problem = get_problem(settings.problem)
        if context.space is not None and set(context.space.parameters) != set(problem.parameter_names):
            raise ValueError(f"space.parameters {sorted(context.space.parameters)} must match the parameters of "
                             f"problem {settings.problem!r}: {problem.parameter_names}")

    def __init__(self, settings: TestFunctionSettings, context: AgentContext) -> None:
        super().__init__(settings, context)
        self.problem = get_problem(settings.problem)

    def details(self) -> dict:
        return {"problem": self.problem.name, "measurements": self.problem.measurement_names,
                "optimal_value": self.problem.optimal_value}

    @method(EvaluateRequest)
    def evaluate(self, request: EvaluateRequest) -> Evaluation:
        try:
            x = self.problem.to_array(request.points)
        except ValueError as e:
            raise ServiceError(str(e), code=ErrorCode.INVALID_PAYLOAD) from e
        values = self.problem.evaluate(x)
        return Evaluation(values=[{k: float(v[i]) for k, v in values.items()} for i in range(len(x))])
