"""The process-planning agent (``planner.process``): how to heat-treat the alloys the planner chose.

Method ``route`` takes a batch of compositions (one request per batch) and returns a validated
route for each. With a checkpoint from ``sdl policy train`` a route is the trained RLlib policy's
greedy rollout in the heat-treatment MDP; without one the agent says so in every answer and hands
out the textbook route (solutionise 1300 K / 2 h, water quench, age 1050 K / 4 h, water quench).

Routes are planned within the limits of the instruments that will run them
(:attr:`AgentContext.process_limits`, read from those instruments' own parameters); a policy
whose action grid could break them is refused when the config is loaded, not mid-campaign.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import Field, model_validator

from sdl.agents.base import Agent, AgentContext
from sdl.agents.process_policy import SETTINGS_FILE, HeatTreatmentSettings
from sdl.bus import ServiceError, method
from sdl.env.heat_treatment import TEXTBOOK_DESCRIPTION, hold_step, textbook_route
from sdl.experiment import Composition, ProcessStep
from sdl.instruments.limits import ProcessLimits
from sdl.settings import ResolvedPath, Section
from sdl.wire import ErrorCode, WireModel

TEXTBOOK_NOTE = f"no policy checkpoint configured: textbook gamma/gamma-prime route ({TEXTBOOK_DESCRIPTION})"


class ProcessPlannerSettings(Section):
    checkpoint: ResolvedPath | None = Field(
        default=None, description="policy from `sdl policy train` (its checkpoint directory); none: textbook route")
    require_checkpoint: bool = Field(
        default=False, description="refuse to start without the checkpoint (default: textbook route, said in the log)")

    @model_validator(mode="after")
    def _checkpoint_exists(self) -> ProcessPlannerSettings:
        if self.require_checkpoint and (self.checkpoint is None or not self.checkpoint.is_dir()):
            raise ValueError(f"checkpoint {self.checkpoint} is not a directory; train one with `sdl policy train "
                             "CONFIG`, or unset require_checkpoint for the textbook route")
        return self


class RouteRequest(WireModel):
    """Ask the process planner how to heat-treat a batch of alloys."""

    compositions: list[Composition] = Field(min_length=1, max_length=10_000)


class Route(WireModel):
    """A heat-treatment route for one composition, and where it came from."""

    steps: list[ProcessStep] = Field(min_length=1)
    source: Literal["policy", "textbook"]
    expected_hardness_hv: float | None = None
    note: str = ""


class Routes(WireModel):
    routes: list[Route]


class ProcessPlannerAgent(Agent):
    role = "process_planner"
    Settings = ProcessPlannerSettings

    @classmethod
    def check(cls, settings: ProcessPlannerSettings, context: AgentContext) -> None:
        context.require_space("the process planner", composition=True)
        limits = context.process_limits or ProcessLimits()
        trained_on = settings.checkpoint / SETTINGS_FILE if settings.checkpoint else None
        if trained_on is not None and trained_on.is_file():
            # The policy's action grid, read from the file it was trained with (no RLlib needed):
            # a hold the furnace cannot run is refused now, not mid-campaign.
            try:
                env = HeatTreatmentSettings.model_validate(json.loads(trained_on.read_text())["env"])
            except (ValueError, KeyError, TypeError) as e:  # JSON and pydantic errors are ValueErrors
                raise ValueError(f"{trained_on} is not the settings file `sdl policy train` writes: {e}") from None
            try:
                for t in env.temperatures_k:
                    for d in env.durations_s:
                        limits.check_step(ProcessStep.model_validate(hold_step(t, d)))
            except ValueError as e:
                raise ValueError(f"policy {settings.checkpoint} can choose holds outside the instruments' limits: "
                                 f"{e}") from None
            if env.max_steps > limits.max_steps:
                raise ValueError(f"policy {settings.checkpoint} plans up to {env.max_steps} holds; the instruments "
                                 f"run at most {limits.max_steps}")
        try:  # the fallback must be runnable too
            limits.check(textbook_route())
        except ValueError as e:
            raise ValueError(f"the textbook route is outside the instruments' limits: {e}") from None

    def __init__(self, settings: ProcessPlannerSettings, context: AgentContext) -> None:
        super().__init__(settings, context)
        self.check(settings, context)
        self.limits = context.process_limits or ProcessLimits()
        self.policy = None
        self.note = TEXTBOOK_NOTE
        checkpoint = settings.checkpoint
        if checkpoint is not None and not checkpoint.exists():
            # A fresh clone has no trained policy; the campaign still runs, and every answer says why.
            self.note = (f"no policy checkpoint at {checkpoint} (train one: sdl policy train configs/policy.yaml); "
                         f"textbook route: {TEXTBOOK_DESCRIPTION}")
            checkpoint = None
        if checkpoint is not None:
            from sdl.agents.process_policy import ProcessPolicy

            self.policy = ProcessPolicy(checkpoint)

    def details(self) -> dict:
        return {"source": "policy" if self.policy else "textbook",
                "checkpoint": str(self.policy.checkpoint) if self.policy else None,
                "limits": self.limits.model_dump()}

    @method(RouteRequest)
    def route(self, request: RouteRequest) -> Routes:
        return Routes(routes=[self._route(c) for c in request.compositions])

    def _route(self, composition: Composition) -> Route:
        if self.policy is None:
            return Route(steps=textbook_route(), source="textbook", note=self.note)
        try:
            steps, hardness_hv, policy_return = self.policy.route(composition.root)
            book_steps, book_hv, book_return = self.policy.textbook(composition.root)
        except ValueError as e:
            raise ServiceError(str(e), code=ErrorCode.INVALID_PAYLOAD) from e
        if not steps or book_return > policy_return:
            # The policy stops at once (a specimen still needs a route the furnace can run), or the textbook
            # route is expected to do better for this alloy: hand out the textbook one, its own expected
            # hardness (by the same kinetics), and the reason.
            why = ("the policy would not heat-treat this alloy (no hold gains enough)" if not steps else
                   f"the textbook route is expected to do better here (return {book_return:.3f} against the "
                   f"policy's {policy_return:.3f})")
            try:
                self.limits.check(book_steps)
            except ValueError:  # the grid's nearest textbook holds break a limit: the exact textbook route
                return Route(steps=textbook_route(), source="textbook", note=f"{why}; textbook route")
            return Route(steps=book_steps, source="textbook", expected_hardness_hv=book_hv,
                         note=f"{why}; textbook route, expected {book_hv:.0f} HV")
        try:
            self.limits.check(steps)
        except ValueError as e:
            raise ServiceError(f"the policy's route breaks the instruments' limits: {e}") from e
        return Route(steps=steps, source="policy", expected_hardness_hv=hardness_hv)
