"""The lab bus: one module per role, as in Majordomo — the broker (:mod:`.broker`), the worker API
(:mod:`.worker`) and the client API (:mod:`.client`); the frames themselves are :mod:`sdl.wire`."""

from sdl.bus.broker import Broker
from sdl.bus.client import RETRYABLE, BusClient, BusError, BusTimeout, CallOutcome, EventSubscriber, RemoteError
from sdl.bus.worker import Empty, Service, ServiceDescription, ServiceError, Worker, method

__all__ = ["RETRYABLE", "Broker", "BusClient", "BusError", "BusTimeout", "CallOutcome", "Empty", "EventSubscriber",
           "RemoteError", "Service", "ServiceDescription", "ServiceError", "Worker", "method"]
