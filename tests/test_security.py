"""An authenticated, authorised bus: CurveZMQ keys per party, and grants per key."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import zmq.auth
from click.testing import CliRunner

from sdl.agents.instrument_driver import RunExperiment
from sdl.bus import (
    Broker,
    BusClient,
    BusTimeout,
    Empty,
    EventSubscriber,
    Grant,
    KeyRing,
    KeyRingError,
    RemoteError,
    Service,
    Trust,
    Worker,
    method,
)
from sdl.bus.trust import CurveKeys
from sdl.campaign import Campaign
from sdl.cli import main
from sdl.experiment import ExperimentResult
from sdl.ledger import Ledger
from sdl.ledger.documents import AgentJoined, SecurityRefused
from sdl.wire import ErrorCode

from conftest import branin_config, free_port, wait_for_service


class Furnace(Service):
    kind = "test"

    def __init__(self):
        self.runs = 0

    @method(Empty)
    def run(self, _):
        self.runs += 1
        return Empty()


@pytest.fixture
def ring(tmp_path):
    ring = KeyRing(tmp_path / "keys")
    for name in ("broker", "lab-pc", "operator", "rogue"):
        ring.create(name)
    return ring


@pytest.fixture
def secured(ring):
    trust = Trust(*ring.key_pair("broker"), keys=ring.trusted(),
                  grants={"lab-pc": Grant(serve=("instrument.furnace-1",)),
                          "operator": Grant(call=("instrument.*:describe",), publish=("lab.*",))})
    with Broker(trust=trust) as broker:
        yield broker, trust


def keys_of(ring: KeyRing, trust: Trust, name: str) -> CurveKeys:
    return trust.client_keys(*ring.key_pair(name))


def test_keys_are_made_listed_and_revoked(tmp_path):
    runner = CliRunner()
    keys = str(tmp_path / "keys")
    assert runner.invoke(main, ["keys", "new", "broker", "--dir", keys]).exit_code == 0
    made = runner.invoke(main, ["keys", "new", "lab-pc-1", "--dir", keys])
    assert made.exit_code == 0 and "public/lab-pc-1.key" in made.output
    assert (tmp_path / "keys" / "private" / "lab-pc-1.key_secret").stat().st_mode & 0o077 == 0  # owner only
    again = runner.invoke(main, ["keys", "new", "lab-pc-1", "--dir", keys])
    assert again.exit_code != 0 and "exists" in again.output
    assert runner.invoke(main, ["keys", "list", "--dir", keys]).output.split() == ["broker", "lab-pc-1"]
    assert runner.invoke(main, ["keys", "revoke", "lab-pc-1", "--dir", keys]).exit_code == 0
    listed = runner.invoke(main, ["keys", "list", "--dir", keys]).output
    assert "lab-pc-1" in listed and "revoked" in listed and KeyRing(keys).names() == ["broker"]
    with pytest.raises(KeyRingError, match="revoked"):
        KeyRing(keys).key_pair("lab-pc-1")


def test_a_broker_without_keys_refuses_to_listen_beyond_this_machine():
    with pytest.raises(ValueError, match="reachable from other machines, and the bus has no keys"):
        Broker("tcp://0.0.0.0:*")


def test_only_known_keys_connect_and_each_does_only_what_it_is_granted(ring, secured, tmp_path):
    broker, trust = secured
    events = EventSubscriber(broker.local_events_address, topics=("bus.", "lab."))
    time.sleep(0.3)  # subscribed before anything happens (ZeroMQ's slow joiner)
    furnace = Furnace()
    lab_pc = Worker(furnace, broker.frontend_address, service_name="instrument.furnace-1",
                    curve=keys_of(ring, trust, "lab-pc")).start()
    # a known key that is not granted the service, trying to take the furnace's commands
    impostor = Furnace()
    rogue = Worker(impostor, broker.frontend_address, service_name="instrument.furnace-1",
                   curve=keys_of(ring, trust, "rogue")).start()
    try:
        wait_for_service(broker, "instrument.furnace-1")
        time.sleep(0.5)
        assert broker.services() == {"instrument.furnace-1": 1}  # the rogue's registration was refused
        with BusClient(broker.local_address) as controller:  # the campaign, in the broker's own process
            for _ in range(6):
                controller.request("instrument.furnace-1", "run", timeout_s=5)
        assert furnace.runs == 6 and impostor.runs == 0

        # no key, and a key the broker never saw: the handshake fails, nothing is answered
        with BusClient(broker.frontend_address) as anonymous:
            with pytest.raises(BusTimeout):
                anonymous.request("instrument.furnace-1", "run", timeout_s=1.0)
        stranger = zmq.auth.create_certificates(tmp_path, "stranger")[1]
        with BusClient(broker.frontend_address, curve=trust.client_keys(*zmq.auth.load_certificate(stranger))) as c:
            with pytest.raises(BusTimeout):
                c.request("instrument.furnace-1", "describe", timeout_s=1.0)

        # an operator may look, not command; may publish its own topics, attributed to it
        with BusClient(broker.frontend_address, curve=keys_of(ring, trust, "operator")) as operator:
            assert operator.request("instrument.furnace-1", "describe", timeout_s=5)["kind"] == "test"
            with pytest.raises(RemoteError, match="key 'operator' may not call instrument.furnace-1.run") as e:
                operator.request("instrument.furnace-1", "run", timeout_s=5)
            assert e.value.code == ErrorCode.UNAUTHORIZED
            operator.publish("lab.door", {"open": True})
            operator.publish("experiment.done", {"experiment_id": "e00001", "forged": True})
        assert furnace.runs == 6
        seen, refused = {}, []
        expected = {("rogue", "serve instrument.furnace-1"), ("operator", "call instrument.furnace-1.run"),
                    ("operator", "publish experiment.done")}
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (expected <= set(refused) and "lab.door" in seen):
            event = events.receive(timeout_s=0.2)
            if event is not None:
                seen.setdefault(event.topic, []).append(event)
                if event.topic == "bus.refused":
                    refused.append((event.payload["key"], event.payload["action"]))
        assert seen["lab.door"][0].sender == "operator"
        assert ("rogue", "serve instrument.furnace-1") in refused
        assert ("operator", "call instrument.furnace-1.run") in refused
        assert ("operator", "publish experiment.done") in refused
        assert "experiment.done" not in seen
    finally:
        events.close()
        rogue.stop()
        lab_pc.stop()


class Forger(Service):
    """What an impostor would answer: a fabricated result for whatever it is sent."""

    kind = "instrument"

    def __init__(self):
        self.commands = 0

    @method(RunExperiment, hardware=True)
    def run(self, request, *, idempotency_key):
        self.commands += 1
        return ExperimentResult(experiment_id=request.experiment.experiment_id, instrument="forged",
                                measurements={"y": -1000.0}, started_at_unix_s=0.0, finished_at_unix_s=0.0)


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_an_impostor_on_the_lab_network_gets_no_command_and_forges_no_result(ray_session, ring, tmp_path):
    """The campaign listens on TCP with keys; the lab PC serves its instrument with its own key. A process
    with another known key, and one with none, both register as that instrument: neither gets a command."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    lab_pc = subprocess.Popen([sys.executable, "-m", "sdl.cli", "instrument", "serve", "branin", "--bus", address,
                               "--name", "branin-a", "--keys", str(ring.directory), "--key", "lab-pc",
                               "--journal", str(tmp_path / "journal.sqlite"), "--option", "latency_s=0.02"])
    trust = Trust(*ring.key_pair("broker"), keys=ring.trusted())  # only to make the impostor's client keys
    impostor, anonymous = Forger(), Forger()
    workers = [Worker(impostor, address, service_name="instrument.branin-a", curve=keys_of(ring, trust, "rogue")),
               Worker(anonymous, address, service_name="instrument.branin-a")]
    try:
        for worker in workers:
            worker.start()
        config = branin_config(
            bus={"frontend": address, "keys": str(ring.directory), "join_timeout_s": 60},
            instruments=[{"name": "branin-a", "driver": "branin", "host": "external", "key": "lab-pc"}],
            stop={"max_experiments": 10, "max_in_flight": 2})
        summary = Campaign(config, tmp_path / "c", progress=False).run()
    finally:
        for worker in workers:
            worker.stop(timeout_s=1)
        lab_pc.send_signal(signal.SIGINT)
        lab_pc.wait(timeout=10)
    assert summary.counts["done"] == 10
    assert impostor.commands == 0 and anonymous.commands == 0
    with Ledger.in_campaign(tmp_path / "c", readonly=True) as ledger:
        results = [r.result for r in ledger.experiments(("done",))]
        refused = ledger.documents(SecurityRefused)
        joined = [d for d in ledger.documents(AgentJoined) if d.service == "instrument.branin-a"]
    assert {r.instrument for r in results} == {"branin"} and all(r.measurements["y"] > -1000 for r in results)
    assert ("rogue", "serve instrument.branin-a") in {(d.key, d.action) for d in refused}
    assert {d.key for d in joined} == {"lab-pc"}  # every worker of the instrument that joined held the lab PC's key
    placed = {d.key for d in ledger_documents(tmp_path / "c", AgentJoined) if d.service.startswith("simulator.")}
    assert placed == {"agent.simulator.test_function"}  # the campaign's own agents get keys of their own


def ledger_documents(campaign_dir, kind):
    with Ledger.in_campaign(campaign_dir, readonly=True) as ledger:
        return ledger.documents(kind)
