"""`sdl ledger recover` on a two-station workflow, without Ray: the ledger is lost, the backup is old,
and the instruments' journals know the rest."""

from click.testing import CliRunner

from sdl.campaign.config import parse_config
from sdl.campaign.scheduler import Scheduler
from sdl.cli import main
from sdl.experiment import DesignPoint, ExperimentResult, ExperimentSpec
from sdl.instruments.base import Journal
from sdl.ledger import Ledger, PlannedExperiment
from sdl.ledger.documents import ExperimentStep, LedgerRecovered

CONFIG = {
    "name": "c", "space": {"parameters": {"x": {"low": 0, "high": 1}}}, "workflow": ["melt", "heat"],
    "instruments": [{"name": "melter", "driver": "branin", "station": "melt"},
                    {"name": "oven-1", "driver": "branin", "station": "heat"},
                    {"name": "oven-2", "driver": "branin", "station": "heat"}],
}


def command(i: int) -> ExperimentSpec:
    return ExperimentSpec(experiment_id=f"e{i:05d}", campaign_id="c", point=DesignPoint(parameters={"x": i / 10}))


def journal(path, entries):
    """entries: (experiment number, station, status, measured value)."""
    book = Journal(path)
    for i, station, status, value in entries:
        key = f"c:e{i:05d}/{station}"
        book.begin(key, command(i))
        if status == "received":
            continue
        book.start(key)
        if status == "done":
            result = ExperimentResult(experiment_id=f"e{i:05d}", instrument="branin", measurements={station: value},
                                      started_at_unix_s=1.0, finished_at_unix_s=2.0)
            book.finish(key, "done", result.model_dump(mode="json"))
        elif status == "failed":
            book.finish(key, "failed", {"message": "furnace trip"})
    book.close()


def test_recover_rebuilds_from_the_backup_and_the_journals(tmp_path):
    config = parse_config(CONFIG, source="test")
    with Ledger.in_campaign(tmp_path) as ledger:  # the campaign as it was at its last backup: two planned
        ledger.set_meta(campaign_id="c", config=config.model_dump(mode="json"))
        ledger.plan(PlannedExperiment(experiment_id=command(i).experiment_id, point=command(i).point, process=(),
                                      planner="sobol", idempotency_key=f"c:e{i:05d}") for i in range(2))
        ledger.backup(tmp_path / "ledger.backup.sqlite")
    (tmp_path / "ledger.sqlite").write_bytes(b"SQLite format 3\x00" + bytes(1000))  # then the disk failed
    instruments = tmp_path / "instruments"
    journal(instruments / "melter.sqlite", [(0, "melt", "done", 1.0), (1, "melt", "done", 2.0),
                                            (2, "melt", "done", 3.0), (3, "melt", "failed", 0.0)])
    journal(instruments / "oven-1.sqlite", [(0, "heat", "done", 10.0), (1, "heat", "running", 0.0)])
    journal(tmp_path / "lab-pc.sqlite", [(4, "melt", "received", 0.0)])  # an external melter's journal

    result = CliRunner().invoke(main, ["ledger", "recover", str(tmp_path), "--journal", f"melter-2={tmp_path}/lab-pc.sqlite"])
    assert result.exit_code == 0, result.output
    assert "rebuilt from the backup and 3 journals: 1 results and 1 failures recovered, 3 experiments re-planned" \
        in result.output
    with Ledger.in_campaign(tmp_path, readonly=True) as ledger:
        records = {r.experiment_id: r for r in ledger.experiments()}
        steps = {(d.experiment_id, d.step): d.instrument for d in ledger.documents(ExperimentStep)}
        recovered = ledger.documents(LedgerRecovered)
        # e00000: both stations journalled done -> one combined result
        assert records["e00000"].status == "done"
        assert records["e00000"].result.measurements == {"melt": 1.0, "heat": 10.0}
        # e00001: melted, cut off in oven-1 -> dispatched there (resume reconciles it there, never in oven-2)
        assert (records["e00001"].status, records["e00001"].instrument) == ("dispatched", "instrument.oven-1")
        assert steps[("e00001", 0)] == "instrument.melter"
        # e00002: planned after the backup, melted, never sent to an oven -> re-planned from the journal's command
        assert records["e00002"].planner == "recovered" and records["e00002"].point.parameters == {"x": 0.2}
        assert records["e00002"].status == "dispatched" and ("e00002", 0) in steps
        # e00003 failed at the melter; e00004 was received by the external melter but not started
        assert (records["e00003"].status, records["e00003"].error_message) == ("failed", "at station melt: furnace trip")
        assert (records["e00004"].status, records["e00004"].instrument) == ("dispatched", "instrument.melter-2")
        assert recovered[0].source == "backup" and recovered[0].replanned == 3
        scheduler = Scheduler(config.workflow, config.instruments)
        scheduler.resume(ledger)
    placed = {flight.experiment_id: (flight.step, instrument.name) for flight, instrument in scheduler.dispatchable()}
    assert placed["e00001"] == (1, "oven-1")  # back to the oven that holds the specimen
    assert placed["e00002"][0] == 1  # its melt is not done again
    assert list(tmp_path.glob("ledger.sqlite.damaged-*"))  # the damaged file is kept, not deleted


def test_recover_without_a_backup_says_so(tmp_path):
    (tmp_path / "ledger.sqlite").write_bytes(b"not a database" * 100)
    result = CliRunner().invoke(main, ["ledger", "recover", str(tmp_path)])
    assert result.exit_code == 1 and "there is no backup" in result.output and "Traceback" not in result.output
    bad = CliRunner().invoke(main, ["ledger", "recover", str(tmp_path), "--journal", "x"])
    assert bad.exit_code == 1 and "give NAME=PATH of an existing journal file" in bad.output


def test_a_rerun_decision_is_resent_after_a_crash_only_for_the_station_it_was_about(tmp_path):
    """Decided rerun at the melt station, then a crash: resumed at the melt station the decision goes
    with the command again; once the melt is committed, the next station's command carries none (a cut
    off there is a new question, not covered by the melt's decision)."""
    from sdl.ledger.documents import ExperimentInterrupted

    config = parse_config(CONFIG, source="test")
    with Ledger.in_campaign(tmp_path) as ledger:
        ledger.plan([PlannedExperiment(experiment_id="e00000", point=command(0).point, process=(), planner="sobol",
                                       idempotency_key="c:e00000")])
        ledger.mark_dispatched("e00000", "instrument.melter")
        ledger.interrupt(ExperimentInterrupted(experiment_id="e00000", instrument="instrument.melter", station="melt",
                                               attempt=1, message="cut off", policy="hold"))
        ledger.decide("e00000", "rerun", by="alice")
        ledger.mark_dispatched("e00000", "instrument.melter")  # applied, then the campaign was killed
        at_melt = Scheduler(config.workflow, config.instruments)
        at_melt.resume(ledger)
        assert [(f.step, f.rerun_attempt) for f in at_melt.waiting] == [(0, 1)]
        result = ExperimentResult(experiment_id="e00000", instrument="branin", measurements={"melt": 1.0},
                                  started_at_unix_s=1.0, finished_at_unix_s=2.0)
        ledger.record_step("e00000", step=0, station="melt", instrument="instrument.melter", result=result)
        at_heat = Scheduler(config.workflow, config.instruments)
        at_heat.resume(ledger)
        assert [(f.step, f.rerun_attempt) for f in at_heat.waiting] == [(1, None)]
