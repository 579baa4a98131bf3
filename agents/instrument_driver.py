"""The instrument-driver agent: any :class:`sdl.instruments.base.Instrument` as a bus service.

The same service runs inside a Ray actor (started by a campaign for each ``instruments`` entry with
``host: ray``) or in a plain process on the PC wired to the hardware (``sdl instrument serve``);
the campaign cannot tell them apart. Drivers are found through the ``sdl.instruments`` entry-point
group; their options are validated by the driver's own ``Parameters`` when the config is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from sdl.agents.base import Agent, AgentContext
from sdl.bus import ServiceError, method
from sdl.experiment import ExperimentResult, ExperimentSpec
from sdl.instruments.base import CommandInterrupted, InstrumentFault, driver_class, driver_parameters
from sdl.settings import Section
from sdl.wire import ErrorCode, WireModel


def instrument_service(name: str) -> str:
    """The bus service an instrument called ``name`` serves."""
    return f"instrument.{name}"


class InstrumentDriverSettings(Section):
    driver: str = Field(description="a driver name from the sdl.instruments entry points (`sdl instrument list`)")
    options: dict[str, Any] = Field(default_factory=dict, description="the driver's parameters")
    journal_path: Path | None = Field(default=None, description="its idempotency journal (SQLite; default: in memory)")

    @model_validator(mode="after")
    def _driver_options(self) -> InstrumentDriverSettings:
        driver_parameters(self.driver, self.options)
        return self


class RunExperiment(WireModel):
    experiment: ExperimentSpec
    rerun_attempt: int | None = Field(
        default=None, ge=1, description="run a command that was interrupted mid-action again: the attempt that "
                                        "was cut off (from the `interrupted` error), as decided by policy or operator")


class InstrumentDriverAgent(Agent):
    """Method ``run`` (a hardware command: needs an idempotency key) and ``describe``."""

    role = "instrument"
    Settings = InstrumentDriverSettings

    def __init__(self, settings: InstrumentDriverSettings, context: AgentContext | None = None) -> None:
        super().__init__(settings, context or AgentContext())
        self.instrument = driver_class(settings.driver)(journal_path=settings.journal_path, **settings.options)

    def details(self) -> dict[str, Any]:
        return self.instrument.describe()

    @method(RunExperiment, hardware=True)
    def run(self, request: RunExperiment, *, idempotency_key: str) -> ExperimentResult:
        try:
            return self.instrument.run(request.experiment, idempotency_key=idempotency_key,
                                       rerun_attempt=request.rerun_attempt)
        except CommandInterrupted as e:
            raise ServiceError(str(e), code=ErrorCode.INTERRUPTED, attempt=e.attempt) from e
        except InstrumentFault as e:
            raise ServiceError(str(e), code=ErrorCode.INSTRUMENT_FAULT) from e
        except ValueError as e:  # the experiment does not fit this instrument (names, limits)
            raise ServiceError(str(e), code=ErrorCode.INVALID_PAYLOAD) from e

    def close(self) -> None:
        self.instrument.close()
