"""The lab bus over real sockets: broker, workers in threads and in killed processes, clients."""

import math
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import zmq

from sdl.agents.base import AgentContext
from sdl.agents.capabilities import EvaluateRequest
from sdl.agents.simulator_host import TestFunctionSettings, TestFunctionSimulator
from sdl.bus import BusClient, Empty, EventSubscriber, RemoteError, Service, ServiceError, Worker, method
from sdl.experiment import DesignPoint
from sdl.wire import CLIENT_HEADER, ErrorCode, Ready, decode, encode

from conftest import wait_for_service

POINT = DesignPoint(parameters={"x1": 1.0, "x2": 2.0})


def branin() -> TestFunctionSimulator:
    return TestFunctionSimulator(TestFunctionSettings(problem="branin"), AgentContext())

SLOW_WORKER = textwrap.dedent(
    """
    import sys, time
    from sdl.bus import Empty, Service, Worker, method

    class Slow(Service):
        kind = "test"
        @method(Empty)
        def wait(self, _):
            time.sleep(float(sys.argv[2]))
            return Empty()

        @method(Empty)
        def spin(self, _):
            # Hold the GIL: a pure-Python loop that no other Python thread may interrupt for 30 s.
            sys.setswitchinterval(30.0)
            end = time.perf_counter() + float(sys.argv[2])
            while time.perf_counter() < end:
                pass
            sys.setswitchinterval(0.005)
            return Empty()

    Worker(Slow(), sys.argv[1], service_name="test.slow", capacity=int(sys.argv[3])).run()
    """
)


@pytest.fixture
def simulator(broker):
    worker = Worker(branin(), broker.frontend_address, service_name="simulator.branin").start()
    yield worker
    worker.stop()


def test_request_reply_through_the_broker(broker, simulator):
    wait_for_service(broker, "simulator.branin")
    with BusClient(broker.frontend_address) as client:
        payload = client.request("simulator.branin", "evaluate", EvaluateRequest(points=[POINT]), timeout_s=5)
    # Branin: (x2 - 5.1/(4 pi^2) x1^2 + 5/pi x1 - 6)^2 + 10 (1 - 1/(8 pi)) cos(x1) + 10
    x1, x2 = 1.0, 2.0
    expected = (x2 - 5.1 / (4 * math.pi**2) * x1**2 + 5 / math.pi * x1 - 6) ** 2 + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x1) + 10
    assert payload["values"][0]["y"] == pytest.approx(expected)


def test_handler_errors_come_back_as_error_replies(broker, simulator):
    wait_for_service(broker, "simulator.branin")
    with BusClient(broker.frontend_address) as client:
        with pytest.raises(RemoteError, match="no method 'simulate'; available: describe, evaluate") as e:
            client.request("simulator.branin", "simulate", {}, timeout_s=5)
        assert e.value.code == "unknown_method"
        with pytest.raises(RemoteError, match="points") as e:
            client.request("simulator.branin", "evaluate", {"points": []}, timeout_s=5)
        assert e.value.code == "invalid_payload"
        with pytest.raises(RemoteError, match="needs parameters") as e:
            client.request("simulator.branin", "evaluate", {"points": [{"parameters": {"a": 1.0}}]}, timeout_s=5)
        assert e.value.code == "invalid_payload"


def test_event_stream_carries_published_and_broker_events(broker):
    subscriber = EventSubscriber(broker.events_address, topics=("bus.", "lab."))
    time.sleep(0.3)  # PUB/SUB: a subscription takes a moment to reach the publisher
    with BusClient(broker.frontend_address) as client:
        client.publish("lab.door", {"open": True})
        client.publish("other.topic", {"ignored": True})
        client.publish("bus.lost", {"service": "planner.bo"})  # a forgery in the broker's own namespace
        worker = Worker(branin(), broker.frontend_address, service_name="simulator.x").start()
        try:
            seen = {}
            deadline = time.monotonic() + 5
            while len(seen) < 2 and time.monotonic() < deadline:
                event = subscriber.receive(timeout_s=0.5)
                if event is not None:
                    seen[event.topic] = event.payload
        finally:
            worker.stop()
            subscriber.close()
    assert seen["lab.door"] == {"open": True}
    assert seen["bus.joined"]["service"] == "simulator.x"
    assert "other.topic" not in seen and "bus.lost" not in seen
    assert broker.counters["bad_message"] == 1


def test_garbage_frames_get_error_replies_and_the_broker_carries_on(broker, simulator):
    wait_for_service(broker, "simulator.branin")
    raw = zmq.Context.instance().socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(broker.frontend_address)
    garbage = [
        [b"just one frame"],
        [CLIENT_HEADER, b"\x00\x01\x02 not json"],
        [CLIENT_HEADER, b'{"kind": "teleport", "version": 2}'],
        [CLIENT_HEADER, b'{"kind": "request", "version": 2, "id": "r1", "service": "simulator.branin"}'],
        [CLIENT_HEADER, encode(Ready(service="x", worker="y"))],  # a worker message from a client
        [b"XXXX", b"{}", b"extra"],
    ]
    replies = []
    for frames in garbage:
        raw.send_multipart(frames)
        assert raw.poll(5000), f"no error reply to {frames!r}"
        header, body = raw.recv_multipart()
        assert header == CLIENT_HEADER
        replies.append(decode(body))
    assert all(not r.ok and r.error.code == "bad_message" for r in replies)
    assert "unknown message kind 'teleport'" in replies[2].error.message
    assert replies[3].correlation_id == "r1" and "method" in replies[3].error.message
    raw.close()
    assert broker.counters["bad_message"] == len(garbage)
    with BusClient(broker.frontend_address) as client:  # still serving
        assert client.request("simulator.branin", "evaluate", EvaluateRequest(points=[POINT]), timeout_s=5)


def test_unserved_request_gets_service_unavailable(broker):
    with BusClient(broker.frontend_address) as client:
        with pytest.raises(RemoteError, match="no worker of service 'nobody.home'") as e:
            client.request("nobody.home", "describe", timeout_s=0.5)
    assert e.value.code == "service_unavailable"


class Recorder(Service):
    """Sleeps past the caller's timeout on the first attempt; records what each attempt carried."""

    kind = "test"

    def __init__(self):
        self.seen = []
        self.lock = threading.Lock()

    @method(Empty, hardware=True)
    def act(self, _, *, idempotency_key):
        with self.lock:
            self.seen.append(idempotency_key)
            first = len(self.seen) == 1
        if first:
            time.sleep(0.8)
        return Empty()


def test_timeout_retries_reuse_the_idempotency_key(broker):
    service = Recorder()
    worker = Worker(service, broker.frontend_address, service_name="test.recorder", capacity=2).start()
    try:
        wait_for_service(broker, "test.recorder")
        with BusClient(broker.frontend_address) as client:
            call = client.submit("test.recorder", "act", {}, timeout_s=0.3, retries=2, idempotency_key="key-42")
            outcomes = client.poll(timeout_s=5)
        assert [o.call_id for o in outcomes] == [call]
        assert outcomes[0].ok and outcomes[0].attempts == 2
        assert service.seen == ["key-42", "key-42"]
        with BusClient(broker.frontend_address) as client:
            with pytest.raises(RemoteError) as e:
                client.request("test.recorder", "act", {}, timeout_s=2)  # no key for a hardware command
        assert e.value.code == "missing_idempotency_key"
    finally:
        worker.stop()


def test_killed_service_is_detected_and_its_requests_requeued_or_failed(broker):
    process = subprocess.Popen([sys.executable, "-c", SLOW_WORKER, broker.frontend_address, "60", "2"])
    try:
        wait_for_service(broker, "test.slow", timeout_s=20)
        subscriber = EventSubscriber(broker.events_address, topics=("bus.lost",))
        time.sleep(0.2)
        client = BusClient(broker.frontend_address)
        keyed = client.submit("test.slow", "wait", {}, timeout_s=60, idempotency_key="keyed-1")
        unkeyed = client.submit("test.slow", "wait", {}, timeout_s=60)
        time.sleep(0.5)  # both in flight at the worker
        process.kill()
        killed_at = time.monotonic()
        event = subscriber.receive(timeout_s=8)
        detected_s = time.monotonic() - killed_at
        assert event is not None and event.payload["service"] == "test.slow"
        assert detected_s < 5.0, f"dead worker noticed after {detected_s:.1f} s"
        # The request without a key fails with worker_lost (it may not be safe to repeat) ...
        outcomes = client.poll(timeout_s=5)
        assert [(o.call_id, o.error.code) for o in outcomes] == [(unkeyed, "worker_lost")]
        # ... the keyed one waits in the queue and is served by the next worker of the service.
        replacement = subprocess.Popen([sys.executable, "-c", SLOW_WORKER, broker.frontend_address, "0", "2"])
        try:
            outcomes = client.poll(timeout_s=20)
            assert [(o.call_id, o.ok) for o in outcomes] == [(keyed, True)]
        finally:
            replacement.kill()
        client.close()
        subscriber.close()
        assert broker.counters["requeued"] == 1
    finally:
        process.kill()
        process.wait()


def test_a_handler_holding_the_gil_for_10_s_keeps_its_worker_alive(broker):
    """Liveness is libzmq's (its I/O thread answers heartbeats without Python): a handler that lets no
    other Python thread run for 10 s is not declared dead, and its answer arrives."""
    process = subprocess.Popen([sys.executable, "-c", SLOW_WORKER, broker.frontend_address, "10", "1"])
    try:
        wait_for_service(broker, "test.slow", timeout_s=20)
        subscriber = EventSubscriber(broker.events_address, topics=("bus.lost",))
        time.sleep(0.2)
        with BusClient(broker.frontend_address) as client:
            started = time.monotonic()
            client.request("test.slow", "spin", {}, timeout_s=30)
            assert time.monotonic() - started >= 10
        assert subscriber.receive(timeout_s=0.5) is None, "the busy worker was dropped"
        subscriber.close()
        assert broker.counters["worker_lost"] == 0 and broker.services() == {"test.slow": 1}
    finally:
        process.kill()
        process.wait()


class Flaky(Service):
    """Handlers that fail in every way a handler can, and one that answers; it counts overlapping calls."""

    kind = "test"

    def __init__(self):
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.running = 0
        self.most_running = 0

    @method(Empty)
    def hang(self, _):
        with self.lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        self.release.wait(60)  # past any deadline the tests give it
        with self.lock:
            self.running -= 1
        return Empty()

    @method(Empty)
    def crash(self, _):
        raise RuntimeError("boom")

    @method(Empty)
    def bad_code(self, _):
        raise ServiceError("a route the furnace cannot run", code="invalid_route")  # not a protocol code

    @method(Empty)
    def bad_result(self, _):
        return {"not": "a model"}

    @method(Empty)
    def ping(self, _):
        return Empty()


def test_every_handler_failure_is_an_error_reply_and_the_worker_keeps_serving(broker):
    worker = Worker(Flaky(), broker.frontend_address, service_name="test.flaky").start()
    try:
        wait_for_service(broker, "test.flaky")
        with BusClient(broker.frontend_address) as client:
            for name, fragment in (("crash", "RuntimeError: boom"), ("bad_code", "'invalid_route' is not a valid ErrorCode"),
                                   ("bad_result", "AttributeError")):
                with pytest.raises(RemoteError, match=fragment) as e:
                    client.request("test.flaky", name, {}, timeout_s=5)
                assert e.value.code == ErrorCode.HANDLER_ERROR
            assert client.request("test.flaky", "ping", {}, timeout_s=5) == {}
        assert worker.handled == 4 and broker.services() == {"test.flaky": 1}
    finally:
        worker.service.release.set()
        worker.stop()


class ReentrantFlaky(Flaky):
    reentrant = True  # its calls may overlap: an overrunning slot is replaced at once


def test_a_hung_handler_gets_deadline_exceeded_and_a_reentrant_worker_serves_on(broker):
    worker = Worker(ReentrantFlaky(), broker.frontend_address, service_name="test.flaky").start()
    try:
        wait_for_service(broker, "test.flaky")
        with BusClient(broker.frontend_address) as client:
            started = time.monotonic()
            with pytest.raises(RemoteError, match="held hang past its 1.8 s deadline") as e:
                client.request("test.flaky", "hang", {}, timeout_s=2.0)
            assert e.value.code == ErrorCode.DEADLINE_EXCEEDED and time.monotonic() - started < 2.0
            # the slot stuck in the handler is replaced; the same worker answers the next request
            assert client.request("test.flaky", "ping", {}, timeout_s=10) == {}
        assert worker.abandoned == 1 and broker.counters["deadline_exceeded"] == 1
    finally:
        worker.service.release.set()
        worker.stop()


def test_a_hung_handler_of_hardware_keeps_its_slot_until_it_returns(broker):
    """Not reentrant (the default, an instrument's case): the caller gets deadline_exceeded, but no second
    command runs while the first may still be acting; the slot serves again once its handler returns."""
    worker = Worker(Flaky(), broker.frontend_address, service_name="test.flaky").start()
    try:
        wait_for_service(broker, "test.flaky")
        with BusClient(broker.frontend_address) as client:
            with pytest.raises(RemoteError) as e:
                client.request("test.flaky", "hang", {}, timeout_s=1.0)
            assert e.value.code == ErrorCode.DEADLINE_EXCEEDED
            second = client.submit("test.flaky", "hang", {}, timeout_s=20)  # waits for the slot
            time.sleep(2.5)
            assert worker.service.running == 1 and worker.abandoned == 0  # never two at once
            worker.service.release.set()
            (outcome,) = client.poll(timeout_s=15)
        assert outcome.call_id == second and outcome.ok and worker.service.most_running == 1
    finally:
        worker.service.release.set()
        worker.stop()
