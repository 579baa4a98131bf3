"""The closed loop: plan, dispatch to instruments, record, repeat until a stop rule fires.

One thread drives everything through an asynchronous bus client, keeping up to ``max_in_flight``
experiments running across several instruments. The ledger is written before anything acts on a
transition: an experiment is recorded ``planned`` before it is dispatched, ``dispatched`` before the
command leaves, and its result is committed before the planner, the progress bar or the event
stream hear of it. A campaign killed at any instant is resumed with ``resume=True``: planned
experiments are dispatched, dispatched ones are sent again with the same idempotency key to the
same instrument (whose journal returns the result if it already ran), and nothing finished is redone.

A specimen may visit several stations (``workflow``: melt, heat-treat, test...): each station's
result is committed as an ``experiment.step`` event before the specimen moves on, the next station
sees what the earlier ones measured, and a resumed campaign continues from the first station whose
result was not committed.

Ctrl-C (or SIGTERM) stops planning and waits for the experiments in flight, recording them;
a second Ctrl-C leaves at once, and the next ``--resume`` reconciles what was in flight.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from tqdm import tqdm

from sdl.bus import Broker
from sdl.client import RETRYABLE, BusClient, BusError, CallOutcome, EventSubscriber, RemoteError
from sdl.config import CampaignConfig
from sdl.ledger import LEDGER_FILENAME, ExperimentRecord, Ledger, PlannedExperiment
from sdl.protocol import (
    DesignPoint,
    ErrorInfo,
    EvaluateRequest,
    ExperimentResult,
    ExperimentSpec,
    FitRequest,
    FitSummary,
    FeasibilityModel,
    FeasibilityRequest,
    ProcessStep,
    Route,
    RouteRequest,
    Observation,
    Proposal,
    ProposeRequest,
    RunExperiment,
)

log = logging.getLogger(__name__)

BUS_FILENAME = "bus.json"
# After this many planner failures in a row the campaign gives up (a restart takes a few).
MAX_PLANNER_FAILURES = 20


class CampaignError(RuntimeError):
    """The campaign cannot start or go on (wrong directory, mismatched resume, agents missing)."""


@dataclass
class CampaignSummary:
    campaign_id: str
    state: str
    stop_reason: str
    counts: dict[str, int]
    best_value: float | None
    best_point: DesignPoint | None
    wall_s: float


@dataclass
class _Stop:
    """Set by signal handlers; read by the loop."""

    graceful: threading.Event = field(default_factory=threading.Event)
    immediate: threading.Event = field(default_factory=threading.Event)


class Campaign:
    def __init__(
        self,
        config: CampaignConfig,
        campaign_dir: str | Path | None = None,
        *,
        resume: bool = False,
        ray_address: str | None = None,
        progress: bool = True,
    ) -> None:
        self.config = config
        self.campaign_dir = Path(campaign_dir or config.campaign_dir or Path("runs") / config.name)
        self.resume = resume
        self.ray_address = ray_address if ray_address is not None else config.ray.address
        self.progress = progress
        self.stop = _Stop()
        self.broker: Broker | None = None
        self.actors: dict[str, Any] = {}
        self._feasibility: FeasibilityModel | None = None
        self._route_notes: set[str] = set()

    # -- public --------------------------------------------------------------------------------

    def run(self) -> CampaignSummary:
        started = time.monotonic()
        ledger = self._open_ledger()
        started_ray = False
        client: BusClient | None = None
        bus_events: EventSubscriber | None = None
        state, reason = "failed", "error"
        try:
            with _signals(self.stop):
                self.broker = Broker(self.config.bus.frontend, self.config.bus.events).start()
                started_ray = self._start_ray()
                address = self._advertised(self.broker.frontend_address)
                (self.campaign_dir / BUS_FILENAME).write_text(json.dumps(
                    {"frontend": address, "events": self._advertised(self.broker.events_address), "pid": os.getpid()}
                ))
                log.info("campaign %s: bus on %s", self.campaign_id, address)
                client = BusClient(self.broker.local_address)
                # The ledger follows the broker's own events (services joining, lost), bluesky style.
                bus_events = EventSubscriber(self.broker.events_address, topics=("bus.",))
                self._spawn_agents(address)
                self._wait_for_services(address)
                self._record_placement(ledger)
                reason = self._loop(ledger, client, bus_events)
            state = "interrupted" if reason == "interrupted" else "completed"
            if state == "completed":
                self._recommend(ledger, client)
            return self._summary(ledger, state, reason, started)
        except Exception as e:
            reason = f"error: {e}"
            raise
        finally:
            wall_s = time.monotonic() - started
            ledger.set_meta(state=state, stop_reason=reason, finished_at_unix_s=time.time(),
                            wall_s=ledger.get_meta("wall_s", 0.0) + wall_s)
            ledger.log_event("campaign.stopped", {"state": state, "reason": reason, "wall_s": wall_s})
            if bus_events is not None:
                _record_bus_events(ledger, bus_events)
                bus_events.close()
            if client is not None:
                client.close()
            self._shutdown_agents(started_ray)
            if self.broker is not None:
                self.broker.stop()
            ledger.close()

    @property
    def service_names(self) -> list[str]:
        names = [f"planner.{self.config.planner.kind}"] + [i.service_name for i in self.config.instruments]
        if self.config.surrogate is not None:
            names.append(f"surrogate.{self.config.surrogate.model}")
        if self.config.problem is not None:
            names.append(f"simulator.{self.config.problem}")
        if self.config.phase_boundary is not None:
            names.append("simulator.phase_boundary")
        if self.config.process_planner is not None:
            names.append("planner.process")
        return names

    # -- setup ---------------------------------------------------------------------------------

    def _open_ledger(self) -> Ledger:
        exists = (self.campaign_dir / LEDGER_FILENAME).exists()
        if exists and not self.resume:
            raise CampaignError(
                f"{self.campaign_dir} already holds a campaign; pass --resume to continue it or choose another --campaign-dir"
            )
        if self.resume and not exists:
            raise CampaignError(f"nothing to resume: no ledger in {self.campaign_dir}")
        ledger = Ledger.in_campaign(self.campaign_dir, synchronous=self.config.ledger.synchronous)
        fingerprint = self.config.design_fingerprint()
        if exists:
            recorded = ledger.get_meta("design_fingerprint")
            if recorded != fingerprint:
                ledger.close()
                raise CampaignError(
                    "this config designs different experiments than the campaign being resumed "
                    f"(fingerprint {fingerprint} vs {recorded}); only stop rules, bus, ray and ledger settings may change"
                )
            self.campaign_id = ledger.get_meta("campaign_id")
            ledger.log_event("campaign.resumed", {"counts": ledger.counts()})
        else:
            self.campaign_id = f"{self.config.name}-{uuid.uuid4().hex[:8]}"
            ledger.set_meta(
                campaign_id=self.campaign_id,
                design_fingerprint=fingerprint,
                config=self.config.model_dump(mode="json"),
                created_at_unix_s=time.time(),
            )
            ledger.log_event("campaign.started", {"campaign_id": self.campaign_id})
        ledger.set_meta(state="running", config=self.config.model_dump(mode="json"))
        return ledger

    def _start_ray(self) -> bool:
        import ray

        if ray.is_initialized():
            return False
        if self.ray_address:
            ray.init(address=self.ray_address, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(num_cpus=self.config.ray.num_cpus, include_dashboard=False, log_to_driver=False)
        return True

    def _advertised(self, address: str) -> str:
        """The address agents on other nodes should use to reach a broker bound on every interface."""
        if "tcp://0.0.0.0:" not in self.config.bus.frontend:
            return address
        import ray

        host = self.config.bus.advertise_host or ray.util.get_node_ip_address()
        return address.replace("tcp://127.0.0.1:", f"tcp://{host}:")

    def _spawn_agents(self, address: str) -> None:
        import itertools

        import ray

        from sdl.agents.actor import spawn_agent

        cfg = self.config
        space = cfg.space.model_dump(mode="json")
        # Deal the agents round-robin over the cluster's live nodes (Ray's SPREAD is best effort and
        # stacked resource-free actors on one node in tests); see spawn_agent for the affinity used.
        nodes = itertools.cycle(sorted(n["NodeID"] for n in ray.nodes() if n["Alive"]) or [None])
        common = {"broker_address": address, "max_restarts": cfg.ray.max_restarts}

        def spawn(name: str, kind: str, options: dict, **extra) -> None:
            self.actors[name] = spawn_agent(kind, options, service_name=name, node_id=next(nodes), **common, **extra)

        planner_options = {"planner": cfg.planner.kind, "space": space, "seed": cfg.seed}
        causal = None
        if cfg.planner.causal is not None:  # paths as the user meant them: from where `sdl run` started
            causal = {**cfg.planner.causal.model_dump(mode="json"),
                      "history": str(Path(cfg.planner.causal.history).expanduser().resolve()),
                      "graph_config": str(Path(cfg.planner.causal.graph_config).expanduser().resolve())}
        if cfg.planner.kind == "bo":
            from sdl.agents.bo_planner import BoSettings

            planner_options["settings"] = {**BoSettings.from_config(cfg.planner, cfg.objective).model_dump(mode="json"),
                                           "causal": causal}
        elif cfg.planner.kind == "causal":
            planner_options["settings"] = causal
        spawn(f"planner.{cfg.planner.kind}", "planner", planner_options, num_cpus=cfg.planner.num_cpus)
        if cfg.phase_boundary is not None:
            spawn("simulator.phase_boundary", "phase_boundary",
                  {"space": space, "settings": cfg.phase_boundary.model_dump(mode="json"), "seed": cfg.seed})
        if cfg.process_planner is not None:
            checkpoint = cfg.process_planner.checkpoint
            spawn("planner.process", "process_planner",
                  {"checkpoint": str(Path(checkpoint).expanduser().resolve()) if checkpoint else None,
                   "limits": cfg.process_planner.limits.model_dump(),
                   "require_checkpoint": cfg.process_planner.require_checkpoint})
        if cfg.surrogate is not None:
            spawn(f"surrogate.{cfg.surrogate.model}", "surrogate", {"model": cfg.surrogate.model, "space": space},
                  num_cpus=cfg.surrogate.num_cpus, num_gpus=cfg.surrogate.num_gpus)
        if cfg.problem is not None:
            spawn(f"simulator.{cfg.problem}", "simulator", {"problem": cfg.problem})
        for instrument in cfg.instruments:
            if instrument.host != "ray":
                continue
            # The journal lives with the campaign so that a resumed campaign's restarted drivers
            # still know which commands they already executed.
            journal = self.campaign_dir / "instruments" / f"{instrument.name}.sqlite"
            spawn(instrument.service_name, "instrument",
                  {"driver": instrument.driver, "options": instrument.options, "journal_path": str(journal.resolve())},
                  capacity=instrument.capacity)

    def _record_placement(self, ledger: Ledger) -> None:
        """Log where Ray placed each agent (node, pid): the first question when a cluster misbehaves."""
        import ray

        for name, actor in self.actors.items():
            info = ray.get(actor.info.remote(), timeout=60)
            ledger.log_event("agent.placed", {"service": name, "node_id": info["node_id"], "pid": info["pid"]})

    def _wait_for_services(self, address: str) -> None:
        import ray

        deadline = time.monotonic() + self.config.bus.join_timeout_s
        announced = False
        # One probe per actor: an agent whose construction raises (a bad option, a missing file)
        # fails the campaign now with its own error rather than after the join timeout.
        probes = {actor.info.remote(): name for name, actor in self.actors.items()}
        while True:
            missing = [s for s in self.service_names if s not in self.broker.services()]
            if not missing:
                return
            ready, _ = ray.wait(list(probes), num_returns=len(probes), timeout=0)
            for ref in ready:
                name = probes.pop(ref)
                try:
                    ray.get(ref)
                except ray.exceptions.RayActorError as e:
                    cause = str(e).strip().splitlines()
                    raise CampaignError(f"agent {name} failed to start: {cause[-1] if cause else e}") from e
            external = [i.service_name for i in self.config.instruments if i.host == "external" and i.service_name in missing]
            if external and not announced:
                log.warning("waiting for external instruments %s; start each with: sdl instrument serve DRIVER --bus %s --name NAME",
                            external, address)
                announced = True
            if time.monotonic() > deadline:
                raise CampaignError(
                    f"agents did not join the bus within {self.config.bus.join_timeout_s:g} s: {missing}"
                )
            if self.stop.graceful.is_set():
                raise CampaignError(f"interrupted while waiting for agents {missing}")
            time.sleep(0.05)

    # -- the loop ------------------------------------------------------------------------------

    def _loop(self, ledger: Ledger, client: BusClient, bus_events: EventSubscriber) -> str:
        cfg = self.config
        budget = cfg.stop.max_experiments
        capacity = {i.name: i.capacity for i in cfg.instruments}
        load: collections.Counter[str] = collections.Counter()
        in_flight: dict[str, _Flight] = {}
        records = ledger.experiments()
        observations = [_observation(r) for r in records if r.status in ("done", "failed")]
        # Reconcile: what was planned or dispatched when the last run stopped goes out (again), from
        # the first workflow station whose result was not yet committed.
        steps_done = _completed_steps(ledger)
        to_dispatch = collections.deque(
            steps_done.get(r.experiment_id, _Flight(r)) for r in records if r.status in ("planned", "dispatched")
        )
        if to_dispatch:
            log.info("reconciling %d experiments left planned or dispatched", len(to_dispatch))
        n_planned = len(records)
        best = self._best(observations)
        reason: str | None = None
        planner_failures = 0
        started = time.monotonic()
        bar = tqdm(total=budget, initial=len(observations), desc=cfg.name, unit="exp", disable=not self.progress,
                   dynamic_ncols=True)
        try:
            while True:
                if self.stop.immediate.is_set():
                    return "interrupted"
                if reason is None and self.stop.graceful.is_set():
                    reason = "interrupted"
                if reason is None and cfg.stop.max_wall_s and time.monotonic() - started > cfg.stop.max_wall_s:
                    reason = "wall_time"
                # Plan just enough to keep max_in_flight specimens moving through the workflow.
                free_slots = min(cfg.stop.max_in_flight - len(in_flight) - len(to_dispatch), budget - n_planned)
                if reason is None and free_slots > 0:
                    try:
                        pending = [f.record.point for f in (*in_flight.values(), *to_dispatch)]
                        planned = self._plan(ledger, client, free_slots, n_planned, observations, pending)
                        planner_failures = 0
                    except BusError as e:
                        if isinstance(e, RemoteError) and e.code not in RETRYABLE:
                            # The planner's own error will not go away by asking again.
                            raise CampaignError(f"planner cannot propose: {e}") from e
                        planner_failures += 1
                        log.warning("planner failed (%d in a row): %s", planner_failures, e)
                        ledger.log_event("planner.failed", {"error": str(e)})
                        if planner_failures >= MAX_PLANNER_FAILURES:
                            raise CampaignError(f"planner failed {planner_failures} times in a row: {e}") from e
                        planned = []
                    n_planned += len(planned)
                    to_dispatch.extend(_Flight(r) for r in planned)
                # Dispatch while instruments have room (not once the operator asked to stop).
                if reason != "interrupted":
                    waiting = collections.deque()
                    while to_dispatch:
                        flight = to_dispatch.popleft()
                        instrument = self._pick_instrument(flight, capacity, load)
                        if instrument is None:
                            waiting.append(flight)  # its station is busy; others may not be
                            continue
                        self._dispatch(ledger, client, flight, instrument)
                        load[instrument.name] += 1
                        in_flight[flight.record.experiment_id] = flight
                    to_dispatch = waiting
                if not in_flight and (reason is not None or (n_planned >= budget and not to_dispatch)):
                    return reason or "budget"
                _record_bus_events(ledger, bus_events)
                for outcome in client.poll(timeout_s=0.1):
                    flight = in_flight.pop(outcome.tag, None)
                    if flight is None:
                        continue
                    load[flight.instrument] -= 1
                    if outcome.ok and flight.step + 1 < len(cfg.workflow):
                        advanced = self._advance(ledger, flight, outcome)
                        if advanced is not None:
                            to_dispatch.appendleft(advanced)  # a specimen in the line goes before new ones
                            continue
                    observation = self._record(ledger, client, flight, outcome)
                    observations.append(observation)
                    bar.update(1)
                    value = observation.measurements.get(cfg.objective.measurement)
                    if observation.status == "done" and value is not None and (best is None or cfg.objective.better(value, best)):
                        best = value
                        bar.set_postfix({"best": f"{best:.4g}"})
                    if reason is None and best is not None and cfg.objective.reached(best):
                        reason = "target"
                        ledger.log_event("campaign.target_reached", {"best": best, "target": cfg.objective.target})
        finally:
            bar.close()

    def _plan(self, ledger: Ledger, client: BusClient, n: int, n_planned: int,
              observations: list[Observation], pending: list[DesignPoint]) -> list[ExperimentRecord]:
        payload = client.request(
            f"planner.{self.config.planner.kind}", "propose",
            ProposeRequest(n=n, observations=observations, pending=pending,
                           feasibility=self._feasibility_model(ledger, client)),
            timeout_s=self.config.planner.timeout_s, retries=2,
        )
        proposal = Proposal.model_validate(payload)
        for point in proposal.points:
            try:
                self.config.space.check(point)  # a planner bug must not reach an instrument
            except ValueError as e:
                raise CampaignError(f"planner {proposal.planner} proposed a point outside the space: {e}") from e
        routes = [self._route(ledger, client, point) for point in proposal.points[:n]]
        planned = [
            PlannedExperiment(
                experiment_id=f"e{n_planned + i:05d}",
                point=point,
                process=routes[i],
                planner=proposal.planner,
                idempotency_key=f"{self.campaign_id}:e{n_planned + i:05d}",
            )
            for i, point in enumerate(proposal.points[:n])
        ]
        ledger.plan(planned)
        for p, expected in zip(planned, proposal.predicted):  # what the planner expected, to compare later
            ledger.log_event("planner.predicted", {"experiment_id": p.experiment_id, **expected})
        return [r for r in ledger.experiments(("planned",)) if r.experiment_id in {p.experiment_id for p in planned}]

    def _route(self, ledger: Ledger, client: BusClient, point: DesignPoint) -> tuple[ProcessStep, ...]:
        """The configured fixed route, or the one ``planner.process`` plans for this composition."""
        cfg = self.config.process_planner
        if cfg is None:
            return tuple(self.config.process)
        payload = client.request("planner.process", "route", RouteRequest(composition=point.composition),
                                 timeout_s=cfg.timeout_s, retries=2)
        route = Route.model_validate(payload)
        if route.source != "policy":
            if route.note not in self._route_notes:  # the log says each reason once; the ledger every time
                self._route_notes.add(route.note)
                log.warning("process planner: %s", route.note)
            ledger.log_event("process.textbook_route", {"note": route.note, "composition": point.composition.root})
        return tuple(route.steps)

    def _feasibility_model(self, ledger: Ledger, client: BusClient) -> FeasibilityModel | None:
        """The phase classifier learned on CALPHAD, asked for once (the agent learns on first request)."""
        cfg = self.config
        if cfg.planner.kind != "bo" or cfg.planner.feasibility != "classifier":
            return None
        if self._feasibility is None:
            log.info("learning the phase boundary from CALPHAD (%d calls)", cfg.phase_boundary.calphad_calls)
            started = time.monotonic()
            payload = client.request("simulator.phase_boundary", "feasibility", FeasibilityRequest(),
                                     timeout_s=cfg.phase_boundary.timeout_s, retries=1)
            self._feasibility = FeasibilityModel.model_validate(payload)
            ledger.log_event("feasibility.learned", {"calphad_calls": self._feasibility.calphad_calls,
                                                     "seconds": time.monotonic() - started,
                                                     "target": self._feasibility.target})
        return self._feasibility

    def _pick_instrument(self, flight: _Flight, capacity: dict[str, int], load: collections.Counter):
        station = self.config.workflow[flight.step]
        candidates = [i for i in self.config.instruments if i.station == station]
        previous = _instrument_name(flight.record.instrument) if flight.record.instrument else None
        if flight.step == flight.dispatched_step and previous in {i.name for i in candidates}:
            # A reconciled command goes back to the instrument that holds (or held) its specimen.
            chosen = next(i for i in candidates if i.name == previous)
            return chosen if load[chosen.name] < capacity[chosen.name] else None
        free = [i for i in candidates if load[i.name] < capacity[i.name]]
        return min(free, key=lambda i: load[i.name] / capacity[i.name]) if free else None

    def _step_key(self, flight: _Flight) -> str:
        if len(self.config.workflow) == 1:
            return flight.record.idempotency_key
        return f"{flight.record.idempotency_key}/{self.config.workflow[flight.step]}"

    def _dispatch(self, ledger: Ledger, client: BusClient, flight: _Flight, instrument) -> None:
        record = flight.record
        ledger.mark_dispatched(record.experiment_id, instrument.service_name)
        flight.instrument = instrument.name
        spec = ExperimentSpec(
            experiment_id=record.experiment_id, campaign_id=self.campaign_id, point=record.point,
            process=list(record.process), station=self.config.workflow[flight.step], specimen=flight.specimen,
        )
        client.submit(
            instrument.service_name, "run", RunExperiment(experiment=spec),
            timeout_s=instrument.timeout_s, retries=instrument.retries,
            idempotency_key=self._step_key(flight), tag=record.experiment_id,
        )

    def _advance(self, ledger: Ledger, flight: _Flight, outcome: CallOutcome) -> _Flight | None:
        """Commit one station's result and return the specimen's next step (None: the reply was bad)."""
        try:
            result = ExperimentResult.model_validate(outcome.payload)
        except ValidationError:
            return None  # recorded as a failure by the caller
        ledger.log_event("experiment.step", {
            "experiment_id": flight.record.experiment_id, "step": flight.step,
            "station": self.config.workflow[flight.step], "instrument": outcome.service,
            "result": result.model_dump(mode="json"),
        })
        return flight.next(result)

    def _record(self, ledger: Ledger, client: BusClient, flight: _Flight, outcome: CallOutcome) -> Observation:
        """Commit the outcome, then tell the event stream; return what the planner will see."""
        record = flight.record
        error = outcome.error
        if outcome.ok:
            try:
                last = ExperimentResult.model_validate(outcome.payload)
            except ValidationError as e:
                error = ErrorInfo(code="bad_message", message=f"instrument reply is not a result: {e.errors()[0]['msg']}")
            else:
                result = flight.combined(last)
                ledger.record_result(record.experiment_id, result)
                client.publish("campaign.experiment.done", {"experiment_id": record.experiment_id,
                                                            "measurements": result.measurements})
                return Observation(point=record.point, status="done", measurements=result.measurements)
        station = self.config.workflow[flight.step]
        message = error.message if len(self.config.workflow) == 1 else f"at station {station}: {error.message}"
        ledger.record_failure(record.experiment_id, error.code, message)
        ledger.log_event("experiment.failed", {"experiment_id": record.experiment_id, "code": error.code,
                                               "station": station, "message": error.message})
        client.publish("campaign.experiment.failed", {"experiment_id": record.experiment_id, "code": error.code})
        log.info("experiment %s failed [%s]: %s", record.experiment_id, error.code, message)
        return Observation(point=record.point, status="failed")

    def _best(self, observations: list[Observation]) -> float | None:
        values = [o.measurements[self.config.objective.measurement] for o in observations
                  if o.status == "done" and self.config.objective.measurement in o.measurements]
        if not values:
            return None
        return min(values) if self.config.objective.direction == "minimize" else max(values)

    # -- wrap-up -------------------------------------------------------------------------------

    def _recommend(self, ledger: Ledger, client: BusClient) -> None:
        """Ask the surrogate for the recommended point and, on a benchmark, the simulator for its truth."""
        cfg = self.config
        observations = [_observation(r) for r in ledger.experiments(("done", "failed"))]
        recommendation: dict[str, Any] = {}
        try:
            if cfg.surrogate is not None and sum(o.status == "done" for o in observations) >= 2:
                summary = FitSummary.model_validate(client.request(
                    f"surrogate.{cfg.surrogate.model}", "fit",
                    FitRequest(observations=observations, objective=cfg.objective.measurement,
                               direction=cfg.objective.direction),
                    timeout_s=300.0,
                ))
                recommendation = summary.model_dump(mode="json")
                if cfg.problem is not None and summary.recommended is not None:
                    truth = client.request(f"simulator.{cfg.problem}", "evaluate",
                                           EvaluateRequest(points=[summary.recommended]), timeout_s=60.0)
                    recommendation["true_values"] = truth["values"][0]
        except BusError as e:
            log.warning("no recommendation: %s", e)
            recommendation = {"error": str(e)}
        if cfg.problem is not None:
            from sdl.env.test_functions import get_problem

            recommendation["optimal_value"] = get_problem(cfg.problem).optimal_value
        ledger.set_meta(recommendation=recommendation)

    def _summary(self, ledger: Ledger, state: str, reason: str, started: float) -> CampaignSummary:
        done = [r for r in ledger.experiments(("done",)) if self.config.objective.measurement in r.result.measurements]
        best = None
        if done:
            key = lambda r: r.result.measurements[self.config.objective.measurement]  # noqa: E731
            best = min(done, key=key) if self.config.objective.direction == "minimize" else max(done, key=key)
        return CampaignSummary(
            campaign_id=self.campaign_id,
            state=state,
            stop_reason=reason,
            counts=ledger.counts(),
            best_value=best.result.measurements[self.config.objective.measurement] if best else None,
            best_point=best.point if best else None,
            wall_s=time.monotonic() - started,
        )

    def _shutdown_agents(self, started_ray: bool) -> None:
        import ray

        for actor in self.actors.values():
            try:
                ray.kill(actor, no_restart=True)
            except Exception as e:  # already gone
                log.debug("kill: %s", e)
        self.actors.clear()
        if started_ray:
            ray.shutdown()


@dataclass
class _Flight:
    """A specimen on its way through the workflow: the station it is at and what it carries."""

    record: ExperimentRecord
    step: int = 0
    specimen: dict[str, float] = field(default_factory=dict)
    results: list[ExperimentResult] = field(default_factory=list)
    instrument: str = ""
    dispatched_step: int = 0  # the step whose command the ledger's `instrument` refers to

    def next(self, result: ExperimentResult) -> _Flight:
        return _Flight(self.record, self.step + 1, {**self.specimen, **result.measurements}, [*self.results, result],
                       dispatched_step=-1)

    def combined(self, last: ExperimentResult) -> ExperimentResult:
        """One result for the experiment: every station's measurements, times and lab time."""
        results = [*self.results, last]
        return last.model_copy(update={
            "measurements": {k: v for r in results for k, v in r.measurements.items()},
            "started_at_unix_s": results[0].started_at_unix_s,
            "lab_time_s": sum(r.lab_time_s for r in results),
            "attempts": max(r.attempts for r in results),
            "replayed": all(r.replayed for r in results),
        })


def _completed_steps(ledger: Ledger) -> dict[str, _Flight]:
    """Per unfinished experiment, where its workflow stood: committed station results replayed."""
    flights: dict[str, _Flight] = {}
    unfinished = {r.experiment_id: r for r in ledger.experiments(("planned", "dispatched"))}
    for _, _, payload in ledger.events("experiment.step"):
        record = unfinished.get(payload["experiment_id"])
        if record is None:
            continue
        flight = flights.get(record.experiment_id, _Flight(record))
        if payload["step"] == flight.step:
            flights[record.experiment_id] = flight.next(ExperimentResult.model_validate(payload["result"]))
    for flight in flights.values():
        flight.dispatched_step = flight.step  # the ledger's instrument is this step's (if it was dispatched)
    return flights


def _record_bus_events(ledger: Ledger, bus_events: EventSubscriber) -> None:
    while (event := bus_events.receive(timeout_s=0)) is not None:
        ledger.log_event(event.topic, event.payload)


def _observation(record: ExperimentRecord) -> Observation:
    if record.status == "done":
        return Observation(point=record.point, status="done", measurements=record.result.measurements)
    return Observation(point=record.point, status="failed")


def _instrument_name(service_name: str) -> str:
    return service_name.removeprefix("instrument.")


class _signals:
    """First SIGINT/SIGTERM: stop gracefully. Second: stop now. Restores the old handlers on exit."""

    def __init__(self, stop: _Stop) -> None:
        self.stop = stop
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.stop.graceful.is_set():
            self.stop.immediate.set()
            log.warning("second interrupt: leaving now; in-flight experiments are reconciled on --resume")
        else:
            self.stop.graceful.set()
            log.warning("interrupt: no new experiments; waiting for those in flight (interrupt again to leave now)")

    def __enter__(self) -> _signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
