import csv
import sqlite3

import pyarrow.parquet as pq
import pytest

from sdl.experiment import Composition, DesignPoint, ExperimentResult, ProcessStep
from sdl.ledger import Ledger, LedgerError, PlannedExperiment
from sdl.ledger.documents import (
    AgentJoined,
    ExperimentDispatched,
    ExperimentDone,
    ExperimentFailed,
    ExperimentInterrupted,
    ExperimentPlanned,
    ExperimentStep,
    parse_document,
)
from sdl.ledger.export import export_experiments


def planned(i, **point):
    return PlannedExperiment(
        experiment_id=f"e{i}",
        point=DesignPoint(**point) if point else DesignPoint(parameters={"x1": float(i)}),
        process=(ProcessStep(operation="age", temperature_k=1000.0, duration_s=60.0),),
        planner="sobol",
        idempotency_key=f"c:e{i}",
    )


def result(i, y):
    return ExperimentResult(experiment_id=f"e{i}", instrument="a", measurements={"y": y},
                            started_at_unix_s=1.0, finished_at_unix_s=2.0)


def test_lifecycle_is_recorded_with_every_transition(tmp_path):
    with Ledger(tmp_path / "l.sqlite") as ledger:
        ledger.plan([planned(0), planned(1), planned(2)])
        assert ledger.counts() == {"planned": 3, "dispatched": 0, "interrupted": 0, "done": 0, "failed": 0}
        ledger.mark_dispatched("e0", "instrument.a")
        ledger.mark_dispatched("e1", "instrument.a")
        assert ledger.record_result("e0", result(0, 1.5))
        assert ledger.record_failure("e1", "instrument_fault", "furnace trip")
        assert ledger.counts() == {"planned": 1, "dispatched": 0, "interrupted": 0, "done": 1, "failed": 1}
        assert [t[1:3] for t in ledger.transitions("e0")] == [(None, "planned"), ("planned", "dispatched"), ("dispatched", "done")]
        e0, e1, e2 = ledger.experiments()
        assert e0.result.measurements == {"y": 1.5} and e0.process[0].temperature_k == 1000.0
        assert e1.error_code == "instrument_fault" and e1.error_message == "furnace trip"
        assert e2.status == "planned" and e2.seq == 2


def test_illegal_transitions_are_refused_and_duplicates_ignored(tmp_path):
    with Ledger(tmp_path / "l.sqlite") as ledger:
        ledger.plan([planned(0)])
        with pytest.raises(LedgerError, match="only finish a dispatched one"):
            ledger.record_result("e0", result(0, 1.0))
        ledger.mark_dispatched("e0", "instrument.a")
        ledger.mark_dispatched("e0", "instrument.a")  # re-dispatch on reconciliation is legal
        assert ledger.experiments()[0].dispatch_count == 2
        assert ledger.record_result("e0", result(0, 1.0))
        assert not ledger.record_result("e0", result(0, 99.0))  # a duplicate reply changes nothing
        assert not ledger.record_failure("e0", "timeout", "late")
        assert ledger.experiments()[0].result.measurements["y"] == 1.0
        with pytest.raises(LedgerError, match="is done"):
            ledger.mark_dispatched("e0", "instrument.a")
        with pytest.raises(LedgerError, match="no experiment 'nope'"):
            ledger.mark_dispatched("nope", "instrument.a")
        with pytest.raises(sqlite3.IntegrityError):
            ledger.plan([planned(0)])  # ids are unique


def test_committed_state_survives_reopening_and_wal_mode(tmp_path):
    path = tmp_path / "l.sqlite"
    ledger = Ledger(path)
    ledger.plan([planned(0)])
    ledger.mark_dispatched("e0", "instrument.a")
    # No close(): as after a kill -9, only what was committed counts.
    reader = Ledger(path, readonly=True)
    assert reader.counts()["dispatched"] == 1
    assert reader._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    reader.close()
    ledger.close()


def test_readonly_open_of_a_missing_ledger_says_so(tmp_path):
    with pytest.raises(LedgerError, match="no ledger"):
        Ledger(tmp_path / "none.sqlite", readonly=True)


@pytest.mark.parametrize("file_format", ["csv", "parquet"])
def test_export_has_one_row_per_experiment_with_inputs_and_measurements(tmp_path, file_format):
    with Ledger(tmp_path / "l.sqlite") as ledger:
        ledger.plan([planned(0), planned(1, composition=Composition({"Ni": 0.8, "Al": 0.2}))])
        ledger.mark_dispatched("e0", "instrument.a")
        ledger.record_result("e0", result(0, 2.5))
        path = export_experiments(ledger, tmp_path / "out", file_format)
    if file_format == "csv":
        rows = list(csv.DictReader(path.open()))
    else:
        rows = pq.read_table(path).to_pylist()
    assert [r["experiment_id"] for r in rows] == ["e0", "e1"]
    assert float(rows[0]["meas.y"]) == 2.5 and float(rows[0]["param.x1"]) == 0.0
    assert float(rows[1]["x.Ni"]) == 0.8 and rows[1]["status"] == "planned"


def test_plan_returns_what_it_wrote(tmp_path):
    with Ledger(tmp_path / "l.sqlite") as ledger:
        ledger.plan([planned(0)])
        records = ledger.plan([planned(1), planned(2)])
    assert [(r.experiment_id, r.seq, r.status) for r in records] == [("e1", 1, "planned"), ("e2", 2, "planned")]
    assert records[0].point == planned(1).point and records[0].process == planned(1).process


def test_each_transition_writes_its_typed_document_and_publishes_it_only_after_commit(tmp_path):
    path = tmp_path / "l.sqlite"
    seen = []

    def subscriber(document):
        # at the moment a document is handed out, another connection already reads it from the file
        with Ledger(path, readonly=True) as reader:
            assert document in reader.documents(type(document))
        seen.append(document)

    with Ledger(path, on_commit=subscriber) as ledger:
        ledger.plan([PlannedExperiment("e0", DesignPoint(parameters={"x1": 0.0}), (), "sobol", "c:e0", {"y": 1.5})])
        ledger.mark_dispatched("e0", "instrument.a")
        ledger.record_step("e0", step=0, station="melt", instrument="instrument.a", result=result(0, 1.0))
        ledger.record_result("e0", result(0, 2.0))
        ledger.plan([planned(1)])
        ledger.record_failure("e1", "instrument_fault", "trip", station="melt")
        ledger.record(AgentJoined(service="planner.bo", worker="w"))
        with pytest.raises(LedgerError):
            ledger.record_step("e1", step=0, station="melt", instrument="instrument.a", result=result(1, 1.0))
        documents = ledger.documents()
    assert [type(d) for d in seen] == [ExperimentPlanned, ExperimentDispatched, ExperimentStep, ExperimentDone,
                                       ExperimentPlanned, ExperimentFailed, AgentJoined]  # nothing for the refusal
    assert documents == seen
    assert seen[0].predicted == {"y": 1.5} and seen[1].dispatch_count == 1 and seen[3].result.measurements == {"y": 2.0}
    assert parse_document(seen[5].model_dump_json()) == seen[5]
    with Ledger(path, readonly=True) as reader:
        assert [d.experiment_id for d in reader.documents(ExperimentDone, ExperimentFailed)] == ["e0", "e1"]


def test_a_corrupted_ledger_is_refused_with_one_line(tmp_path):
    path = tmp_path / "ledger.sqlite"
    with Ledger(path) as ledger:
        ledger.plan([planned(0)])
    path.write_bytes(b"this is not SQLite" * 200)
    for readonly in (True, False):
        with pytest.raises(LedgerError, match="is not a readable ledger"):
            Ledger(path, readonly=readonly)


def test_a_ledger_of_the_free_form_event_era_is_refused_not_misread(tmp_path):
    """Resuming one would replay no station results (they were events, not documents): refuse instead."""
    path = tmp_path / "ledger.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, at_unix_s REAL, topic TEXT, payload_json TEXT)")
    for readonly in (True, False):
        with pytest.raises(LedgerError, match="written by an earlier sdl"):
            Ledger(path, readonly=readonly)


def test_an_interrupted_experiment_waits_for_one_decision_per_interruption(tmp_path):
    with Ledger(tmp_path / "l.sqlite") as ledger:
        ledger.plan([planned(0)])
        with pytest.raises(LedgerError, match="e0 is planned, not interrupted"):
            ledger.decide("e0", "rerun", by="alice")
        ledger.mark_dispatched("e0", "instrument.furnace")
        ledger.interrupt(ExperimentInterrupted(experiment_id="e0", instrument="instrument.furnace", station="heat",
                                               attempt=1, message="cut off", policy="hold"))
        assert ledger.counts()["interrupted"] == 1
        assert ledger.decisions()["e0"][1] is None
        decided = ledger.decide("e0", "rerun", by="alice", note="specimen looked untouched")
        assert (decided.attempt, decided.by) == (1, "alice")
        with pytest.raises(LedgerError, match="already decided: rerun by alice"):
            ledger.decide("e0", "fail", by="bob")
        ledger.mark_dispatched("e0", "instrument.furnace")  # the decision applied: sent once more
        ledger.interrupt(ExperimentInterrupted(experiment_id="e0", instrument="instrument.furnace", station="heat",
                                               attempt=2, message="cut off again", policy="hold"))
        assert ledger.decisions()["e0"] == (ledger.documents(ExperimentInterrupted)[-1], None)  # a new question
        ledger.decide("e0", "fail", by="bob")
        assert ledger.record_failure("e0", "interrupted", "cut off twice")
        assert [t[2] for t in ledger.transitions("e0")] == ["planned", "dispatched", "interrupted", "dispatched",
                                                           "interrupted", "failed"]


def test_a_ledger_from_before_interrupted_existed_is_migrated(tmp_path):
    path = tmp_path / "old.sqlite"
    with Ledger(path) as ledger:
        ledger.plan([planned(0)])
        ledger.mark_dispatched("e0", "instrument.a")
    db = sqlite3.connect(path)  # put back the old constraint, as an earlier sdl wrote it
    db.execute("PRAGMA foreign_keys=OFF")
    sql = db.execute("SELECT sql FROM sqlite_master WHERE name='experiments'").fetchone()[0]
    db.execute(sql.replace("experiments", "experiments_old", 1).replace("'dispatched', 'interrupted'", "'dispatched'"))
    db.execute("INSERT INTO experiments_old SELECT * FROM experiments")
    db.execute("DROP TABLE experiments")
    db.execute("ALTER TABLE experiments_old RENAME TO experiments")
    db.commit()
    db.close()
    with Ledger(path) as ledger:
        ledger.interrupt(ExperimentInterrupted(experiment_id="e0", instrument="instrument.a", station="measure",
                                               attempt=1, message="cut off", policy="hold"))
        assert ledger.experiments()[0].status == "interrupted"
        assert [t[2] for t in ledger.transitions("e0")] == ["planned", "dispatched", "interrupted"]
