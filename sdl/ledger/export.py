"""One row per experiment of a ledger, as CSV or Parquet (pyarrow), for a notebook or a spreadsheet."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from sdl.ledger.store import Ledger


def export_experiments(ledger: Ledger, directory: str | Path, file_format: Literal["csv", "parquet"]) -> Path:
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
