import threading

import pytest

from sdl.agents.instrument_driver import InstrumentDriverAgent, InstrumentDriverSettings, RunExperiment
from sdl.experiment import DesignPoint, ExperimentSpec
from sdl.instruments.base import (
    CommandInterrupted,
    InstrumentFault,
    InstrumentRefused,
    Journal,
    available_drivers,
    driver_class,
)
from sdl.instruments.emulated import Branin, ConstrainedHartmann6
from sdl.wire import Request


def spec(i=0, **params):
    return ExperimentSpec(experiment_id=f"e{i}", campaign_id="c",
                          point=DesignPoint(parameters=params or {"x1": 1.0, "x2": 2.0}))


def test_drivers_are_registered_as_entry_points():
    assert {"branin", "hartmann6", "hartmann6_constrained"} <= set(available_drivers())
    assert driver_class("branin") is Branin
    with pytest.raises(ValueError, match="unknown instrument driver 'furnace9000'; installed drivers: arc_melter, ase_calculator, branin, furnace"):
        driver_class("furnace9000")


def test_same_key_runs_once_and_replays(tmp_path):
    calls = []

    class Counting(Branin):
        def measure(self, experiment, *, attempt):
            calls.append(attempt)
            return super().measure(experiment, attempt=attempt)

    journal = tmp_path / "journal.sqlite"
    instrument = Counting(journal_path=journal, noise_std=0.1, seed=5)
    first = instrument.run(spec(), idempotency_key="k1")
    again = instrument.run(spec(), idempotency_key="k1")
    assert calls == [1] and again.replayed and again.measurements == first.measurements
    instrument.close()
    # A restarted driver reads the journal from disk: still no second run.
    restarted = Counting(journal_path=journal, noise_std=0.1, seed=5)
    assert restarted.run(spec(), idempotency_key="k1").measurements == first.measurements
    assert calls == [1]
    # A different key is a different specimen.
    restarted.run(spec(), idempotency_key="k2")
    assert calls == [1, 1]


def test_concurrent_duplicates_wait_for_the_first_run():
    instrument = Branin(latency_s=0.3)
    results = []
    threads = [threading.Thread(target=lambda: results.append(instrument.run(spec(), idempotency_key="k"))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.replayed for r in results) == [False, True, True]
    assert instrument.journal.summary() == {"done": 1}


def test_a_command_cut_off_mid_action_is_not_run_again_unless_that_attempt_is_named(tmp_path):
    journal = tmp_path / "j.sqlite"
    instrument = Branin(journal_path=journal)
    instrument.journal.begin("k", spec())
    instrument.journal.start("k")  # started, then the driver died
    instrument.close()
    restarted = Branin(journal_path=journal)
    for _ in range(2):  # asked again (a resumed campaign, a retry): refused, state unknown, nothing run
        with pytest.raises(CommandInterrupted, match="interrupted mid-action \\(attempt 1"):
            restarted.run(spec(), idempotency_key="k")
    assert restarted.journal.summary() == {"interrupted": 1}
    result = restarted.run(spec(), idempotency_key="k", rerun_attempt=1)  # the decision to rerun attempt 1
    assert result.attempts == 2 and not result.replayed
    again = restarted.run(spec(), idempotency_key="k", rerun_attempt=1)  # the same decision twice: no third run
    assert again.replayed and again.attempts == 2


def test_a_command_received_but_not_started_runs_normally(tmp_path):
    journal = tmp_path / "j.sqlite"
    Branin(journal_path=journal).journal.begin("k", spec())  # journaled, then the process died before starting
    result = Branin(journal_path=journal).run(spec(), idempotency_key="k")
    assert result.attempts == 1


def test_refusals_are_journaled_and_replayed(tmp_path):
    class Picky(Branin):
        def check(self, experiment):
            raise InstrumentRefused(f"{experiment.experiment_id} does not fit")

    instrument = Picky(journal_path=tmp_path / "j.sqlite")
    for _ in range(2):
        with pytest.raises(InstrumentRefused, match="e0 does not fit"):
            instrument.run(spec(), idempotency_key="k")
    assert instrument.journal.summary() == {"refused": 1}


def test_faults_are_journaled_and_replayed():
    instrument = Branin(failure_probability=1.0)
    with pytest.raises(InstrumentFault, match="emulated fault on e0"):
        instrument.run(spec(), idempotency_key="k")
    with pytest.raises(InstrumentFault, match="emulated fault on e0"):
        instrument.run(spec(), idempotency_key="k")
    assert instrument.journal.summary() == {"failed": 1}


def test_noise_is_seeded_per_experiment():
    a = Branin(noise_std=1.0, seed=1).run(spec(0), idempotency_key="x").measurements["y"]
    b = Branin(noise_std=1.0, seed=1).run(spec(0), idempotency_key="y").measurements["y"]
    c = Branin(noise_std=1.0, seed=2).run(spec(0), idempotency_key="z").measurements["y"]
    assert a == b != c


def test_constrained_variant_reports_the_slack():
    inside = ConstrainedHartmann6().run(spec(0, **{f"x{i}": 0.1 for i in range(1, 7)}), idempotency_key="a")
    outside = ConstrainedHartmann6().run(spec(1, **{f"x{i}": 0.9 for i in range(1, 7)}), idempotency_key="b")
    assert inside.measurements["c1"] > 0 > outside.measurements["c1"]


def test_bad_options_and_bad_experiments_are_refused_clearly():
    with pytest.raises(ValueError, match="noise_std"):
        Branin(noise_std=-1)
    with pytest.raises(ValueError, match="latency"):
        Branin(latency=3)  # the unit must be in the name: latency_s
    service = InstrumentDriverAgent(InstrumentDriverSettings(driver="branin"))
    reply = service.handle(Request(service="instrument.a", method="run", idempotency_key="k",
                                   payload=RunExperiment(experiment=spec(0, a=1.0)).model_dump(mode="json")))
    assert not reply.ok and reply.error.code == "invalid_payload" and "needs parameters ['x1', 'x2']" in reply.error.message
    fault = InstrumentDriverAgent(InstrumentDriverSettings(driver="branin", options={"failure_probability": 1.0})).handle(
        Request(service="instrument.a", method="run", idempotency_key="k",
                payload=RunExperiment(experiment=spec()).model_dump(mode="json")))
    assert fault.error.code == "instrument_fault"


def test_a_journal_is_read_without_writing_and_a_foreign_file_is_refused(tmp_path):
    import sqlite3

    instrument = Branin(journal_path=tmp_path / "j.sqlite")
    instrument.run(spec(), idempotency_key="k")
    assert [(e.key, e.status, e.attempts, e.command["experiment_id"]) for e in Journal.read(tmp_path / "j.sqlite")] \
        == [("k", "done", 1, "e0")]
    sqlite3.connect(tmp_path / "new.sqlite").close()  # created by its instrument a moment ago, no table yet
    assert Journal.read(tmp_path / "new.sqlite") == []
    with sqlite3.connect(tmp_path / "other.sqlite") as db:
        db.execute("CREATE TABLE samples (id INTEGER)")
    with pytest.raises(ValueError, match="is not a readable instrument journal"):
        Journal.read(tmp_path / "other.sqlite")
    assert Journal.read(tmp_path / "j.sqlite")[0].status == "done"
