"""What an instrument that runs heat-treatment routes can do, declared once in its own parameters.

A driver whose ``Parameters`` have a ``limits`` field of this type gets every command checked
against it by the instrument base class, before anything happens to the specimen: refused, never
clamped, with the limit in the message. The process planner plans within the tightest limits of
the instruments its routes will run on (:meth:`ProcessLimits.tightest`), read from the same
parameters, so there is no second copy to keep equal.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pydantic import Field, ValidationError, model_validator

from sdl.experiment import ProcessStep
from sdl.settings import Section, describe_validation_error


class LimitExceeded(ValueError):
    """A command outside an instrument's limits; nothing was done."""


class ProcessLimits(Section):
    min_temperature_k: float = Field(default=900.0, gt=0.0)
    max_temperature_k: float = Field(default=1500.0, gt=0.0)
    max_duration_s: float = Field(default=7 * 86400.0, gt=0.0, description="per hold")
    max_ramp_k_per_s: float = Field(default=0.5, gt=0.0)
    max_steps: int = Field(default=8, ge=1, description="holds in one route (the controller's program segments)")

    @model_validator(mode="after")
    def _ordered(self) -> ProcessLimits:
        if self.min_temperature_k > self.max_temperature_k:
            raise ValueError(f"min_temperature_k {self.min_temperature_k} is above max_temperature_k "
                             f"{self.max_temperature_k}")
        return self

    def check(self, steps: Sequence[ProcessStep], *, instrument: str = "the furnace") -> None:
        """Raise :class:`LimitExceeded` naming the first step outside the limits."""
        holds = [s for s in steps if s.operation != "quench"]
        if len(holds) > self.max_steps:
            raise LimitExceeded(f"route has {len(holds)} holds; {instrument} runs at most {self.max_steps}")
        for number, step in enumerate(steps, 1):
            if step.operation != "quench":
                self.check_step(step, number=number, instrument=instrument)

    def check_step(self, step: ProcessStep, *, number: int = 1, instrument: str = "the furnace") -> None:
        """Raise :class:`LimitExceeded` if this one hold is too hot, too cold, too long or ramped too fast."""
        where = f"step {number} ({step.operation})"
        if step.temperature_k > self.max_temperature_k:
            raise LimitExceeded(f"{where} at {step.temperature_k} K is above {instrument}'s maximum "
                                f"{self.max_temperature_k} K")
        if step.temperature_k < self.min_temperature_k:
            raise LimitExceeded(f"{where} at {step.temperature_k} K is below {instrument}'s minimum "
                                f"{self.min_temperature_k} K")
        if step.duration_s > self.max_duration_s:
            raise LimitExceeded(f"{where} lasts {step.duration_s} s; {instrument} runs at most {self.max_duration_s} s")
        if step.ramp_k_per_s is not None and step.ramp_k_per_s > self.max_ramp_k_per_s:
            raise LimitExceeded(f"{where} ramps at {step.ramp_k_per_s} K/s; {instrument}'s maximum is "
                                f"{self.max_ramp_k_per_s} K/s")

    @classmethod
    def tightest(cls, limits: Iterable[ProcessLimits]) -> ProcessLimits | None:
        """What every one of several instruments can do (None for none); ValueError if nothing can."""
        limits = list(limits)
        if not limits:
            return None
        try:
            return cls(min_temperature_k=max(l.min_temperature_k for l in limits),
                       max_temperature_k=min(l.max_temperature_k for l in limits),
                       max_duration_s=min(l.max_duration_s for l in limits),
                       max_ramp_k_per_s=min(l.max_ramp_k_per_s for l in limits),
                       max_steps=min(l.max_steps for l in limits))
        except ValidationError as e:
            raise ValueError(f"no route fits every instrument's limits: {describe_validation_error(e)}") from None
