"""The instrument driver interface, in the manner of an ASE calculator.

A concrete driver declares ``implemented_measurements`` and a pydantic ``Parameters`` model, and
implements one method, :meth:`Instrument.measure`. The base class owns the bookkeeping every real
instrument PC needs: the command journal, attempt counting, timing, and limits: a driver whose
``Parameters`` have a ``limits`` field (:class:`~sdl.instruments.limits.ProcessLimits`) gets every
command checked against it before anything happens, refused and never clamped. A driver refuses
other commands it cannot take in :meth:`Instrument.check`, also before anything happens.

Exactly-once, honestly: each command (by idempotency key) is journaled
``received -> running -> done | failed | refused`` before each step is taken. A command seen again
returns (or re-raises) its first outcome; one still running in this process is waited for. A
command found ``running`` by a new process was cut off mid-action (the process died): its state is
unknown, the journal marks it ``interrupted``, and it is not run again unless the caller names that
attempt (:class:`CommandInterrupted`); whether to rerun is the campaign's (or an operator's) call,
never the driver's.

Drivers raise :class:`InstrumentFault` for the lab's failures (furnace trip, specimen lost,
instrument offline); the fault is journaled and replayed like a result.
"""

from __future__ import annotations

import importlib.metadata
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
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
    nothing was done. The refusal is journaled and replayed."""


class CommandInterrupted(RuntimeError):
    """An earlier attempt at this command was cut off mid-action; what it did to the specimen is unknown.

    ``attempt`` is that attempt's number: :meth:`Instrument.run` with ``rerun_attempt=attempt`` runs
    the command once more (a decision taken once, so a repeat of that decision does not run it twice)."""

    def __init__(self, key: str, attempt: int, started_at_unix_s: float) -> None:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started_at_unix_s))
        super().__init__(f"command {key} was interrupted mid-action (attempt {attempt}, started {started}); "
                         "the specimen's state is unknown")
        self.key = key
        self.attempt = attempt


class InstrumentParameters(BaseModel):
    """Settings every driver has; drivers subclass this to add their own."""

    model_config = ConfigDict(extra="forbid", frozen=True)


JOURNAL_STATUSES = ("received", "running", "done", "failed", "refused", "interrupted")
FINISHED = ("done", "failed", "refused")


@dataclass(frozen=True)
class JournalEntry:
    key: str
    experiment_id: str
    status: str
    attempts: int  # how many times the action was started
    outcome: dict[str, Any] | None
    command: dict[str, Any] | None  # the ExperimentSpec as received (what `sdl ledger recover` re-plans from)
    started_at_unix_s: float


class Journal:
    """Each command's state and outcome by idempotency key, in SQLite (a file survives a restart;
    ``None`` keeps it in memory). Every change is committed before the step it records is taken."""

    def __init__(self, path: str | Path | None) -> None:
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path) if path else ":memory:", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # on disk before the step it records is taken
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS executions (key TEXT PRIMARY KEY, experiment_id TEXT NOT NULL,"
            " status TEXT NOT NULL, attempts INTEGER NOT NULL, outcome_json TEXT,"
            " started_at_unix_s REAL NOT NULL, finished_at_unix_s REAL)"
        )
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(executions)")}
        if "command_json" not in columns:  # journals written before commands were kept
            self._db.execute("ALTER TABLE executions ADD COLUMN command_json TEXT")
        self._lock = threading.Lock()

    def begin(self, key: str, experiment: ExperimentSpec) -> JournalEntry:
        """The command's entry: a new one is journaled ``received``; one left ``running`` by a process
        that is gone becomes ``interrupted``. The caller must hold the key (no other thread runs it)."""
        with self._lock:
            entry = self._entry(key)
            if entry is None:
                # Not fsynced on its own: a command lost before it started is safe to run when it comes
                # again, and the fsync of `running` (write-ahead log, in order) makes this one durable too.
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute(
                    "INSERT INTO executions(key, experiment_id, status, attempts, started_at_unix_s, command_json)"
                    " VALUES (?, ?, 'received', 0, ?, ?)",
                    (key, experiment.experiment_id, time.time(), experiment.model_dump_json()))
                self._db.execute("PRAGMA synchronous=FULL")
                return self._entry(key)
            if entry.status == "running":
                self._db.execute("UPDATE executions SET status='interrupted' WHERE key=?", (key,))
                return self._entry(key)
            return entry

    def start(self, key: str) -> int:
        """The action is about to start: ``running``, a new attempt (returned)."""
        with self._lock:
            return self._db.execute(
                "UPDATE executions SET status='running', attempts=attempts+1, started_at_unix_s=? WHERE key=?"
                " RETURNING attempts", (time.time(), key)).fetchone()[0]

    def finish(self, key: str, status: str, outcome: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE executions SET status=?, outcome_json=?, finished_at_unix_s=? WHERE key=?",
                (status, json.dumps(outcome), time.time(), key),
            )

    def entries(self) -> list[JournalEntry]:
        with self._lock:
            return _entries(self._db)

    @staticmethod
    def read(path: str | Path) -> list[JournalEntry]:
        """Every entry of the journal file at ``path``, opened read-only (ValueError if it is not a journal)."""
        try:
            db = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)
            try:
                return _entries(db)
            finally:
                db.close()
        except sqlite3.DatabaseError as e:
            raise ValueError(f"{path} is not a readable instrument journal ({e})") from None

    def summary(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM executions GROUP BY status").fetchall()
        return dict(rows)

    def close(self) -> None:
        self._db.close()

    def _entry(self, key: str) -> JournalEntry | None:
        found = _entries(self._db, key)
        return found[0] if found else None


def _entries(db: sqlite3.Connection, key: str | None = None) -> list[JournalEntry]:
    columns = {row[1] for row in db.execute("PRAGMA table_info(executions)")}
    if not columns:
        if db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0:
            return []  # a journal its instrument has only just created
        raise sqlite3.DatabaseError("no executions table")
    command = "command_json" if "command_json" in columns else "NULL"  # journals of earlier versions kept none
    rows = db.execute(f"SELECT key, experiment_id, status, attempts, outcome_json, {command}, started_at_unix_s"
                      " FROM executions" + (" WHERE key=?" if key is not None else " ORDER BY rowid"),
                      (key,) if key is not None else ()).fetchall()
    return [JournalEntry(key=row[0], experiment_id=row[1], status="failed" if row[2] == "fault" else row[2],
                         attempts=row[3], outcome=json.loads(row[4]) if row[4] else None,
                         command=json.loads(row[5]) if row[5] else None, started_at_unix_s=row[6])
            for row in rows]


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

    def run(self, experiment: ExperimentSpec, *, idempotency_key: str, rerun_attempt: int | None = None
            ) -> ExperimentResult:
        """Run once per key: a repeated key returns (or re-raises) the journaled outcome.

        A command outside the limits, or one :meth:`check` refuses, raises :class:`InstrumentRefused`
        (or :class:`~sdl.instruments.limits.LimitExceeded`) before anything happens. A duplicate that
        arrives while the first is still running waits for it rather than starting the specimen a
        second time. A command cut off mid-action by an earlier process raises
        :class:`CommandInterrupted` unless ``rerun_attempt`` names the attempt that was cut off.
        """
        while True:
            with self._running_lock:
                busy = self._running.get(idempotency_key)
                if busy is None:
                    self._running[idempotency_key] = threading.Event()
                    break
            busy.wait()
        try:
            return self._run_once(experiment, idempotency_key, rerun_attempt)
        finally:
            with self._running_lock:
                self._running.pop(idempotency_key).set()

    def _run_once(self, experiment: ExperimentSpec, key: str, rerun_attempt: int | None) -> ExperimentResult:
        entry = self.journal.begin(key, experiment)
        if entry.status == "done":
            return ExperimentResult.model_validate({**entry.outcome, "replayed": True})
        if entry.status == "failed":
            raise InstrumentFault(entry.outcome["message"])
        if entry.status == "refused":
            raise InstrumentRefused(entry.outcome["message"])
        if entry.status == "interrupted" and rerun_attempt != entry.attempts:
            raise CommandInterrupted(key, entry.attempts, entry.started_at_unix_s)
        try:
            if self.limits is not None and experiment.process:
                self.limits.check(experiment.process, instrument=f"the {self.name}")
            self.check(experiment)
        except ValueError as e:
            self.journal.finish(key, "refused", {"message": str(e)})
            raise
        attempt = self.journal.start(key)
        started = time.time()
        try:
            measurements = self.measure(experiment, attempt=attempt)
            missing = set(self.implemented_measurements) - set(measurements)
            if missing:
                raise RuntimeError(f"driver {self.name} did not return {sorted(missing)}")
        except InstrumentFault as e:
            self.journal.finish(key, "failed", {"message": str(e)})
            raise
        except Exception as e:  # the driver's own error: the action ended, so it is a failure, not unknown
            message = f"{self.name} driver error: {type(e).__name__}: {e}"
            self.journal.finish(key, "failed", {"message": message})
            raise InstrumentFault(message) from e
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
        self.journal.finish(key, "done", result.model_dump(mode="json"))
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
