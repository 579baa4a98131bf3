import threading

import pytest

from sdl.agents.instrument_driver import InstrumentDriverAgent, InstrumentDriverSettings, RunExperiment
from sdl.experiment import DesignPoint, ExperimentSpec
from sdl.instruments.base import InstrumentFault, available_drivers, driver_class
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


def test_interrupted_run_is_a_new_attempt(tmp_path):
    journal = tmp_path / "j.sqlite"
    instrument = Branin(journal_path=journal)
    instrument.journal.begin("k", "e0")  # started, then the driver died
    instrument.close()
    result = Branin(journal_path=journal).run(spec(), idempotency_key="k")
    assert result.attempts == 2 and not result.replayed


def test_faults_are_journaled_and_replayed():
    instrument = Branin(failure_probability=1.0)
    with pytest.raises(InstrumentFault, match="emulated fault on e0"):
        instrument.run(spec(), idempotency_key="k")
    with pytest.raises(InstrumentFault, match="emulated fault on e0"):
        instrument.run(spec(), idempotency_key="k")
    assert instrument.journal.summary() == {"fault": 1}


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
