"""The instrument driver interface, in the manner of an ASE calculator.

A concrete driver declares ``implemented_measurements`` and a pydantic ``Parameters`` model, and
implements one method, :meth:`Instrument.measure`. The base class owns the bookkeeping every real
instrument PC needs: the idempotency journal (a command seen twice returns the first outcome, so a
retried or resumed campaign never runs a specimen twice), attempt counting, timing, and limits: a
driver whose ``Parameters`` have a ``limits`` field (:class:`~sdl.instruments.limits.ProcessLimits`)
gets every command checked against it before anything happens, refused and never clamped. A driver
refuses other commands it cannot take in :meth:`Instrument.check`, also before anything happens.

Drivers raise :class:`InstrumentFault` for the lab's failures (furnace trip, specimen lost,
instrument offline); the fault is journaled and replayed like a result.
"""

from __future__ import annotations

import importlib.metadata
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from sdl.experiment import ExperimentResult, ExperimentSpec
from sdl.instruments.limits import ProcessLimits
from sdl.settings import describe_validation_error

ENTRY_POINT_GROUP = "sdl.instruments"


class InstrumentFault(RuntimeError):
    """The instrument could not complete the experiment (recorded as a failed experiment)."""


class InstrumentRefused(ValueError):
    """A command the instrument will not execute as given (over a limit, a specimen it cannot take);
    nothing was done, and nothing is journaled."""


class InstrumentParameters(BaseModel):
    """Settings every driver has; drivers subclass this to add their own."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Journal:
    """Outcomes by idempotency key, in SQLite (a file survives a restart; ``None`` keeps it in memory)."""

    def __init__(self, path: str | Path | None) -> None:
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path) if path else ":memory:", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS executions (key TEXT PRIMARY KEY, experiment_id TEXT NOT NULL,"
            " status TEXT NOT NULL, attempts INTEGER NOT NULL, outcome_json TEXT,"
            " started_at_unix_s REAL NOT NULL, finished_at_unix_s REAL)"
        )
        self._lock = threading.Lock()

    def begin(self, key: str, experiment_id: str) -> tuple[str, int, dict[str, Any] | None]:
        """Return (status, attempt, outcome): a finished key's outcome, or a new attempt to run."""
        with self._lock:
            row = self._db.execute("SELECT status, attempts, outcome_json FROM executions WHERE key=?", (key,)).fetchone()
            if row is not None and row[0] in ("done", "fault"):
                return row[0], row[1], json.loads(row[2])
            if row is not None and row[0] == "running":
                # An earlier attempt never finished (the driver died mid-run): this is a new attempt.
                attempts = row[1] + 1
                self._db.execute(
                    "UPDATE executions SET attempts=?, started_at_unix_s=? WHERE key=?", (attempts, time.time(), key)
                )
                return "running", attempts, None
            self._db.execute(
                "INSERT INTO executions(key, experiment_id, status, attempts, started_at_unix_s) VALUES (?, ?, 'running', 1, ?)",
                (key, experiment_id, time.time()),
            )
            return "running", 1, None

    def finish(self, key: str, status: str, outcome: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE executions SET status=?, outcome_json=?, finished_at_unix_s=? WHERE key=?",
                (status, json.dumps(outcome), time.time(), key),
            )

    def summary(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM executions GROUP BY status").fetchall()
        return dict(rows)

    def close(self) -> None:
        self._db.close()


class Instrument:
    """Base of every instrument driver.

    Subclasses set ``name``, ``implemented_measurements`` and ``Parameters`` and implement
    :meth:`measure`. Construct with keyword settings (validated by ``Parameters``) and an optional
    ``journal_path``; call :meth:`run` with an idempotency key.
    """

    name: ClassVar[str] = "instrument"
    implemented_measurements: ClassVar[tuple[str, ...]] = ()
    Parameters: ClassVar[type[InstrumentParameters]] = InstrumentParameters

    def __init__(self, *, journal_path: str | Path | None = None, **settings: Any) -> None:
        self.parameters = self.Parameters.model_validate(settings)
        self.journal = Journal(journal_path)
        self._running: dict[str, threading.Event] = {}  # keys being executed now, in this process
        self._running_lock = threading.Lock()

    @property
    def limits(self) -> ProcessLimits | None:
        """The route limits this driver declares in its parameters, if any."""
        limits = getattr(self.parameters, "limits", None)
        return limits if isinstance(limits, ProcessLimits) else None

    def check(self, experiment: ExperimentSpec) -> None:
        """Refuse (:class:`InstrumentRefused`) a specimen or command this instrument cannot take; default: accept."""

    def measure(self, experiment: ExperimentSpec, *, attempt: int) -> dict[str, float]:
        """Make/measure the specimen; return values for ``implemented_measurements``.

        Array values (forces on every atom, a spectrum) are returned in ``ExperimentResult.arrays``."""
        raise NotImplementedError

    def lab_time_s(self, experiment: ExperimentSpec) -> float | None:
        """Time the specimen spends on the instrument; None: the wall time of :meth:`measure`.

        Simulated instruments return simulated time here."""
        return None

    def describe(self) -> dict[str, Any]:
        return {
            "driver": self.name,
            "measurements": list(self.implemented_measurements),
            "parameters": self.parameters.model_dump(mode="json"),
        }

    def run(self, experiment: ExperimentSpec, *, idempotency_key: str) -> ExperimentResult:
        """Run once per key: a repeated key returns (or re-raises) the journaled outcome.

        A command outside the limits, or one :meth:`check` refuses, raises :class:`InstrumentRefused`
        (or :class:`~sdl.instruments.limits.LimitExceeded`) first. A duplicate that arrives while the
        first is still running waits for it rather than starting the specimen a second time.
        """
        if self.limits is not None and experiment.process:
            self.limits.check(experiment.process, instrument=f"the {self.name}")
        self.check(experiment)
        while True:
            with self._running_lock:
                busy = self._running.get(idempotency_key)
                if busy is None:
                    self._running[idempotency_key] = threading.Event()
                    break
            busy.wait()
        try:
            return self._run_once(experiment, idempotency_key)
        finally:
            with self._running_lock:
                self._running.pop(idempotency_key).set()

    def _run_once(self, experiment: ExperimentSpec, idempotency_key: str) -> ExperimentResult:
        status, attempt, outcome = self.journal.begin(idempotency_key, experiment.experiment_id)
        if status == "done":
            return ExperimentResult.model_validate({**outcome, "replayed": True})
        if status == "fault":
            raise InstrumentFault(outcome["message"])
        started = time.time()
        try:
            measurements = self.measure(experiment, attempt=attempt)
        except InstrumentFault as e:
            self.journal.finish(idempotency_key, "fault", {"message": str(e)})
            raise
        missing = set(self.implemented_measurements) - set(measurements)
        if missing:
            raise RuntimeError(f"driver {self.name} did not return {sorted(missing)}")
        # array-valued results (forces of every atom, ...) travel beside the scalar measurements
        arrays = {k: np.atleast_2d(np.asarray(v, dtype=float)).tolist() for k, v in measurements.items()
                  if np.ndim(v) > 0}
        measurements = {k: float(v) for k, v in measurements.items() if k not in arrays}
        finished = time.time()
        lab_time_s = self.lab_time_s(experiment)
        result = ExperimentResult(
            experiment_id=experiment.experiment_id,
            instrument=self.name,
            measurements=measurements,
            arrays=arrays,
            started_at_unix_s=started,
            finished_at_unix_s=finished,
            attempts=attempt,
            lab_time_s=finished - started if lab_time_s is None else lab_time_s,
        )
        self.journal.finish(idempotency_key, "done", result.model_dump(mode="json"))
        return result

    def close(self) -> None:
        self.journal.close()


def available_drivers() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def driver_class(name: str) -> type[Instrument]:
    """The driver registered under ``name`` in the ``sdl.instruments`` entry-point group."""
    drivers = available_drivers()
    if name not in drivers:
        raise ValueError(f"unknown instrument driver {name!r}; installed drivers: {', '.join(sorted(drivers)) or 'none'}")
    try:
        cls = drivers[name].load()
    except Exception as e:  # a broken driver package is that package's setup error, said in one line
        raise ValueError(f"instrument driver {name!r} ({drivers[name].value}) cannot be loaded: "
                         f"{type(e).__name__}: {e}") from None
    if not (isinstance(cls, type) and issubclass(cls, Instrument)):
        raise ValueError(f"entry point {name!r} ({drivers[name].value}) does not name an Instrument subclass")
    return cls


def driver_parameters(name: str, options: dict[str, Any]) -> InstrumentParameters:
    """Driver ``name``'s parameters validated from ``options``; ValueError naming every problem."""
    try:
        return driver_class(name).Parameters.model_validate(options)
    except ValidationError as e:
        raise ValueError(f"options of driver {name!r}: {describe_validation_error(e)}") from None
