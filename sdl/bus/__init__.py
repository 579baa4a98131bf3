"""The lab bus: one module per role, as in Majordomo — the broker (:mod:`.broker`), the worker API
(:mod:`.worker`) and the client API (:mod:`.client`); the frames themselves are :mod:`sdl.wire`."""

from sdl.bus.broker import Broker
from sdl.bus.client import RETRYABLE, BusClient, BusError, BusTimeout, CallOutcome, EventSubscriber, RemoteError
from sdl.bus.keys import KeyRing, KeyRingError
from sdl.bus.trust import CurveKeys, Grant, Trust
from sdl.bus.worker import Empty, Service, ServiceDescription, ServiceError, Worker, method

__all__ = ["RETRYABLE", "Broker", "BusClient", "BusError", "BusTimeout", "CallOutcome", "CurveKeys", "Empty",
           "EventSubscriber", "Grant", "KeyRing", "KeyRingError", "RemoteError", "Service", "ServiceDescription",
           "ServiceError", "Trust", "Worker", "method"]
