"""Designed holds: steps of a heat-treatment route whose temperature and/or duration are parameters of the
design space, set for each experiment from its design point (joint composition and process design, since a
metallurgist tunes the ageing hold beside the alloy).

One place for what the campaign's ``process_design`` option and the bench's joint-design problem share: which
parameter sets what, a duration parameter's unit (the suffix of its name), the route a point asks for, and the
routes at the corners of the designed ranges (the hottest, coldest, longest and shortest a design can ask a
furnace for, checked against its limits before anything runs).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

from pydantic import Field, model_validator

from sdl.experiment import DesignPoint, ProcessStep
from sdl.settings import Section

DURATION_UNITS_S = {"_s": 1.0, "_min": 60.0, "_h": 3600.0}  # a duration parameter's name ends in its unit


class DesignedHold(Section):
    """A hold of a route that each design point sets: its temperature and/or its duration are parameters of the
    space. The route's own values for that hold are then not used."""

    step: int = Field(ge=1, description="which step of the route (1: the first)")
    temperature_k: str | None = Field(default=None,
                                      description="the space parameter (kelvin) that sets its temperature")
    duration: str | None = Field(default=None, description="the space parameter that sets its duration; its name "
                                                           "ends in its unit: _s, _min or _h (e.g. ageing_duration_h)")

    @model_validator(mode="after")
    def _something_designed(self) -> DesignedHold:
        if self.temperature_k is None and self.duration is None:
            raise ValueError(f"process_design step {self.step}: name the parameter for temperature_k, duration or both")
        if self.duration is not None and not self.duration.endswith(tuple(DURATION_UNITS_S)):
            raise ValueError(f"process_design step {self.step}: duration parameter {self.duration!r} must end in its "
                             f"unit: {', '.join(DURATION_UNITS_S)}")
        return self

    @property
    def parameters(self) -> list[str]:
        """The space parameters this hold reads."""
        return [name for name in (self.temperature_k, self.duration) if name is not None]

    def seconds(self, value: float) -> float:
        """The designed duration parameter's value in seconds."""
        return value * next(f for suffix, f in DURATION_UNITS_S.items() if self.duration.endswith(suffix))

    def applied(self, step: ProcessStep, parameters: Mapping[str, float]) -> ProcessStep:
        """``step`` with this hold's temperature and/or duration set from ``parameters``."""
        update = {}
        if self.temperature_k is not None:
            update["temperature_k"] = float(parameters[self.temperature_k])
        if self.duration is not None:
            update["duration_s"] = self.seconds(float(parameters[self.duration]))
        return step.model_copy(update=update)


def designed_route(route: Sequence[ProcessStep], holds: Sequence[DesignedHold],
                   point: DesignPoint) -> tuple[ProcessStep, ...]:
    """``route`` with each designed hold set from ``point``'s parameters."""
    steps = list(route)
    for hold in holds:
        steps[hold.step - 1] = hold.applied(steps[hold.step - 1], point.parameters)
    return tuple(steps)


def corner_points(holds: Sequence[DesignedHold], ranges: Mapping[str, tuple[float, float]]) -> list[dict[str, float]]:
    """Every corner of the designed parameters' ``ranges`` (name -> (low, high)), as parameter values; one empty
    point where nothing is designed."""
    names = sorted({name for hold in holds for name in hold.parameters})
    missing = [name for name in names if name not in ranges]
    if missing:
        raise ValueError(f"designed holds read {missing}, which have no range (ranges given: {sorted(ranges)})")
    return [dict(zip(names, corner)) for corner in itertools.product(*[ranges[name] for name in names])]


def corner_routes(route: Sequence[ProcessStep], holds: Sequence[DesignedHold],
                  ranges: Mapping[str, tuple[float, float]]) -> list[tuple[ProcessStep, ...]]:
    """The route at every corner of the designed parameters' ``ranges``; the route itself where nothing is
    designed."""
    return [designed_route(route, holds, DesignPoint(parameters=corner)) for corner in corner_points(holds, ranges)]
