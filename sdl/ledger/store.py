"""The campaign ledger: one SQLite file in WAL mode, the single source of truth of a campaign.

Each experiment moves ``planned -> dispatched -> done | failed`` (a dispatched experiment may be
dispatched again when a resumed campaign reconciles it). A dispatched experiment whose instrument
reports the command cut off mid-action goes to ``interrupted`` until a decision (``rerun``: dispatched
again; ``fail``) is recorded and applied. Every transition is written together with
its document (:mod:`sdl.ledger.documents`) in one transaction, committed before the caller acts on
it, and only then handed to the ``on_commit`` subscriber: a campaign killed at any instant resumes
with nothing recorded lost, and nothing is published that is not recorded. Illegal transitions
raise :class:`LedgerError` instead of silently rewriting history.

This module is the only one that opens a ledger's file; everything else reads through it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from sdl.experiment import DesignPoint, ExperimentResult, ProcessStep
from sdl.ledger.documents import (
    Document,
    ExperimentDecided,
    ExperimentDispatched,
    ExperimentDone,
    ExperimentFailed,
    ExperimentInterrupted,
    ExperimentPlanned,
    ExperimentStep,
    parse_document,
)

LEDGER_FILENAME = "ledger.sqlite"
BACKUP_FILENAME = "ledger.backup.sqlite"  # the last online backup, beside the ledger
STATUSES = ("planned", "dispatched", "interrupted", "done", "failed")
Status = Literal["planned", "dispatched", "interrupted", "done", "failed"]
D = TypeVar("D", bound=Document)

_EXPERIMENTS_COLUMNS = """(
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    status TEXT NOT NULL CHECK (status IN ('planned', 'dispatched', 'interrupted', 'done', 'failed')),
    point_json TEXT NOT NULL,
    process_json TEXT NOT NULL,
    planner TEXT NOT NULL,
    idempotency_key TEXT NOT NULL UNIQUE,
    instrument TEXT,
    dispatch_count INTEGER NOT NULL DEFAULT 0,
    planned_at_unix_s REAL NOT NULL,
    dispatched_at_unix_s REAL,
    finished_at_unix_s REAL,
    result_json TEXT,
    error_code TEXT,
    error_message TEXT
)"""
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS experiments {_EXPERIMENTS_COLUMNS};
CREATE TABLE IF NOT EXISTS transitions (
    experiment_id TEXT NOT NULL REFERENCES experiments(id),
    from_status TEXT,
    to_status TEXT NOT NULL,
    at_unix_s REAL NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS documents (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at_unix_s REAL NOT NULL,
    kind TEXT NOT NULL,
    body_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS experiments_by_status ON experiments(status);
CREATE INDEX IF NOT EXISTS documents_by_kind ON documents(kind);
"""
_TABLES = {"meta", "experiments", "transitions", "documents"}
_RECOVER = ("`sdl ledger check DIR` says what is wrong; `sdl ledger recover DIR` rebuilds it from the last backup "
            "and the instruments' journals")


class LedgerError(RuntimeError):
    """An operation the ledger refuses: an illegal transition, an unknown experiment, a bad file."""


@dataclass(frozen=True)
class PlannedExperiment:
    experiment_id: str
    point: DesignPoint
    process: tuple[ProcessStep, ...]
    planner: str
    idempotency_key: str
    predicted: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ExperimentRecord:
    experiment_id: str
    seq: int
    status: Status
    point: DesignPoint
    process: tuple[ProcessStep, ...]
    planner: str
    idempotency_key: str
    instrument: str | None
    dispatch_count: int
    planned_at_unix_s: float
    dispatched_at_unix_s: float | None
    finished_at_unix_s: float | None
    result: ExperimentResult | None
    error_code: str | None
    error_message: str | None


class Ledger:
    """Open (creating if needed) the ledger at ``path``.

    ``synchronous="full"`` fsyncs each commit (survives power loss); ``"normal"`` survives a crash
    of the process, which is what ``kill -9`` tests, at a fraction of the cost. ``on_commit`` is
    called with each document once its transaction has committed.
    """

    def __init__(self, path: str | Path, *, synchronous: Literal["full", "normal"] = "full", readonly: bool = False,
                 on_commit: Callable[[Document], None] | None = None):
        self.path = Path(path)
        self.on_commit = on_commit
        try:
            self._db = self._open(readonly, synchronous)
        except sqlite3.DatabaseError as e:
            raise LedgerError(f"{self.path} is not a readable ledger ({e}); {_RECOVER}") from None
        self._db.row_factory = sqlite3.Row

    def _open(self, readonly: bool, synchronous: str) -> sqlite3.Connection:
        if readonly:
            if not self.path.exists():
                raise LedgerError(f"no ledger at {self.path}; is this a campaign directory?")
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10.0)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        damage = [row[0] for row in db.execute("PRAGMA quick_check(5)")]
        if damage != ["ok"]:
            db.close()
            raise LedgerError(f"{self.path} is damaged ({'; '.join(damage)}); {_RECOVER}")
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")} - {"sqlite_sequence"}
        if "events" in tables and "documents" not in tables:
            db.close()
            raise LedgerError(f"{self.path} was written by an earlier sdl (free-form events instead of typed "
                              "documents); read it with that version, and run new campaigns in a new directory")
        if tables - _TABLES:
            db.close()
            raise LedgerError(f"{self.path} is an SQLite file of something else (tables {', '.join(sorted(tables))}), "
                              "not a campaign ledger; move it away or choose another campaign directory")
        if readonly:
            if not _TABLES <= tables:
                db.close()
                raise LedgerError(f"{self.path} is not an initialised ledger (yet): tables {sorted(tables)}")
            return db
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        _migrate_statuses(db)
        db.execute("PRAGMA foreign_keys=ON")
        db.executescript(_SCHEMA)
        return db

    @classmethod
    def in_campaign(cls, campaign_dir: str | Path, **kwargs: Any) -> Ledger:
        return cls(Path(campaign_dir) / LEDGER_FILENAME, **kwargs)

    @staticmethod
    def exists_in(campaign_dir: str | Path) -> bool:
        return (Path(campaign_dir) / LEDGER_FILENAME).exists()

    def close(self) -> None:
        self._db.close()

    def backup(self, path: str | Path) -> None:
        """A consistent copy taken while the campaign writes (SQLite's online backup), replacing ``path``
        atomically: a crash mid-backup leaves the previous backup whole."""
        path = Path(path)
        partial = path.with_name(path.name + ".partial")
        target = sqlite3.connect(partial)
        try:
            self._db.backup(target)
        finally:
            target.close()
        os.replace(partial, path)

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[_Writes]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error), then the documents go to ``on_commit``."""
        writes = _Writes(self._db)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield writes
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        if self.on_commit is not None:
            for document in writes.documents:
                self.on_commit(document)

    # -- metadata and documents ------------------------------------------------------------------

    def set_meta(self, **values: Any) -> None:
        with self._transaction() as tx:
            tx.db.executemany(
                "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                [(k, json.dumps(v)) for k, v in values.items()],
            )

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return default if row is None else json.loads(row["value"])

    def record(self, *documents: Document) -> None:
        """Commit documents that change no experiment's state (agents joining, a planner failing, ...)."""
        with self._transaction() as tx:
            for document in documents:
                tx.add(document)

    def documents(self, *kinds: type[D], last: int | None = None) -> list[D]:
        """Documents of these types (all when none is named), in the order they were committed; with
        ``last``, only the latest that many."""
        names = [k.model_fields["kind"].default for k in kinds]
        where = f" WHERE kind IN ({', '.join('?' * len(names))})" if names else ""
        limit = f" LIMIT {int(last)}" if last is not None else ""
        rows = self._db.execute(f"SELECT body_json FROM documents{where} ORDER BY seq DESC{limit}", names).fetchall()
        return [parse_document(row[0]) for row in reversed(rows)]

    # -- transitions ---------------------------------------------------------------------------

    def plan(self, experiments: Iterable[PlannedExperiment], *,
             notes: Iterable[Document] = ()) -> list[ExperimentRecord]:
        """Record new experiments as planned, in one transaction with ``notes`` (documents about them, such
        as the route a process planner fell back to); return them as recorded."""
        now = time.time()
        experiments = list(experiments)
        with self._transaction() as tx:
            next_seq = tx.db.execute("SELECT COALESCE(MAX(seq), -1) + 1 FROM experiments").fetchone()[0]
            for seq, e in enumerate(experiments, next_seq):
                tx.db.execute(
                    "INSERT INTO experiments(id, seq, status, point_json, process_json, planner, idempotency_key,"
                    " planned_at_unix_s) VALUES (?, ?, 'planned', ?, ?, ?, ?, ?)",
                    (e.experiment_id, seq, e.point.model_dump_json(),
                     json.dumps([s.model_dump(mode="json") for s in e.process]), e.planner, e.idempotency_key, now),
                )
                tx.transition(e.experiment_id, None, "planned", now)
                tx.add(ExperimentPlanned(experiment_id=e.experiment_id, seq=seq, point=e.point, process=list(e.process),
                                         planner=e.planner, idempotency_key=e.idempotency_key, predicted=e.predicted,
                                         at_unix_s=now))
            for document in notes:
                tx.add(document)
            ids = [e.experiment_id for e in experiments]
            rows = tx.db.execute(f"SELECT * FROM experiments WHERE id IN ({', '.join('?' * len(ids))}) ORDER BY seq",
                                 ids).fetchall()
        return [_record(row) for row in rows]

    def mark_dispatched(self, experiment_id: str, instrument: str) -> None:
        """planned -> dispatched, dispatched -> dispatched again (reconciliation after a resume), or
        interrupted -> dispatched (to be run once more, as decided)."""
        now = time.time()
        with self._transaction() as tx:
            before = tx.status(experiment_id)
            if before not in ("planned", "dispatched", "interrupted"):
                raise LedgerError(f"experiment {experiment_id} is {before}; only planned, dispatched or interrupted "
                                  "ones can be dispatched")
            count = tx.db.execute(
                "UPDATE experiments SET status='dispatched', instrument=?, dispatched_at_unix_s=?,"
                " dispatch_count=dispatch_count+1 WHERE id=? RETURNING dispatch_count",
                (instrument, now, experiment_id),
            ).fetchone()[0]
            tx.transition(experiment_id, before, "dispatched", now, instrument)
            tx.add(ExperimentDispatched(experiment_id=experiment_id, instrument=instrument, dispatch_count=count,
                                        at_unix_s=now))

    def record_step(self, experiment_id: str, *, step: int, station: str, instrument: str,
                    result: ExperimentResult) -> None:
        """One station's result for a dispatched experiment that moves on to its next station."""
        with self._transaction() as tx:
            before = tx.status(experiment_id)
            if before != "dispatched":
                raise LedgerError(f"experiment {experiment_id} is {before}; only a dispatched one completes a station")
            tx.add(ExperimentStep(experiment_id=experiment_id, step=step, station=station, instrument=instrument,
                                  result=result))

    def record_result(self, experiment_id: str, result: ExperimentResult) -> bool:
        """dispatched -> done. Returns False (and changes nothing) if the experiment had already finished."""
        return self._finish(experiment_id, ExperimentDone(experiment_id=experiment_id, result=result),
                            result_json=result.model_dump_json())

    def interrupt(self, document: ExperimentInterrupted) -> None:
        """dispatched -> interrupted: the instrument cannot say what its cut-off attempt did to the specimen."""
        with self._transaction() as tx:
            before = tx.status(document.experiment_id)
            if before != "dispatched":
                raise LedgerError(f"experiment {document.experiment_id} is {before}; only a dispatched one can be "
                                  "interrupted")
            tx.db.execute("UPDATE experiments SET status='interrupted' WHERE id=?", (document.experiment_id,))
            tx.transition(document.experiment_id, before, "interrupted", document.at_unix_s, document.message)
            tx.add(document)

    def decide(self, experiment_id: str, decision: Literal["rerun", "fail"], *, by: str,
               note: str = "") -> ExperimentDecided:
        """Record what to do with an interrupted experiment (the campaign applies it); one decision per
        interruption. LedgerError if the experiment is not interrupted or was already decided."""
        with self._transaction() as tx:
            status = tx.status(experiment_id)
            interruption, decided = self.decisions().get(experiment_id, (None, None))
            if status != "interrupted" or interruption is None:
                raise LedgerError(f"experiment {experiment_id} is {status}, not interrupted; there is nothing to decide")
            if decided is not None:
                raise LedgerError(f"experiment {experiment_id} was already decided: {decided.decision} by {decided.by}")
            document = ExperimentDecided(experiment_id=experiment_id, decision=decision,
                                         attempt=interruption.attempt, by=by, note=note)
            tx.add(document)
        return document

    def decisions(self) -> dict[str, tuple[ExperimentInterrupted, ExperimentDecided | None]]:
        """For every experiment ever interrupted: its latest interruption and the decision taken on it (or None)."""
        latest: dict[str, tuple[ExperimentInterrupted, ExperimentDecided | None]] = {}
        for document in self.documents(ExperimentInterrupted, ExperimentDecided):
            if isinstance(document, ExperimentInterrupted):
                latest[document.experiment_id] = (document, None)
            elif document.experiment_id in latest and latest[document.experiment_id][0].attempt == document.attempt:
                latest[document.experiment_id] = (latest[document.experiment_id][0], document)
        return latest

    def record_failure(self, experiment_id: str, code: str, message: str, *, station: str | None = None) -> bool:
        """planned|dispatched|interrupted -> failed. Returns False if the experiment had already finished."""
        document = ExperimentFailed(experiment_id=experiment_id, code=code, message=message, station=station)
        return self._finish(experiment_id, document, error_code=code, error_message=message)

    def import_finished(self, experiments: Iterable[tuple[PlannedExperiment, ExperimentResult]], *,
                        instrument: str) -> None:
        """Record experiments that were made elsewhere (a lab's past notebook) as planned, dispatched and
        done, each transition with its document as if a campaign had run them."""
        experiments = list(experiments)
        self.plan(e for e, _ in experiments)
        for planned, result in experiments:
            self.mark_dispatched(planned.experiment_id, instrument)
            self.record_result(planned.experiment_id, result)

    def _finish(self, experiment_id: str, document: ExperimentDone | ExperimentFailed, **fields: str) -> bool:
        status = "done" if isinstance(document, ExperimentDone) else "failed"
        with self._transaction() as tx:
            before = tx.status(experiment_id)
            if before in ("done", "failed"):
                return False
            if status == "done" and before != "dispatched":
                raise LedgerError(f"experiment {experiment_id} is {before}; a result can only finish a dispatched one")
            tx.db.execute(
                "UPDATE experiments SET status=?, finished_at_unix_s=?, result_json=?, error_code=?, error_message=?"
                " WHERE id=?",
                (status, document.at_unix_s, fields.get("result_json"), fields.get("error_code"),
                 fields.get("error_message"), experiment_id),
            )
            tx.transition(experiment_id, before, status, document.at_unix_s, fields.get("error_code") or "")
            tx.add(document)
        return True

    # -- queries -------------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        rows = self._db.execute("SELECT status, COUNT(*) FROM experiments GROUP BY status").fetchall()
        counts = dict.fromkeys(STATUSES, 0)
        counts.update({r[0]: r[1] for r in rows})
        return counts

    def experiments(self, statuses: Iterable[Status] | None = None) -> list[ExperimentRecord]:
        query = "SELECT * FROM experiments"
        params: tuple[str, ...] = ()
        if statuses is not None:
            params = tuple(statuses)
            query += f" WHERE status IN ({', '.join('?' * len(params))})"
        return [_record(row) for row in self._db.execute(query + " ORDER BY seq", params)]

    def transitions(self, experiment_id: str | None = None) -> list[tuple[str, str | None, str, float, str]]:
        query = "SELECT * FROM transitions" + (" WHERE experiment_id=?" if experiment_id else "") + " ORDER BY rowid"
        return [tuple(r) for r in self._db.execute(query, (experiment_id,) if experiment_id else ())]


def check_ledger(path: str | Path) -> tuple[list[str], dict[str, int]]:
    """What is wrong with the ledger at ``path`` (nothing: an empty list) and its experiment counts.

    Reads only: SQLite's full integrity check, the tables, every document against its schema, and
    every finished experiment's result or error."""
    try:
        ledger = Ledger(path, readonly=True)
    except LedgerError as e:
        return [str(e)], {}
    problems = []
    with ledger:
        try:
            damage = [row[0] for row in ledger._db.execute("PRAGMA integrity_check(20)")]
            if damage != ["ok"]:
                problems += [f"integrity: {line}" for line in damage]
            bad_documents = 0
            for (body,) in ledger._db.execute("SELECT body_json FROM documents"):
                try:
                    parse_document(body)
                except ValueError:
                    bad_documents += 1
            if bad_documents:
                problems.append(f"{bad_documents} documents do not match their schema")
            for row in ledger._db.execute("SELECT id, status, result_json, error_code FROM experiments"):
                if row["status"] == "done" and not row["result_json"]:
                    problems.append(f"experiment {row['id']} is done without a result")
                if row["status"] == "failed" and not row["error_code"]:
                    problems.append(f"experiment {row['id']} failed without an error code")
            counts = ledger.counts()
        except sqlite3.DatabaseError as e:
            return [*problems, f"unreadable: {e}"], {}
    return problems, counts


def _migrate_statuses(db: sqlite3.Connection) -> None:
    """Ledgers written before ``interrupted`` existed: rebuild the experiments table with the new CHECK
    (SQLite cannot alter a constraint; this is its documented twelve-step procedure, in short)."""
    row = db.execute("SELECT sql FROM sqlite_master WHERE type='table' AND name='experiments'").fetchone()
    if row is None or "'interrupted'" in row[0]:
        return
    db.execute("PRAGMA foreign_keys=OFF")
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(f"CREATE TABLE experiments_new {_EXPERIMENTS_COLUMNS}")
        db.execute("INSERT INTO experiments_new SELECT * FROM experiments")
        db.execute("DROP TABLE experiments")
        db.execute("ALTER TABLE experiments_new RENAME TO experiments")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def finished_experiments(campaign_dir: str | Path) -> list[ExperimentRecord]:
    """The experiments of a campaign directory that finished with a result, read-only."""
    if not Ledger.exists_in(campaign_dir):
        raise LedgerError(f"{campaign_dir} has no {LEDGER_FILENAME}: give a campaign run directory")
    with Ledger.in_campaign(campaign_dir, readonly=True) as ledger:
        return ledger.experiments(["done"])


class _Writes:
    """What one transaction writes: rows directly, documents also collected for ``on_commit``."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.documents: list[Document] = []

    def add(self, document: Document) -> None:
        self.db.execute("INSERT INTO documents(at_unix_s, kind, body_json) VALUES (?, ?, ?)",
                        (document.at_unix_s, document.kind, document.model_dump_json()))
        self.documents.append(document)

    def transition(self, experiment_id: str, before: str | None, after: str, at_unix_s: float,
                   detail: str = "") -> None:
        self.db.execute("INSERT INTO transitions VALUES (?, ?, ?, ?, ?)",
                        (experiment_id, before, after, at_unix_s, detail))

    def status(self, experiment_id: str) -> Status:
        row = self.db.execute("SELECT status FROM experiments WHERE id=?", (experiment_id,)).fetchone()
        if row is None:
            raise LedgerError(f"no experiment {experiment_id!r} in the ledger")
        return row[0]


def _record(row: sqlite3.Row) -> ExperimentRecord:
    return ExperimentRecord(
        experiment_id=row["id"],
        seq=row["seq"],
        status=row["status"],
        point=DesignPoint.model_validate_json(row["point_json"]),
        process=tuple(ProcessStep.model_validate(s) for s in json.loads(row["process_json"])),
        planner=row["planner"],
        idempotency_key=row["idempotency_key"],
        instrument=row["instrument"],
        dispatch_count=row["dispatch_count"],
        planned_at_unix_s=row["planned_at_unix_s"],
        dispatched_at_unix_s=row["dispatched_at_unix_s"],
        finished_at_unix_s=row["finished_at_unix_s"],
        result=ExperimentResult.model_validate_json(row["result_json"]) if row["result_json"] else None,
        error_code=row["error_code"],
        error_message=row["error_message"],
    )
