"""The worker side of the bus: a :class:`Service` declares its methods; a :class:`Worker` serves it.

A service is a plain object whose methods are marked with :func:`method`, each naming the pydantic
model its payload must satisfy. It knows nothing of sockets, so it is tested by calling
:meth:`Service.handle` directly, and hosted either in a Ray actor (``sdl.agents``) or in a plain
process (``sdl instrument serve``) by the same :class:`Worker`.

The worker keeps heartbeating while handlers run (see :class:`Worker`), so a long instrument
run never looks like a dead worker.
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
from typing import Any

import zmq
from pydantic import BaseModel, ValidationError

from sdl import protocol
from sdl.protocol import (
    HEARTBEAT_INTERVAL_S,
    HEARTBEAT_LIVENESS,
    WORKER_HEADER,
    Disconnect,
    ErrorCode,
    Heartbeat,
    ProtocolError,
    Ready,
    Reply,
    Request,
    error_reply,
)

log = logging.getLogger(__name__)

RECONNECT_DELAY_S = 0.5


class ServiceError(Exception):
    """Raised by a handler to report a domain failure with a protocol error code."""

    def __init__(self, message: str, *, code: ErrorCode = "handler_error") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class _MethodSpec:
    name: str
    request_model: type[BaseModel]
    hardware: bool


def method(request_model: type[BaseModel], *, hardware: bool = False) -> Callable:
    """Mark a service method. ``hardware=True`` methods require an idempotency key and receive it."""

    def mark(func: Callable) -> Callable:
        func.__sdl_method__ = _MethodSpec(func.__name__, request_model, hardware)
        return func

    return mark


@functools.cache
def _method_specs(cls: type) -> dict[str, _MethodSpec]:
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

    @classmethod
    def method_specs(cls) -> dict[str, _MethodSpec]:
        return _method_specs(cls)

    @method(protocol.Empty)
    def describe(self, _: protocol.Empty) -> protocol.ServiceDescription:
        return protocol.ServiceDescription(kind=self.kind, methods=sorted(self.method_specs()), details=self.details())

    def details(self) -> dict[str, Any]:
        """What ``describe`` reports beyond kind and methods (an instrument's limits, a planner's space)."""
        return {}

    def close(self) -> None:
        """Release resources; called when the worker stops."""

    def handle(self, request: Request) -> Reply:
        """Validate and run one request; every failure becomes an error reply, never an exception."""
        specs = self.method_specs()
        spec = specs.get(request.method)  # guard only the lookup: a handler's error is not "unknown method"
        if spec is None:
            log.warning("%s: unknown method %r", request.service, request.method)
            return error_reply(
                request.id,
                "unknown_method",
                f"service {request.service!r} has no method {request.method!r}; available: {', '.join(sorted(specs))}",
                service=request.service,
            )
        try:
            payload = spec.request_model.model_validate(request.payload)
        except ValidationError as e:
            log.warning("%s.%s: invalid payload: %s", request.service, request.method, e.error_count())
            return error_reply(
                request.id,
                "invalid_payload",
                f"{request.method}: {protocol.describe_validation_error(e)}",
                service=request.service,
            )
        handler = getattr(self, spec.name)
        try:
            if spec.hardware:
                if request.idempotency_key is None:
                    return error_reply(
                        request.id,
                        "missing_idempotency_key",
                        f"{request.method} drives hardware and needs an idempotency_key so that a retry never repeats it",
                        service=request.service,
                    )
                result = handler(payload, idempotency_key=request.idempotency_key)
            else:
                result = handler(payload)
        except ServiceError as e:
            return error_reply(request.id, e.code, str(e), service=request.service)
        except Exception as e:
            log.exception("%s.%s failed", request.service, request.method)
            return error_reply(request.id, "handler_error", f"{type(e).__name__}: {e}", service=request.service)
        return Reply(
            correlation_id=request.id,
            service=request.service,
            ok=True,
            payload=result.model_dump(mode="json"),
        )


def default_worker_name(service_name: str) -> str:
    return f"{service_name}@{socket.gethostname()}:{os.getpid()}"


class Worker:
    """Connects one :class:`Service` to a broker under ``service_name`` and serves it.

    Each unit of ``capacity`` is a *slot*: a thread with its own DEALER socket, registered with the
    broker as a worker of capacity one, that runs handlers inline (no hand-off between threads on
    the request path). While a slot's handler runs, the slot releases its socket's lock and a shared
    heartbeat thread keeps that socket beating, so a 30-minute furnace run never looks like a dead
    worker. A slot reconnects and re-registers when the broker goes silent or tells it to.
    """

    def __init__(
        self,
        service: Service,
        broker_address: str,
        *,
        service_name: str,
        worker_name: str | None = None,
        capacity: int = 1,
        context: zmq.Context | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.service = service
        self.broker_address = broker_address
        self.service_name = service_name
        self.worker_name = worker_name or default_worker_name(service_name)
        self.capacity = capacity
        self._context = context or zmq.Context.instance()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        names = [self.worker_name] if capacity == 1 else [f"{self.worker_name}/{i}" for i in range(capacity)]
        self._slots = [_Slot(self, name) for name in names]

    @property
    def registrations(self) -> int:
        return sum(slot.registrations for slot in self._slots)

    @property
    def handled(self) -> int:
        return sum(slot.handled for slot in self._slots)

    def start(self) -> Worker:
        self._threads = [
            threading.Thread(target=slot.run, name=f"sdl-{slot.name}", daemon=True) for slot in self._slots
        ] + [threading.Thread(target=self._beat_for_busy_slots, name=f"sdl-heartbeat-{self.service_name}", daemon=True)]
        for thread in self._threads:
            thread.start()
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
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout_s)
        if self._threads:
            self._threads = []
            self.service.close()

    def _beat_for_busy_slots(self) -> None:
        while not self._stop.wait(HEARTBEAT_INTERVAL_S / 4):
            for slot in self._slots:
                if slot.busy:
                    slot.beat_if_due()


class _Slot:
    """One connection to the broker, serving one request at a time."""

    def __init__(self, worker: Worker, name: str) -> None:
        self.worker = worker
        self.name = name
        self.lock = threading.Lock()  # held whenever this thread or the heartbeat thread uses the socket
        self.busy = False
        self.socket: zmq.Socket | None = None
        self.sent_at = 0.0
        self.registrations = 0
        self.handled = 0

    def _connect(self) -> None:
        if self.socket is not None:
            self.socket.close(0)
            time.sleep(RECONNECT_DELAY_S)
        self.socket = self.worker._context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(self.worker.broker_address)
        self._send(Ready(service=self.worker.service_name, worker=self.name, capacity=1))
        self.registrations += 1

    def _send(self, message: protocol._Envelope) -> None:
        self.socket.send_multipart([WORKER_HEADER, protocol.encode(message)])
        self.sent_at = time.monotonic()

    def beat_if_due(self) -> None:
        with self.lock:
            if self.busy and time.monotonic() - self.sent_at >= HEARTBEAT_INTERVAL_S:
                self._send(Heartbeat())

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
                            log.info("%s told to reconnect: %s", self.name, message.reason)
                            self._connect()
                        elif isinstance(message, Request):
                            request = message
                            self.busy = True
                    now = time.monotonic()
                    if request is None and now - heard_at > HEARTBEAT_INTERVAL_S * HEARTBEAT_LIVENESS:
                        log.warning("broker %s silent; %s reconnecting", self.worker.broker_address, self.name)
                        self._connect()
                        heard_at = time.monotonic()
                    elif now - self.sent_at >= HEARTBEAT_INTERVAL_S:
                        self._send(Heartbeat())
                if request is not None:
                    reply = self.worker.service.handle(request)  # the socket's lock is free meanwhile
                    with self.lock:
                        self.busy = False
                        self._send(reply.model_copy(update={"worker": self.name}))
                    self.handled += 1
                    heard_at = time.monotonic()  # the broker could not be heard while we worked
        finally:
            with self.lock:
                try:
                    self.socket.send_multipart(
                        [WORKER_HEADER, protocol.encode(Disconnect(reason="worker stopping"))], zmq.NOBLOCK
                    )
                except zmq.ZMQError:
                    pass
                self.socket.close(0)

    def _receive(self) -> protocol.Message | None:
        frames = self.socket.recv_multipart()
        try:
            if len(frames) != 2 or frames[0] != WORKER_HEADER:
                raise ProtocolError(f"expected [{WORKER_HEADER!r}, body], got {len(frames)} frame(s)")
            return protocol.decode(frames[1])
        except ProtocolError as e:
            log.warning("%s ignored a bad frame from the broker: %s", self.name, e)
            return None
