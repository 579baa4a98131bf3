"""The worker side of the bus: a :class:`Service` declares its methods; a :class:`Worker` serves it.

A service is a plain object whose methods are marked with :func:`method`, each naming the pydantic
model its payload must satisfy. It knows nothing of sockets, so it is tested by calling
:meth:`Service.handle` directly, and hosted either in a Ray actor (``sdl.agents``) or in a plain
process (``sdl instrument serve``) by the same :class:`Worker`.

Liveness never waits on a handler (see :mod:`sdl.wire`): while a handler runs, its slot sends
nothing and needs nothing from Python; libzmq's own heartbeats keep the connection alive even if the
handler holds the GIL, and the request's ``timeout_s`` bounds it: past it the broker answers the
caller ``deadline_exceeded`` and retires the slot. What the slot does then is the service's to say
(:attr:`Service.reentrant`): a service that tolerates a second call while an earlier one still runs
gets a fresh slot at once; any other (an instrument above all, which must never get a second command
while it may still be acting on the first) serves again when the overrunning handler returns.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import zmq
from pydantic import BaseModel, Field, ValidationError

from sdl.bus.sockets import configure_liveness
from sdl.bus.trust import CurveKeys
from sdl.settings import describe_validation_error
from sdl.wire import (
    HEARTBEAT_INTERVAL_S,
    HEARTBEAT_LIVENESS,
    WORKER_HEADER,
    Disconnect,
    Envelope,
    ErrorCode,
    Heartbeat,
    ProtocolError,
    Ready,
    Reply,
    Request,
    WireModel,
    decode,
    encode,
    error_reply,
)

log = logging.getLogger(__name__)

RECONNECT_DELAY_S = 0.5
REFUSED_BACKOFF_S = 10.0  # a worker the broker refused (its key may not serve the service) tries again this late
# A slot whose handler is still running this long after its request's deadline is replaced (the
# broker has already answered the caller with deadline_exceeded).
ABANDON_GRACE_S = 1.0
SUPERVISE_INTERVAL_S = 0.25


class ServiceError(Exception):
    """Raised by a handler to report a domain failure with a protocol error code."""

    def __init__(self, message: str, *, code: ErrorCode = ErrorCode.HANDLER_ERROR, attempt: int | None = None) -> None:
        super().__init__(message)
        self.code = ErrorCode(code)  # a code the protocol does not know fails here, at the raise
        self.attempt = attempt


class Empty(WireModel):
    pass


class ServiceDescription(WireModel):
    kind: str
    methods: list[str]
    details: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True)
class MethodSpec:
    name: str
    request_model: type[BaseModel]
    hardware: bool


def method(request_model: type[BaseModel], *, hardware: bool = False) -> Callable:
    """Mark a service method. ``hardware=True`` methods require an idempotency key and receive it."""

    def mark(func: Callable) -> Callable:
        func.__sdl_method__ = MethodSpec(func.__name__, request_model, hardware)
        return func

    return mark


@functools.cache
def _method_specs(cls: type) -> dict[str, MethodSpec]:
    specs = {}
    for _, member in inspect.getmembers(cls, predicate=callable):
        spec = getattr(member, "__sdl_method__", None)
        if spec is not None:
            specs[spec.name] = spec
    return specs


class Service:
    """Base class of everything that answers on the bus.

    Subclasses set :attr:`kind` (planner, surrogate, simulator or instrument) and mark handlers
    with :func:`method`; a handler returns a pydantic model. ``describe`` is always available.
    """

    kind: str = "service"
    # True: calls may overlap, so a slot whose handler overran its deadline is replaced at once and the
    # abandoned handler finishes in the background. False (default): the slot serves again only when
    # its handler returns; a hung handler keeps its slot out of service (no second command to hardware
    # that may still be acting on the first).
    reentrant: ClassVar[bool] = False

    @classmethod
    def method_specs(cls) -> dict[str, MethodSpec]:
        return _method_specs(cls)

    @method(Empty)
    def describe(self, _: Empty) -> ServiceDescription:
        return ServiceDescription(kind=self.kind, methods=sorted(self.method_specs()), details=self.details())

    def details(self) -> dict[str, Any]:
        """What ``describe`` reports beyond kind and methods (an instrument's limits, a planner's space)."""
        return {}

    def close(self) -> None:
        """Release resources; called when the worker stops."""

    def handle(self, request: Request) -> Reply:
        """Validate and run one request. Never raises: every failure becomes an error reply."""
        try:
            return self._handle(request)
        except Exception as e:  # a broken result model or the like: still an answer, never a dead slot
            log.exception("%s.%s: reply could not be built", request.service, request.method)
            return error_reply(request.id, ErrorCode.HANDLER_ERROR, f"{type(e).__name__}: {e}", service=request.service)

    def _handle(self, request: Request) -> Reply:
        specs = self.method_specs()
        spec = specs.get(request.method)  # guard only the lookup: a handler's error is not "unknown method"
        if spec is None:
            log.warning("%s: unknown method %r", request.service, request.method)
            return error_reply(request.id, ErrorCode.UNKNOWN_METHOD,
                               f"service {request.service!r} has no method {request.method!r}; "
                               f"available: {', '.join(sorted(specs))}", service=request.service)
        try:
            payload = spec.request_model.model_validate(request.payload)
        except ValidationError as e:
            log.warning("%s.%s: invalid payload: %s", request.service, request.method, e.error_count())
            return error_reply(request.id, ErrorCode.INVALID_PAYLOAD,
                               f"{request.method}: {describe_validation_error(e)}", service=request.service)
        if spec.hardware and request.idempotency_key is None:
            return error_reply(request.id, ErrorCode.MISSING_IDEMPOTENCY_KEY,
                               f"{request.method} drives hardware and needs an idempotency_key so that a retry "
                               "never repeats it", service=request.service)
        handler = getattr(self, spec.name)
        try:
            if spec.hardware:
                result = handler(payload, idempotency_key=request.idempotency_key)
            else:
                result = handler(payload)
        except ServiceError as e:
            return error_reply(request.id, e.code, str(e), service=request.service, attempt=e.attempt)
        except Exception as e:
            log.exception("%s.%s failed", request.service, request.method)
            return error_reply(request.id, ErrorCode.HANDLER_ERROR, f"{type(e).__name__}: {e}", service=request.service)
        return Reply(correlation_id=request.id, service=request.service, ok=True, payload=result.model_dump(mode="json"))


def default_worker_name(service_name: str) -> str:
    return f"{service_name}@{socket.gethostname()}:{os.getpid()}"


class Worker:
    """Connects one :class:`Service` to a broker under ``service_name`` and serves it.

    Each unit of ``capacity`` is a *slot*: a thread with its own DEALER socket, registered with the
    broker as a worker of capacity one, that runs handlers inline. For a reentrant service a
    supervisor thread replaces a slot whose handler overran its request's deadline, so a hung handler
    costs one request, not the worker. A slot reconnects and registers again when the broker goes
    silent or tells it to (as it does once the broker has retired it for an overrun).
    """

    def __init__(
        self,
        service: Service,
        broker_address: str,
        *,
        service_name: str,
        worker_name: str | None = None,
        capacity: int = 1,
        curve: CurveKeys | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.service = service
        self.broker_address = broker_address
        self.service_name = service_name
        self.worker_name = worker_name or default_worker_name(service_name)
        self.capacity = capacity
        self.curve = curve
        self._context = context or zmq.Context.instance()
        self._stop = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._lock = threading.Lock()  # guards the slot list and the counters of replaced slots
        names = [self.worker_name] if capacity == 1 else [f"{self.worker_name}/{i}" for i in range(capacity)]
        self._slots = [_Slot(self, name) for name in names]
        self._retired: list[_Slot] = []  # abandoned slots, their handlers perhaps still running
        self._retired_registrations = 0
        self._retired_handled = 0
        self.abandoned = 0

    @property
    def registrations(self) -> int:
        with self._lock:
            return self._retired_registrations + sum(slot.registrations for slot in self._slots)

    @property
    def handled(self) -> int:
        with self._lock:
            return self._retired_handled + sum(slot.handled for slot in self._slots)

    def start(self) -> Worker:
        for slot in self._slots:
            slot.start()
        self._supervisor = threading.Thread(target=self._supervise, name=f"sdl-supervisor-{self.service_name}",
                                            daemon=True)
        self._supervisor.start()
        return self

    def run(self) -> None:
        """Serve until :meth:`stop` is called (from another thread or a signal handler)."""
        self.start()
        self._stop.wait()
        self._join()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._join(timeout_s)

    def _join(self, timeout_s: float = 5.0) -> None:
        with self._lock:
            if self._supervisor is None:
                return
            threads = [self._supervisor] + [slot.thread for slot in self._slots if slot.thread is not None]
            self._supervisor = None
        deadline = time.monotonic() + timeout_s
        for thread in threads:
            # a slot inside a handler finishes it first; one that outlasts the timeout ends with the process
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            busy = [slot.name for slot in self._slots if slot.busy]
        if busy or self.abandoned_running:
            # Closing under a running handler would pull its resources (an instrument's journal) from under it.
            log.warning("%s: handlers still running (%s); the service is left open", self.service_name,
                        ", ".join(busy) or f"{self.abandoned_running} abandoned")
            return
        self.service.close()

    @property
    def abandoned_running(self) -> int:
        """Abandoned handlers (of a reentrant service) that have not returned yet."""
        with self._lock:
            return sum(1 for slot in self._retired if slot.thread is not None and slot.thread.is_alive())

    def _supervise(self) -> None:
        if not self.service.reentrant:
            return  # an overrunning slot of this service serves again when its handler returns
        while not self._stop.wait(SUPERVISE_INTERVAL_S):
            now = time.monotonic()
            with self._lock:
                overdue = [(s, s.request_id) for s in self._slots if s.busy and now > s.deadline_s + ABANDON_GRACE_S]
            for slot, request_id in overdue:
                self._replace(slot, request_id)

    def _replace(self, slot: _Slot, request_id: str) -> None:
        """Give up on ``slot`` (its handler of ``request_id`` overran its deadline) and serve with a fresh one."""
        if not slot.abandon(request_id):
            return
        log.warning("%s: handler of %s overran its deadline; slot replaced", self.service_name, slot.request_method)
        replacement = _Slot(self, slot.name)
        with self._lock:
            self._slots[self._slots.index(slot)] = replacement
            self._retired.append(slot)
            self._retired_registrations += slot.registrations
            self._retired_handled += slot.handled
            self.abandoned += 1
        replacement.start()


class _Slot:
    """One connection to the broker, serving one request at a time."""

    def __init__(self, worker: Worker, name: str) -> None:
        self.worker = worker
        self.name = name
        self.lock = threading.Lock()  # held whenever the socket is used, and to abandon the slot
        self.busy = False
        self.abandoned = False
        self.deadline_s = float("inf")
        self.request_id = ""
        self.request_method = ""
        self.socket: zmq.Socket | None = None
        self.sent_at = 0.0
        self.registrations = 0
        self.handled = 0
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, name=f"sdl-{self.name}", daemon=True)
        self.thread.start()

    def _connect(self) -> None:
        if self.socket is not None:
            self.socket.close(0)
            time.sleep(RECONNECT_DELAY_S)
        self.socket = self.worker._context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        configure_liveness(self.socket)
        if self.worker.curve is not None:
            self.worker.curve.apply(self.socket)
        self.socket.connect(self.worker.broker_address)
        self._send(Ready(service=self.worker.service_name, worker=self.name, capacity=1))
        self.registrations += 1

    def _send(self, message: Envelope) -> None:
        self.socket.send_multipart([WORKER_HEADER, encode(message)])
        self.sent_at = time.monotonic()

    def abandon(self, request_id: str) -> bool:
        """Stop using this slot's socket for good, its handler of ``request_id`` perhaps still running.
        False if that handler has finished meanwhile (the slot may already be serving another request)."""
        with self.lock:
            if not self.busy or self.abandoned or self.request_id != request_id:
                return False
            self.abandoned = True
            self._close("handler overran its deadline")
            return True

    def _close(self, reason: str) -> None:
        """Tell the broker this connection is going (best effort) and close it."""
        try:
            self.socket.send_multipart([WORKER_HEADER, encode(Disconnect(reason=reason))], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
        self.socket.close(0)

    def run(self) -> None:
        stop = self.worker._stop
        with self.lock:
            self._connect()
        heard_at = time.monotonic()
        try:
            while not stop.is_set():
                request = None
                with self.lock:
                    if self.socket.poll(timeout=int(HEARTBEAT_INTERVAL_S * 250)):
                        heard_at = time.monotonic()
                        message = self._receive()
                        if isinstance(message, Disconnect):
                            if message.refused:
                                # Not this worker's to serve: say so, and do not hammer the broker.
                                log.error("%s: the broker %s", self.name, message.reason)
                                stop.wait(REFUSED_BACKOFF_S)
                            else:
                                log.info("%s told to reconnect: %s", self.name, message.reason)
                            self._connect()
                        elif isinstance(message, Request):
                            request = message
                            self.busy = True
                            self.deadline_s = time.monotonic() + message.timeout_s
                            self.request_id = message.id
                            self.request_method = message.method
                    now = time.monotonic()
                    if request is None and now - heard_at > HEARTBEAT_INTERVAL_S * HEARTBEAT_LIVENESS:
                        log.warning("broker %s silent; %s reconnecting", self.worker.broker_address, self.name)
                        self._connect()
                        heard_at = time.monotonic()
                    elif request is None and now - self.sent_at >= HEARTBEAT_INTERVAL_S:
                        self._send(Heartbeat())
                if request is None:
                    continue
                reply = self.worker.service.handle(request)  # nothing on this socket meanwhile
                with self.lock:
                    if self.abandoned:
                        return  # the broker answered the caller long ago; a fresh slot serves now
                    self.busy = False
                    self.deadline_s = float("inf")
                    self.handled += 1  # before the reply leaves: a caller that has it may count on it
                    self._send(reply.model_copy(update={"worker": self.name}))
                heard_at = time.monotonic()  # the broker could not be heard while we worked
        finally:
            with self.lock:
                if not self.abandoned:
                    self._close("worker stopping")

    def _receive(self) -> Request | Disconnect | Heartbeat | None:
        frames = self.socket.recv_multipart()
        try:
            if len(frames) != 2 or frames[0] != WORKER_HEADER:
                raise ProtocolError(f"expected [{WORKER_HEADER!r}, body], got {len(frames)} frame(s)")
            return decode(frames[1])
        except ProtocolError as e:
            log.warning("%s ignored a bad frame from the broker: %s", self.name, e)
            return None
