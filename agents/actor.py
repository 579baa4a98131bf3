"""Ray hosting of agents: each agent is a Ray actor that joins the bus as a named service.

Ray places the actor (any node, CPU or GPU resources; the campaign's launcher decides where) and
restarts it when its process dies (``max_restarts``); a restarted actor runs ``__init__`` again,
which builds the service anew and registers it with the broker once more. Messages never travel
through Ray: the bus carries them, so an actor and an external instrument process look the same to
a campaign.
"""

from __future__ import annotations

import os
import time
from typing import Any

import ray

from sdl.agents.base import AgentContext
from sdl.agents.registry import build_service
from sdl.bus import CurveKeys, Worker
from sdl.settings import Section


@ray.remote
class AgentActor:
    """One agent: builds the service of agent kind ``kind`` and serves it from background threads."""

    def __init__(self, kind: str, settings: Section, context: AgentContext, broker_address: str, service_name: str,
                 capacity: int = 1, curve: CurveKeys | None = None):
        self.service_name = service_name
        # the agent may consult others on the bus it serves, under its own key
        context = context.model_copy(update={"bus_address": broker_address, "bus_keys": curve})
        self.service = build_service(kind, settings, context)
        self.worker = Worker(self.service, broker_address, service_name=service_name, capacity=capacity,
                             curve=curve).start()
        self.started_at_unix_s = time.time()

    def info(self) -> dict[str, Any]:
        context = ray.get_runtime_context()
        return {
            "service": self.service_name,
            "worker": self.worker.worker_name,
            "pid": os.getpid(),
            "node_id": context.get_node_id(),
            "restarted": context.was_current_actor_reconstructed,
            "registrations": self.worker.registrations,
            "handled": self.worker.handled,
        }
