"""The process-planning agent (``planner.process``): how to heat-treat the alloys the planner chose.

Method ``route`` takes a batch of compositions (one request per batch) and returns a validated
route for each. By default the agent runs the trained PPO policy sdl ships (:data:`SHIPPED_POLICY`;
``policy:`` names another, from ``sdl policy train``, or ``null`` for the textbook route only). For
each alloy it rolls out the policy, and, by the same twin kinetics (cheap), the textbook route
(solutionise 1300 K / 2 h, water quench, age 1050 K / 4 h, water quench) and leaving it as cast;
it hands out the best of the three, saying which and why, with that route's expected hardness.

Everything that can be checked without running is checked when the config loads: the policy's
action grid and hold count against the limits of the instruments that will run its routes
(:attr:`AgentContext.process_limits`), its training range and its twin's CALPHAD table against
the campaign's composition space.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sdl.agents.base import Agent, AgentContext
from sdl.agents.process_policy import (
    SHIPPED_POLICY,
    HeatTreatmentSettings,
    choose_route,
    policy_path,
    trained_settings,
)
from sdl.bus import ServiceError, method
from sdl.env.heat_treatment import TEXTBOOK_DESCRIPTION, hold_step, textbook_route
from sdl.experiment import Composition, ProcessStep
from sdl.instruments.limits import ProcessLimits
from sdl.settings import ResolvedPath, Section
from sdl.wire import ErrorCode, WireModel

TEXTBOOK_NOTE = f"no process policy configured (policy: null): textbook gamma/gamma-prime route ({TEXTBOOK_DESCRIPTION})"
# A composition bound may exceed the policy's training range by this much (mole fraction): rounding.
RANGE_TOLERANCE = 1e-6


class ProcessPlannerSettings(Section):
    policy: ResolvedPath | None = Field(
        default=SHIPPED_POLICY, validate_default=True,
        description="policy file (or `sdl policy train` run directory); default: the policy sdl ships; "
                    "null: the textbook route for every alloy")

    @model_validator(mode="after")
    def _policy_exists(self) -> ProcessPlannerSettings:
        if self.policy is not None:
            try:
                policy_path(self.policy)
            except FileNotFoundError as e:
                raise ValueError(f"{e}; or `policy: null` for the textbook route") from None
        return self


def check_policy_fits(env: HeatTreatmentSettings, name: str, context: AgentContext) -> None:
    """Refuse, at config load, a policy whose holds the instruments cannot run, whose training range
    does not cover the campaign's compositions, or whose twin's CALPHAD table does not either."""
    limits = context.process_limits or ProcessLimits()
    try:
        for t in env.temperatures_k:
            for d in env.durations_s:
                limits.check_step(ProcessStep.model_validate(hold_step(t, d)))
    except ValueError as e:
        raise ValueError(f"policy {name} can choose holds outside the instruments' limits: {e}") from None
    if env.max_steps > limits.max_steps:
        raise ValueError(f"policy {name} plans up to {env.max_steps} holds; the instruments run at most "
                         f"{limits.max_steps}")
    comp = context.space.composition
    free = set(comp.free_elements)
    if free != set(env.composition) or comp.balance_element != env.twin.balance:
        raise ValueError(f"policy {name} was trained on {sorted(env.composition)} (balance {env.twin.balance}); "
                         f"the campaign designs {sorted(free)} (balance {comp.balance_element})")
    for e in sorted(free):
        lo, hi = comp.elements[e]
        trained_lo, trained_hi = env.composition[e]
        if lo < trained_lo - RANGE_TOLERANCE or hi > trained_hi + RANGE_TOLERANCE:
            raise ValueError(f"policy {name} was trained on {e} in [{trained_lo}, {trained_hi}]; the campaign's space "
                             f"allows [{lo}, {hi}]: retrain it on the campaign's space (env.composition) or "
                             "narrow the space")
        axis = env.twin.grid[e]
        if lo < axis.low - RANGE_TOLERANCE or hi > axis.high + RANGE_TOLERANCE:
            raise ValueError(f"policy {name}'s twin tabulates CALPHAD for {e} in [{axis.low}, {axis.high}]; the "
                             f"campaign's space allows [{lo}, {hi}]")


class RouteRequest(WireModel):
    """Ask the process planner how to heat-treat a batch of alloys."""

    compositions: list[Composition] = Field(min_length=1, max_length=10_000)


class Route(WireModel):
    """A heat-treatment route for one composition, where it came from and why it was chosen.

    ``as_cast`` (no steps) when neither the policy's route nor the textbook one is expected to beat
    leaving the alloy untreated; ``expected_returns`` are the options' expected returns (hardness
    gained / 100 HV less the costs of the holds), the comparison the choice was made by."""

    steps: list[ProcessStep]
    source: Literal["policy", "textbook", "as_cast"]
    expected_hardness_hv: float | None = None
    expected_returns: dict[str, float] = Field(default_factory=dict)
    note: str = ""

    @model_validator(mode="after")
    def _steps_match_source(self) -> Route:
        if (self.source == "as_cast") != (not self.steps):
            raise ValueError("a route has steps unless it is as_cast")
        return self


class Routes(WireModel):
    routes: list[Route]


class ProcessPlannerAgent(Agent):
    role = "process_planner"
    Settings = ProcessPlannerSettings

    @classmethod
    def check(cls, settings: ProcessPlannerSettings, context: AgentContext) -> None:
        context.require_space("the process planner", composition=True)
        if settings.policy is not None:
            check_policy_fits(trained_settings(settings.policy), str(settings.policy), context)
        try:  # the fallback must be runnable too
            (context.process_limits or ProcessLimits()).check(textbook_route())
        except ValueError as e:
            raise ValueError(f"the textbook route is outside the instruments' limits: {e}") from None

    def __init__(self, settings: ProcessPlannerSettings, context: AgentContext) -> None:
        super().__init__(settings, context)
        self.check(settings, context)
        self.limits = context.process_limits or ProcessLimits()
        self.policy = None
        if settings.policy is not None:
            from sdl.agents.process_policy import ProcessPolicy

            self.policy = ProcessPolicy(settings.policy)

    def details(self) -> dict:
        return {"source": "policy" if self.policy else "textbook",
                "policy": str(self.policy.path) if self.policy else None,
                "limits": self.limits.model_dump()}

    @method(RouteRequest)
    def route(self, request: RouteRequest) -> Routes:
        return Routes(routes=[self._route(c) for c in request.compositions])

    def _route(self, composition: Composition) -> Route:
        if self.policy is None:
            return Route(steps=textbook_route(), source="textbook", note=TEXTBOOK_NOTE)
        try:
            steps, policy_hv, policy_return = self.policy.route(composition.root)
            book_steps, book_hv, book_return = self.policy.textbook(composition.root)
            cast_hv = self.policy.as_cast(composition.root)
        except ValueError as e:
            raise ServiceError(str(e), code=ErrorCode.INVALID_PAYLOAD) from e
        returns = {"policy": policy_return, "textbook": book_return, "as_cast": 0.0}
        compared = (f"expected return: policy {policy_return:.3f} ({policy_hv:.0f} HV), textbook {book_return:.3f} "
                    f"({book_hv:.0f} HV), as cast 0 ({cast_hv:.0f} HV)")
        chosen = choose_route(steps, policy_return, book_return)
        if chosen == "policy":
            try:
                self.limits.check(steps)
            except ValueError as e:
                raise ServiceError(f"the policy's route breaks the instruments' limits: {e}") from e
            return Route(steps=steps, source="policy", expected_hardness_hv=policy_hv, expected_returns=returns,
                         note=f"the policy's route is the best of three; {compared}")
        if chosen == "textbook":
            why = ("the policy would not heat-treat this alloy" if not steps
                   else "the textbook route is expected to do better than the policy's")
            try:
                self.limits.check(book_steps)
            except ValueError:  # the grid's nearest textbook holds break a limit: the exact textbook route
                return Route(steps=textbook_route(), source="textbook", expected_returns=returns,
                             note=f"{why}; textbook route; {compared}")
            return Route(steps=book_steps, source="textbook", expected_hardness_hv=book_hv, expected_returns=returns,
                         note=f"{why}; {compared}")
        return Route(steps=[], source="as_cast", expected_hardness_hv=cast_hv, expected_returns=returns,
                     note=f"no heat treatment is expected to pay for itself on this alloy: left as cast; {compared}")
