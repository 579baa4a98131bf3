"""Station scheduling: which specimen goes to which instrument next.

A specimen (a :class:`Flight`) visits the workflow's stations in order. The scheduler keeps the
specimens waiting for a station and those at an instrument, respects each instrument's capacity,
sends a specimen already in the line before new ones, spreads load over the instruments of a
station, and sends a command reconciled after a resume back to the instrument that held it. An
experiment interrupted mid-action and held for an operator's decision waits aside (``held``).
Plain Python: no bus, no Ray.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass, field

from sdl.campaign.config import InstrumentConfig
from sdl.experiment import DesignPoint, ExperimentResult
from sdl.ledger import ExperimentRecord, Ledger
from sdl.ledger.documents import ExperimentStep


@dataclass
class Flight:
    """A specimen on its way through the workflow: the station it is at and what it carries."""

    record: ExperimentRecord
    step: int = 0
    specimen: dict[str, float] = field(default_factory=dict)
    results: list[ExperimentResult] = field(default_factory=list)
    instrument: str = ""
    dispatched_step: int = 0  # the step whose command the ledger's `instrument` refers to
    rerun_attempt: int | None = None  # decided: run the command whose attempt this was cut off once more

    @property
    def experiment_id(self) -> str:
        return self.record.experiment_id

    def next(self, result: ExperimentResult) -> Flight:
        return Flight(self.record, self.step + 1, {**self.specimen, **result.measurements}, [*self.results, result],
                      dispatched_step=-1)

    def combined(self, last: ExperimentResult) -> ExperimentResult:
        """One result for the experiment: every station's measurements, times and lab time."""
        results = [*self.results, last]
        return last.model_copy(update={
            "measurements": {k: v for r in results for k, v in r.measurements.items()},
            "started_at_unix_s": results[0].started_at_unix_s,
            "lab_time_s": sum(r.lab_time_s for r in results),
            "attempts": max(r.attempts for r in results),
            "replayed": all(r.replayed for r in results),
        })


class Scheduler:
    def __init__(self, workflow: list[str], instruments: list[InstrumentConfig]) -> None:
        self.workflow = workflow
        self.instruments = instruments
        self.capacity = {i.name: i.capacity for i in instruments}
        self.load: collections.Counter[str] = collections.Counter()
        self.waiting: collections.deque[Flight] = collections.deque()
        self.in_flight: dict[str, Flight] = {}
        self.held: dict[str, Flight] = {}

    def resume(self, ledger: Ledger) -> int:
        """Queue what was planned or dispatched when the last run stopped, each from the first station
        whose result was not committed (the committed ``experiment.step`` documents replayed); hold
        what was interrupted. A command decided to be rerun carries that decision again."""
        unfinished = {r.experiment_id: Flight(r) for r in ledger.experiments(("planned", "dispatched", "interrupted"))}
        for step in ledger.documents(ExperimentStep):
            flight = unfinished.get(step.experiment_id)
            if flight is not None and step.step == flight.step:
                unfinished[step.experiment_id] = flight.next(step.result)
        decisions = ledger.decisions()
        for flight in unfinished.values():
            flight.dispatched_step = flight.step  # the ledger's instrument is this step's (if it was dispatched)
            if flight.record.status == "interrupted":
                self.held[flight.experiment_id] = flight
                continue
            interruption, decided = decisions.get(flight.experiment_id, (None, None))
            if decided is not None and decided.decision == "rerun" and interruption.station == self.station(flight):
                flight.rerun_attempt = decided.attempt  # for that station's command only
            self.waiting.append(flight)
        return len(unfinished)

    def add(self, records: Iterable[ExperimentRecord]) -> None:
        self.waiting.extend(Flight(r) for r in records)

    @property
    def occupied(self) -> int:
        """Specimens planned and not finished: waiting or at an instrument."""
        return len(self.waiting) + len(self.in_flight)

    def pending_points(self) -> list[DesignPoint]:
        return [f.record.point for f in (*self.in_flight.values(), *self.waiting)]

    def station(self, flight: Flight) -> str:
        return self.workflow[flight.step]

    def is_last_station(self, flight: Flight) -> bool:
        return flight.step + 1 >= len(self.workflow)

    def step_key(self, flight: Flight) -> str:
        """The idempotency key of the flight's current command: one per experiment and station."""
        if len(self.workflow) == 1:
            return flight.record.idempotency_key
        return f"{flight.record.idempotency_key}/{self.station(flight)}"

    def dispatchable(self) -> list[tuple[Flight, InstrumentConfig]]:
        """Every waiting specimen that an instrument of its station has room for, now at that instrument."""
        ready, still_waiting = [], collections.deque()
        while self.waiting:
            flight = self.waiting.popleft()
            instrument = self._pick(flight)
            if instrument is None:
                still_waiting.append(flight)  # its station is busy; others may not be
                continue
            self.load[instrument.name] += 1
            flight.instrument = instrument.name
            self.in_flight[flight.experiment_id] = flight
            ready.append((flight, instrument))
        self.waiting = still_waiting
        return ready

    def finish(self, experiment_id: str) -> Flight | None:
        """The flight whose command has come back (None if unknown), its instrument freed."""
        flight = self.in_flight.pop(experiment_id, None)
        if flight is not None:
            self.load[flight.instrument] -= 1
        return flight

    def hold(self, flight: Flight) -> None:
        """Aside until someone decides (the flight has come back from its instrument)."""
        self.held[flight.experiment_id] = flight

    def rerun(self, flight: Flight, attempt: int) -> None:
        """Back to the instrument that holds the specimen, first in line, to run the cut-off attempt once more."""
        self.held.pop(flight.experiment_id, None)
        flight.rerun_attempt = attempt
        flight.dispatched_step = flight.step
        self.waiting.appendleft(flight)

    def advance(self, flight: Flight, result: ExperimentResult) -> None:
        """The specimen moves on to its next station, before specimens that have not started."""
        self.waiting.appendleft(flight.next(result))

    def _pick(self, flight: Flight) -> InstrumentConfig | None:
        candidates = [i for i in self.instruments if i.station == self.station(flight)]
        # this run's dispatch, else (after a resume) the ledger's
        previous = next((i for i in candidates if i.name == flight.instrument
                         or (not flight.instrument and i.service_name == flight.record.instrument)), None)
        if flight.step == flight.dispatched_step and previous is not None:
            # A reconciled command goes back to the instrument that holds (or held) its specimen.
            return previous if self.load[previous.name] < self.capacity[previous.name] else None
        free = [i for i in candidates if self.load[i.name] < self.capacity[i.name]]
        return min(free, key=lambda i: self.load[i.name] / self.capacity[i.name]) if free else None
