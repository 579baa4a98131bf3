"""Fuzz the broker's client side (prints figures; not a test).

A raw DEALER socket sends the broker, in its own process, with a worker of ``bench.echo`` in a third
process, a seeded mix of messages: valid requests, requests with one field broken (a wrong type, a
negative or NaN timeout, a huge string, a missing or extra field), worker-only kinds from a client,
unknown kinds and versions, truncated JSON, JSON nested up to 100,000 deep, random bytes, invalid
UTF-8, and wrong frame counts or headers. Every one of them must be answered (a reply, or a
``bad_message`` error), except valid events and heartbeats, which a client sends without expecting
a reply. Afterwards a valid request must still be served.

    python bench/bus_fuzz.py [--messages 100000] [--window 200] [--seed 0]

Figures: messages sent, expected replies, replies received, unanswered (target 0), the error codes,
and messages per second.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import multiprocessing as mp
import random
import sys
import time
from pathlib import Path

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from bus_overhead import _broker_process, _worker_process  # noqa: E402

from sdl.wire import CLIENT_HEADER, WORKER_HEADER, Request, decode  # noqa: E402


def _valid_request(rng: random.Random, service: str = "bench.echo") -> dict:
    return Request(service=service, method="evaluate", timeout_s=0.3,
                   payload={"points": [{"parameters": {"x": rng.uniform(-1, 1)}}]}).model_dump(mode="json")


def _broken_field(rng: random.Random) -> dict:
    message = _valid_request(rng)
    field = rng.choice(list(message))
    choice = rng.randrange(8)
    if choice == 0:
        message.pop(field)
    elif choice == 1:
        message[field] = rng.choice([None, 7, -1.5, True, [], {}, "x" * rng.randrange(1, 200_000)])
    elif choice == 2:
        message["timeout_s"] = rng.choice([-1.0, 0.0, float("nan"), float("inf"), 1e308, "soon"])
    elif choice == 3:
        message["surprise"] = rng.random()
    elif choice == 4:
        message["payload"] = rng.choice([[], "points", {"points": "all"}, {"points": [{"parameters": []}]}])
    elif choice == 5:
        message["idempotency_key"] = rng.choice(["", "k" * 10_000, 5])
    elif choice == 6:
        message["service"] = rng.choice(["", "UPPER", "a" * 500, "bench.echo\x00", "../etc"])
    else:
        message["id"] = rng.choice(["", "i" * 65, 3, None])
    return message


def _body(rng: random.Random) -> tuple[list[bytes], str]:
    """One fuzzed message (frames after the DEALER's identity) and its category."""
    roll = rng.random()
    if roll < 0.20:
        return [CLIENT_HEADER, json.dumps(_valid_request(rng)).encode()], "valid request"
    if roll < 0.22:
        return [CLIENT_HEADER, json.dumps(_valid_request(rng, "bench.nobody")).encode()], "request, no such service"
    if roll < 0.52:
        return [CLIENT_HEADER, json.dumps(_broken_field(rng), allow_nan=True).encode()], "broken field"
    if roll < 0.57:
        kind = rng.choice(["ready", "reply", "disconnect"])
        body = {"version": 2, "kind": kind, "id": "f" * 8, "service": "bench.echo", "worker": "w", "capacity": 1,
                "ok": True, "payload": {}, "reason": "x", "correlation_id": "c"}
        return [CLIENT_HEADER, json.dumps(body).encode()], "worker kind from a client"
    if roll < 0.64:
        body = _valid_request(rng)
        body.update(rng.choice([{"version": 1}, {"version": "2"}, {"kind": "rpc"}, {"kind": None}]))
        return [CLIENT_HEADER, json.dumps(body).encode()], "unknown kind or version"
    if roll < 0.72:
        text = json.dumps(_valid_request(rng))
        return [CLIENT_HEADER, text[: rng.randrange(len(text))].encode()], "truncated JSON"
    if roll < 0.75:
        depth = rng.choice([1_000, 10_000, 100_000])
        return [CLIENT_HEADER, ("[" * depth + "]" * depth).encode()], "deep nesting"
    if roll < 0.85:
        return [CLIENT_HEADER, rng.randbytes(rng.randrange(0, 2000))], "random bytes"
    if roll < 0.90:
        return [CLIENT_HEADER, b'{"version": 2, "kind": "request", "service": "\xff\xfe"}'], "invalid UTF-8"
    frames = rng.choice([[b""], [CLIENT_HEADER], [b"SDLX9", b"{}"], [CLIENT_HEADER, b"{}", b"extra"],
                         [rng.randbytes(5), json.dumps(_valid_request(rng)).encode()]])
    return frames, "wrong frames or header"


def _expects_reply(frames: list[bytes]) -> bool:
    """Valid events and heartbeats from a client get no reply by design; everything else does."""
    if len(frames) != 2 or frames[0] not in (CLIENT_HEADER, WORKER_HEADER):
        return True
    try:
        return decode(frames[1]).kind not in ("event", "heartbeat")
    except Exception:
        return True


def fuzz(n: int, window: int, seed: int) -> None:
    logging.disable(logging.WARNING)  # the broker logs every rejected message; a hundred thousand of them here
    address_queue: mp.Queue = mp.Queue()
    stop = mp.Event()
    broker = mp.Process(target=_broker_process, args=(address_queue, stop), daemon=True)
    broker.start()
    address = address_queue.get(timeout=30)
    worker = mp.Process(target=_worker_process, args=(address, stop), daemon=True)
    worker.start()
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.connect(address)
    rng = random.Random(seed)
    time.sleep(1.0)  # the worker registers

    sent = expected = received = 0
    categories: collections.Counter[str] = collections.Counter()
    codes: collections.Counter[str] = collections.Counter()
    unanswered_batches = []
    started = time.perf_counter()
    while sent < n:
        batch_expected = 0
        for _ in range(min(window, n - sent)):
            frames, category = _body(rng)
            socket.send_multipart(frames)
            sent += 1
            categories[category] += 1
            batch_expected += _expects_reply(frames)
        batch_received = 0
        deadline = time.monotonic() + 10.0  # generous: a request to no service waits out its 0.3 s timeout
        while batch_received < batch_expected and time.monotonic() < deadline:
            if socket.poll(timeout=100):
                _, body = socket.recv_multipart()
                reply = json.loads(body)
                codes["ok" if reply.get("ok") else reply["error"]["code"]] += 1
                batch_received += 1
        expected += batch_expected
        received += batch_received
        if batch_received < batch_expected:
            unanswered_batches.append(sent)
        if sent % 10_000 < window:
            print(f"  {sent:>7} sent, {received} of {expected} expected replies", flush=True)
    elapsed = time.perf_counter() - started
    while socket.poll(timeout=500):  # anything late would be a second reply to one message
        socket.recv_multipart()
        received += 1

    check = zmq.Context.instance().socket(zmq.DEALER)
    check.connect(address)
    check.send_multipart([CLIENT_HEADER, json.dumps(_valid_request(rng)).encode()])
    alive = bool(check.poll(timeout=5000)) and json.loads(check.recv_multipart()[1])["ok"]
    stop.set()
    broker.join(timeout=10)
    worker.join(timeout=10)

    print(f"\nfuzzed messages: {sent} in {elapsed:.1f} s ({sent / elapsed:,.0f}/s)")
    for category, count in categories.most_common():
        print(f"  {category:<28} {count}")
    print(f"replies expected {expected}, received {received}; unanswered {expected - received} (target 0)")
    print("reply codes: " + ", ".join(f"{code} {count}" for code, count in codes.most_common()))
    print(f"a valid request afterwards: {'served' if alive else 'NOT SERVED'}")
    if unanswered_batches:
        print(f"batches with unanswered messages ended at message {unanswered_batches[:10]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--window", type=int, default=200, help="messages sent before their replies are counted")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    fuzz(args.messages, args.window, args.seed)


if __name__ == "__main__":
    main()
