"""Ray placement: the campaign's agents and instrument drivers as Ray actors, on a local Ray or a cluster.

The launcher starts (or joins) Ray, deals the agents over the cluster's live nodes, gives each the
CPUs and GPUs its config asks for (``num_gpus: auto`` takes a GPU where the cluster has one free),
waits until every service has joined the bus, reports where each agent landed, and tears it all
down. The campaign loop itself never touches Ray.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Literal

import ray
import zmq

from sdl.agents.actor import AgentActor
from sdl.agents.base import AgentContext
from sdl.agents.instrument_driver import InstrumentDriverSettings
from sdl.agents.registry import agent_class
from sdl.bus import Broker, Grant, Trust
from sdl.campaign.config import CampaignConfig, journal_path
from sdl.campaign.reaper import Reaper, children_now
from sdl.ledger.documents import AgentPlaced
from sdl.settings import Section

log = logging.getLogger(__name__)

INSTRUMENT_KIND = "instrument.driver"


class LaunchError(RuntimeError):
    """An agent could not be started or did not join the bus."""


def resolve_gpus(requested: float | Literal["auto"], free: float) -> float:
    """``auto``: one GPU when one of the ``free`` ones is left, else none; a number: exactly that, if free."""
    if requested == "auto":
        return 1.0 if free >= 1.0 else 0.0
    if requested > free:
        raise LaunchError(f"num_gpus {requested} asked for, but the Ray cluster has {free:g} GPUs free for it; "
                          "use num_gpus: auto or 0")
    return float(requested)


def spawn(kind: str, settings: Section, context: AgentContext, *, broker_address: str, service_name: str,
          capacity: int = 1, max_restarts: int = 3, num_cpus: float = 0.0, num_gpus: float = 0.0,
          node_id: str | None = None, trust: Trust | None = None) -> ray.actor.ActorHandle:
    """Start one agent actor. Agents wait on the bus most of the time, so by default they reserve no
    CPU; one that trains asks for ``num_cpus``/``num_gpus``.

    ``node_id`` places the agent on that node. An agent that asks for no resources is pinned there
    (hard affinity: a node that has just joined may not yet be in the scheduler's view, and soft
    affinity would then silently stack every agent on the head node); one that asks for CPUs or
    GPUs only prefers it, so Ray may place it where those resources are. The price of pinning: an
    agent pinned to a node that dies is not restarted elsewhere. Without ``node_id``, Ray's
    best-effort SPREAD applies.

    On a bus with keys (``trust``) the agent gets a key pair of its own, made here and trusted by the
    broker to serve its service and to call what its kind consults, nothing else.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    strategy: object = "SPREAD"
    if node_id is not None:
        strategy = NodeAffinitySchedulingStrategy(node_id=node_id, soft=bool(num_cpus or num_gpus))
    curve = None
    if trust is not None:
        public, secret = zmq.curve_keypair()
        trust.add(f"agent.{service_name}", public, grant_for(kind, settings, service_name))
        curve = trust.client_keys(public, secret)
    return AgentActor.options(max_restarts=max_restarts, num_cpus=num_cpus, num_gpus=num_gpus,
                              scheduling_strategy=strategy).remote(kind, settings, context, broker_address,
                                                                   service_name, capacity, curve)


def grant_for(kind: str, settings: Section, service_name: str) -> Grant:
    """What an agent's key may do on the bus: serve its service, call what its kind consults."""
    return Grant(serve=(service_name,), call=tuple(agent_class(kind).consults(settings)))


class Launcher:
    """Starts and stops the agents of one campaign."""

    def __init__(self, config: CampaignConfig, campaign_dir: Path, *, ray_address: str | None) -> None:
        self.config = config
        self.campaign_dir = campaign_dir
        self.ray_address = ray_address
        self.actors: dict[str, Any] = {}
        self._started_ray = False
        self._reaper: Reaper | None = None

    def start_ray(self) -> None:
        if ray.is_initialized():
            return
        if self.ray_address:
            ray.init(address=self.ray_address, include_dashboard=False, log_to_driver=False)
        else:
            # Ray starts its workers at nice 15, so that a busy actor cannot slow its driver; here the actors
            # are the work (training, MD), and at nice 15 any other load on the machine starves them (10x
            # slower MLIP training beside one busy process, measured). A lab's cluster sets its own.
            os.environ.setdefault("RAY_worker_niceness", "0")
            # Ray's node processes are this driver's children: the reaper ends them if the driver is killed.
            before = children_now()
            self._reaper = Reaper()
            ray.init(num_cpus=self.config.ray.num_cpus, include_dashboard=False, log_to_driver=False)
            self._reaper.follow(children_now() - before - {self._reaper.pid})
        self._started_ray = True

    def advertised(self, address: str) -> str:
        """The address agents on other nodes should use to reach a broker bound on every interface."""
        if "tcp://0.0.0.0:" not in self.config.bus.frontend:
            return address
        host = self.config.bus.advertise_host or ray.util.get_node_ip_address()
        return address.replace("tcp://127.0.0.1:", f"tcp://{host}:")

    @property
    def service_names(self) -> list[str]:
        """Every service the campaign needs on the bus, external instruments included."""
        return [a.service_name for a in self.config.agents] + [i.service_name for i in self.config.instruments]

    def spawn_all(self, broker_address: str, trust: Trust | None = None) -> None:
        cfg = self.config
        context = cfg.agent_context()
        # Deal the agents round-robin over the cluster's live nodes (Ray's SPREAD is best effort and
        # stacked resource-free actors on one node in tests); see spawn for the affinity used.
        nodes = itertools.cycle(sorted(n["NodeID"] for n in ray.nodes() if n["Alive"]) or [None])
        common = {"broker_address": broker_address, "max_restarts": cfg.ray.max_restarts, "trust": trust}
        # GPUs are counted here as they are given out: Ray's own count lags behind actors being created.
        gpus_free = ray.available_resources().get("GPU", 0.0)
        for agent in cfg.agents:
            gpus = resolve_gpus(agent.gpus, gpus_free)
            gpus_free -= gpus
            self.actors[agent.service_name] = spawn(agent.agent_kind, agent.settings, context,
                                                    service_name=agent.service_name, num_cpus=agent.num_cpus,
                                                    num_gpus=gpus, node_id=next(nodes), **common)
        for instrument in cfg.instruments:
            if instrument.host != "ray":
                continue
            settings = InstrumentDriverSettings(driver=instrument.driver, options=instrument.options,
                                                journal_path=journal_path(self.campaign_dir, instrument.name).resolve())
            self.actors[instrument.service_name] = spawn(INSTRUMENT_KIND, settings, context,
                                                         service_name=instrument.service_name,
                                                         capacity=instrument.capacity, node_id=next(nodes), **common)

    def wait_for_services(self, broker: Broker, stop: threading.Event) -> None:
        """Until every service has joined; LaunchError with the agent's own error if one failed to start."""
        deadline = time.monotonic() + self.config.bus.join_timeout_s
        announced = False
        # One probe per actor: an agent whose construction raises (a bad option, a missing file)
        # fails the campaign now with its own error rather than after the join timeout.
        probes = {actor.info.remote(): name for name, actor in self.actors.items()}
        while True:
            missing = [s for s in self.service_names if s not in broker.services()]
            if not missing:
                return
            ready, _ = ray.wait(list(probes), num_returns=len(probes), timeout=0)
            for ref in ready:
                name = probes.pop(ref)
                try:
                    ray.get(ref)
                except ray.exceptions.RayActorError as e:
                    cause = str(e).strip().splitlines()
                    raise LaunchError(f"agent {name} failed to start: {cause[-1] if cause else e}") from e
            external = [i.service_name for i in self.config.instruments
                        if i.host == "external" and i.service_name in missing]
            if external and not announced:
                log.warning("waiting for external instruments %s; start each with: sdl instrument serve DRIVER "
                            "--bus %s --name NAME", external, self.advertised(broker.frontend_address))
                announced = True
            if time.monotonic() > deadline:
                raise LaunchError(f"agents did not join the bus within {self.config.bus.join_timeout_s:g} s: {missing}")
            if stop.is_set():
                raise LaunchError(f"interrupted while waiting for agents {missing}")
            time.sleep(0.05)

    def placements(self) -> list[AgentPlaced]:
        """Where Ray placed each agent (node, pid): the first question when a cluster misbehaves."""
        placed = []
        for name, actor in self.actors.items():
            info = ray.get(actor.info.remote(), timeout=60)
            placed.append(AgentPlaced(service=name, node_id=info["node_id"], pid=info["pid"]))
        return placed

    def shutdown(self) -> None:
        for actor in self.actors.values():
            try:
                ray.kill(actor, no_restart=True)
            except Exception as e:  # already gone
                log.debug("kill: %s", e)
        self.actors.clear()
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False
        if self._reaper is not None:
            self._reaper.close()
            self._reaper = None
