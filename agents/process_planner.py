"""The process-planning agent ``planner.process``: how to heat-treat the alloy the BO planner chose.

Method ``route`` takes a composition and returns a validated route. With a checkpoint from
``sdl policy train`` the route is the trained RLlib policy's greedy rollout in the heat-treatment
MDP; without one the agent says so in every answer and hands out the textbook route
(solutionise 1300 K / 2 h, water quench, age 1050 K / 4 h, water quench). Every route is checked
against the furnace limits before it leaves the agent, and a policy whose action grid could break
them is refused at start-up.
"""

from __future__ import annotations

from pathlib import Path

from sdl.env.heat_treatment import TEXTBOOK_DESCRIPTION, hold_step, textbook_route
from sdl.protocol import ProcessStep, Route, RouteLimits, RouteRequest
from sdl.service import Service, ServiceError, method

TEXTBOOK_NOTE = f"no policy checkpoint configured: textbook gamma/gamma-prime route ({TEXTBOOK_DESCRIPTION})"


class ProcessPlannerService(Service):
    kind = "planner"

    def __init__(self, *, checkpoint: str | None = None, limits: RouteLimits | dict | None = None,
                 require_checkpoint: bool = False) -> None:
        self.limits = RouteLimits.model_validate(limits or {})
        self.policy = None
        self.note = TEXTBOOK_NOTE
        if checkpoint is not None and not Path(checkpoint).exists() and not require_checkpoint:
            # A fresh clone has no trained policy; the campaign still runs, and every answer says why.
            self.note = (f"no policy checkpoint at {checkpoint} (train one: sdl policy train configs/policy.yaml); "
                         f"textbook route: {TEXTBOOK_DESCRIPTION}")
            checkpoint = None
        if checkpoint is not None:
            from sdl.agents.process_policy import ProcessPolicy

            self.policy = ProcessPolicy(Path(checkpoint))
            env = self.policy.env
            # Refuse now, not mid-campaign, a policy that can choose a hold the furnace cannot run.
            try:
                for t, d in zip(env.hold_temperatures_k, env.hold_durations_s):
                    self.limits.check_step(ProcessStep.model_validate(hold_step(t, d)))
            except ValueError as e:
                raise ValueError(f"policy {checkpoint} can choose holds outside the furnace limits: {e}") from None
            if env.max_steps > self.limits.max_steps:
                raise ValueError(f"policy {checkpoint} plans up to {env.max_steps} holds; the furnace allows "
                                 f"{self.limits.max_steps}")
        try:  # the fallback must be runnable too
            self.limits.check(textbook_route())
        except ValueError as e:
            raise ValueError(f"the textbook route is outside the furnace limits: {e}") from None

    def details(self) -> dict:
        return {"source": "policy" if self.policy else "textbook",
                "checkpoint": str(self.policy.checkpoint) if self.policy else None,
                "limits": self.limits.model_dump()}

    @method(RouteRequest)
    def route(self, request: RouteRequest) -> Route:
        if self.policy is None:
            return Route(steps=textbook_route(), source="textbook", note=self.note)
        try:
            steps, hardness_hv, _ = self.policy.route(request.composition.root)
        except ValueError as e:
            raise ServiceError(str(e), code="invalid_payload") from e
        if not steps:
            # Heat treatment would not pay for this alloy (the policy stops at once); a specimen still
            # needs a route the furnace can run, so it gets the textbook one and the reason.
            return Route(steps=textbook_route(), source="textbook", expected_hardness_hv=hardness_hv,
                         note="the policy would not heat-treat this alloy (no hold gains enough); textbook route")
        try:
            self.limits.check(steps)
        except ValueError as e:
            raise ServiceError(f"the policy's route breaks the furnace limits: {e}", code="invalid_route") from e
        return Route(steps=steps, source="policy", expected_hardness_hv=hardness_hv)
