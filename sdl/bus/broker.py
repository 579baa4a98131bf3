"""The lab bus broker: named services, request/reply, liveness and the event stream.

In the spirit of the ZeroMQ guide's Majordomo broker: one ROUTER socket faces both clients
(the campaign, the CLI) and workers (agents, instrument drivers); a worker announces the service it
serves with ``ready``, the broker queues requests per service and hands each to a worker with free
capacity, and routes the reply back. A PUB socket carries the event stream.

Guarantees:

* A worker whose connection dies (its process killed, its host gone: libzmq's heartbeats close a
  connection that stops answering, see :mod:`sdl.wire`) is lost within seconds, whatever its
  handlers are doing. The broker's socket monitor reports the closed connection; the broker then
  probes its busy workers, and a worker it can no longer route to is dropped. Its in-flight
  requests are re-queued when they carry an idempotency key (the driver's journal makes a repeat
  safe) and otherwise answered with ``worker_lost``: never silently dropped.
* A request is bounded by its ``timeout_s`` from the moment the broker receives it: one no worker
  takes in time gets ``service_unavailable``; one a worker holds too long gets ``deadline_exceeded``
  and that worker is retired until it registers again. A busy worker is never judged by silence.
* Garbage frames, unknown kinds and invalid messages get an error reply and a log line; the loop
  catches everything a single message can raise, so one bad peer never stops the broker.

The broker is the only role in this module; the worker API is :mod:`sdl.bus.worker` and the client
API :mod:`sdl.bus.client` (one module per role, as in Majordomo).
"""

from __future__ import annotations

import collections
import errno
import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import zmq

from sdl.bus.sockets import configure_liveness
from sdl.bus.trust import LOCAL, Trust, TrustAuthenticator
from sdl.wire import (
    CLIENT_HEADER,
    HEARTBEAT_INTERVAL_S,
    WORKER_HEADER,
    Disconnect,
    Envelope,
    ErrorCode,
    Event,
    Heartbeat,
    Message,
    ProtocolError,
    Ready,
    Reply,
    Request,
    decode,
    encode,
    error_reply,
)

log = logging.getLogger(__name__)

# How often a request whose worker died may be handed to another worker before it fails.
REQUEUE_LIMIT = 3
BROKER_EVENT_TOPIC = "bus"
# After a connection closes, busy workers are probed this often, for this long (libzmq takes a
# moment to forget a closed connection's routing id).
PROBE_INTERVAL_S = 0.05
PROBE_WINDOW_S = 1.0


@dataclass
class _Pending:
    client: bytes
    request: Request
    body: bytes  # the request as received: forwarded without re-encoding
    deadline_s: float
    requeues: int = 0


@dataclass
class _Worker:
    identity: bytes
    name: str
    service: str
    capacity: int
    key: str = LOCAL  # the key it authenticated with
    in_flight: dict[str, _Pending] = field(default_factory=dict)

    @property
    def free(self) -> int:
        return self.capacity - len(self.in_flight)


class Broker:
    """Routes requests to named services. Bind, then :meth:`run` (or :meth:`start` a thread).

    ``frontend`` and ``events`` are ZeroMQ endpoints; ``tcp://127.0.0.1:*`` picks a free
    loopback port, ``tcp://0.0.0.0:5555`` serves a lab network. The resolved addresses are in
    :attr:`frontend_address` and :attr:`events_address` after :meth:`bind`.
    """

    def __init__(
        self,
        frontend: str = "tcp://127.0.0.1:*",
        events: str = "tcp://127.0.0.1:*",
        *,
        trust: Trust | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        if trust is None:
            for endpoint in (frontend, events):
                if not loopback(endpoint):
                    raise ValueError(f"{endpoint} is reachable from other machines, and the bus has no keys: make them "
                                     "with `sdl keys new broker` (and one per peer) and name the directory in "
                                     "bus.keys or SDL_KEYS_DIR, or bind 127.0.0.1")
        self._trust = trust
        self._authenticator: TrustAuthenticator | None = None
        self._frontend_endpoint = frontend
        self._events_endpoint = events
        self._context = context or zmq.Context.instance()
        self._router: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None
        self._publisher: zmq.Socket | None = None
        self._workers: dict[bytes, _Worker] = {}
        self._queues: dict[str, collections.deque[_Pending]] = collections.defaultdict(collections.deque)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._probe_until_s = 0.0
        self._unreachable: set[bytes] = set()  # workers a send could not reach: dropped by _reap
        self.frontend_address: str | None = None
        self.events_address: str | None = None
        # Clients in the broker's own process (the campaign) skip TCP and ZeroMQ's I/O thread, and CURVE:
        # they are the controller.
        self.local_address = f"inproc://sdl-broker-{id(self):x}"
        self.local_events_address = f"inproc://sdl-broker-events-{id(self):x}"
        self.counters: collections.Counter[str] = collections.Counter()

    # -- lifecycle ---------------------------------------------------------------------------

    def bind(self) -> Broker:
        if self._trust is not None:
            self._authenticator = TrustAuthenticator(self._context, self._trust).start()
        self._router = self._context.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.LINGER, 0)
        if self._trust is not None:
            self._trust.server_socket(self._router)
        self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a send to a closed connection fails: how the dead are found
        configure_liveness(self._router)
        self._monitor = self._router.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self._router.bind(self._frontend_endpoint)
        self.frontend_address = _connectable(self._router.getsockopt_string(zmq.LAST_ENDPOINT))
        self._router.bind(self.local_address)
        self._publisher = self._context.socket(zmq.PUB)
        self._publisher.setsockopt(zmq.LINGER, 0)
        if self._trust is not None:
            self._trust.server_socket(self._publisher)  # results are not for anyone who connects
        self._publisher.bind(self._events_endpoint)
        self.events_address = _connectable(self._publisher.getsockopt_string(zmq.LAST_ENDPOINT))
        self._publisher.bind(self.local_events_address)
        log.info("broker on %s, events on %s", self.frontend_address, self.events_address)
        return self

    def start(self) -> Broker:
        """Bind if needed and run the broker loop in a daemon thread."""
        if self._router is None:
            self.bind()
        self._thread = threading.Thread(target=self.run, name="sdl-broker", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def services(self) -> dict[str, int]:
        """Live services and how many workers each has (a snapshot, for status displays)."""
        counts: collections.Counter[str] = collections.Counter(w.service for w in list(self._workers.values()))
        return dict(counts)

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> None:
        if self._router is None:
            self.bind()
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        next_heartbeat_s = time.monotonic() + HEARTBEAT_INTERVAL_S
        next_probe_s = 0.0
        try:
            while not self._stop.is_set():
                wake_s = min([next_heartbeat_s, self._next_deadline()]
                             + ([next_probe_s] if self._probe_until_s > time.monotonic() else []))
                wait_ms = max(0, min(100, int((wake_s - time.monotonic()) * 1000) + 1))
                ready = dict(poller.poll(timeout=wait_ms))
                if self._monitor in ready:
                    self._on_connection_closed()
                if self._router in ready:
                    # Drain what is waiting before housekeeping, so a burst is not interleaved
                    # with a heartbeat sweep per message.
                    for _ in range(1000):
                        self._handle_frames(*self._receive())
                        if not self._router.get(zmq.EVENTS) & zmq.POLLIN:
                            break
                now = time.monotonic()
                self._expire_requests(now)
                if now < self._probe_until_s and now >= next_probe_s:
                    for worker in [w for w in self._workers.values() if w.in_flight]:
                        self._send(worker.identity, WORKER_HEADER, Heartbeat())
                    next_probe_s = now + PROBE_INTERVAL_S
                if now >= next_heartbeat_s:
                    # Idle workers hear the broker every interval (so they notice when it is gone); the
                    # same send finds idle workers whose connection closed.
                    for worker in [w for w in self._workers.values() if not w.in_flight]:
                        self._send(worker.identity, WORKER_HEADER, Heartbeat())
                    next_heartbeat_s = now + HEARTBEAT_INTERVAL_S
                self._reap()
        finally:
            for worker in list(self._workers.values()):
                self._send(worker.identity, WORKER_HEADER, Disconnect(reason="broker stopping"))
            self._router.disable_monitor()
            self._monitor.close(0)
            self._router.close(0)
            self._publisher.close(0)
            self._router = self._publisher = self._monitor = None
            if self._authenticator is not None:
                self._authenticator.stop()
                self._authenticator = None

    def _receive(self) -> tuple[list[bytes], str]:
        """One message's frames and the key that sent it (``local`` for the broker's own process)."""
        if self._trust is None:
            return self._router.recv_multipart(), LOCAL
        parts = self._router.recv_multipart(copy=False)
        try:
            sender = parts[-1].get("User-Id")
        except zmq.ZMQError:  # inproc: no handshake, no user id
            sender = LOCAL
        return [part.bytes for part in parts], sender

    def _on_connection_closed(self) -> None:
        while self._monitor.get(zmq.EVENTS) & zmq.POLLIN:
            self._monitor.recv_multipart()
        self._probe_until_s = time.monotonic() + PROBE_WINDOW_S

    def _handle_frames(self, frames: list[bytes], sender: str = LOCAL) -> None:
        identity = frames[0]
        try:
            if len(frames) != 3 or frames[1] not in (CLIENT_HEADER, WORKER_HEADER):
                raise ProtocolError(
                    f"expected 2 frames [header, body] with header {CLIENT_HEADER!r} or {WORKER_HEADER!r}, "
                    f"got {len(frames) - 1} frame(s) starting {frames[1][:16]!r}"
                    if len(frames) > 1
                    else "expected 2 frames [header, body], got none"
                )
            header, body = frames[1], frames[2]
            message = decode(body)
            if header == CLIENT_HEADER:
                self._from_client(identity, message, body, sender)
            else:
                self._from_worker(identity, message, body, sender)
            self._reap()
        except ProtocolError as e:
            self.counters["bad_message"] += 1
            log.warning("rejected message from peer %s: %s", identity.hex(), e)
            header = frames[1] if len(frames) > 1 and frames[1] in (CLIENT_HEADER, WORKER_HEADER) else CLIENT_HEADER
            self._send(identity, header, error_reply(_request_id(frames), ErrorCode.BAD_MESSAGE, str(e)))
        except Exception:  # the broker outlives any single message
            self.counters["internal_error"] += 1
            log.exception("broker error while handling a message from %s", identity.hex())

    # -- clients -------------------------------------------------------------------------------

    def _from_client(self, identity: bytes, message: Message, body: bytes, sender: str) -> None:
        if isinstance(message, Request):
            if self._trust is not None and not self._trust.may_call(sender, message.service, message.method):
                self._refuse(sender, f"call {message.service}.{message.method}")
                self._send(identity, CLIENT_HEADER, error_reply(
                    message.id, ErrorCode.UNAUTHORIZED,
                    f"key {sender!r} may not call {message.service}.{message.method}", service=message.service))
                return
            self.counters["requests"] += 1
            pending = _Pending(identity, message, body, time.monotonic() + message.timeout_s)
            self._queues[message.service].append(pending)
            self._dispatch(message.service)
        elif isinstance(message, Event):
            self._publish_peer_event(message, body, sender)
        elif isinstance(message, Heartbeat):
            pass
        else:
            raise ProtocolError(f"a client may send 'request' or 'event', not {message.kind!r}")

    # -- workers -------------------------------------------------------------------------------

    def _from_worker(self, identity: bytes, message: Message, body: bytes, sender: str) -> None:
        worker = self._workers.get(identity)
        if isinstance(message, Ready):
            if self._trust is not None and not self._trust.may_serve(sender, message.service):
                self._refuse(sender, f"serve {message.service}")
                self._send(identity, WORKER_HEADER, Disconnect(
                    reason=f"refused: key {sender!r} may not serve {message.service}", refused=True))
                return
            if worker is not None:
                self._drop_worker(worker, "re-registered")
            self._workers[identity] = _Worker(identity, message.worker, message.service, message.capacity, sender)
            log.info("worker %s joined service %s (capacity %d)", message.worker, message.service, message.capacity)
            self._publish(Event(topic=f"{BROKER_EVENT_TOPIC}.joined",
                                payload={"service": message.service, "worker": message.worker, "key": sender}))
            self._dispatch(message.service)
            return
        if worker is None:
            # Unknown worker (a broker restart, or one retired after a deadline): reconnect and register.
            self._send(identity, WORKER_HEADER, Disconnect(reason="not registered; send ready first"))
            return
        if isinstance(message, Reply):
            pending = worker.in_flight.pop(message.correlation_id or "", None)
            if pending is None:
                log.info("late or unknown reply %s from %s dropped", message.correlation_id, worker.name)
                return
            if message.worker == worker.name:
                self._forward(pending.client, CLIENT_HEADER, body)
            else:
                self._send(pending.client, CLIENT_HEADER, message.model_copy(update={"worker": worker.name}))
            self.counters["replies"] += 1
            self._dispatch(worker.service)
        elif isinstance(message, Heartbeat):
            pass
        elif isinstance(message, Event):
            self._publish_peer_event(message, body, sender)
        elif isinstance(message, Disconnect):
            self._drop_worker(worker, message.reason or "disconnected")
        else:
            raise ProtocolError(f"a worker may send ready, reply, heartbeat, event or disconnect, not {message.kind!r}")

    def _dispatch(self, service: str) -> None:
        queue = self._queues.get(service)
        if not queue:
            return
        workers = [w for w in self._workers.values() if w.service == service]
        refused: set[bytes] = set()  # workers a send failed to reach this time (gone, or their queue full)
        while queue:
            free = [w for w in workers if w.free > 0 and w.identity not in refused]
            if not free:
                return
            worker = max(free, key=lambda w: w.free)  # least loaded first
            pending = queue.popleft()
            if self._forward(worker.identity, WORKER_HEADER, pending.body):
                worker.in_flight[pending.request.id] = pending
            else:
                refused.add(worker.identity)
                queue.appendleft(pending)  # never reached it: another worker may take it

    def _reap(self) -> None:
        """Drop the workers a send found unreachable (their connection closed)."""
        while self._unreachable:
            worker = self._workers.get(self._unreachable.pop())
            if worker is not None:
                self._drop_worker(worker, "connection lost")

    def _drop_worker(self, worker: _Worker, reason: str, *, failed: Sequence[_Pending] = ()) -> None:
        """Forget ``worker``; re-queue or fail what it held (except ``failed``, already answered)."""
        self._unreachable.discard(worker.identity)
        if self._workers.pop(worker.identity, None) is None:
            return
        log.warning("worker %s of service %s removed: %s", worker.name, worker.service, reason)
        self._publish(Event(topic=f"{BROKER_EVENT_TOPIC}.lost",
                            payload={"service": worker.service, "worker": worker.name, "reason": reason}))
        requeued = []
        for pending in worker.in_flight.values():
            if any(pending is f for f in failed):
                continue
            if pending.request.idempotency_key is not None and pending.requeues < REQUEUE_LIMIT:
                pending.requeues += 1
                requeued.append(pending)
            else:
                self._fail(pending, ErrorCode.WORKER_LOST,
                           f"worker {worker.name} of {worker.service} was lost ({reason}) while handling "
                           f"{pending.request.method}; the request carried no idempotency key, so it was not repeated")
        self._queues[worker.service].extendleft(reversed(requeued))
        self.counters["requeued"] += len(requeued)
        worker.in_flight.clear()
        self._dispatch(worker.service)

    def _next_deadline(self) -> float:
        queued = [p.deadline_s for q in self._queues.values() for p in q]
        held = [p.deadline_s for w in self._workers.values() for p in w.in_flight.values()]
        return min(queued + held, default=float("inf"))

    def _expire_requests(self, now: float) -> None:
        for service, queue in self._queues.items():
            if all(p.deadline_s > now for p in queue):
                continue
            keep: collections.deque[_Pending] = collections.deque()
            for pending in queue:
                if pending.deadline_s > now:
                    keep.append(pending)
                    continue
                live = sorted({w.service for w in self._workers.values()})
                self._fail(pending, ErrorCode.SERVICE_UNAVAILABLE,
                           f"no worker of service {service!r} took the request within {pending.request.timeout_s:g} s; "
                           f"live services: {live or 'none'}")
            self._queues[service] = keep
        for worker in [w for w in self._workers.values() if any(p.deadline_s <= now for p in w.in_flight.values())]:
            overdue = [p for p in worker.in_flight.values() if p.deadline_s <= now]
            for pending in overdue:
                self._fail(pending, ErrorCode.DEADLINE_EXCEEDED,
                           f"worker {worker.name} of {worker.service} held {pending.request.method} past its "
                           f"{pending.request.timeout_s:g} s deadline; the worker is retired until it registers again")
            self._send(worker.identity, WORKER_HEADER, Disconnect(reason="deadline exceeded; register again"))
            self._drop_worker(worker, "deadline exceeded", failed=overdue)

    # -- output --------------------------------------------------------------------------------

    def _fail(self, pending: _Pending, code: ErrorCode, message: str) -> None:
        """Answer a request the broker gives up on; count it under its error code."""
        self.counters[code] += 1
        self._send(pending.client, CLIENT_HEADER, error_reply(pending.request.id, code, message,
                                                              service=pending.request.service))

    def _send(self, identity: bytes, header: bytes, message: Envelope) -> None:
        self._forward(identity, header, encode(message))

    def _forward(self, identity: bytes, header: bytes, body: bytes) -> bool:
        """Send; False when the peer could not be reached (a worker so found is dropped by :meth:`_reap`)."""
        try:
            self._router.send_multipart([identity, header, body], zmq.NOBLOCK)
            return True
        except zmq.ZMQError as e:
            if e.errno == errno.EHOSTUNREACH and identity in self._workers:
                self._unreachable.add(identity)  # its process died or stopped answering
            else:  # a client gone, or a peer's queue full: log, never crash
                log.warning("could not send to %s: %s", identity.hex(), e)
            return False

    def _publish(self, event: Event, body: bytes | None = None) -> None:
        """On the event stream under its topic; a peer's event as it was received (validated, not re-encoded)."""
        self._publisher.send_multipart([event.topic.encode(), body if body is not None else encode(event)])

    def _publish_peer_event(self, event: Event, body: bytes, sender: str) -> None:
        if event.topic == BROKER_EVENT_TOPIC or event.topic.startswith(BROKER_EVENT_TOPIC + "."):
            raise ProtocolError(f"topic {event.topic!r} is the broker's own; publish under another name")
        if self._trust is None or sender == LOCAL:  # the controller's own documents go out as they came
            self._publish(event, body)
        elif self._trust.may_publish(sender, event.topic):
            self._publish(event.model_copy(update={"sender": sender}))  # attributed to its key, whatever it claimed
        else:
            self._refuse(sender, f"publish {event.topic}")

    def _refuse(self, key: str, action: str) -> None:
        """Log a refusal and put it on the event stream, where the campaign records it."""
        self.counters["refused"] += 1
        log.warning("refused: key %r may not %s", key, action)
        self._publish(Event(topic=f"{BROKER_EVENT_TOPIC}.refused", payload={"key": key, "action": action}))


def _request_id(frames: list[bytes]) -> str | None:
    """Best effort: the id of an invalid request, so the sender can match the error to its call."""
    if len(frames) < 3:
        return None
    try:
        value = json.loads(frames[2]).get("id")
        return value if isinstance(value, str) and len(value) <= 64 else None
    except Exception:
        return None


def loopback(endpoint: str) -> bool:
    """Whether only this machine can reach ``endpoint`` (loopback TCP, IPC, inproc)."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    host = endpoint.removeprefix("tcp://").rsplit(":", 1)[0]
    return host in ("127.0.0.1", "localhost", "[::1]", "::1")


def _connectable(endpoint: str) -> str:
    """A bound wildcard address (tcp://0.0.0.0:P) is not connectable; point peers at loopback."""
    return endpoint.replace("tcp://0.0.0.0:", "tcp://127.0.0.1:")
