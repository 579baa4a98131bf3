"""The instrument-driver agent: any :class:`sdl.instruments.base.Instrument` as a bus service.

The same service runs inside a Ray actor (``sdl.agents.actor``) or in a plain process on the PC
wired to the hardware (``sdl instrument serve``); the campaign cannot tell them apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdl.instruments.base import InstrumentFault, driver_class
from sdl.protocol import ExperimentResult, RunExperiment
from sdl.service import Service, ServiceError, method


class InstrumentDriverService(Service):
    """Method ``run`` (a hardware command: needs an idempotency key) and ``describe``."""

    kind = "instrument"

    def __init__(self, *, driver: str, options: dict[str, Any] | None = None, journal_path: str | Path | None = None):
        self.instrument = driver_class(driver)(journal_path=journal_path, **(options or {}))

    def details(self) -> dict[str, Any]:
        return self.instrument.describe()

    @method(RunExperiment, hardware=True)
    def run(self, request: RunExperiment, *, idempotency_key: str) -> ExperimentResult:
        try:
            return self.instrument.run(request.experiment, idempotency_key=idempotency_key)
        except InstrumentFault as e:
            raise ServiceError(str(e), code="instrument_fault") from e
        except ValueError as e:  # the experiment does not fit this instrument (names, limits)
            raise ServiceError(str(e), code="invalid_payload") from e

    def close(self) -> None:
        self.instrument.close()
