"""The campaign ledger: one SQLite file in WAL mode, the single source of truth of a campaign.

Each experiment moves ``planned -> dispatched -> done | failed`` (a dispatched experiment may be
dispatched again when a resumed campaign reconciles it). Every transition and every result is
committed before the caller acts on it, so a campaign killed at any instant resumes with nothing
recorded lost. Illegal transitions raise :class:`LedgerError` instead of silently rewriting history.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sdl.protocol import DesignPoint, ExperimentResult, ProcessStep

LEDGER_FILENAME = "ledger.sqlite"
STATUSES = ("planned", "dispatched", "done", "failed")
Status = Literal["planned", "dispatched", "done", "failed"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS experiments (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    status TEXT NOT NULL CHECK (status IN ('planned', 'dispatched', 'done', 'failed')),
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
);
CREATE TABLE IF NOT EXISTS transitions (
    experiment_id TEXT NOT NULL REFERENCES experiments(id),
    from_status TEXT,
    to_status TEXT NOT NULL,
    at_unix_s REAL NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at_unix_s REAL NOT NULL,
    topic TEXT NOT NULL,
    payload_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS experiments_by_status ON experiments(status);
"""


class LedgerError(RuntimeError):
    """An operation the ledger refuses: an illegal transition, an unknown experiment, a bad file."""


@dataclass(frozen=True)
class PlannedExperiment:
    experiment_id: str
    point: DesignPoint
    process: tuple[ProcessStep, ...]
    planner: str
    idempotency_key: str


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
    of the process, which is what ``kill -9`` tests, at a fraction of the cost.
    """

    def __init__(self, path: str | Path, *, synchronous: Literal["full", "normal"] = "full", readonly: bool = False):
        self.path = Path(path)
        if readonly:
            if not self.path.exists():
                raise LedgerError(f"no ledger at {self.path}; is this a campaign directory?")
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10.0)
            tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not {"meta", "experiments", "transitions", "events"} <= tables:
                self._db.close()
                raise LedgerError(f"{self.path} is not an initialised ledger (yet): tables {sorted(tables)}")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
        self._db.row_factory = sqlite3.Row

    @classmethod
    def in_campaign(cls, campaign_dir: str | Path, **kwargs: Any) -> Ledger:
        return cls(Path(campaign_dir) / LEDGER_FILENAME, **kwargs)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    # -- metadata and events ---------------------------------------------------------------------

    def set_meta(self, **values: Any) -> None:
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                [(k, json.dumps(v)) for k, v in values.items()],
            )

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return default if row is None else json.loads(row["value"])

    def log_event(self, topic: str, payload: dict[str, Any]) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO events(at_unix_s, topic, payload_json) VALUES (?, ?, ?)",
                (time.time(), topic, json.dumps(payload)),
            )

    def events(self, topic_prefix: str = "") -> list[tuple[float, str, dict[str, Any]]]:
        rows = self._db.execute(
            "SELECT at_unix_s, topic, payload_json FROM events WHERE topic LIKE ? ORDER BY seq",
            (topic_prefix + "%",),
        ).fetchall()
        return [(r["at_unix_s"], r["topic"], json.loads(r["payload_json"])) for r in rows]

    # -- transitions ---------------------------------------------------------------------------

    def plan(self, experiments: Iterable[PlannedExperiment]) -> None:
        """Record new experiments as planned, in one transaction."""
        now = time.time()
        with self._transaction() as db:
            next_seq = db.execute("SELECT COALESCE(MAX(seq), -1) + 1 FROM experiments").fetchone()[0]
            for offset, e in enumerate(experiments):
                db.execute(
                    "INSERT INTO experiments(id, seq, status, point_json, process_json, planner, idempotency_key,"
                    " planned_at_unix_s) VALUES (?, ?, 'planned', ?, ?, ?, ?, ?)",
                    (
                        e.experiment_id,
                        next_seq + offset,
                        e.point.model_dump_json(),
                        json.dumps([s.model_dump(mode="json") for s in e.process]),
                        e.planner,
                        e.idempotency_key,
                        now,
                    ),
                )
                db.execute(
                    "INSERT INTO transitions(experiment_id, from_status, to_status, at_unix_s) VALUES (?, NULL, 'planned', ?)",
                    (e.experiment_id, now),
                )

    def mark_dispatched(self, experiment_id: str, instrument: str) -> None:
        """planned -> dispatched, or dispatched -> dispatched again (reconciliation after a resume)."""
        now = time.time()
        with self._transaction() as db:
            before = self._status(db, experiment_id)
            if before not in ("planned", "dispatched"):
                raise LedgerError(f"experiment {experiment_id} is {before}; only planned or dispatched ones can be dispatched")
            db.execute(
                "UPDATE experiments SET status='dispatched', instrument=?, dispatched_at_unix_s=?,"
                " dispatch_count=dispatch_count+1 WHERE id=?",
                (instrument, now, experiment_id),
            )
            db.execute(
                "INSERT INTO transitions VALUES (?, ?, 'dispatched', ?, ?)", (experiment_id, before, now, instrument)
            )

    def record_result(self, experiment_id: str, result: ExperimentResult) -> bool:
        """dispatched -> done. Returns False (and changes nothing) if the result was already recorded."""
        return self._finish(experiment_id, "done", result_json=result.model_dump_json())

    def record_failure(self, experiment_id: str, code: str, message: str) -> bool:
        """planned|dispatched -> failed. Returns False if the experiment had already finished."""
        return self._finish(experiment_id, "failed", error_code=code, error_message=message)

    def _finish(self, experiment_id: str, status: Status, **fields: str) -> bool:
        now = time.time()
        with self._transaction() as db:
            before = self._status(db, experiment_id)
            if before in ("done", "failed"):
                return False
            if status == "done" and before != "dispatched":
                raise LedgerError(f"experiment {experiment_id} is {before}; a result can only finish a dispatched one")
            db.execute(
                "UPDATE experiments SET status=?, finished_at_unix_s=?, result_json=?, error_code=?, error_message=? WHERE id=?",
                (status, now, fields.get("result_json"), fields.get("error_code"), fields.get("error_message"), experiment_id),
            )
            db.execute(
                "INSERT INTO transitions VALUES (?, ?, ?, ?, ?)",
                (experiment_id, before, status, now, fields.get("error_code") or ""),
            )
        return True

    @staticmethod
    def _status(db: sqlite3.Connection, experiment_id: str) -> Status:
        row = db.execute("SELECT status FROM experiments WHERE id=?", (experiment_id,)).fetchone()
        if row is None:
            raise LedgerError(f"no experiment {experiment_id!r} in the ledger")
        return row[0]

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


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error: the ledger's only way to write."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> sqlite3.Connection:
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")


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


def export(ledger: Ledger, directory: str | Path, file_format: Literal["csv", "parquet"]) -> Path:
    """Write one row per experiment (inputs, measurements, status, times) to ``directory``."""
    import pyarrow as pa
    import pyarrow.csv
    import pyarrow.parquet

    if file_format not in ("csv", "parquet"):
        raise ValueError(f"unknown export format {file_format!r}; allowed: csv, parquet")
    rows = []
    for e in ledger.experiments():
        row: dict[str, Any] = {
            "seq": e.seq,
            "experiment_id": e.experiment_id,
            "status": e.status,
            "planner": e.planner,
            "instrument": e.instrument,
            "dispatch_count": e.dispatch_count,
            "planned_at_unix_s": e.planned_at_unix_s,
            "dispatched_at_unix_s": e.dispatched_at_unix_s,
            "finished_at_unix_s": e.finished_at_unix_s,
            "error_code": e.error_code,
            "error_message": e.error_message,
            "process_json": json.dumps([s.model_dump(mode="json") for s in e.process]),
        }
        row.update({f"param.{k}": v for k, v in e.point.parameters.items()})
        if e.point.composition is not None:
            row.update({f"x.{k}": v for k, v in e.point.composition.root.items()})
        if e.result is not None:
            row.update({f"meas.{k}": v for k, v in e.result.measurements.items()})
        rows.append(row)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    table = pa.table({c: [row.get(c) for row in rows] for c in columns}) if rows else pa.table({"seq": pa.array([], pa.int64())})
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"experiments.{file_format}"
    if file_format == "csv":
        pyarrow.csv.write_csv(table, path)
    else:
        pyarrow.parquet.write_table(table, path)
    return path
