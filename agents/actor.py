"""Ray hosting of agents: each agent is a Ray actor that joins the bus as a named service.

Ray places the actor (any node, CPU or GPU resources) and restarts it when its process dies
(``max_restarts``); a restarted actor runs ``__init__`` again, which connects a fresh worker and
registers the service with the broker once more. Messages never travel through Ray: the bus
carries them, so an actor and an external instrument process look the same to a campaign.
"""

from __future__ import annotations

import importlib
import os
import time
from typing import Any, Literal

import ray

from sdl.service import Service, Worker

AgentKind = Literal["planner", "process_planner", "surrogate", "mlip", "generative", "simulator", "phase_boundary",
                    "instrument"]

# The four agent kinds of the design card (planner, surrogate, simulator, instrument) and the
# services that implement them; the phase-boundary learner is a simulator over CALPHAD, the
# process planner (heat-treatment routes) a second planner.
SERVICE_CLASSES: dict[str, str] = {
    "planner": "sdl.agents.planner:PlannerService",
    "process_planner": "sdl.agents.process_planner:ProcessPlannerService",
    "surrogate": "sdl.agents.surrogate_host:SurrogateHostService",
    "mlip": "sdl.agents.mlip_host:MlipService",  # surrogate.mlip: interatomic potentials (GPU when present)
    "generative": "sdl.agents.generative_host:GenerativeService",  # surrogate.generative: constrained generators
    "simulator": "sdl.agents.simulator_host:SimulatorHostService",
    "phase_boundary": "sdl.agents.phase_boundary_host:PhaseBoundaryService",
    "instrument": "sdl.agents.instrument_driver:InstrumentDriverService",
}


def build_service(kind: str, options: dict[str, Any]) -> Service:
    try:
        module_name, class_name = SERVICE_CLASSES[kind].split(":")
    except KeyError:
        raise ValueError(f"unknown agent kind {kind!r}; available: {', '.join(SERVICE_CLASSES)}") from None
    return getattr(importlib.import_module(module_name), class_name)(**options)


@ray.remote
class AgentActor:
    """One agent: builds its service and serves it on the bus from a background thread."""

    def __init__(self, kind: str, options: dict[str, Any], broker_address: str, service_name: str, capacity: int = 1):
        self.service_name = service_name
        self.service = build_service(kind, options)
        self.worker = Worker(self.service, broker_address, service_name=service_name, capacity=capacity).start()
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

    def shutdown(self) -> None:
        self.worker.stop()


def spawn_agent(
    kind: AgentKind,
    options: dict[str, Any],
    *,
    broker_address: str,
    service_name: str,
    capacity: int = 1,
    max_restarts: int = 3,
    num_cpus: float = 0.0,
    num_gpus: float = 0.0,
    node_id: str | None = None,
) -> ray.actor.ActorHandle:
    """Start an agent actor. Agents wait on the bus most of the time, so by default they reserve no
    CPU; a surrogate that trains asks for ``num_cpus``/``num_gpus`` explicitly.

    ``node_id`` places the agent on that node. An agent that asks for no resources is pinned there
    (hard affinity: a node that has just joined may not yet be in the scheduler's view, and soft
    affinity would then silently stack every agent on the head node); one that asks for CPUs or
    GPUs only prefers it, so Ray may place it where those resources are. The price of pinning: an
    agent pinned to a node that dies is not restarted elsewhere. Without ``node_id``, Ray's
    best-effort SPREAD applies.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    strategy: object = "SPREAD"
    if node_id is not None:
        strategy = NodeAffinitySchedulingStrategy(node_id=node_id, soft=bool(num_cpus or num_gpus))
    return AgentActor.options(
        max_restarts=max_restarts,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        scheduling_strategy=strategy,
    ).remote(kind, options, broker_address, service_name, capacity)
