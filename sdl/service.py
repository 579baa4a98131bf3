"""The worker side of the bus: a :class:`Service` declares its methods; a :class:`Worker` serves it.

A service is a plain object whose methods are marked with :func:`method`, each naming the pydantic
model its payload must satisfy. It knows nothing of sockets, so it is tested by calling
:meth:`Service.handle` directly, and hosted either in a Ray actor (``sdl.agents``) or in a plain
process (``sdl instrument serve``) by the same :class:`Worker`.

The worker keeps heartbeating while handlers run: handlers execute in a thread pool of
``capacity`` threads and hand their replies back to the socket's thread through an inproc pipe, so a
30-minute furnace run never looks like a dead worker.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import itertools
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
    Event,
    Heartbeat,
    ProtocolError,
    Ready,
    Reply,
    Request,
    error_reply,
)

log = logging.getLogger(__name__)

RECONNECT_DELAY_S = 0.5
_pipe_ids = itertools.count()


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


class Service:
    """Base class of everything that answers on the bus.

    Subclasses set :attr:`kind` (planner, surrogate, simulator or instrument) and mark handlers
    with :func:`method`; a handler returns a pydantic model. ``describe`` is always available.
    """

    kind: str = "service"

    @classmethod
    def method_specs(cls) -> dict[str, _MethodSpec]:
        specs = {}
        for _, member in inspect.getmembers(cls, predicate=callable):
            spec = getattr(member, "__sdl_method__", None)
            if spec is not None:
                specs[spec.name] = spec
        return specs

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
            return error_reply(
                request.id,
                "unknown_method",
                f"service {request.service!r} has no method {request.method!r}; available: {', '.join(sorted(specs))}",
                service=request.service,
            )
        try:
            payload = spec.request_model.model_validate(request.payload)
        except ValidationError as e:
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

    Reconnects and re-registers when the broker goes silent or tells it to, so a broker restart
    or a network blip costs at most the requests in flight (which the broker re-queues or fails).
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
        self._thread: threading.Thread | None = None
        self._pipe_address = f"inproc://sdl-worker-{os.getpid()}-{next(_pipe_ids)}"
        self._pipe_in = self._context.socket(zmq.PULL)
        self._pipe_in.bind(self._pipe_address)
        self._pipe_out = self._context.socket(zmq.PUSH)
        self._pipe_out.setsockopt(zmq.LINGER, 0)
        self._pipe_out.connect(self._pipe_address)
        self._pipe_lock = threading.Lock()  # one PUSH socket shared by handler threads
        self.registrations = 0
        self.handled = 0

    def start(self) -> Worker:
        self._thread = threading.Thread(target=self.run, name=f"sdl-worker-{self.service_name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def publish(self, topic: str, payload: dict[str, Any]) -> None:
        """Put an event on the bus's stream; safe from any thread."""
        self._to_socket(protocol.encode(Event(topic=topic, payload=payload)))

    def _to_socket(self, body: bytes) -> None:
        with self._pipe_lock:
            self._pipe_out.send(body)

    def _connect(self) -> zmq.Socket:
        dealer = self._context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(self.broker_address)
        ready = Ready(service=self.service_name, worker=self.worker_name, capacity=self.capacity)
        dealer.send_multipart([WORKER_HEADER, protocol.encode(ready)])
        self.registrations += 1
        return dealer

    def run(self) -> None:
        executor = concurrent.futures.ThreadPoolExecutor(self.capacity, thread_name_prefix=self.service_name)
        dealer = self._connect()
        heard_at = sent_at = time.monotonic()
        try:
            while not self._stop.is_set():
                poller = zmq.Poller()
                poller.register(dealer, zmq.POLLIN)
                poller.register(self._pipe_in, zmq.POLLIN)
                ready = dict(poller.poll(timeout=int(HEARTBEAT_INTERVAL_S * 250)))
                if dealer in ready:
                    heard_at = time.monotonic()
                    if not self._on_frames(dealer.recv_multipart(), executor):
                        dealer.close(0)
                        time.sleep(RECONNECT_DELAY_S)
                        dealer = self._connect()
                        heard_at = time.monotonic()
                if self._pipe_in in ready:
                    while True:
                        try:
                            body = self._pipe_in.recv(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        dealer.send_multipart([WORKER_HEADER, body])
                        sent_at = time.monotonic()
                now = time.monotonic()
                if now - heard_at > HEARTBEAT_INTERVAL_S * HEARTBEAT_LIVENESS:
                    log.warning("broker %s silent; reconnecting %s", self.broker_address, self.worker_name)
                    dealer.close(0)
                    time.sleep(RECONNECT_DELAY_S)
                    dealer = self._connect()
                    heard_at = time.monotonic()
                if now - sent_at >= HEARTBEAT_INTERVAL_S:
                    dealer.send_multipart([WORKER_HEADER, protocol.encode(Heartbeat())])
                    sent_at = now
        finally:
            try:
                dealer.send_multipart([WORKER_HEADER, protocol.encode(Disconnect(reason="worker stopping"))], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            dealer.close(0)
            executor.shutdown(wait=False, cancel_futures=True)
            self.service.close()

    def _on_frames(self, frames: list[bytes], executor: concurrent.futures.Executor) -> bool:
        """Handle one message from the broker; return False to reconnect."""
        try:
            if len(frames) != 2 or frames[0] != WORKER_HEADER:
                raise ProtocolError(f"expected [{WORKER_HEADER!r}, body], got {len(frames)} frame(s)")
            message = protocol.decode(frames[1])
        except ProtocolError as e:
            log.warning("%s ignored a bad frame from the broker: %s", self.worker_name, e)
            return True
        if isinstance(message, Request):
            executor.submit(self._serve, message)
        elif isinstance(message, Disconnect):
            log.info("%s told to reconnect: %s", self.worker_name, message.reason)
            return False
        return True

    def _serve(self, request: Request) -> None:
        reply = self.service.handle(request)
        self.handled += 1
        self._to_socket(protocol.encode(reply))
