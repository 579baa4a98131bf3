"""Bus overhead benchmark (prints figures; not a test).

1. Request round trip through the broker (client -> broker -> worker -> broker -> client, each
   role in its own process, full message validation) against, in the same run:
   a. raw pyzmq REQ/REP echo between two processes (target: broker p50 <= 2x this), and
   b. raw pyzmq through zmq.proxy (ROUTER/DEALER, the loop in C): the ideal broker, no Python;
   c. raw pyzmq through a bare forwarding ROUTER loop in Python in its own process: the same
      three-process topology with no validation, no service table, no heartbeats. The floor for
      any broker written in Python; the sdl/bare ratio is what our features cost.
   d. the sdl broker again with every peer on CurveZMQ keys and grants (target: <= 1.3x plaintext).
2. Controller throughput: a campaign with zero-latency emulated instruments and the random planner,
   ledger on (synchronous=full and normal; and full with the bus on keys). Targets: >= 100
   experiments/s, >= 150 with CURVE.

    python bench/bus_overhead.py [--round-trips 5000] [--experiments 1000]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path

import zmq


def _raw_echo_server(address_queue: mp.Queue) -> None:
    context = zmq.Context()
    socket = context.socket(zmq.REP)
    port = socket.bind_to_random_port("tcp://127.0.0.1")
    address_queue.put(f"tcp://127.0.0.1:{port}")
    while True:
        message = socket.recv()
        if message == b"stop":
            socket.send(b"bye")
            return
        socket.send(message)


def _c_proxy(address_queue: mp.Queue) -> None:
    context = zmq.Context()
    frontend, backend = context.socket(zmq.ROUTER), context.socket(zmq.DEALER)
    ports = frontend.bind_to_random_port("tcp://127.0.0.1"), backend.bind_to_random_port("tcp://127.0.0.1")
    address_queue.put(tuple(f"tcp://127.0.0.1:{p}" for p in ports))
    zmq.proxy(frontend, backend)


def _rep_echo(address: str) -> None:
    socket = zmq.Context().socket(zmq.REP)
    socket.connect(address)
    while True:
        socket.send(socket.recv())


def _timed(socket: zmq.Socket, body: bytes, n: int) -> list[float]:
    times = []
    for i in range(n + 200):
        t = time.perf_counter()
        socket.send(body)
        socket.recv()
        if i >= 200:  # warm-up
            times.append(time.perf_counter() - t)
    return times


def _bare_broker(address_queue: mp.Queue) -> None:
    """The minimal forwarding broker: workers say b"W" once; requests go to the last worker."""
    socket = zmq.Context().socket(zmq.ROUTER)
    address_queue.put(f"tcp://127.0.0.1:{socket.bind_to_random_port('tcp://127.0.0.1')}")
    worker = None
    while True:
        frames = socket.recv_multipart()
        if frames[1] == b"W":
            worker = frames[0]
        elif frames[1] == b"R":  # [worker, R, client, body]
            socket.send_multipart([frames[2], frames[3]])
        elif frames[1] == b"stop":
            return
        else:  # [client, body]
            socket.send_multipart([worker, frames[0], frames[1]])


def _bare_worker(address: str) -> None:
    socket = zmq.Context().socket(zmq.DEALER)
    socket.connect(address)
    socket.send(b"W")
    while True:
        client, body = socket.recv_multipart()
        socket.send_multipart([b"R", client, body])


def _trust(keys_dir: str | None):
    if keys_dir is None:
        return None
    from sdl.bus import Grant, KeyRing, Trust

    ring = KeyRing(keys_dir)
    return Trust(*ring.key_pair("broker"), keys=ring.trusted(),
                 grants={"bench-worker": Grant(serve=("bench.echo",)), "bench-client": Grant(call=("bench.echo",))})


def _curve(keys_dir: str | None, name: str):
    if keys_dir is None:
        return None
    from sdl.bus import CurveKeys, KeyRing

    ring = KeyRing(keys_dir)
    return CurveKeys(ring.public_key("broker"), *ring.key_pair(name))


def _broker_process(address_queue: mp.Queue, stop: mp.Event, keys_dir: str | None = None) -> None:
    from sdl.bus import Broker

    broker = Broker(trust=_trust(keys_dir)).bind()
    address_queue.put(broker.frontend_address)
    broker.start()
    stop.wait()
    broker.stop()


def _worker_process(address: str, stop: mp.Event, keys_dir: str | None = None) -> None:
    from sdl.agents.capabilities import EvaluateRequest, Evaluation
    from sdl.bus import Service, Worker, method

    class Echo(Service):
        kind = "bench"

        @method(EvaluateRequest)
        def evaluate(self, request: EvaluateRequest) -> Evaluation:
            return Evaluation(values=[p.parameters for p in request.points])

    worker = Worker(Echo(), address, service_name="bench.echo", curve=_curve(keys_dir, "bench-worker")).start()
    stop.wait()
    worker.stop()


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1]


def round_trips(n: int) -> None:
    from sdl.agents.capabilities import EvaluateRequest
    from sdl.experiment import DesignPoint
    from sdl.wire import Request, encode

    payload = EvaluateRequest(points=[DesignPoint(parameters={"x1": 1.0, "x2": 2.0})])
    body = encode(Request(service="bench.echo", method="evaluate", payload=payload.model_dump(mode="json")))

    queue: mp.Queue = mp.Queue()
    server = mp.Process(target=_raw_echo_server, args=(queue,), daemon=True)
    server.start()
    raw = zmq.Context.instance().socket(zmq.REQ)
    raw.connect(queue.get())
    raw_s = _timed(raw, body, n)
    raw.send(b"stop")
    raw.recv()
    server.join()

    proxy = mp.Process(target=_c_proxy, args=(queue,), daemon=True)
    proxy.start()
    front, back = queue.get()
    echo = mp.Process(target=_rep_echo, args=(back,), daemon=True)
    echo.start()
    via_proxy = zmq.Context.instance().socket(zmq.REQ)
    via_proxy.connect(front)
    proxy_s = _timed(via_proxy, body, n)
    via_proxy.close(0)
    proxy.kill()
    echo.kill()

    bare = mp.Process(target=_bare_broker, args=(queue,), daemon=True)
    bare.start()
    bare_address = queue.get()
    bare_worker = mp.Process(target=_bare_worker, args=(bare_address,), daemon=True)
    bare_worker.start()
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.connect(bare_address)
    time.sleep(0.5)  # the worker's hello must arrive first
    bare_s = _timed(dealer, body, n)
    dealer.send(b"stop")
    bare.join(5)
    bare_worker.kill()

    bus_s = _sdl_round_trips(queue, payload, n, keys_dir=None)
    with tempfile.TemporaryDirectory() as keys_dir:
        from sdl.bus import KeyRing

        ring = KeyRing(keys_dir)
        for name in ("broker", "bench-worker", "bench-client"):
            ring.create(name)
        curve_s = _sdl_round_trips(queue, payload, n, keys_dir=keys_dir)

    raw_p50, proxy_p50, bare_p50, bus_p50, curve_p50 = (statistics.median(s) * 1e6
                                                         for s in (raw_s, proxy_s, bare_s, bus_s, curve_s))
    print(f"round trips: {n} each, {len(body)}-byte request")
    print(f"  raw pyzmq REQ/REP (2 processes)       p50 {raw_p50:7.1f} us   p99 {percentile(raw_s, 99) * 1e6:7.1f} us")
    print(f"  raw pyzmq via zmq.proxy in C (3 procs) p50 {proxy_p50:6.1f} us   p99 {percentile(proxy_s, 99) * 1e6:7.1f} us")
    print(f"  raw pyzmq via bare broker (3 procs)   p50 {bare_p50:7.1f} us   p99 {percentile(bare_s, 99) * 1e6:7.1f} us")
    print(f"  sdl broker (3 processes)              p50 {bus_p50:7.1f} us   p99 {percentile(bus_s, 99) * 1e6:7.1f} us")
    print(f"  sdl broker, CURVE + grants            p50 {curve_p50:7.1f} us   p99 {percentile(curve_s, 99) * 1e6:7.1f} us")
    print(f"  ratio sdl/raw REQ/REP p50  {bus_p50 / raw_p50:5.2f}   (target <= 2.0)")
    print(f"  ratio C proxy/raw p50      {proxy_p50 / raw_p50:5.2f}   (the extra hop alone, no Python)")
    print(f"  ratio bare broker/raw p50  {bare_p50 / raw_p50:5.2f}   (the extra hop through a Python loop)")
    print(f"  ratio sdl/bare broker p50  {bus_p50 / bare_p50:5.2f}   (what validation, routing and heartbeats cost)")
    print(f"  ratio CURVE/plain sdl p50  {curve_p50 / bus_p50:5.2f}   (target <= 1.3)")


def _sdl_round_trips(queue: mp.Queue, payload, n: int, *, keys_dir: str | None) -> list[float]:
    """Round trips client -> sdl broker -> worker and back, each in its own process; with keys, all over CURVE."""
    from sdl.bus import BusClient

    stop = mp.Event()
    broker = mp.Process(target=_broker_process, args=(queue, stop, keys_dir), daemon=True)
    broker.start()
    address = queue.get()
    worker = mp.Process(target=_worker_process, args=(address, stop, keys_dir), daemon=True)
    worker.start()
    client = BusClient(address, curve=_curve(keys_dir, "bench-client"))
    client.request("bench.echo", "describe", timeout_s=30)
    times = []
    for i in range(n + 200):
        t = time.perf_counter()
        client.request("bench.echo", "evaluate", payload, timeout_s=10)
        if i >= 200:
            times.append(time.perf_counter() - t)
    client.close()
    stop.set()
    broker.join(5)
    worker.join(5)
    return times


def throughput(n: int) -> None:
    import ray

    from sdl.bus import KeyRing
    from sdl.campaign import Campaign, parse_config
    from sdl.ledger import Ledger

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    keys = tempfile.TemporaryDirectory()
    KeyRing(keys.name).create("broker")
    try:
        for synchronous, curve in (("full", False), ("normal", False), ("full", True)):
            config = parse_config({
                "name": f"throughput-{synchronous}",
                "space": {"parameters": {"x1": {"low": -5, "high": 10}, "x2": {"low": 0, "high": 15}}},
                "planner": {"kind": "random"},
                "instruments": [{"name": f"i{k}", "driver": "branin", "capacity": 4} for k in range(2)],
                "stop": {"max_experiments": n, "max_in_flight": 8},
                "ledger": {"synchronous": synchronous},
                "bus": {"keys": keys.name} if curve else {},
            })
            with tempfile.TemporaryDirectory() as tmp:
                Campaign(config, Path(tmp) / "c", progress=False).run()
                with Ledger.in_campaign(Path(tmp) / "c", readonly=True) as ledger:
                    records = ledger.experiments()
                    span = max(r.finished_at_unix_s for r in records) - min(r.planned_at_unix_s for r in records)
                    assert ledger.counts()["done"] == n
            label = f"ledger synchronous={synchronous:6s}" + (", CURVE" if curve else "")
            print(f"campaign throughput, {label:33s}: {n / span:7.1f} experiments/s "
                  f"({n} experiments in {span:.2f} s; target >= {150 if curve else 100})")
    finally:
        ray.shutdown()
        keys.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--round-trips", type=int, default=5000)
    parser.add_argument("--experiments", type=int, default=1000)
    args = parser.parse_args()
    round_trips(args.round_trips)
    throughput(args.experiments)


if __name__ == "__main__":
    main()
