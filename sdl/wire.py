"""The lab bus's wire: frames, envelopes and constants, in the spirit of Majordomo's ``MDP.py``.

A message is two ZeroMQ frames: a header naming the sender's role (:data:`CLIENT_HEADER` or
:data:`WORKER_HEADER`) and a JSON body, one of the envelopes below, told apart by ``kind``. Envelopes
carry the protocol version, a unique ``id``, a ``correlation_id`` (a reply's is the id of the request
it answers) and when they were sent. Commands that touch hardware also carry an ``idempotency_key``:
a driver that sees a key twice returns the first outcome instead of acting again.

What a service's methods take and return (the domain messages) lives with the code that owns them;
here a payload is a JSON object. Every time on the wire and in this module is in seconds.
"""

from __future__ import annotations

import json
import time
import uuid
from enum import StrEnum
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from sdl.settings import describe_validation_error

PROTOCOL_VERSION = 2
CLIENT_HEADER = b"SDLC1"  # frames from clients (campaign, CLI)
WORKER_HEADER = b"SDLW1"  # frames from services (agents, instrument drivers)
MAX_FRAME_BYTES = 16 * 1024 * 1024

# Liveness has two parts, neither of which depends on a handler releasing the GIL:
# - the connection: libzmq's own ZMTP heartbeats (PING/PONG from its I/O thread, in C) close a
#   connection whose peer stops answering within ZMTP_HEARTBEAT_TIMEOUT_S; a process that dies is
#   disconnected by its OS at once. The broker learns of either at its next send to that peer.
# - requests: a busy worker sends nothing; its request is bounded by the request's own timeout_s.
# Idle peers still beat at HEARTBEAT_INTERVAL_S (Majordomo), so that a worker notices a broker that
# restarted or vanished after HEARTBEAT_LIVENESS silent intervals and registers again.
HEARTBEAT_INTERVAL_S = 1.0
HEARTBEAT_LIVENESS = 3
ZMTP_HEARTBEAT_INTERVAL_S = 1.0
ZMTP_HEARTBEAT_TIMEOUT_S = 3.0

ServiceName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_\-]*(\.[a-z0-9_\-]+)*$", max_length=128)]


class ErrorCode(StrEnum):
    """Why a request failed. A reply's code is one of these or it does not validate."""

    BAD_MESSAGE = "bad_message"  # the frame did not decode or failed validation
    UNKNOWN_METHOD = "unknown_method"  # the service has no such method
    INVALID_PAYLOAD = "invalid_payload"  # the payload failed the method's model, or the domain refused it
    MISSING_IDEMPOTENCY_KEY = "missing_idempotency_key"  # a hardware command came without one
    HANDLER_ERROR = "handler_error"  # the service's own code raised
    INSTRUMENT_FAULT = "instrument_fault"  # the instrument reported a fault (trip, lost specimen, offline)
    INTERRUPTED = "interrupted"  # an earlier attempt was cut off mid-action; the specimen's state is unknown
    SERVICE_UNAVAILABLE = "service_unavailable"  # no worker took the request before its deadline
    WORKER_LOST = "worker_lost"  # the worker's connection died while it held the request
    DEADLINE_EXCEEDED = "deadline_exceeded"  # the worker held the request past its timeout
    UNAUTHORIZED = "unauthorized"  # the sender's key is not granted this service or method
    TIMEOUT = "timeout"  # no reply before the caller's deadline (set by the client, never sent)


class ProtocolError(ValueError):
    """A frame that is not a valid message: not JSON, unknown kind, or an invalid field."""


def new_id() -> str:
    return uuid.uuid4().hex


class WireModel(BaseModel):
    """Base of envelopes and of the domain messages they carry."""

    # Non-finite floats travel as JSON's Infinity/NaN constants rather than silently becoming null.
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")


class ErrorInfo(WireModel):
    code: ErrorCode
    message: str
    attempt: int | None = Field(default=None, ge=1, description="interrupted: the attempt that was cut off")


class Envelope(WireModel):
    version: Literal[2] = PROTOCOL_VERSION
    id: str = Field(default_factory=new_id, min_length=1, max_length=64)
    correlation_id: str | None = Field(default=None, max_length=64)
    sent_at_unix_s: float = Field(default_factory=time.time)


class Request(Envelope):
    kind: Literal["request"] = "request"
    service: ServiceName
    method: str = Field(pattern=r"^[a-z_][a-z0-9_]*$", max_length=64)
    payload: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=256)
    timeout_s: float = Field(default=30.0, gt=0.0, le=7 * 86_400.0,
                             description="from the broker's receipt: queueing and handling together")
    attempt: int = Field(default=1, ge=1)


class Reply(Envelope):
    kind: Literal["reply"] = "reply"
    service: str = ""
    ok: bool
    payload: dict[str, Any] = Field(default_factory=dict)
    error: ErrorInfo | None = None
    worker: str | None = None

    @model_validator(mode="after")
    def _error_iff_not_ok(self) -> Reply:
        if self.ok == (self.error is not None):
            raise ValueError("a reply carries an error exactly when ok is false")
        return self


class Ready(Envelope):
    """A worker announces itself: the service it serves and how many requests it takes at once."""

    kind: Literal["ready"] = "ready"
    service: ServiceName
    worker: str = Field(min_length=1, max_length=128)
    capacity: int = Field(default=1, ge=1, le=1024)


class Heartbeat(Envelope):
    kind: Literal["heartbeat"] = "heartbeat"


class Disconnect(Envelope):
    kind: Literal["disconnect"] = "disconnect"
    reason: str = ""
    refused: bool = Field(default=False, description="the worker's key may not serve the service: not worth retrying soon")


class Event(Envelope):
    """One item of the event stream: a topic and a JSON payload (a ledger document, a bus event)."""

    kind: Literal["event"] = "event"
    topic: str = Field(pattern=r"^[a-z][a-z0-9_.\-]*$", max_length=128)
    payload: dict[str, Any] = Field(default_factory=dict)
    sender: str = Field(default="", max_length=128,
                        description="the key that published it, set by a broker that authenticates its peers")


Message = Annotated[Union[Request, Reply, Ready, Heartbeat, Disconnect, Event], Field(discriminator="kind")]
_MESSAGE = TypeAdapter(Message)
MESSAGE_KINDS = ("request", "reply", "ready", "heartbeat", "disconnect", "event")


def encode(message: Envelope) -> bytes:
    return message.model_dump_json().encode()


def decode(frame: bytes) -> Request | Reply | Ready | Heartbeat | Disconnect | Event:
    """Parse one body frame; raise :class:`ProtocolError` saying what is wrong and what is allowed."""
    if len(frame) > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {len(frame)} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")
    try:
        return _MESSAGE.validate_json(frame)  # fast path (pydantic-core parses the JSON itself)
    except (ValidationError, RecursionError):
        pass  # explain below what is wrong, step by step
    try:
        data = json.loads(frame)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError(f"body is not UTF-8 JSON: {e}") from e
    except RecursionError as e:
        raise ProtocolError("body nests too deeply; messages are flat JSON objects") from e
    if not isinstance(data, dict):
        raise ProtocolError(f"body must be a JSON object, got {type(data).__name__}")
    kind = data.get("kind")
    if kind not in MESSAGE_KINDS:
        raise ProtocolError(f"unknown message kind {kind!r}; allowed: {', '.join(MESSAGE_KINDS)}")
    version = data.get("version")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version!r} is not supported; this bus speaks {PROTOCOL_VERSION}")
    try:
        return _MESSAGE.validate_python(data)
    except ValidationError as e:
        raise ProtocolError(f"invalid {kind} message: {describe_validation_error(e)}") from e
    except RecursionError as e:
        raise ProtocolError("message nests too deeply") from e


def error_reply(request_id: str | None, code: ErrorCode, message: str, *, service: str = "",
                attempt: int | None = None) -> Reply:
    return Reply(correlation_id=request_id, service=service, ok=False,
                 error=ErrorInfo(code=code, message=message, attempt=attempt))
