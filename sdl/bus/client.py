"""The client side of the bus: send requests to named services, collect replies, follow events.

:class:`BusClient` is asynchronous at heart (``submit`` then ``poll``), which is what the campaign
loop needs to keep many experiments in flight from one thread; ``request`` is the blocking
convenience on top. Timeouts are per attempt; a retry is a new message with the same correlation
id and the same idempotency key, so a driver that already acted returns its recorded result.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import zmq
from pydantic import BaseModel

from sdl.bus.sockets import configure_liveness
from sdl.bus.trust import CurveKeys
from sdl.wire import CLIENT_HEADER, ErrorCode, ErrorInfo, Event, ProtocolError, Reply, Request, decode, encode, new_id

log = logging.getLogger(__name__)

# Failures worth another attempt: nothing reached a handler, its worker died under it, or it ran out of
# time (a hardware command repeats under the same idempotency key, so its journal answers a repeat).
RETRYABLE = frozenset({ErrorCode.TIMEOUT, ErrorCode.SERVICE_UNAVAILABLE, ErrorCode.WORKER_LOST,
                       ErrorCode.DEADLINE_EXCEEDED})


class BusError(Exception):
    """Base of the bus's runtime errors."""


class BusTimeout(BusError, TimeoutError):
    """No reply within the timeout, after every retry."""


class RemoteError(BusError):
    """The service (or the broker) answered with an error."""

    def __init__(self, service: str, method: str, error: ErrorInfo) -> None:
        super().__init__(f"{service}.{method} failed [{error.code}]: {error.message}")
        self.code = error.code
        self.error = error


@dataclass
class CallOutcome:
    """A finished call: a reply, or the error that ended it."""

    call_id: str
    service: str
    method: str
    ok: bool
    payload: dict[str, Any]
    error: ErrorInfo | None
    attempts: int
    worker: str | None = None
    tag: Any = None

    def raise_for_error(self) -> dict[str, Any]:
        if self.ok:
            return self.payload
        if self.error.code == ErrorCode.TIMEOUT:
            raise BusTimeout(f"{self.service}.{self.method}: {self.error.message}")
        raise RemoteError(self.service, self.method, self.error)


@dataclass
class _Call:
    call_id: str
    service: str
    method: str
    payload: dict[str, Any]
    idempotency_key: str | None
    timeout_s: float
    retries_left: int
    tag: Any
    attempts: int = 0
    deadline_s: float = 0.0
    message_ids: list[str] = field(default_factory=list)


class BusClient:
    """One DEALER connection to the broker. Not thread-safe: use one client per thread."""

    def __init__(self, broker_address: str, *, curve: CurveKeys | None = None,
                 context: zmq.Context | None = None) -> None:
        self.broker_address = broker_address
        self._socket = (context or zmq.Context.instance()).socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        configure_liveness(self._socket)
        if curve is not None:
            curve.apply(self._socket)
        self._socket.connect(broker_address)
        self._calls: dict[str, _Call] = {}
        self._by_message: dict[str, str] = {}  # message id of an attempt -> call id
        self._done: list[CallOutcome] = []

    # -- asynchronous API ----------------------------------------------------------------------

    def submit(
        self,
        service: str,
        method: str,
        payload: BaseModel | dict[str, Any] | None = None,
        *,
        timeout_s: float = 30.0,
        retries: int = 0,
        idempotency_key: str | None = None,
        tag: Any = None,
    ) -> str:
        """Send a request; its outcome comes back from :meth:`poll` with the returned call id."""
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        body = payload.model_dump(mode="json") if isinstance(payload, BaseModel) else dict(payload or {})
        call = _Call(new_id(), service, method, body, idempotency_key, timeout_s, retries, tag)
        self._calls[call.call_id] = call
        self._send_attempt(call)
        return call.call_id

    def poll(self, timeout_s: float = 0.0) -> list[CallOutcome]:
        """Collect finished calls, waiting up to ``timeout_s`` for the first one."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._receive(max(0.0, min(deadline, self._next_deadline()) - time.monotonic()))
            self._check_timeouts()
            if self._done or time.monotonic() >= deadline:
                done, self._done = self._done, []
                return done

    @property
    def in_flight(self) -> int:
        return len(self._calls)

    # -- blocking API --------------------------------------------------------------------------

    def request(
        self,
        service: str,
        method: str,
        payload: BaseModel | dict[str, Any] | None = None,
        *,
        timeout_s: float = 30.0,
        retries: int = 0,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Send and wait; return the reply payload or raise :class:`RemoteError` / :class:`BusTimeout`.

        Outcomes of other calls that finish meanwhile are kept for the next :meth:`poll`.
        """
        call_id = self.submit(
            service, method, payload, timeout_s=timeout_s, retries=retries, idempotency_key=idempotency_key
        )
        while True:
            outcomes = self.poll(timeout_s=0.05)
            mine = [o for o in outcomes if o.call_id == call_id]
            self._done.extend(o for o in outcomes if o.call_id != call_id)
            if mine:
                return mine[0].raise_for_error()

    def publish(self, topic: str, payload: dict[str, Any]) -> None:
        """Put an item on the broker's event stream (a committed ledger document, a lab notice)."""
        self._socket.send_multipart([CLIENT_HEADER, encode(Event(topic=topic, payload=payload))])

    def close(self) -> None:
        self._socket.close(0)

    def __enter__(self) -> BusClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------------

    def _send_attempt(self, call: _Call) -> None:
        call.attempts += 1
        request = Request(
            correlation_id=call.call_id,
            service=call.service,
            method=call.method,
            payload=call.payload,
            idempotency_key=call.idempotency_key,
            # The broker gives up a little before the caller does, so an unserved or overdue request
            # comes back as an informative service_unavailable or deadline_exceeded, not a bare timeout.
            timeout_s=0.9 * call.timeout_s,
            attempt=call.attempts,
        )
        call.message_ids.append(request.id)
        call.deadline_s = time.monotonic() + call.timeout_s
        self._by_message[request.id] = call.call_id
        self._socket.send_multipart([CLIENT_HEADER, encode(request)])

    def _next_deadline(self) -> float:
        return min((c.deadline_s for c in self._calls.values()), default=float("inf"))

    def _receive(self, wait_s: float) -> None:
        if not self._socket.poll(timeout=int(wait_s * 1000), flags=zmq.POLLIN):
            return
        while self._socket.get(zmq.EVENTS) & zmq.POLLIN:
            frames = self._socket.recv_multipart()
            try:
                if len(frames) != 2 or frames[0] != CLIENT_HEADER:
                    raise ProtocolError(f"expected [{CLIENT_HEADER!r}, body], got {len(frames)} frame(s)")
                reply = decode(frames[1])
                if not isinstance(reply, Reply):
                    raise ProtocolError(f"expected a reply, got {reply.kind!r}")
            except ProtocolError as e:
                log.warning("client ignored a bad frame from the broker: %s", e)
                continue
            self._on_reply(reply)

    def _on_reply(self, reply: Reply) -> None:
        call_id = self._by_message.get(reply.correlation_id or "")
        call = self._calls.get(call_id) if call_id else None
        if call is None:
            log.debug("late reply %s dropped (call already finished)", reply.correlation_id)
            return
        if not reply.ok and reply.error.code in RETRYABLE and call.retries_left > 0:
            log.info("%s.%s: %s; retrying", call.service, call.method, reply.error.message)
            call.retries_left -= 1
            self._send_attempt(call)
            return
        self._finish(call, reply.ok, reply.payload, reply.error, reply.worker)

    def _check_timeouts(self) -> None:
        now = time.monotonic()
        for call in [c for c in self._calls.values() if c.deadline_s <= now]:
            if call.retries_left > 0:
                call.retries_left -= 1
                log.info("%s.%s timed out after %.3g s; retry %d", call.service, call.method, call.timeout_s, call.attempts)
                self._send_attempt(call)
            else:
                error = ErrorInfo(
                    code=ErrorCode.TIMEOUT,
                    message=f"no reply within {call.timeout_s:g} s after {call.attempts} attempt(s)",
                )
                self._finish(call, False, {}, error, None)

    def _finish(self, call: _Call, ok: bool, payload: dict, error: ErrorInfo | None, worker: str | None) -> None:
        del self._calls[call.call_id]
        for message_id in call.message_ids:
            self._by_message.pop(message_id, None)
        self._done.append(
            CallOutcome(call.call_id, call.service, call.method, ok, payload, error, call.attempts, worker, call.tag)
        )


class EventSubscriber:
    """Follows the broker's event stream, optionally filtered by topic prefixes."""

    def __init__(self, events_address: str, topics: tuple[str, ...] = ("",), *, curve: CurveKeys | None = None,
                 context: zmq.Context | None = None):
        self._socket = (context or zmq.Context.instance()).socket(zmq.SUB)
        if curve is not None:
            curve.apply(self._socket)
        self._socket.setsockopt(zmq.LINGER, 0)
        for topic in topics:
            self._socket.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self._socket.connect(events_address)

    def receive(self, timeout_s: float) -> Event | None:
        if not self._socket.poll(timeout=int(timeout_s * 1000)):
            return None
        _topic, body = self._socket.recv_multipart()
        event = decode(body)
        return event if isinstance(event, Event) else None

    def __iter__(self) -> Iterator[Event]:
        while True:
            event = self.receive(timeout_s=1.0)
            if event is not None:
                yield event

    def close(self) -> None:
        self._socket.close(0)
